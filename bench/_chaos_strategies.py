"""Hypothesis strategies of ``foresight bench chaos fuzz`` (a private module: the benchmark CLI's discovery skips
it, so Hypothesis is imported only when a fuzz run starts). See ``bench/chaos_fuzz.py`` for what they generate."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hyp_seed
from hypothesis import strategies as st

MODEL = "foresight-tiny"
ROLES = ["system", "user", "assistant", "tool", "developer", "function"]
PATHS = ["/v1/chat/completions", "/v1/completions"]

scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                   st.text(max_size=30))
junk = st.recursive(scalar, lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=8), c,
                                                                                             max_size=4)),
                    max_leaves=12)


def maybe(valid: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(valid, valid, junk)


message = st.fixed_dictionaries({"role": maybe(st.sampled_from(ROLES)), "content": maybe(st.text(max_size=60))},
                                optional={"name": maybe(st.text(max_size=10))})
common = {"max_tokens": maybe(st.integers(-5, 80)), "temperature": maybe(st.floats(-1, 3)),
          "top_p": maybe(st.floats(-0.5, 1.5)), "stream": maybe(st.booleans()),
          "stream_options": maybe(st.fixed_dictionaries({"include_usage": maybe(st.booleans())})),
          "n": maybe(st.integers(-1, 3)), "stop": maybe(st.lists(st.text(max_size=5), max_size=3)),
          "seed": maybe(st.integers()), "user": maybe(st.text(max_size=10)), "logprobs": junk,
          "continue_final_message": maybe(st.booleans()), "extra": junk}
chat = st.fixed_dictionaries({"model": maybe(st.just(MODEL)), "messages": maybe(st.lists(message, max_size=3))},
                             optional=common)
completion = st.fixed_dictionaries({"model": maybe(st.just(MODEL)),
                                    "prompt": maybe(st.one_of(st.text(max_size=60),
                                                              st.lists(st.integers(0, 600), max_size=5)))},
                                   optional=common)
valid_chat = st.fixed_dictionaries(
    {"model": st.just(MODEL), "messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=60)}), min_size=1,
        max_size=3)},
    optional={"max_tokens": st.integers(1, 64), "temperature": st.floats(0, 2), "stream": st.booleans(),
              "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}), "seed": st.integers(0, 99),
              "stop": st.lists(st.text(min_size=1, max_size=3), max_size=2)})
valid_completion = st.fixed_dictionaries(
    {"model": st.just(MODEL), "prompt": st.text(min_size=1, max_size=60)},
    optional={"max_tokens": st.integers(1, 64), "stream": st.booleans(), "top_p": st.floats(0.01, 1)})
openai_request = st.tuples(st.sampled_from([*PATHS, *PATHS, "/v1/models", "/v1/embeddings", "/admin/replicas"]),
                           st.one_of(valid_chat, valid_completion, chat, completion, junk),
                           st.sampled_from(["plain", "plain", "ascii", "truncate"]))

token = st.binary(min_size=0, max_size=40)
header = st.tuples(st.one_of(st.sampled_from([b"Content-Length", b"Transfer-Encoding", b"Host", b"Connection",
                                              b"Authorization", b"Content-Type", b"X-Request-Id", b"Expect"]),
                             token),
                   st.one_of(token, st.sampled_from([b"-1", b"99999999999", b"chunked", b"gzip, chunked",
                                                     b"100-continue", b"application/json"])))
raw_request = st.tuples(st.one_of(st.sampled_from([b"POST", b"GET", b"PUT", b"CONNECT", b"TRACE"]), token),
                        st.one_of(st.sampled_from([p.encode() for p in PATHS] + [b"*", b"http://evil/x"]), token),
                        st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9", b""]),
                        st.lists(header, max_size=8), st.binary(max_size=200))



def run_examples(strategy: st.SearchStrategy, n: int, fn: Callable, seed: int) -> None:
    """Call ``fn(*example)`` for ``n`` examples of ``strategy`` (generation only: nothing fails, we count)."""
    if n <= 0:
        return

    @hyp_seed(seed)
    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def drive(example: tuple) -> None:
        fn(*example)

    drive()
