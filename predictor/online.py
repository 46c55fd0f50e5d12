"""Online adaptation: the gateway reports each completed request's true output length; a background thread folds
it into the per-model statistics and swaps a new table into the predictor.

Contract:
- ``observe`` is O(1) and never blocks (it puts onto an unbounded queue); safe to call from the event loop.
- The background thread batches observations, rebuilds the statistics of the models that changed, and swaps the
  new ``StatsTable`` in with one reference assignment, so a concurrent prediction sees the old or the new table,
  never a mix. ``flush`` waits until everything observed so far is in the table (tests and benchmarks use it).
- With a store (``predictor.store``), observations are persisted and re-read on start: a restart keeps what was
  learned; with Redis, gateways sharing the store also share what each observed.
- A model seen in training keeps its trained statistics as a prior worth ``trained_weight`` observations, so a
  handful of odd requests cannot swing it; a model never seen starts at the all-model prior and follows its own
  observations after a few dozen of them (``stats.PRIOR_WEIGHT``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from predictor.base import Prediction
from predictor.features import Features, Request
from predictor.model import Predictor
from predictor.stats import ModelStat
from predictor.store import RedisStore, Store

log = logging.getLogger(__name__)
_FLUSH = object()


class OnlinePredictor:
    def __init__(self, predictor: Predictor, store: Store | None = None, *, window: int = 2000,
                 trained_weight: float = 200.0, persist_interval_s: float = 1.0, start: bool = True) -> None:
        self.predictor = predictor
        self.store = store
        self.window = window
        self.trained_weight = trained_weight
        self.persist_interval_s = persist_interval_s
        self._base = predictor.stats  # the trained table, never modified
        self._windows: dict[str, deque[int]] = {}
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._unsaved: dict[str, list[int]] = {}
        self._last_persist = 0.0
        self._stop = threading.Event()
        self.observed = 0
        if store is not None:
            try:
                self._absorb(store.load(), replace=True)
            except Exception:  # a store that is down at start must not stop the gateway
                log.exception("could not load online observations; starting from the trained model")
        self._thread = threading.Thread(target=self._run, name="predictor-online", daemon=True)
        if start:
            self._thread.start()

    # --- request path ----------------------------------------------------------------------------------------------
    def predict(self, **kwargs: Any) -> Prediction:
        return self.predictor.predict(**kwargs)

    def predict_request(self, req: Request) -> Prediction:
        return self.predictor.predict_request(req)

    def predict_batch(self, requests: list[Request]) -> list[Prediction]:
        return self.predictor.predict_batch(requests)

    def predict_features_batch(self, features: list[Features]) -> list[Prediction]:
        return self.predictor.predict_features_batch(features)

    def observe(self, request: Request | Features | str | None = None, output_tokens: int | None = None, *,
                model: str | None = None, body: Mapping[str, Any] | None = None, finished: bool = True) -> None:
        """Record a completed request's true output length, O(1). The request is a ``Request``, ``Features``, or
        just its model name (``request`` or ``model=``; ``body`` is accepted for the gateway's estimator protocol
        and unused: the statistics learned online are per model). ``finished=False`` (cut by ``max_tokens``, an
        error, a disconnect) is ignored: that length is only a lower bound and would bias the model short."""
        if not finished or output_tokens is None or output_tokens < 0:
            return
        name = model if model is not None else request if isinstance(request, str) or request is None \
            else request.model
        if name is None:
            raise ValueError("observe needs a request or a model name")
        self._queue.put((str(name), int(output_tokens)))

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every observation made before this call is in the served statistics."""
        done = threading.Event()
        self._queue.put((_FLUSH, done))
        return done.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        self._queue.put((_FLUSH, threading.Event()))
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        self._persist()
        if self.store is not None:
            self.store.close()

    # --- background thread ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=self.persist_interval_s)
            except queue.Empty:
                self._sync()
                continue
            batch, waiters = [], []
            item = first
            while True:  # drain what is queued, so one swap covers a burst of completions
                if item[0] is _FLUSH:
                    waiters.append(item[1])
                else:
                    batch.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            try:
                if batch:
                    grouped: dict[str, list[int]] = {}
                    for model, tokens in batch:
                        grouped.setdefault(model, []).append(tokens)
                        self._unsaved.setdefault(model, []).append(tokens)
                    self._absorb(grouped, replace=False)
                    self.observed += len(batch)
                self._sync(force=bool(waiters))
            except Exception:
                log.exception("online predictor update failed")
            for waiter in waiters:
                waiter.set()

    def _sync(self, force: bool = False) -> None:
        """Persist local observations and, with a shared store, pick up what other gateways observed."""
        if self.store is None or (not force and time.monotonic() - self._last_persist < self.persist_interval_s):
            return
        self._last_persist = time.monotonic()
        self._persist()
        if isinstance(self.store, RedisStore):
            try:
                self._absorb(self.store.load(), replace=True)
            except Exception:
                log.exception("could not read shared online observations; will retry")

    def _persist(self) -> None:
        if self.store is None or not self._unsaved:
            return
        try:
            self.store.push(self._unsaved, self.window)
            self._unsaved = {}
        except Exception:
            log.exception("could not persist online observations; will retry")

    def _absorb(self, observations: dict[str, list[int]], replace: bool) -> None:
        updates: dict[str, ModelStat] = {}
        for model, values in observations.items():
            if not values:
                continue
            win = self._windows.get(model)
            if win is None or replace:
                win = self._windows[model] = deque(maxlen=self.window)
            win.extend(values)
            updates[model] = self._combine(model, np.log1p(np.asarray(win, np.float64)))
        if updates:
            self.predictor.stats = self.predictor.stats.with_models(updates)  # atomic swap of the reference

    def _combine(self, model: str, log_window: np.ndarray) -> ModelStat:
        seen = ModelStat.of(log_window)
        trained = self._base.models.get(model)
        if trained is None:
            return seen
        w0 = min(float(trained.count), self.trained_weight)
        n = float(seen.count)
        mean = (w0 * trained.mean + n * seen.mean) / (w0 + n)
        var = (w0 * (trained.std ** 2 + (trained.mean - mean) ** 2) + n * (seen.std ** 2 + (seen.mean - mean) ** 2))
        spread = (w0 * trained.spread + n * seen.spread) / (w0 + n)
        return ModelStat(int(trained.count + n), mean, float(np.sqrt(var / (w0 + n))), spread)

