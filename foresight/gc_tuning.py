"""Keep the cyclic garbage collector's full passes short in long-running servers.

A full (generation 2) collection visits every tracked object. Start-up leaves hundreds of thousands of them that
live as long as the process (modules, a loaded model, tokenizers): in the gateway a full pass took ~100 ms every
second under load, all of it request latency. ``freeze_startup_objects`` moves what exists once serving starts to
the permanent generation, which collections skip; objects created while serving are collected as before.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> int:
    """Collect once, then freeze every surviving object; returns how many were frozen. Call it when start-up is
    done (app built, model loaded), before taking traffic."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
