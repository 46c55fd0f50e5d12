"""The `foresight` command: a registry from subcommand name to the module that implements it.

Each module named in COMMANDS exposes ``register(subparsers) -> None``, which adds its parser and sets
``func`` (called with the parsed namespace, returns an exit code). Registration must stay cheap: heavy
imports (torch, sklearn) belong inside ``func``. A module that is not present is skipped, so the CLI
grows as components land.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence

from foresight import __version__
from foresight.config import annotate_help, apply_sources, load_yaml

COMMANDS: dict[str, str] = {
    "up": "foresight.up",
    "gateway": "gateway.cli",
    "replica": "replicas.cli",
    "predictor": "predictor.cli",
    "bench": "bench.cli",
    "models": "replicas.models_cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foresight",
        description="Foresight: an OpenAI-compatible gateway that routes LLM requests across GPU replicas.",
    )
    parser.add_argument("--version", action="version", version=f"foresight {__version__}")
    parser.add_argument("--config", help="YAML config file (flat keys, or sections per command) [env: FORESIGHT_CONFIG]")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        if importlib.util.find_spec(module.rsplit(".", 1)[0]) is None or importlib.util.find_spec(module) is None:
            continue
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=os.environ.get("FORESIGHT_CONFIG"))
    known, _ = pre.parse_known_args(argv)
    config = load_yaml(known.config) if known.config else {}
    apply_sources(parser, os.environ, config)
    annotate_help(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)


def add_group(subparsers: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """Add a command that only holds subcommands; run alone, it prints its own help."""
    group = subparsers.add_parser(name, help=help, description=help)
    group.set_defaults(func=lambda _args: (group.print_help(), 2)[1])
    return group.add_subparsers(metavar="SUBCOMMAND")


if __name__ == "__main__":
    sys.exit(main())
