from __future__ import annotations

import gzip
import json
import math

import pytest

from predictor.data import DataError, example_from_row, load_examples, request_from_row
from predictor.features import DENSE_NAMES, N_HASHED, extract, make_request


def test_alpaca_and_chat_rows_give_the_same_features():
    alpaca = request_from_row({"instruction": "Write a poem about snow", "generator": "m", "output": "x"})
    chat = request_from_row({"messages": [{"role": "user", "content": "Write a poem about snow"}], "model": "m"})
    fa, fc = extract(alpaca), extract(chat)
    assert fa.sparse == fc.sparse
    assert list(fa.dense) == list(fc.dense)
    assert fa.model == fc.model == "m"


def test_features_cover_conversation_and_sampling_params():
    req = make_request(model="m", messages=[
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": [{"type": "text", "text": "List ten tips for writing an essay"}]},
    ], max_tokens=64, temperature=0.2, stop=["\n\n", "END"])
    assert "system: Be terse." in req.text and req.last_user.startswith("List ten tips")
    f = extract(req)
    d = dict(zip(DENSE_NAMES, f.dense, strict=True))
    assert d["turns"] == 2 and d["stops"] == 2 and d["has_max_tokens"] == 1 and d["temperature"] == 0.2
    assert d["cue_enumerate"] == 1 and d["cue_long_form"] == 1 and d["cue_counted"] == 1 and d["cue_short"] == 0
    assert all(0 <= k < N_HASHED for k in f.sparse)
    assert sum(v * v for v in f.sparse.values()) == pytest.approx(1.0)
    # Deterministic across calls (and processes: xxhash, not the salted built-in hash).
    assert extract(req).sparse == f.sparse


def test_prompt_list_and_empty_prompt():
    assert make_request(model="m", prompt=["a", "b"]).last_user == "a\nb"
    f = extract(make_request(model="m", prompt=""))
    assert f.dense[0] > 0  # "user: " is still rendered
    assert all(math.isfinite(v) for v in f.dense) and f.sparse


def test_chat_schema_targets(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "hi"}], "model": "a", "output_tokens": 7},
        {"messages": [{"role": "user", "content": "hi"}], "model": "a", "usage": {"completion_tokens": 9}},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "one two three"}],
         "model": "b"},
        {"prompt": "hey", "model": "c", "response": "four five"},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")

    class Tok:
        def encode_batch(self, texts, add_special_tokens=False):
            return [type("E", (), {"ids": t.split()})() for t in texts]

    examples = load_examples(path, Tok())
    assert [e.tokens for e in examples] == [7, 9, 3, 2]
    assert examples[2].request.text == "user: hi"  # the answer is not part of the prompt
    assert examples[0].group == examples[2].group  # same prompt, same group


def test_alpaca_gz_needs_a_tokenizer_and_bad_rows_fail_clearly(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"instruction": "x", "output": "y z", "generator": "g"}\n'))
    with pytest.raises(DataError, match="no tokenizer"):
        load_examples(path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x"}\n')
    with pytest.raises(DataError, match="row 1.*response"):
        load_examples(bad)
    bad.write_text("not json\n")
    with pytest.raises(DataError, match="not JSON"):
        load_examples(bad)
    with pytest.raises(DataError, match="needs 'messages'"):
        example_from_row({"model": "m", "output": "x"})
    with pytest.raises(DataError, match="not found"):
        load_examples(tmp_path / "missing.jsonl")


def test_odd_request_fields_never_raise():
    req = make_request(model=None, messages=["not a dict", {"role": "user", "content": None}, {"content": 5}],
                       max_tokens="many", temperature=float("nan"), stop=7)
    assert req.max_tokens is None and req.temperature is None and req.stops == 0 and req.model == ""
    assert make_request(model="m", prompt="x", max_tokens=True).max_tokens is None
    assert make_request(model="m", prompt="x", max_tokens=0).max_tokens is None
    assert make_request(model="m", messages="hello").last_user == "hello"  # a string is taken as a prompt
    f = extract(req)
    assert all(math.isfinite(v) for v in f.dense)
