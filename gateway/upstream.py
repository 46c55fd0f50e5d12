"""A lean HTTP/1.1 keep-alive client for non-streaming upstream calls: the gateway's hot path.

aiohttp's client costs ~130 us of CPU per request; this one, an ``asyncio.Protocol`` that writes one prebuilt
request and parses one response, costs a third of that, which is most of the gateway's overhead budget
(``foresight bench overhead``). Streaming calls keep using aiohttp (per-chunk relay, backpressure).

Contract:
- ``request`` sends one request on an idle pooled connection (or a new one) and returns ``(status, headers,
  body)`` with lower-case header names; bodies with ``Content-Length``, ``Transfer-Encoding: chunked`` or
  read-until-close are supported. The connection goes back to the pool only after a complete response without
  ``Connection: close``.
- Errors: ``UpstreamConnectError`` (nothing listens: the request never left), ``UpstreamDisconnected`` (the
  connection broke before the full response), ``TimeoutError`` (no bytes for ``read_timeout``). A pooled
  connection found closed by the peer before use is replaced silently (the request was not sent on it).
- Cancellation (a client that went away) closes the connection, so the replica sees the disconnect.
"""

from __future__ import annotations

import asyncio
import functools
from urllib.parse import urlsplit


class UpstreamConnectError(ConnectionError):
    pass


class UpstreamDisconnected(ConnectionError):
    pass


class _Conn(asyncio.Protocol):
    __slots__ = ("transport", "buf", "fut", "closed", "status", "headers", "need", "chunked", "body", "head_done",
                 "keep_alive", "until_close")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.fut: asyncio.Future[tuple[int, dict[str, str], bytes]] | None = None
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.need = -1
        self.chunked = False
        self.until_close = False
        self.body = bytearray()
        self.head_done = False
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        fut = self.fut
        if fut is not None and not fut.done():
            if self.until_close and self.head_done:
                fut.set_result((self.status, self.headers, bytes(self.body + self.buf)))
            else:
                fut.set_exception(UpstreamDisconnected(f"upstream closed the connection ({exc or 'EOF'})"))

    def data_received(self, data: bytes) -> None:
        if self.fut is None:  # bytes on an idle connection: out of protocol, never reuse it
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            return
        self.buf += data
        if not self.fut.done():
            try:
                self._parse()
            except ValueError as e:
                self.keep_alive = False
                self.fut.set_exception(UpstreamDisconnected(f"malformed upstream response: {e}"))

    def _parse(self) -> None:
        buf = self.buf
        if not self.head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    raise ValueError("response head too large")
                return
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[:end + 4]
            self.status = int(lines[0].split(" ", 2)[1])
            for line in lines[1:]:
                k, _, v = line.partition(":")
                self.headers[k.strip().lower()] = v.strip()
            self.head_done = True
            h = self.headers
            self.keep_alive = h.get("connection", "").lower() != "close"
            if "chunked" in h.get("transfer-encoding", "").lower():
                self.chunked = True
            elif "content-length" in h:
                self.need = int(h["content-length"])
            elif self.status in (204, 304) or 100 <= self.status < 200:
                self.need = 0
            else:
                self.until_close, self.keep_alive = True, False
                return
        if self.chunked:
            while True:
                line_end = buf.find(b"\r\n")
                if line_end < 0:
                    return
                size = int(bytes(buf[:line_end]).split(b";", 1)[0], 16)
                if len(buf) < line_end + 2 + size + 2:
                    return
                if size == 0:
                    trailer_end = buf.find(b"\r\n\r\n", line_end)  # skip optional trailers
                    if trailer_end < 0:
                        if bytes(buf[line_end + 2:line_end + 4]) != b"\r\n":
                            return
                        trailer_end = line_end
                    del buf[:trailer_end + 4]
                    break
                self.body += buf[line_end + 2:line_end + 2 + size]
                del buf[:line_end + 2 + size + 2]
        elif self.until_close:
            return
        else:
            if len(buf) < self.need:
                return
            self.body = buf[:self.need]
            del buf[:self.need]
        assert self.fut is not None
        self.fut.set_result((self.status, self.headers, bytes(self.body)))


def _expire(fut: asyncio.Future, seconds: float) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError(f"no complete upstream response within {seconds:g}s"))


class UpstreamClient:
    """Keep-alive pools per upstream ``host:port``; see the module docstring."""

    def __init__(self, max_idle_per_host: int = 256) -> None:
        self.max_idle = max_idle_per_host
        self._idle: dict[tuple[str, int, bool], list[_Conn]] = {}

    @staticmethod
    @functools.lru_cache(maxsize=4096)  # a handful of replica URLs, parsed once each instead of per request
    def address(url: str) -> tuple[str, int, bool]:
        """(host, port, tls) of an upstream base URL."""
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        return parts.hostname or "127.0.0.1", parts.port or (443 if tls else 80), tls

    async def _connect(self, addr: tuple[str, int, bool], timeout: float) -> _Conn:
        loop = asyncio.get_running_loop()
        host, port, tls = addr
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(_Conn, host, port, ssl=tls or None)
        except (OSError, TimeoutError) as e:
            raise UpstreamConnectError(f"cannot connect to {addr[0]}:{addr[1]}: {e}") from e
        return conn

    async def request(self, url: str, path: str, headers: dict[str, str], body: bytes, *,
                      connect_timeout: float, read_timeout: float) -> tuple[int, dict[str, str], bytes]:
        addr = self.address(url)
        idle = self._idle.setdefault(addr, [])
        conn = None
        while idle:
            candidate = idle.pop()
            if not candidate.closed:
                conn = candidate
                break
        if conn is None:
            conn = await self._connect(addr, connect_timeout)
        head = [f"POST {path} HTTP/1.1\r\nHost: {addr[0]}:{addr[1]}\r\nContent-Length: {len(body)}\r\n"]
        head.extend(f"{k}: {v}\r\n" for k, v in headers.items())
        head.append("\r\n")
        conn._reset()
        loop = asyncio.get_running_loop()
        fut = conn.fut = loop.create_future()
        assert conn.transport is not None
        conn.transport.write("".join(head).encode("utf-8", "surrogateescape") + body)
        # A timer that fails the future, cheaper than an ``asyncio.timeout`` scope per request.
        timer = loop.call_later(read_timeout, _expire, fut, read_timeout)
        ok = False
        try:
            result = await fut
            ok = True
            return result
        finally:
            timer.cancel()
            conn.fut = None
            if ok and conn.keep_alive and not conn.closed and not conn.buf and len(idle) < self.max_idle:
                idle.append(conn)
            elif conn.transport is not None:
                conn.transport.close()

    def close(self) -> None:
        for conns in self._idle.values():
            for c in conns:
                if c.transport is not None:
                    c.transport.close()
        self._idle.clear()
