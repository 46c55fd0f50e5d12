"""Incremental detokenization and stop strings.

Text is decoded from a sliding window of token ids (vLLM's prefix/read offsets), so a character split across
tokens (UTF-8 bytes of one emoji in two byte-level tokens) is only emitted once complete: a window whose
decoding ends with U+FFFD waits for the next token; when the request finishes, a character left incomplete
(``max_tokens`` cut it) is emitted as U+FFFD, so the final text always equals ``decode(output ids)``. Stop
strings never leak: the last ``max(len(stop)) - 1`` characters are held back until the request finishes or they
can no longer start a stop string, and a matched stop string is cut (with everything after it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

# Prompt tokens used as left context, so that the first output tokens decode as they would mid-text
# (sentencepiece drops a leading space at the start of a decode).
_CONTEXT_TOKENS = 5


class Decoder(Protocol):
    def decode(self, ids: Sequence[int]) -> str: ...


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Decoder, prompt_token_ids: Sequence[int], stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        factory = getattr(tokenizer, "decode_stream", None)
        # Fast path: the tokenizer's own incremental decoder (one native call per token).
        self._step = factory(list(prompt_token_ids[-_CONTEXT_TOKENS:])) if factory is not None else None
        self.ids: list[int] = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.text = ""  # all output text so far (cut at a matched stop string)
        self.emitted = 0  # characters of ``text`` already handed out

    def add(self, token_id: int) -> str | None:
        """Append one token; returns the stop string it completed, if any."""
        self.ids.append(token_id)
        if self._step is not None:
            piece = self._step(token_id)
            if not piece:
                return None
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            start = len(self.text)
            self.text += piece
            return self._find_stop(start)
        prefix_text, new_text = self._window()
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return None  # an incomplete character (or a special token): wait for more
        start = len(self.text)
        self.text += new_text[len(prefix_text) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return self._find_stop(start)

    def _window(self) -> tuple[str, str]:
        """The window's text before the unread tokens, and with them."""
        return (self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset]),
                self.tokenizer.decode(self.ids[self.prefix_offset :]))

    def _find_stop(self, start: int) -> str | None:
        if not self.stop:
            return None
        lo = max(0, start - self.hold)
        best: tuple[int, str] | None = None
        for s in self.stop:
            idx = self.text.find(s, lo)
            if idx >= 0 and (best is None or idx < best[0]):
                best = (idx, s)
        if best is None:
            return None
        self.text = self.text[: best[0]]
        return best[1]

    def take(self, final: bool) -> str:
        """The text that can be handed out now (all of it when ``final``, an incomplete last character too)."""
        if final and self.read_offset < len(self.ids):
            self._flush()
        safe = len(self.text) if final else max(self.emitted, len(self.text) - self.hold)
        delta = self.text[self.emitted : safe]
        self.emitted = safe
        return delta

    def _flush(self) -> None:
        """Decode the tokens still waiting for a character to complete (the request ended first)."""
        prefix_text, new_text = self._window()
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        if len(new_text) > len(prefix_text):
            start = len(self.text)
            self.text += new_text[len(prefix_text) :]
            self._find_stop(start)
