"""Prompt text for length-only and hash-id traces, exact in the target's tokenizer.

A Mooncake record says "blocks 0, 14, 15 of 512 tokens, 7,322 tokens in all". ``PromptSynth`` turns each hash id
into a deterministic 512-token block (a seeded draw from the tokenizer's *word tokens*: vocabulary entries that
decode to a space followed by ASCII letters and re-encode to themselves), so that:

- two requests sharing hash ids share exactly those token blocks, whatever process built them;
- the text of a request round-trips to exactly its tokens: byte-level BPE pre-tokenizers split before each space,
  so a run of " word" tokens never merges across word boundaries (``verify`` checks it on a sample).

A partial last block is the first tokens of its id's block, so a request whose last block is a prefix of another
request's full block shares those tokens too. Requests without hash ids get a block chain seeded by their index
(nothing shared).
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

from bench.traces import MOONCAKE_BLOCK_TOKENS, TraceRequest

_UNIQUE_BASE = 1 << 48  # hash-id space of requests without hash ids: never collides with trace ids


def resolve_tokenizer_dir(spec: str) -> Path:
    """A model folder with ``tokenizer.json``: an existing folder, or a name ``replicas.models`` resolves."""
    path = Path(spec)
    if not path.is_dir():
        from replicas.models import resolve_model

        path = Path(resolve_model(spec))
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path} has no tokenizer.json")
    return path


class PromptSynth:
    """Builds prompt text token-exact in one tokenizer (see the module docstring)."""

    def __init__(self, tokenizer_dir: str | Path, block_tokens: int = MOONCAKE_BLOCK_TOKENS, salt: int = 0) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
        self.block_tokens = block_tokens
        self.salt = salt
        self.words = self._word_tokens()
        if len(self.words) < 16:
            raise ValueError(f"tokenizer in {tokenizer_dir} has too few word tokens ({len(self.words)}) to build text")
        self._block = lru_cache(maxsize=8192)(self._make_block)

    def _word_tokens(self) -> list[str]:
        out = []
        for token_id in sorted(self.tokenizer.get_vocab().values()):
            text = self.tokenizer.decode([token_id])
            if len(text) >= 3 and text[0] == " " and text[1:].isascii() and text[1:].isalpha():
                if self.tokenizer.encode(text, add_special_tokens=False).ids == [token_id]:
                    out.append(text)
        return out

    def _make_block(self, block_id: int) -> tuple[str, ...]:
        rng = random.Random(block_id * 1_000_003 + self.salt)
        return tuple(rng.choices(self.words, k=self.block_tokens))

    def block_words(self, block_id: int) -> tuple[str, ...]:
        return self._block(block_id)

    def text(self, req: TraceRequest) -> str:
        """The prompt of ``req``: ``input_length`` tokens laid out as its hash-id blocks."""
        ids = req.hash_ids or tuple(_UNIQUE_BASE + req.index * 4096 + i
                                    for i in range(-(-req.input_length // self.block_tokens)))
        parts: list[str] = []
        remaining = req.input_length
        for h in ids:
            if remaining <= 0:
                break
            words = self.block_words(h)
            take = min(remaining, self.block_tokens)
            parts.append("".join(words[:take]))
            remaining -= take
        if remaining > 0:
            # The trace says more tokens than its ids cover: extend with blocks unique to this request.
            extra = TraceRequest(req.index, 0.0, remaining, 1)
            parts.append(self.text(extra))
        return "".join(parts)

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def verify(self, req: TraceRequest) -> bool:
        """True when ``text(req)`` encodes to exactly ``input_length`` tokens."""
        return self.count(self.text(req)) == req.input_length
