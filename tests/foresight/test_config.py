"""CLI flags from the command line, `FORESIGHT_*` variables and a YAML file, in that order of precedence."""

from __future__ import annotations

import argparse

import pytest

from foresight.cli import build_parser, main
from foresight.config import annotate_help, apply_sources, env_name


def make_parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="t")
    subs = root.add_subparsers(dest="command")
    g = subs.add_parser("gateway")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--replica", action="append", default=[])
    g.add_argument("--debug", action="store_true")
    g.add_argument("--name", required=True)
    return root


def test_env_name() -> None:
    assert env_name("max_num_seqs") == "FORESIGHT_MAX_NUM_SEQS"


def test_env_overrides_yaml_and_default() -> None:
    p = make_parser()
    apply_sources(p, {"FORESIGHT_PORT": "9001", "FORESIGHT_REPLICA": "http://a,http://b", "FORESIGHT_DEBUG": "yes"},
                  {"port": 7000, "gateway": {"name": "from-yaml"}})
    args = p.parse_args(["gateway"])
    assert (args.port, args.replica, args.debug, args.name) == (9001, ["http://a", "http://b"], True, "from-yaml")


def test_cli_overrides_env() -> None:
    p = make_parser()
    apply_sources(p, {"FORESIGHT_PORT": "9001"}, {})
    assert p.parse_args(["gateway", "--port", "1234", "--name", "x"]).port == 1234


def test_yaml_section_beats_flat_key() -> None:
    p = make_parser()
    apply_sources(p, {}, {"port": 1, "gateway": {"port": 2, "name": "n"}})
    assert p.parse_args(["gateway"]).port == 2


def test_bad_boolean_env_is_a_clear_error() -> None:
    p = make_parser()
    with pytest.raises(SystemExit, match="FORESIGHT_DEBUG"):
        apply_sources(p, {"FORESIGHT_DEBUG": "maybe"}, {})


def test_help_names_env_vars() -> None:
    p = make_parser()
    annotate_help(p)
    help_text = p._subparsers._group_actions[0].choices["gateway"].format_help()  # type: ignore[union-attr]
    assert "FORESIGHT_PORT" in help_text and "FORESIGHT_NAME" in help_text


def test_foresight_help_every_level(capsys: pytest.CaptureFixture[str]) -> None:
    from foresight.config import iter_parsers

    root = build_parser()
    paths = [path for path, _ in iter_parsers(root)]
    assert "models" in paths and "models.path" in paths
    for path in paths:
        with pytest.raises(SystemExit) as exc:
            main([*path.split("."), "--help"] if path else ["--help"])
        assert exc.value.code == 0
        assert "usage: foresight" in capsys.readouterr().out


def test_group_without_subcommand_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 2
    assert "path" in capsys.readouterr().out


def test_yaml_config_file(tmp_path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"models.path:\n  name: {folder}\n")
    # `name` is positional, so the YAML cannot set it; the config flag itself must still parse.
    assert main(["--config", str(cfg), "models", "path", str(folder)]) == 0
    assert str(folder) in capsys.readouterr().out
