"""The CLI stays light (the gateway process must not load torch) and servers freeze their start-up objects."""

from __future__ import annotations

import gc
import subprocess
import sys

from foresight.gc_tuning import freeze_startup_objects

HEAVY = ("torch", "transformers", "matplotlib", "sklearn", "scipy", "pandas")


def test_building_the_cli_imports_no_heavy_library() -> None:
    # `foresight gateway` builds the whole parser, which imports every bench module: one that imported torch at
    # module level made each gateway carry torch, and its full GC passes took ~100 ms.
    code = ("import sys; from foresight.cli import build_parser; build_parser(); "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == ""


def test_freeze_moves_live_objects_out_of_collections() -> None:
    try:
        kept = [[i] for i in range(1000)]
        frozen = freeze_startup_objects()
        assert frozen >= 1000
        collectable = {id(o) for o in gc.get_objects(generation=2)}
        assert not any(id(x) in collectable for x in kept)
    finally:
        gc.unfreeze()
