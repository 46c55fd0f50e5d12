"""Model resolution: names to folders that `from_pretrained` loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicas.models import resolve_model, served_name


def test_existing_folder_passes_through(tmp_path: Path) -> None:
    assert resolve_model(str(tmp_path)) == tmp_path


def test_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(FileNotFoundError, match="unknown model"):
        resolve_model("no-such-model-anywhere")


def test_served_names() -> None:
    assert served_name("smollm2") == "SmolLM2-135M-Instruct"
    assert served_name("/models/Qwen3-8B/") == "Qwen3-8B"


def test_tiny_builds_into_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    monkeypatch.setenv("FORESIGHT_CACHE_DIR", str(tmp_path))
    folder = resolve_model("tiny")
    assert folder == tmp_path / "models" / "tiny" and (folder / "config.json").exists()
    assert resolve_model("tiny") == folder  # built once


@pytest.mark.slow
def test_smollm2_answers_a_chat_prompt() -> None:
    """`foresight models path smollm2` gives a folder that loads and names Paris (uses the shared cache)."""
    import subprocess
    import sys

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = subprocess.run([sys.executable, "-m", "foresight.cli", "models", "path", "smollm2"],
                         capture_output=True, text=True, check=True)
    folder = Path(out.stdout.strip().splitlines()[-1])
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=24, do_sample=False)
    answer = tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
