from __future__ import annotations

import threading

from predictor import OnlinePredictor, Predictor, load, make_request, open_store

ESSAY = make_request(model="new-model", messages=[{"role": "user", "content": "Write a detailed essay about owls."}])


def _fresh(predictor: Predictor, tmp_path) -> Predictor:
    return load(predictor.save(tmp_path / "base.json.gz"))  # each test mutates its own copy's statistics


def test_observe_moves_predictions_toward_truth(small_predictor, tmp_path):
    online = OnlinePredictor(_fresh(small_predictor, tmp_path))
    try:
        before = online.predict_request(ESSAY).p50
        for _ in range(200):
            online.observe(ESSAY, 4000)
        assert online.flush()
        after_long = online.predict_request(ESSAY).p50
        assert after_long > 2 * before
        known_before = online.predict_request(make_request(model="short-model", prompt="Explain briefly tea.")).p50
        for _ in range(400):
            online.observe("short-model", 2)
        online.observe("short-model", 10_000, finished=False)  # cut by max_tokens: ignored
        assert online.flush()
        known_after = online.predict_request(make_request(model="short-model", prompt="Explain briefly tea.")).p50
        assert known_after < known_before
        assert online.observed == 600
    finally:
        online.close()


def test_observe_never_blocks_while_the_learner_is_busy(small_predictor, tmp_path):
    online = OnlinePredictor(_fresh(small_predictor, tmp_path))
    gate = threading.Event()
    original = online._absorb

    def slow_absorb(*args, **kwargs):
        gate.wait(10)
        return original(*args, **kwargs)

    online._absorb = slow_absorb  # the background thread is stuck until the gate opens
    try:
        for _ in range(1000):
            online.observe(ESSAY, 100)  # returns at once: the queue is unbounded
        assert online.predict_request(ESSAY).p50 > 0  # predictions keep being served with the old table
    finally:
        gate.set()
        assert online.flush()
        online.close()


def _learn_then_restart(base: Predictor, store_factory, tmp_path) -> tuple[int, int, int]:
    fresh = _fresh(base, tmp_path)
    before = fresh.predict_request(ESSAY).p50
    online = OnlinePredictor(fresh, store_factory())
    for _ in range(300):
        online.observe(ESSAY, 3000)
    assert online.flush()
    learned = online.predict_request(ESSAY).p50
    online.close()
    restarted = OnlinePredictor(_fresh(base, tmp_path), store_factory())  # a new process would do the same
    try:
        return before, learned, restarted.predict_request(ESSAY).p50
    finally:
        restarted.close()


def test_restart_keeps_what_was_learned_file(small_predictor, tmp_path):
    path = tmp_path / "online.json"
    before, learned, after = _learn_then_restart(small_predictor, lambda: open_store(path=str(path)), tmp_path)
    assert learned > 2 * before and after == learned


def test_restart_keeps_what_was_learned_redis(small_predictor, tmp_path, redis_url):
    before, learned, after = _learn_then_restart(
        small_predictor, lambda: open_store(redis_url=redis_url, prefix="t:"), tmp_path)
    assert learned > 2 * before and after == learned
    import redis

    assert redis.Redis.from_url(redis_url).llen("t:predictor:obs:new-model") == 300


def test_corrupt_store_file_starts_empty(small_predictor, tmp_path):
    path = tmp_path / "online.json"
    path.write_text("{broken")
    online = OnlinePredictor(_fresh(small_predictor, tmp_path), open_store(path=str(path)))
    try:
        assert online.predict_request(ESSAY) == small_predictor.predict_request(ESSAY)
        online.observe(ESSAY, 50)
        assert online.flush()
    finally:
        online.close()
    assert "new-model" in path.read_text()


def test_gateway_style_calls(small_predictor, tmp_path):
    """The gateway's estimator adapter calls ``predict(model=..., messages=...)`` and
    ``observe(model=..., body=..., output_tokens=...)``; both work on an online predictor."""
    from predictor import load_online

    path = small_predictor.save(tmp_path / "a.json.gz")
    online = load_online(path, store_path=str(tmp_path / "obs.json"))
    body = {"messages": [{"role": "user", "content": "Write a detailed essay about owls."}], "max_tokens": 5000}
    try:
        before = online.predict(model="new-model", messages=body["messages"], max_tokens=5000).p50
        for _ in range(200):
            online.observe(model="new-model", body=body, output_tokens=4000)
        assert online.flush()
        assert online.predict(model="new-model", messages=body["messages"], max_tokens=5000).p50 > 2 * before
    finally:
        online.close()
