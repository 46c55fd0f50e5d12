"""`foresight bench NAME`: every module ``bench/<name>.py`` that defines ``register(subparsers)`` is a benchmark.

Registration must stay cheap (no heavy imports at module level); the benchmark's own function does the work.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil

import bench
from foresight.cli import add_group


def register(subparsers: argparse._SubParsersAction) -> None:
    group = add_group(subparsers, "bench", "Benchmarks; each writes JSON (and PNG) under bench/results/.")
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda m: m.name):
        if info.name in ("cli",) or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"bench.{info.name}")
        if hasattr(module, "register"):
            module.register(group)
