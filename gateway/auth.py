"""API keys and the admin token. Keys are kept only as SHA-256 digests; a raw key never reaches a log or a metric.

Keys file (``--api-keys FILE``), one key per line, ``#`` comments::

    sk-live-abc123 name=alice rate=5 burst=10
    sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 name=bob

A line gives the key itself (hashed on load) or ``sha256:<hex>`` so the file need not hold secrets; ``rate``
(requests per second) and ``burst`` set the key's token bucket (default: unlimited). With ``--redis``, keys are also
read from the hash ``{prefix}apikeys`` (field: hex digest, value: JSON ``{"name", "rate", "burst"}``), refreshed in
the background. Auth is on when at least one key is configured (file or Redis).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

import orjson

from foresight.errors import APIError


@dataclass(frozen=True, slots=True)
class KeyInfo:
    digest: str
    name: str
    rate: float | None = None  # requests per second; None: unlimited
    burst: float | None = None


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_keys_file(path: str | Path) -> dict[str, KeyInfo]:
    out: dict[str, KeyInfo] = {}
    for lineno, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        token, *attrs = line.split()
        opts = {}
        for a in attrs:
            k, sep, v = a.partition("=")
            if not sep:
                raise ValueError(f"{path}:{lineno}: expected key=value, got {a!r}")
            opts[k] = v
        d = token[7:].lower() if token.startswith("sha256:") else digest(token)
        if len(d) != 64:
            raise ValueError(f"{path}:{lineno}: sha256 digest must be 64 hex characters")
        out[d] = KeyInfo(d, opts.get("name", f"key{lineno}"), _num(opts.get("rate")), _num(opts.get("burst")))
    return out


def _num(v: object) -> float | None:
    return None if v in (None, "") else float(v)  # type: ignore[arg-type]


def parse_store_keys(raw: dict[str, bytes]) -> dict[str, KeyInfo]:
    out = {}
    for d, value in raw.items():
        try:
            meta = orjson.loads(value) if value else {}
            out[d.lower()] = KeyInfo(d.lower(), str(meta.get("name", d[:8])), _num(meta.get("rate")),
                                     _num(meta.get("burst")))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            continue
    return out


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class Auth:
    def __init__(self, file_keys: dict[str, KeyInfo] | None = None, admin_token: str | None = None) -> None:
        self.file_keys = file_keys or {}
        self.store_keys: dict[str, KeyInfo] = {}
        self._admin_digest = digest(admin_token) if admin_token else None

    @property
    def enabled(self) -> bool:
        return bool(self.file_keys or self.store_keys)

    def check(self, authorization: str | None, api_key_header: str | None = None) -> KeyInfo | None:
        """The caller's key (None when auth is off); 401 for a missing or unknown key."""
        if not self.enabled:
            return None
        token = bearer(authorization) or api_key_header
        if not token:
            raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
        d = digest(token)
        info = self.file_keys.get(d) or self.store_keys.get(d)
        if info is None:
            raise APIError(401, "invalid API key", code="invalid_api_key")
        return info

    def check_admin(self, authorization: str | None) -> None:
        if self._admin_digest is None:
            raise APIError(403, "the admin API is disabled: start the gateway with --admin-token",
                           code="admin_disabled")
        token = bearer(authorization)
        if not token:
            raise APIError(401, "missing admin token", code="missing_admin_token")
        if not hmac.compare_digest(digest(token), self._admin_digest):
            raise APIError(403, "invalid admin token", code="invalid_admin_token")
