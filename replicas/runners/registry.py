"""From the `--runner` name to the runner class, as lazy ``"module:Class"`` strings.

Importing this module imports no runner (so no torch); ``load_runner_class`` imports only the chosen one.
Every runner class has ``from_config(cls, cfg: ReplicaConfig) -> ModelRunner``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from replicas.config import ReplicaConfig
    from replicas.runners.base import ModelRunner

RUNNERS: dict[str, str] = {
    "sim": "replicas.runners.sim:SimRunner",
    "torch": "replicas.runners.torch_runner:TorchRunner",
}


def load_runner_class(name: str) -> type[ModelRunner]:
    if name not in RUNNERS:
        raise ValueError(f"unknown runner {name!r}: choose one of {sorted(RUNNERS)}")
    module, _, cls = RUNNERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def create_runner(cfg: ReplicaConfig) -> ModelRunner:
    """Build the runner that ``cfg.runner`` names."""
    return load_runner_class(cfg.runner).from_config(cfg)  # type: ignore[attr-defined]
