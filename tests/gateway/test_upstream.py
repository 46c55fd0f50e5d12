"""The lean upstream client: framing (length, chunked, until-close), keep-alive reuse, stale connections, errors."""

from __future__ import annotations

import asyncio

import pytest

from gateway.upstream import UpstreamClient, UpstreamConnectError, UpstreamDisconnected
from tests.helpers.procs import free_port


async def raw_server(responses: list[bytes], close_after: bool = False):
    """A TCP server answering each request (one per read) with the next canned response."""
    connections = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while responses:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(responses.pop(0))
            await writer.drain()
            if close_after:
                writer.close()
                return
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", connections


async def test_content_length_chunked_and_until_close() -> None:
    responses = [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n",
        b"HTTP/1.1 503 Busy\r\nConnection: close\r\n\r\nbye",
    ]
    server, url, conns = await raw_server(responses)
    client = UpstreamClient()
    kw = {"connect_timeout": 2, "read_timeout": 5}
    assert await client.request(url, "/x", {"A": "1"}, b"{}", **kw) == (200, {"content-type": "application/json",
                                                                              "content-length": "7"}, b'{"a":1}')
    status, _, body = await client.request(url, "/x", {}, b"{}", **kw)
    assert (status, body) == (201, b"abcdefg")
    status, _, body = await client.request(url, "/x", {}, b"{}", **kw)
    assert (status, body) == (503, b"bye")
    assert len(conns) == 1  # one keep-alive connection served all three
    client.close()
    server.close()


async def test_stale_pooled_connection_is_replaced_and_errors_are_typed() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    server, url, conns = await raw_server([ok, ok], close_after=True)
    client = UpstreamClient()
    kw = {"connect_timeout": 2, "read_timeout": 5}
    assert (await client.request(url, "/x", {}, b"", **kw))[2] == b"ok"
    await asyncio.sleep(0.05)  # the server closed that connection after answering
    assert (await client.request(url, "/x", {}, b"", **kw))[2] == b"ok"
    assert len(conns) == 2
    server.close()
    with pytest.raises(UpstreamConnectError):
        await client.request(f"http://127.0.0.1:{free_port()}", "/x", {}, b"", **kw)
    # A server that accepts and then drops the connection mid-response.
    truncated, url2, _ = await raw_server([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"],
                                          close_after=True)
    with pytest.raises(UpstreamDisconnected):
        await client.request(url2, "/x", {}, b"", **kw)
    truncated.close()
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(2)
        writer.close()

    silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    url3 = f"http://127.0.0.1:{silent.sockets[0].getsockname()[1]}"
    with pytest.raises(TimeoutError):
        await client.request(url3, "/x", {}, b"", connect_timeout=2, read_timeout=0.2)
    silent.close()
    client.close()
