"""Where benchmark results go, and how they are written: JSON always, PNG where a person would rather look."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import orjson

REPO_ROOT = Path(__file__).resolve().parents[1]


def results_dir() -> Path:
    """``bench/results`` of the checkout (``FORESIGHT_RESULTS_DIR`` overrides)."""
    path = Path(os.environ.get("FORESIGHT_RESULTS_DIR") or REPO_ROOT / "bench" / "results")
    path.mkdir(parents=True, exist_ok=True)
    return path


def output_path(given: str | os.PathLike[str] | None, name: str) -> Path:
    """Where a benchmark writes its JSON: the path the user gave, else ``results_dir()/NAME.json``. Plots go
    beside it (``with_suffix``), so a ``--json`` elsewhere keeps a run's files together."""
    return Path(given) if given else results_dir() / f"{name}.json"


def relative(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the checkout when it lies inside it, else under ``~`` when it lies in the home folder
    (results must not record the machine's layout)."""
    p = Path(path).resolve()
    if p.is_relative_to(REPO_ROOT):
        return str(p.relative_to(REPO_ROOT))
    home = Path.home().resolve()
    return "~/" + str(p.relative_to(home)) if p.is_relative_to(home) else str(path)


def shared_data_dir() -> Path:
    """The shared benchmark data beside the checkout (``FORESIGHT_DATA_DIR`` overrides)."""
    path = Path(os.environ.get("FORESIGHT_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")
    if not path.is_dir():
        raise FileNotFoundError(f"shared data not found at {path}; set FORESIGHT_DATA_DIR")
    return path


def environment() -> dict[str, Any]:
    """What a reader needs to judge a number: when, where, and how loaded the machine was."""
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host_cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
    }


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps({**data, "environment": environment()}, option=orjson.OPT_INDENT_2
                                 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS))
    return out
