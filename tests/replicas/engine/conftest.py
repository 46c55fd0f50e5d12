"""An in-process engine over the simulated runner and the tiny model's real tokenizer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from replicas.config import ReplicaConfig
from replicas.engine.engine import Engine
from replicas.engine.tokenizer import ReplicaTokenizer, load_tokenizer
from replicas.runners.cost_model import profile
from replicas.runners.sim import SimRunner


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path) -> ReplicaTokenizer:
    return load_tokenizer(tiny_model_dir)


@pytest.fixture
async def make_engine(tiny_tokenizer: ReplicaTokenizer) -> AsyncIterator[Callable[..., Engine]]:
    engines: list[Engine] = []

    def make(kv_blocks: int = 256, profile_name: str = "h200-llama8b", runner: Any = None, **cfg: Any) -> Engine:
        config = ReplicaConfig(kv_blocks=kv_blocks, **cfg)
        run = runner or SimRunner(profile(profile_name), tiny_tokenizer, kv_blocks=kv_blocks, output_mean=12)
        engine = Engine(config, run, tiny_tokenizer)
        engines.append(engine)
        return engine

    yield make
    for e in engines:
        await e.stop()
