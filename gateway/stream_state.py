"""What a relayed SSE stream has shown the client so far, so that another replica can pick it up seamlessly.

``EventRecorder`` sits in the proxy's relay loop: it hands the client only *complete* SSE events (a chunk that ends
inside an event is held back until the event's end arrives), so a replica dying mid-event never leaves half an
event on the client's side, and it keeps the bytes relayed so far (bounded by ``limit``; past it the stream is
not continuable). Parsing happens only when a stream breaks (``StreamState.from_bytes``), so the healthy path pays
a ``rfind`` and a list append per chunk.

``StreamState`` is what continuation needs: the stream's ``id``/``created``/``model``/``object`` (kept identical in
every later chunk), the text generated so far, whether the assistant role chunk was sent, whether a
``finish_reason`` or a usage chunk already went out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

DONE = b"[DONE]"


class EventRecorder:
    __slots__ = ("pending", "parts", "size", "limit", "overflow")

    def __init__(self, limit: int = 8 * 1024 * 1024) -> None:
        self.pending = b""
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.overflow = False

    def feed(self, chunk: bytes) -> bytes:
        """The complete events in ``pending + chunk`` (to write to the client now); the rest is held back."""
        data = self.pending + chunk if self.pending else chunk
        lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
        cut = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
        if cut == 0:
            self.pending = data
            if len(data) > 1024 * 1024:  # no event boundary in 1 MiB: not SSE as we know it; stop holding back
                self.overflow = True
                self.pending = b""
                return data
            return b""
        out, self.pending = (data, b"") if cut == len(data) else (data[:cut], data[cut:])
        if not self.overflow:
            self.size += len(out)
            if self.size > self.limit:
                self.overflow = True
                self.parts.clear()
            else:
                self.parts.append(out)
        return out

    def rest(self) -> bytes:
        """Bytes held back (only non-empty if a stream ended without a final event separator)."""
        out, self.pending = self.pending, b""
        return out

    def recorded(self) -> bytes:
        return b"".join(self.parts)


def iter_events(data: bytes) -> list[bytes]:
    """The ``data:`` payloads of the complete SSE events in ``data`` (comments and other fields are skipped)."""
    out = []
    for event in data.replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = [ln[5:].lstrip(b" ") for ln in event.split(b"\n") if ln.startswith(b"data:")]
        if lines:
            out.append(b"\n".join(lines))
    return out


def chunk_text(obj: dict[str, Any]) -> str:
    parts = []
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        text = choice.get("text")
        if isinstance(text, str):
            parts.append(text)
        delta = choice.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            parts.append(delta["content"])
    return "".join(parts)


def finish_reason(obj: dict[str, Any]) -> str | None:
    for choice in obj.get("choices") or ():
        if isinstance(choice, dict) and choice.get("finish_reason"):
            return str(choice["finish_reason"])
    return None


def is_role_chunk(obj: dict[str, Any]) -> bool:
    """The opening chat chunk: ``delta`` carries the role and no text."""
    for choice in obj.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict) and "role" in delta and not delta.get("content") and not delta.get("tool_calls"):
            return True
    return False


@dataclass
class StreamState:
    id: str | None = None
    created: int | None = None
    model: str | None = None
    object: str | None = None
    text: str = ""
    text_chunks: int = 0  # chunks that carried text: each is at least one token
    role_sent: bool = False
    finish_reason: str | None = None
    usage_sent: bool = False
    errored: bool = False  # an error event was relayed: the replica itself gave up; do not continue

    def observe(self, obj: dict[str, Any]) -> None:
        """Fold one relayed chunk into the state."""
        if "error" in obj and "choices" not in obj:
            self.errored = True
            return
        if self.id is None:
            self.id, self.created = obj.get("id"), obj.get("created")
            self.model, self.object = obj.get("model"), obj.get("object")
        if is_role_chunk(obj):
            self.role_sent = True
        text = chunk_text(obj)
        if text:
            self.text += text
            self.text_chunks += 1
        self.finish_reason = finish_reason(obj) or self.finish_reason
        if isinstance(obj.get("usage"), dict):
            self.usage_sent = True

    @classmethod
    def from_bytes(cls, data: bytes) -> StreamState:
        state = cls()
        for payload in iter_events(data):
            if payload.strip() == DONE:
                continue
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                state.observe(obj)
        return state

    def restamp(self, obj: dict[str, Any]) -> None:
        """Give a chunk from another replica this stream's identity."""
        if self.id is None:
            self.id, self.created = obj.get("id"), obj.get("created")
            self.model, self.object = obj.get("model"), obj.get("object")
            return
        obj["id"], obj["created"] = self.id, self.created
        if self.model is not None:
            obj["model"] = self.model
