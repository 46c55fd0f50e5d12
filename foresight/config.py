"""CLI flags that can also come from `FORESIGHT_*` environment variables and an optional YAML file.

Precedence, highest first: the command line, the environment, the YAML config file, the flag's default.
The environment variable of a flag is ``FORESIGHT_`` + its dest in upper case (``--max-num-seqs`` is
``FORESIGHT_MAX_NUM_SEQS``). A YAML file holds flat keys (``port: 8000``) that apply to every command,
and sections named after a command path (``gateway: {port: 9000}``, ``bench.replay: {...}``) that apply
to that command only; keys are dests or flag names (``max-num-seqs`` and ``max_num_seqs`` both work).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "FORESIGHT_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_name(dest: str) -> str:
    return ENV_PREFIX + dest.upper()


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"config file {path}: top level must be a mapping")
    return data


def iter_parsers(parser: argparse.ArgumentParser, path: str = "") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Yield (command path, parser) for the parser and every nested subcommand parser."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from iter_parsers(sub, f"{path}.{name}" if path else name)


def _convert(action: argparse.Action, raw: Any) -> Any:
    """Convert an env or YAML value to what the action would have stored."""
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise SystemExit(f"{env_name(action.dest)}: expected a boolean, got {raw!r}")
    conv = action.type or (lambda v: v)
    if isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+"):
        items = raw if isinstance(raw, list) else [p for p in str(raw).split(",") if p.strip()]
        return [conv(str(i).strip()) if not isinstance(i, int | float) else i for i in items]
    if isinstance(raw, str):
        return conv(raw)
    return conv(raw) if action.type is not None else raw


def apply_sources(root: argparse.ArgumentParser, environ: Mapping[str, str], config: Mapping[str, Any]) -> None:
    """Set every flag's default from the environment or the config file (environment wins)."""
    flat = {k.replace("-", "_"): v for k, v in config.items() if not isinstance(v, dict)}
    for path, parser in iter_parsers(root):
        section = {k.replace("-", "_"): v for k, v in (config.get(path) or {}).items()} if path else {}
        for action in parser._actions:
            if not action.option_strings or action.dest in ("help", "config"):
                continue
            raw: Any = None
            if env_name(action.dest) in environ:
                raw = environ[env_name(action.dest)]
            elif action.dest in section:
                raw = section[action.dest]
            elif action.dest in flat:
                raw = flat[action.dest]
            if raw is None:
                continue
            action.default = _convert(action, raw)
            action.required = False


def annotate_help(root: argparse.ArgumentParser) -> None:
    """Append the environment variable of each flag to its help text."""
    for _, parser in iter_parsers(root):
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if isinstance(action, argparse._HelpAction | argparse._VersionAction) or action.dest == "config":
                continue
            extra = f"[env: {env_name(action.dest)}]"
            if "%(default)" not in (action.help or "") and action.default not in (None, False, [], argparse.SUPPRESS):
                extra = f"(default: %(default)s) {extra}"
            action.help = f"{action.help or ''} {extra}".strip()
