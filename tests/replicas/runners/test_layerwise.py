"""The layer-by-layer forward: used only where it equals the model's own forward, which stays the fallback."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from replicas.runners.layerwise import LayerwiseForward, matches  # noqa: E402
from replicas.runners.torch_runner import TorchRunner  # noqa: E402

BS = 16


def test_logits_to_keep_selects_rows_as_transformers_does(tiny_model_dir: Path) -> None:
    r = TorchRunner(str(tiny_model_dir), kv_blocks=16)
    r.kv_capacity_blocks(BS)
    lw = r._layerwise
    assert lw is not None
    step = r.synthetic_step([], [2 * BS])  # one fresh prompt: the same K/V whatever runs it
    ids = torch.tensor(step.token_ids)[None]
    pos = torch.tensor(step.positions)[None]
    from replicas.runners.paged_attention import STEP_KWARG, PagedStep
    from replicas.runners.step_metadata import StepMetadata

    meta = StepMetadata.build(step.spans, BS, r.device, r.dtype)
    with torch.inference_mode():
        for keep in (0, 3, torch.tensor([0, 5, 31])):
            kw = {STEP_KWARG: PagedStep(meta, r.cache, r.kernel)}
            want = r.model(input_ids=ids, position_ids=pos, logits_to_keep=keep, use_cache=False, **kw).logits
            assert torch.equal(lw(ids, pos, keep, **kw), want)
    r.close()


def test_a_forward_that_differs_is_not_used(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    class Off(LayerwiseForward):  # e.g. a model that scales its embeddings, which the layer walk would miss
        def __call__(self, *args: object, **kwargs: object) -> torch.Tensor:
            return super().__call__(*args, **kwargs) * 1.0001

    monkeypatch.setattr("replicas.runners.torch_runner.LayerwiseForward", Off)
    r = TorchRunner(str(tiny_model_dir), kv_blocks=16)
    with caplog.at_level(logging.WARNING):
        r.kv_capacity_blocks(BS)
    assert r._layerwise is None and r.describe()["forward"] == "transformers"
    assert "differs from the model's own" in caplog.text
    r.close()
    off = TorchRunner(str(tiny_model_dir), kv_blocks=16, layerwise=False)
    off.kv_capacity_blocks(BS)
    assert off.describe()["forward"] == "transformers"
    off.close()


def test_only_known_decoders_are_walked() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=64))
    assert LayerwiseForward.of(gpt2) is None
    assert not matches(lambda: torch.zeros(2, 3), lambda: torch.zeros(3, 2))
    assert matches(lambda: torch.ones(2), lambda: torch.ones(2))
