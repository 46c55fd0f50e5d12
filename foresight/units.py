"""Sizes given on the command line: ``byte_size`` is an argparse ``type`` for flags in bytes."""

from __future__ import annotations

import argparse
import math

_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "KI": 2**10, "MI": 2**20, "GI": 2**30,
          "TI": 2**40}


def byte_size(text: str) -> int:
    """``"4096"``, ``"512M"``, ``"200G"``, ``"1.5Ti"`` (decimal units; ``i`` for binary; an optional ``B``)."""
    t = text.strip().upper().removesuffix("B")
    digits = t.rstrip("KMGTI")
    unit = t[len(digits):]
    try:
        value = float(digits) * _UNITS[unit]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r} (e.g. 4096, 512M, 200G)") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"a size must be finite and not negative: {text!r}")
    return int(value)
