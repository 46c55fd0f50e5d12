"""`foresight models`: resolve model names to local folders."""

from __future__ import annotations

import argparse

from foresight.cli import add_group


def register(subparsers: argparse._SubParsersAction) -> None:
    group = add_group(subparsers, "models", "Local model folders (smollm2, tiny, or a path).")
    p = group.add_parser("path", help="Print the local folder of a model, building or converting it once.")
    p.add_argument("name", help="smollm2, tiny, or an existing folder")
    p.set_defaults(func=_path)
    lst = group.add_parser("list", help="List the named models and whether they are built.")
    lst.set_defaults(func=_list)


def _path(args: argparse.Namespace) -> int:
    from replicas.models import resolve_model

    print(resolve_model(args.name))
    return 0


def _list(args: argparse.Namespace) -> int:
    from replicas.models import BUILDERS, MARKER, cache_dir

    for name in BUILDERS:
        folder = cache_dir() / "models" / name
        print(f"{name}\t{folder}\t{'built' if (folder / MARKER).exists() else 'not built'}")
    return 0
