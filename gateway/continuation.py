"""Mid-stream continuation: a stream whose replica failed after its first byte goes on from another replica.

Contract (the seam is ``Proxy.stream_failed``):
- The client sees one uninterrupted stream: the same ``id``, ``created`` and ``model`` in every chunk, no second
  assistant-role chunk, the text continuing where it stopped, then the usage chunk (when the client asked for one)
  and ``data: [DONE]``.
- How: the request is re-sent to another replica with the text generated so far appended (chat: a final partial
  assistant message with ``continue_final_message: true, add_generation_prompt: false``, the vLLM extension our
  replicas also honour; completions: ``prompt + text``), and ``max_tokens`` (and a simulated replica's
  ``X-Sim-Output-Tokens``) reduced by the tokens already produced.
- Token counts are measured, not estimated: two 1-token probes on the new replica, sent in parallel, give the
  prompt tokens of the original request and of the continuation; their difference is the tokens already produced
  (at least the number of text chunks relayed, since re-tokenising text may merge two generated tokens). They also
  warm the replica's prefix cache, so the continuation's own prefill is nearly free. Final usage: prompt tokens of
  the original request, completion tokens summed over the replicas.
- Bounded: at most ``max_continuations`` replicas are tried (each never one that already failed this stream); if all
  fail, or the stream cannot be continued (token-id or multi-prompt input, ``n`` > 1, an error event the replica
  itself sent, over 8 MiB relayed), ``resume`` returns False and the proxy ends the stream with the SSE error event
  and ``[DONE]`` (DESIGN.md 6).
- Accounting and policy hooks run once per continuation dispatch, like any dispatch (DESIGN.md 4).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import Counter

from gateway.accounting import Ticket
from gateway.routing.base import Outcome, RequestView
from gateway.stream_state import DONE, EventRecorder, StreamState, iter_events

if TYPE_CHECKING:
    from gateway.proxy import Proxy
    from gateway.registry import Replica

log = logging.getLogger(__name__)
SIM_HEADER = "X-Sim-Output-Tokens"


class _Failed(Exception):
    """This continuation attempt failed; another replica may be tried."""


def continuation_body(route: str, body: dict[str, Any], text: str, produced: int) -> dict[str, Any] | None:
    """The request that continues ``body`` after ``text`` (``produced`` tokens); None if it cannot be expressed."""
    out = dict(body)
    if text:
        if route == "chat":
            messages = list(body["messages"])
            last = messages[-1] if messages else None
            if body.get("continue_final_message") and isinstance(last, dict) and last.get("role") == "assistant" \
                    and isinstance(last.get("content"), str):
                messages[-1] = {**last, "content": last["content"] + text}
            else:
                messages.append({"role": "assistant", "content": text})
            out.update(messages=messages, continue_final_message=True, add_generation_prompt=False)
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = prompt[0]
            if not isinstance(prompt, str):
                return None  # token ids: the text so far has no token ids here
            out["prompt"] = prompt + text
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(key), int):
            out[key] = body[key] - produced
    return out


def continuable(route: str, body: dict[str, Any]) -> bool:
    if body.get("n") not in (None, 1) or body.get("echo"):
        return False
    if route == "completions":
        prompt = body.get("prompt")
        return isinstance(prompt, str) or (isinstance(prompt, list) and len(prompt) == 1
                                           and isinstance(prompt[0], str))
    return True


class Continuation:
    def __init__(self, proxy: Proxy, max_continuations: int = 2) -> None:
        self.proxy = proxy
        self.max_continuations = max_continuations
        self.counter = Counter("foresight_gateway_stream_continuations_total",
                               "Broken streams and how they ended: continued elsewhere, or failed",
                               ["outcome"], registry=proxy.metrics.registry)

    async def resume(self, request: web.Request, rv: RequestView, failed: Replica, resp: web.StreamResponse,
                     recorder: EventRecorder) -> bool:
        """Finish the client's stream from other replicas; False when it could not (nothing more was written)."""
        body = dict(rv.body)
        state = StreamState.from_bytes(recorder.recorded())
        if self.max_continuations <= 0 or recorder.overflow or state.errored or not continuable(rv.route, body):
            self.counter.labels("not_continuable").inc()
            return False
        tried = {failed.id}
        for _ in range(self.max_continuations):
            replica = self._pick(rv, tried)
            if replica is None:
                break
            tried.add(replica.id)
            try:
                await self._attempt(request, rv, body, replica, resp, state)
            except _Failed as e:
                log.warning("request %s: continuation on %s failed (%s)", rv.request_id, replica.id, e)
                continue
            self.counter.labels("continued").inc()
            log.info("request %s: stream continued on %s after %s failed", rv.request_id, replica.id, failed.id)
            return True
        self.counter.labels("failed").inc()
        return False

    def _pick(self, rv: RequestView, tried: set[str]) -> Replica | None:
        candidates = [r for r in self.proxy.candidates(rv.model) if r.id not in tried]
        if not candidates:
            return None
        for rid in self.proxy.policy.rank(rv, candidates).ranked:
            replica = self.proxy.registry.get(rid)
            if replica is not None and replica.breaker.acquire():
                return replica
        return None

    # -- one attempt
    def _headers(self, request: web.Request, forced: int | None) -> dict[str, str]:
        headers = self.proxy._headers(request)
        headers.pop(SIM_HEADER, None)
        if forced is not None:
            headers[SIM_HEADER] = str(forced)
        return headers

    async def _prompt_tokens(self, replica: Replica, route: str, body: dict[str, Any],
                             headers: dict[str, str]) -> int:
        from gateway.proxy import PATHS

        probe = {k: v for k, v in body.items() if k not in ("stream", "stream_options", "max_completion_tokens")}
        probe.update(max_tokens=1, stream=False)
        try:
            async with self.proxy.session.post(replica.url + PATHS[route], data=orjson.dumps(probe),
                                               headers=headers, timeout=self.proxy.timeout) as up:
                data = await up.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise _Failed(f"probe: {type(e).__name__}: {e}") from e
        try:
            tokens = orjson.loads(data)["usage"]["prompt_tokens"] if up.status == 200 else None
        except (orjson.JSONDecodeError, KeyError, TypeError):
            tokens = None
        if not isinstance(tokens, int):
            raise _Failed(f"probe answered {up.status} without usage")
        return tokens

    async def _attempt(self, request: web.Request, rv: RequestView, body: dict[str, Any], replica: Replica,
                       resp: web.StreamResponse, state: StreamState) -> None:

        probe_headers = self._headers(request, None)
        forced_raw = request.headers.get(SIM_HEADER)
        forced = int(forced_raw) if forced_raw and forced_raw.isdigit() else None
        cont = continuation_body(rv.route, body, state.text, 0)
        if cont is None:
            raise _Failed("request cannot be continued")
        if state.text:
            orig_pt, cont_pt = await asyncio.gather(self._prompt_tokens(replica, rv.route, body, probe_headers),
                                                    self._prompt_tokens(replica, rv.route, cont, probe_headers))
            # Re-tokenising the text can merge tokens at the boundary; every text chunk was at least one token.
            produced = max(cont_pt - orig_pt, state.text_chunks)
        else:
            orig_pt, produced = None, 0
        usage_base = (orig_pt, produced)
        limit = next((body[k] for k in ("max_tokens", "max_completion_tokens") if isinstance(body.get(k), int)),
                     None)
        left = [n - produced for n in (limit, forced) if n is not None]
        if state.finish_reason is not None or (left and min(left) <= 0):
            await self._finish(resp, rv, body, state, usage_base, "length" if state.finish_reason is None else None)
            replica.breaker.record_success()
            return
        cont = continuation_body(rv.route, body, state.text, produced)
        assert cont is not None
        headers = self._headers(request, forced - produced if forced is not None else None)
        await self._relay(rv, cont, headers, replica, resp, state, usage_base)

    async def _relay(self, rv: RequestView, cont: dict[str, Any], headers: dict[str, str], replica: Replica,
                     resp: web.StreamResponse, state: StreamState, usage_base: tuple[int | None, int]) -> None:
        from gateway.proxy import PATHS

        proxy = self.proxy
        ticket = Ticket(replica.local, rv.prompt_tokens + len(state.text) / 4,
                        max(0.0, rv.output_p50 - usage_base[1]), proxy.on_slot_free)
        proxy.policy.on_dispatch(rv, replica.id)
        outcome = Outcome(ok=False)
        up: aiohttp.ClientResponse | None = None
        done = False
        try:
            try:
                up = await proxy.session.post(replica.url + PATHS[rv.route], data=orjson.dumps(cont),
                                              headers=headers, timeout=proxy.timeout)
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                replica.breaker.record_failure()
                raise _Failed(f"{type(e).__name__}: {e}") from e
            if up.status != 200:
                replica.breaker.record_failure()
                outcome.status = up.status
                raise _Failed(f"continuation answered {up.status}")
            recorder = EventRecorder()
            while not done:
                try:
                    chunk = await up.content.readany()
                except (aiohttp.ClientError, TimeoutError, OSError) as e:  # the upstream, never the client
                    replica.breaker.record_failure()
                    raise _Failed(f"{type(e).__name__}: {e}") from e
                if not chunk:
                    break
                if not outcome.first_token:
                    outcome.first_token = True
                    ticket.first_token()
                    proxy.policy.on_first_token(rv, replica.id)
                out, done = self._rewrite(recorder.feed(chunk), state, usage_base, outcome)
                if out:
                    await resp.write(out)  # a client that went away raises here, to the proxy's handler
            if not done:
                replica.breaker.record_failure()
                raise _Failed("continuation stream ended without [DONE]")
            replica.breaker.record_success()
            outcome.ok, outcome.status = not state.errored, 200
        finally:
            if up is not None:
                up.release() if done else up.close()
            ticket.release()
            proxy.policy.on_complete(rv, replica.id, outcome)

    def _rewrite(self, data: bytes, state: StreamState, usage_base: tuple[int | None, int],
                 outcome: Outcome) -> tuple[bytes, bool]:
        """This replica's complete events restamped as the client's stream; True once ``[DONE]`` passed."""
        out: list[bytes] = []
        for payload in iter_events(data):
            if payload.strip() == DONE:
                out.append(b"data: [DONE]\n\n")
                return b"".join(out), True
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(obj, dict):
                continue
            if "choices" in obj and state.role_sent and _only_role(obj):
                continue  # the client already has its assistant-role chunk
            state.restamp(obj)
            usage = obj.get("usage")
            if isinstance(usage, dict):
                obj["usage"] = self._usage(usage, usage_base, outcome)
            state.observe(obj)
            out.append(b"data: " + orjson.dumps(obj) + b"\n\n")
        return b"".join(out), False

    def _usage(self, upstream: dict[str, Any], base: tuple[int | None, int], outcome: Outcome) -> dict[str, int]:
        orig_pt, produced = base
        pt = orig_pt if orig_pt is not None else int(upstream.get("prompt_tokens") or 0)
        ct = produced + int(upstream.get("completion_tokens") or 0)
        outcome.prompt_tokens, outcome.output_tokens = pt, ct
        return {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}

    async def _finish(self, resp: web.StreamResponse, rv: RequestView, body: dict[str, Any], state: StreamState,
                      usage_base: tuple[int | None, int], reason: str | None) -> None:
        """The stream had already produced everything it may: close it properly."""
        base = {"id": state.id, "object": state.object, "created": state.created, "model": state.model}
        out = []
        if reason is not None:
            choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": reason}
            choice.update({"delta": {}} if rv.route == "chat" else {"text": ""})
            out.append({**base, "choices": [choice]})
        opts = body.get("stream_options")
        if isinstance(opts, dict) and opts.get("include_usage") and not state.usage_sent:
            pt, produced = usage_base
            pt = pt or 0
            out.append({**base, "choices": [], "usage": {"prompt_tokens": pt, "completion_tokens": produced,
                                                         "total_tokens": pt + produced}})
        await resp.write(b"".join(b"data: " + orjson.dumps(o) + b"\n\n" for o in out) + b"data: [DONE]\n\n")


def _only_role(obj: dict[str, Any]) -> bool:
    for choice in obj.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict) or delta.get("content") or delta.get("tool_calls") \
                or choice.get("finish_reason") or "role" not in delta:
            return False
    return bool(obj.get("choices"))
