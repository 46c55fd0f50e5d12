"""A light tokenizer for the replica: the model folder's ``tokenizer.json`` (``tokenizers``) plus its chat
template rendered with jinja2, as transformers does. No torch, no transformers import, so a simulated replica
starts in about a second.

Contract (what the engine and the server rely on; an HF tokenizer can be wrapped with ``from_hf``):
``encode(text) -> ids`` (no special tokens added), ``decode(ids) -> str`` (special tokens skipped),
``render_chat(messages) -> str`` (with the generation prompt), ``eos_token_ids``, ``special_token_ids``, and
optionally ``decode_stream(context_ids)`` (the detokenizer's fast path).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers.decoders import DecodeStream


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # older configs store {"content": ..., ...}
        return value.get("content")
    return value


class ReplicaTokenizer:
    def __init__(self, tokenizer: _HFTokenizer, chat_template: str | None, eos_token_ids: Sequence[int],
                 special_tokens: dict[str, str | None]) -> None:
        self._tok = tokenizer
        self.chat_template = chat_template
        self.eos_token_ids: frozenset[int] = frozenset(eos_token_ids)
        self.special_tokens = special_tokens
        self.special_token_ids: frozenset[int] = frozenset(
            idx for idx, tok in tokenizer.get_added_tokens_decoder().items() if tok.special
        )
        self._template = None
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def from_dir(cls, folder: str | Path) -> ReplicaTokenizer:
        folder = Path(folder)
        tok = _HFTokenizer.from_file(str(folder / "tokenizer.json"))
        cfg: dict[str, Any] = {}
        if (folder / "tokenizer_config.json").exists():
            cfg = json.loads((folder / "tokenizer_config.json").read_text())
        template = cfg.get("chat_template")
        if (folder / "chat_template.jinja").exists():
            template = (folder / "chat_template.jinja").read_text()
        specials = {k: _token_text(cfg.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        eos: set[int] = set()
        if specials["eos_token"] and tok.token_to_id(specials["eos_token"]) is not None:
            eos.add(tok.token_to_id(specials["eos_token"]))
        gen = folder / "generation_config.json"
        if gen.exists():
            value = json.loads(gen.read_text()).get("eos_token_id")
            eos.update(value if isinstance(value, list) else [] if value is None else [value])
        return cls(tok, template, sorted(eos), specials)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def decode_stream(self, context_ids: Sequence[int]) -> Callable[[int], str | None]:
        """An incremental decoder (Rust ``DecodeStream``) primed with ``context_ids``: call it with each new
        token; it returns the new text, or None while a character is incomplete."""
        stream = DecodeStream(ids=list(context_ids), skip_special_tokens=True)
        return partial(stream.step, self._tok)

    def render_chat(self, messages: list[dict[str, Any]], continue_final_message: bool = False,
                    **kwargs: Any) -> str:
        """The conversation rendered by the model's chat template, ending with the assistant prompt.

        ``continue_final_message`` (vLLM's extension, as transformers does it): no generation prompt, and the
        rendering stops right after the final message's content, so generation continues that message.
        """
        if self._template is None:
            if not self.chat_template:
                raise ValueError("this model has no chat template; use /v1/completions")
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              extensions=["jinja2.ext.loopcontrols"])
            env.globals["raise_exception"] = _raise
            self._template = env.from_string(self.chat_template)
        text = self._template.render(messages=messages, add_generation_prompt=not continue_final_message,
                                     **{k: v for k, v in self.special_tokens.items() if v}, **kwargs)
        final = messages[-1].get("content") if continue_final_message and messages else None
        if isinstance(final, str):
            for needle in (final, final.strip()):  # templates that trim content keep only the stripped text
                end = text.rfind(needle) if needle else -1
                if end >= 0:
                    return text[:end + len(needle)]
        return text

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> list[int]:
        return self.encode(self.render_chat(messages, **kwargs))


def _raise(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def load_tokenizer(folder: str | Path) -> ReplicaTokenizer:
    return ReplicaTokenizer.from_dir(folder)
