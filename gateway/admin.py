"""``/admin/*``: the replica registry's admin API, behind the admin token (``--admin-token``).

- ``GET /admin/replicas``: every replica with its breaker, drain flag, in-flight accounting and load report.
- ``POST /admin/replicas`` ``{"url": ..., "id": optional, "models": optional [...]}``: add a replica.
- ``POST /admin/replicas/{id}/drain``: no new requests; ``?wait=SECONDS`` waits for in-flight ones to finish.
- ``POST /admin/replicas/{id}/undrain``: take requests again.
- ``DELETE /admin/replicas/{id}``: remove (in-flight requests finish; nothing new is sent).
``{id}`` may also be the replica's URL (URL-encoded) or its self-reported id.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from foresight.errors import APIError, http_response
from gateway.registry import Replica

if TYPE_CHECKING:
    from gateway.app import Gateway


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def add_admin_routes(app: web.Application, gw: Gateway) -> None:
    def guarded(handler):
        async def wrapper(request: web.Request) -> web.StreamResponse:
            try:
                gw.auth.check_admin(request.headers.get("Authorization"))
                return await handler(request)
            except APIError as e:
                return http_response(e)
        return wrapper

    def lookup(request: web.Request) -> Replica:
        key = request.match_info["rid"]
        replica = gw.registry.find(key)
        if replica is None:
            raise APIError(404, f"no replica {key!r}", param="id", code="replica_not_found")
        return replica

    async def list_replicas(_request: web.Request) -> web.Response:
        return _json({"policy": gw.policy_name, "gateway_id": gw.cfg.gateway_id, "store_ok": gw.sync.healthy,
                      "replicas": [r.describe() for r in gw.registry]})

    async def add_replica(request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise APIError(400, "body must be JSON", code="invalid_json") from None
        if not isinstance(body, dict) or not isinstance(body.get("url"), str):
            raise APIError(400, "body must be an object with a 'url' string", param="url")
        rid = body.get("id")
        models = body.get("models") or []
        if (rid is not None and not isinstance(rid, str)) or not isinstance(models, list) \
                or not all(isinstance(m, str) for m in models):
            raise APIError(400, "'id' must be a string and 'models' a list of strings")
        try:
            replica = gw.registry.add(body["url"], rid, models, source="admin")
        except ValueError as e:
            raise APIError(400, str(e), param="url") from None
        if gw.health is not None:
            await gw.health.probe(replica)
        return _json(replica.describe(), status=201)

    async def drain(request: web.Request) -> web.Response:
        replica = lookup(request)
        replica.view.draining = True
        try:
            wait = float(request.query.get("wait", "0"))
        except ValueError:
            raise APIError(400, "'wait' must be a number of seconds", param="wait") from None
        deadline = time.monotonic() + min(max(wait, 0.0), 600.0)
        while replica.local.requests and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return _json({**replica.describe(), "drained": replica.local.requests == 0})

    async def undrain(request: web.Request) -> web.Response:
        replica = lookup(request)
        replica.view.draining = False
        gw.admission.poke()
        return _json(replica.describe())

    async def remove(request: web.Request) -> web.Response:
        replica = lookup(request)
        gw.registry.remove(replica.id)
        if replica.source == "store":
            try:
                await gw.store.deregister_replica(replica.id)
            except Exception:  # noqa: BLE001 - best effort; the registration's TTL removes it anyway
                pass
        return _json({"removed": replica.id})

    app.router.add_get("/admin/replicas", guarded(list_replicas))
    app.router.add_post("/admin/replicas", guarded(add_replica))
    app.router.add_post("/admin/replicas/{rid}/drain", guarded(drain))
    app.router.add_post("/admin/replicas/{rid}/undrain", guarded(undrain))
    app.router.add_delete("/admin/replicas/{rid}", guarded(remove))

    async def unknown(request: web.Request) -> web.Response:
        raise APIError(404, f"unknown admin route {request.method} {request.path}", code="unknown_route")

    app.router.add_route("*", "/admin/{tail:.*}", guarded(unknown))
