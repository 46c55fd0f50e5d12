"""A minimal keep-alive HTTP/1.1 client for latency probes: one connection, one request at a time.

Why: on a 2-core host a full client library spends about a millisecond of its own per streamed request (request
building, line splitting), which a TTFT fidelity check would charge to the server. This client writes one
pre-built request and decodes the chunked SSE answer with nothing else in the way, so a time it reports is the
server's plus the kernel's. Answers must be ``Transfer-Encoding: chunked`` or carry ``Content-Length``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class StreamTiming:
    """Monotonic times (``time.perf_counter``) of one streamed request and the SSE ``data:`` payloads received."""

    status: int
    sent: float
    first_data: float | None = None
    end: float = 0.0
    events: list[bytes] = field(default_factory=list)


class KeepAliveClient:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    async def post_stream(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> StreamTiming:
        """POST ``body`` and read the whole answer; ``first_data`` is when the first ``data:`` event arrived."""
        reader, writer = await self._connect()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n{extra}\r\n").encode()
        t = StreamTiming(0, time.perf_counter())
        writer.write(head + body)
        status_line = await reader.readline()
        t.status = int(status_line.split()[1])
        chunked, length, close = False, 0, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            chunked |= name == "transfer-encoding" and "chunked" in value
            length = int(value) if name == "content-length" else length
            close |= name == "connection" and value == "close"
        pending = b""
        if chunked:
            while size := int((await reader.readline()).split(b";")[0], 16):
                pending = self._events(t, pending + await reader.readexactly(size))
                await reader.readexactly(2)
            await reader.readline()  # the blank line after the last chunk
        else:
            self._events(t, await reader.readexactly(length))
        t.end = time.perf_counter()
        if close:
            writer.close()
            self._reader = self._writer = None
        return t

    @staticmethod
    def _events(t: StreamTiming, data: bytes) -> bytes:
        """Record the complete SSE events in ``data``; return the incomplete tail."""
        *complete, tail = data.split(b"\n\n")
        for event in complete:
            if event.startswith(b"data: "):
                if t.first_data is None:
                    t.first_data = time.perf_counter()
                t.events.append(event[6:])
        return tail

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._reader = self._writer = None
