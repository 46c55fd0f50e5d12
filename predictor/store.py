"""Where the online learner keeps what it observed, so a restart (or another gateway) starts from it.

A store holds, per served model, a bounded window of the most recent true output lengths (tokens). Contract:
``push`` appends and trims to ``window``; ``load`` returns every model's window (oldest first). Both are called
only from the learner's background thread, never on the request path.

- ``FileStore``: one JSON file, replaced atomically (write a temp file, then rename).
- ``RedisStore``: one Redis list per model (``{prefix}predictor:obs:{model}``), so several gateways pool what they
  observe: each pushes its own observations and reads back everyone's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import orjson


class Store(Protocol):
    def push(self, observations: dict[str, list[int]], window: int) -> None: ...

    def load(self) -> dict[str, list[int]]: ...

    def close(self) -> None: ...


class FileStore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._data = self._read()

    def _read(self) -> dict[str, list[int]]:
        try:
            data = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except orjson.JSONDecodeError:
            # A corrupt file must not stop the gateway: start empty and overwrite it on the next save.
            return {}
        return {str(m): [int(v) for v in vals] for m, vals in data.get("observations", {}).items()}

    def push(self, observations: dict[str, list[int]], window: int) -> None:
        for model, values in observations.items():
            self._data[model] = (self._data.get(model, []) + values)[-window:]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(orjson.dumps({"version": 1, "observations": self._data}))
        tmp.replace(self.path)

    def load(self) -> dict[str, list[int]]:
        return {m: list(v) for m, v in self._data.items()}

    def close(self) -> None:
        return None


class RedisStore:
    def __init__(self, url: str, prefix: str = "foresight:") -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.prefix = f"{prefix}predictor:obs:"

    def push(self, observations: dict[str, list[int]], window: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        for model, values in observations.items():
            key = self.prefix + model
            pipe.rpush(key, *values)
            pipe.ltrim(key, -window, -1)
        pipe.execute()

    def load(self) -> dict[str, list[int]]:
        keys = sorted(self.client.scan_iter(match=self.prefix + "*", count=500))
        if not keys:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.lrange(key, 0, -1)
        out: dict[str, list[int]] = {}
        for key, values in zip(keys, pipe.execute(), strict=True):
            out[key.decode()[len(self.prefix):]] = [int(v) for v in values]
        return out

    def close(self) -> None:
        self.client.close()


def open_store(path: str | None = None, redis_url: str | None = None, prefix: str = "foresight:") -> Store | None:
    """Redis when a URL is given (shared between gateways), else a file when a path is given, else nothing."""
    if redis_url:
        return RedisStore(redis_url, prefix)
    if path:
        return FileStore(path)
    return None
