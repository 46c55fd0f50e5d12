"""Incremental detokenization: whole characters only, and stop strings never leak."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from replicas.engine.detokenizer import IncrementalDetokenizer


class ByteTokenizer:
    """One token per UTF-8 byte (byte-level BPE with no merges), so multi-byte characters span tokens."""

    def __init__(self) -> None:
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
        self.tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        self.tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        self.tok.decoder = decoders.ByteLevel()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)


@pytest.fixture(scope="module")
def tok() -> ByteTokenizer:
    return ByteTokenizer()


def run(tok: ByteTokenizer, text: str, stop: list[str]) -> tuple[list[str], str | None]:
    d = IncrementalDetokenizer(tok, tok.encode("prompt "), stop)
    pieces, hit = [], None
    for t in tok.encode(text):
        hit = d.add(t)
        if hit:
            break
        pieces.append(d.take(False))
    pieces.append(d.take(True))
    return pieces, hit


def test_multibyte_characters_are_never_split(tok: ByteTokenizer) -> None:
    text = "añ 東京 🎉 ok"
    pieces, _ = run(tok, text, [])
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert len(tok.encode("🎉")) == 4  # the emoji spans four tokens and still comes out whole


def test_stop_string_is_cut_and_never_emitted(tok: ByteTokenizer) -> None:
    pieces, hit = run(tok, "hello STOP world", ["STOP"])
    assert hit == "STOP" and "".join(pieces) == "hello "
    assert not any("S" in p for p in pieces)


def test_partial_stop_prefix_is_released_when_it_does_not_complete(tok: ByteTokenizer) -> None:
    pieces, hit = run(tok, "a ST b", ["STOP"])
    assert hit is None and "".join(pieces) == "a ST b"


def test_earliest_stop_string_wins(tok: ByteTokenizer) -> None:
    pieces, hit = run(tok, "x END y HALT", ["HALT", "END"])
    assert hit == "END" and "".join(pieces) == "x "


def test_real_tiny_tokenizer_round_trip(tiny_model_dir: Path) -> None:
    from replicas.engine.tokenizer import load_tokenizer

    t = load_tokenizer(tiny_model_dir)
    text = "The capital of France is Paris. Ünïcödé 東京!"
    d = IncrementalDetokenizer(t, t.encode("Hi"), [])
    out = []
    for i in t.encode(text):
        d.add(i)
        out.append(d.take(False))
    assert "".join(out) + d.take(True) == text


def test_character_cut_by_the_end_of_the_request_comes_out_as_in_decode(tok: ByteTokenizer,
                                                                        tiny_model_dir: Path) -> None:
    """``max_tokens`` can end a request between the bytes of one character: the final text is then what
    ``decode(output ids)`` gives (U+FFFD for the incomplete character), on both paths."""
    from replicas.engine.tokenizer import load_tokenizer

    for t in (tok, load_tokenizer(tiny_model_dir)):  # sliding-window path, then the native decode_stream path
        ids = t.encode("ok 🎉")[:-1]  # the emoji's last byte never comes
        d = IncrementalDetokenizer(t, t.encode("Hi"), [])
        out = []
        for i in ids:
            d.add(i)
            out.append(d.take(False))
        out.append(d.take(True))
        assert "".join(out) == t.decode(ids) and out[-1].endswith("\ufffd")
