"""A fast mock OpenAI backend (pure aiohttp): fixed answers, no model, so a benchmark measures the proxy alone.

Serves ``/v1/chat/completions`` and ``/v1/completions`` (streaming with ``stream_chunks`` content chunks and the
usage chunk when ``stream_options.include_usage`` is set, or one JSON answer), ``/v1/models``, ``/health`` and
``/load`` (a DESIGN.md section 3 report with its own request counts, so the gateway's probes and policies work
against it). Non-streaming answers are pre-serialised; a request costs one JSON parse.
Run one: ``python -m bench.mock_backend --port 9001 [--model mock] [--delay-ms 0]``.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time

import orjson
from aiohttp import web


class MockBackend:
    def __init__(self, model: str = "mock", replica_id: str = "mock", stream_chunks: int = 4,
                 delay_s: float = 0.0, completion_tokens: int = 8) -> None:
        self.model = model
        self.replica_id = replica_id
        self.stream_chunks = stream_chunks
        self.delay_s = delay_s
        self.completion_tokens = completion_tokens
        self.running = 0
        self.served = 0
        self.url = ""
        usage = {"prompt_tokens": 5, "completion_tokens": completion_tokens, "total_tokens": 5 + completion_tokens}
        self._chat = orjson.dumps({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello from the mock"},
                         "finish_reason": "stop"}], "usage": usage})
        self._text = orjson.dumps({
            "id": "cmpl-mock", "object": "text_completion", "created": 0, "model": model,
            "choices": [{"index": 0, "text": "hello from the mock", "finish_reason": "stop", "logprobs": None}],
            "usage": usage})
        self._usage = usage

    def _chunk(self, route: str, text: str | None, finish: str | None, usage: dict | None = None) -> bytes:
        if route == "chat":
            choices = [] if usage else [{"index": 0, "delta": {"content": text} if text else {"role": "assistant"},
                                         "finish_reason": finish}]
            obj = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": self.model,
                   "choices": choices}
        else:
            choices = [] if usage else [{"index": 0, "text": text or "", "finish_reason": finish}]
            obj = {"id": "cmpl-mock", "object": "text_completion", "created": 0, "model": self.model,
                   "choices": choices}
        if usage:
            obj["usage"] = usage
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    async def _complete(self, request: web.Request, route: str) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.running += 1
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if not body.get("stream"):
                return web.Response(body=self._chat if route == "chat" else self._text,
                                    content_type="application/json")
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            if route == "chat":
                await resp.write(self._chunk(route, None, None))
            for i in range(self.stream_chunks):
                last = i == self.stream_chunks - 1
                await resp.write(self._chunk(route, f"tok{i} ", "stop" if last else None))
            if (body.get("stream_options") or {}).get("include_usage"):
                await resp.write(self._chunk(route, None, None, self._usage))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        finally:
            self.running -= 1
            self.served += 1

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "chat")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "completions")

    async def models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model", "created": 0,
                                                              "owned_by": "mock"}]})

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def load(self, _request: web.Request) -> web.Response:
        return web.json_response({
            "replica_id": self.replica_id, "url": self.url, "model": self.model, "block_size": 16,
            "num_waiting": 0, "num_running": self.running, "waiting_prompt_tokens": 0, "running_tokens": 0,
            "kv_blocks_total": 1000, "kv_blocks_used": 0, "kv_blocks_cached": 0, "prefill_tokens_per_s": 0.0,
            "decode_step_ms": 0.0, "ts": time.time()})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/load", self.load)
        return app


def start_mock_backends(n: int, env: dict[str, str], delay_ms: float = 0.0
                        ) -> tuple[list[subprocess.Popen], list[str]]:
    """``n`` mock backend processes on free ports (not yet waited for): their processes and URLs."""
    from bench.procs import free_port

    procs, urls = [], []
    for _ in range(n):
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "bench.mock_backend", "--port", str(port),
                                       "--delay-ms", str(delay_ms)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        urls.append(f"http://127.0.0.1:{port}")
    return procs, urls


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="mock")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--stream-chunks", type=int, default=4)
    args = p.parse_args(argv)
    backend = MockBackend(args.model, f"mock-{args.port}", args.stream_chunks, args.delay_ms / 1000)
    backend.url = f"http://{args.host}:{args.port}"
    import uvloop

    web.run_app(backend.app(), host=args.host, port=args.port, access_log=None, print=None,
                loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
