"""The gateway's learned estimator adapts online and keeps what it learned in the gateway's Redis."""

from __future__ import annotations

import redis

from gateway.estimator import load_estimator
from gateway.predictor_adapter import PredictorEstimator


def test_default_predictor_learns_online_and_persists_to_redis(redis_url: str) -> None:
    body = {"model": "never-seen-model", "messages": [{"role": "user", "content": "Write a long essay on rivers."}]}
    est = load_estimator("default", redis_url, "fs-test:")
    assert isinstance(est, PredictorEstimator)
    before = est.estimate("never-seen-model", body, "rivers", 8).p50
    for _ in range(200):
        est.observe("never-seen-model", body, "rivers", 8, 3000)
    est.close()  # flushes the background learner and persists the observations
    keys = [k.decode() for k in redis.Redis.from_url(redis_url).keys("fs-test:*")]
    assert any("never-seen-model" in k for k in keys), keys

    # A restarted gateway (a new estimator on the same Redis) starts from what was learned.
    again = load_estimator("default", redis_url, "fs-test:")
    try:
        after = again.estimate("never-seen-model", body, "rivers", 8).p50
    finally:
        again.close()
    assert after > before * 1.5, (before, after)


def test_completions_cut_by_max_tokens_are_not_learned(redis_url: str) -> None:
    body = {"model": "capped-model", "max_tokens": 20, "messages": [{"role": "user", "content": "Tell me a story."}]}
    est = load_estimator("default", redis_url, "fs-cap:")
    assert isinstance(est, PredictorEstimator)
    uncapped = {**body, "max_tokens": None}
    before = est.estimate("capped-model", uncapped, "story", 6).p50
    for _ in range(200):
        est.observe("capped-model", body, "story", 6, 20)  # every one hit the cap of 20 tokens
    est.close()
    again = load_estimator("default", redis_url, "fs-cap:")
    try:
        after = again.estimate("capped-model", uncapped, "story", 6).p50
    finally:
        again.close()
    assert after == before, (before, after)
