"""The replica's HTTP server (aiohttp on uvloop): the OpenAI API over the local engine, plus state endpoints.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (stream and non-stream), ``GET /v1/models``,
``/health``, ``/metrics`` (Prometheus text), ``/load`` (DESIGN.md section 3), ``/kv/blocks`` (section 2 snapshot).
Errors are OpenAI-style JSON (DESIGN.md section 6); a stream failing after its first byte ends with an SSE
error event and ``[DONE]``. A client that disconnects cancels its handler (``handler_cancellation``), which
aborts its request and frees its blocks. Responses carry ``X-Foresight-Replica`` and ``X-Request-Id``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from foresight import tracing_web
from foresight.errors import APIError, http_response, sse_error_event
from replicas.engine.engine import Engine, RequestOutput
from replicas.load_report import LoadPublisher
from replicas.metrics import ReplicaMetrics
from replicas.protocol import (
    PRIORITY_HEADER,
    SIM_OUTPUT_HEADER,
    ParsedRequest,
    parse_chat,
    parse_completion,
    parse_forced_tokens,
    parse_priority,
)

log = logging.getLogger(__name__)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


class ReplicaServer:
    def __init__(self, engine: Engine, tokenizer: Any, load_publisher: LoadPublisher | None = None) -> None:
        self.engine = engine
        self.cfg = engine.cfg
        self.tokenizer = tokenizer
        self.metrics = ReplicaMetrics(engine)
        self.load_publisher = load_publisher
        self.model_names = {self.cfg.model_name, self.cfg.model}
        self.started = int(time.time())
        app = web.Application(client_max_size=self.cfg.max_body_bytes, middlewares=[self._errors])
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/load", self.load)
        app.router.add_get("/kv/blocks", self.kv_blocks)
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        # Tracing (OTEL_* env): a span per API request plus the engine's queue/prefill/decode phases; off = no-op.
        tracing_web.install(app, "foresight-replica", self.cfg.replica_id)
        tracing_web.watch_engine(engine)
        self.app = app

    async def _startup(self, _app: web.Application) -> None:
        await self.engine.start()
        if self.load_publisher is not None:
            await self.load_publisher.start()

    async def _cleanup(self, _app: web.Application) -> None:
        if self.load_publisher is not None:
            await self.load_publisher.stop()
        await self.engine.stop()

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except APIError as err:
            if request.path.startswith("/v1/"):
                self.metrics.rejected.labels(str(err.status)).inc()
            return http_response(err)
        except web.HTTPRequestEntityTooLarge as exc:
            return http_response(APIError(413, f"request body too large: {exc.text}"))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return http_response(APIError(exc.status, f"{exc.reason}: {request.method} {request.path}"))
        except (ConnectionResetError, OSError) as exc:  # the client went away mid-response
            log.debug("client connection lost: %s", exc)
            raise
        except Exception as exc:
            log.exception("unhandled error on %s", request.path)
            return http_response(APIError(500, f"internal error: {type(exc).__name__}"))

    # -- state endpoints ----------------------------------------------------------------------------------
    async def health(self, _request: web.Request) -> web.Response:
        return _json({"status": "ok", "replica_id": self.cfg.replica_id, "model": self.cfg.model_name,
                      "block_size": self.cfg.block_size, "hash_seed": self.cfg.hash_seed,
                      **{f"runner_{k}" if k != "runner" else k: v for k, v in self.engine.runner.describe().items()}})

    async def models(self, _request: web.Request) -> web.Response:
        return _json({"object": "list", "data": [{
            "id": self.cfg.model_name, "object": "model", "created": self.started, "owned_by": "foresight",
            "max_model_len": self.engine.max_model_len, "root": self.cfg.model}]})

    async def load(self, _request: web.Request) -> web.Response:
        return _json(self.engine.load_report())

    async def kv_blocks(self, _request: web.Request) -> web.Response:
        return _json(self.engine.kv_snapshot())

    async def prometheus(self, _request: web.Request) -> web.Response:
        resp = web.Response(body=self.metrics.render())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    # -- generation ---------------------------------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise APIError(400, f"the request body is not valid JSON: {exc}") from None

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        arrival = time.monotonic()  # TTFT (and the sim's step start credit) count from here
        body = await self._body(request)
        forced = None
        if self.engine.runner.name == "sim":
            forced = parse_forced_tokens(request.headers.get(SIM_OUTPUT_HEADER))
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        parsed = (parse_chat if chat else parse_completion)(body, self.tokenizer, forced)
        priority = parse_priority(body, request.headers.get(PRIORITY_HEADER))
        if parsed.model not in self.model_names:
            raise APIError(404, f"the model {parsed.model!r} does not exist on this replica (serving "
                           f"{self.cfg.model_name!r})", param="model", code="model_not_found")
        if not parsed.max_tokens_given:
            parsed.sampling.max_tokens = max(1, self.engine.max_model_len - len(parsed.prompt_token_ids))
        rid = self.engine.add_request(parsed.prompt_token_ids, parsed.sampling, arrival_time=arrival,
                                      priority=priority)
        tracing_web.bind_engine_request(rid)
        headers = {"X-Request-Id": rid, "X-Foresight-Replica": self.cfg.replica_id}
        prefix = "chatcmpl-" if chat else "cmpl-"
        if parsed.stream:
            return await self._stream(request, rid, prefix + rid, parsed, chat, headers)
        texts: list[str] = []
        last: RequestOutput | None = None
        async with contextlib.aclosing(self.engine.stream(rid)) as outs:
            async for out in outs:
                texts.append(out.new_text)
                last = out
        assert last is not None
        if last.finish_reason == "error":
            raise APIError(500, last.error or "generation failed")
        text = "".join(texts)
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": last.finish_reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return _json({"id": prefix + rid, "object": "chat.completion" if chat else "text_completion",
                      "created": int(time.time()), "model": self.cfg.model_name, "choices": [choice],
                      "usage": _usage(last)}, headers=headers)

    async def _stream(self, request: web.Request, rid: str, cid: str, parsed: ParsedRequest, chat: bool,
                      headers: dict[str, str]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={**headers, "Cache-Control": "no-cache"})
        resp.content_type = "text/event-stream"
        await resp.prepare(request)
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        usage_null = {"usage": None} if parsed.include_usage else {}

        def chunk(text: str | None, finish: str | None, role: bool = False) -> bytes:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else (
                    {"content": text} if text else {})
                choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            data = {"id": cid, "object": obj, "created": created, "model": self.cfg.model_name,
                    "choices": [choice], **usage_null}
            return b"data: " + orjson.dumps(data) + b"\n\n"

        # The per-token chunk, pre-rendered around its text (the hot path of a stream).
        head, _, tail = chunk("\x00", None).partition(orjson.dumps("\x00"))

        def text_chunk(text: str) -> bytes:
            return head + orjson.dumps(text) + tail

        if chat:
            await resp.write(chunk(None, None, role=True))
        last: RequestOutput | None = None
        async with contextlib.aclosing(self.engine.stream_batches(rid)) as batches:
            async for outs in batches:
                last = outs[-1]
                if last.finish_reason == "error":
                    await resp.write(sse_error_event(APIError(500, last.error or "generation failed")))
                    return resp
                text = "".join(o.new_text for o in outs)
                if last.finished:
                    await resp.write(chunk(text, last.finish_reason))
                elif text:
                    await resp.write(text_chunk(text))
        if parsed.include_usage and last is not None:
            data = {"id": cid, "object": obj, "created": created, "model": self.cfg.model_name, "choices": [],
                    "usage": _usage(last)}
            await resp.write(b"data: " + orjson.dumps(data) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _usage(out: RequestOutput) -> dict[str, Any]:
    return {"prompt_tokens": out.num_prompt_tokens, "completion_tokens": out.num_output_tokens,
            "total_tokens": out.num_prompt_tokens + out.num_output_tokens,
            "prompt_tokens_details": {"cached_tokens": out.num_cached_tokens}}
