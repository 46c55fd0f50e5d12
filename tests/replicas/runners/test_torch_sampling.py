"""On-device sampling: greedy, temperature, top-k, top-p and per-request seeds."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from replicas.engine.request import SamplingParams  # noqa: E402
from replicas.runners.sampling import Sampler  # noqa: E402


def _logits(rows: int, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax_and_mixes_with_sampled_rows() -> None:
    logits = _logits(4)
    sampler = Sampler("cpu")
    greedy = SamplingParams(temperature=0.0)
    assert sampler.sample(logits, [greedy] * 4, list("abcd")) == logits.argmax(-1).tolist()
    mixed = [greedy, SamplingParams(temperature=1.0), greedy, SamplingParams(temperature=0.7, top_p=0.9)]
    out = sampler.sample(logits, mixed, list("abcd"))
    assert out[0] == logits[0].argmax().item() and out[2] == logits[2].argmax().item()
    with pytest.raises(ValueError):
        sampler.sample(logits, mixed[:3], list("abc"))


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    logits = _logits(3, seed=1)
    sampler = Sampler("cpu")
    for params in (SamplingParams(temperature=1.5, top_k=1), SamplingParams(temperature=1.5, top_p=1e-6)):
        for _ in range(20):
            assert sampler.sample(logits, [params] * 3, list("xyz")) == logits.argmax(-1).tolist()


def test_top_k_and_top_p_restrict_the_support() -> None:
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]])
    sampler = Sampler("cpu")
    seen_k = {sampler.sample(logits, [SamplingParams(top_k=2)], ["r"])[0] for _ in range(300)}
    assert seen_k == {0, 1}
    probs = torch.softmax(logits[0], -1)
    # top_p just above p0 + p1: exactly tokens 0..2 are kept (the smallest set reaching the mass).
    p = float(probs[:2].sum()) + 1e-3
    seen_p = {sampler.sample(logits, [SamplingParams(top_p=p)], ["r"])[0] for _ in range(400)}
    assert seen_p == {0, 1, 2}


def test_temperature_sampling_follows_softmax() -> None:
    logits = torch.tensor([[1.0, 0.0, -0.5, 0.5]])
    sampler = Sampler("cpu")
    n = 4000
    rows = logits.expand(n, -1).contiguous()
    params = [SamplingParams(temperature=2.0)] * n
    draws = torch.tensor(sampler.sample(rows, params, [str(i) for i in range(n)]))
    freq = torch.bincount(draws, minlength=4).float() / n
    expected = torch.softmax(logits[0] / 2.0, -1)
    assert (freq - expected).abs().max() < 0.04, (freq, expected)


def test_seeded_requests_are_reproducible_whatever_shares_the_batch() -> None:
    seeded = SamplingParams(temperature=1.0, seed=1234)
    logits = _logits(3, seed=2) / 6  # flat enough that a seed matters

    def run(other_rows: int) -> list[int]:
        sampler = Sampler("cpu")
        out = []
        for _ in range(10):
            batch = torch.cat([logits[:1], _logits(other_rows, seed=9)])
            params = [seeded] + [SamplingParams(temperature=1.0)] * other_rows
            out.append(sampler.sample(batch, params, ["s"] + [f"o{i}" for i in range(other_rows)])[0])
        return out

    first, second = run(0), run(5)
    assert first == second
    assert len(set(first)) > 1  # it really samples
    other = Sampler("cpu")
    different = [other.sample(logits[:1], [SamplingParams(temperature=1.0, seed=99)], ["s"])[0] for _ in range(10)]
    assert different != first


def test_release_forgets_the_generator() -> None:
    sampler = Sampler("cpu")
    params = [SamplingParams(temperature=1.0, seed=5)]
    logits = _logits(1, seed=4)
    a = [sampler.sample(logits, params, ["r"])[0] for _ in range(6)]
    sampler.release("r")
    b = [sampler.sample(logits, params, ["r"])[0] for _ in range(6)]
    assert a == b  # a new request with the same id and seed starts the same stream again


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_all_greedy_rows_take_the_first_maximum_as_torch_does(dtype: torch.dtype) -> None:
    # Ties and NaN: the all-greedy path (numpy on a CPU where it can) must pick what torch.argmax picks.
    logits = torch.tensor([[0.0, 3.0, 3.0, 1.0], [2.0, float("nan"), 5.0, float("nan")], [-1.0, -1.0, -1.0, -1.0],
                           [1.0, 2.0, 3.0, 4.0]], dtype=dtype)
    got = Sampler("cpu").sample(logits, [SamplingParams(temperature=0.0)] * 4, ["a", "b", "c", "d"])
    assert got == logits.argmax(dim=-1).tolist() == [1, 1, 0, 3]
