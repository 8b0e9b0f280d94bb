"""The command line: --help everywhere, exit codes per error class."""

from __future__ import annotations

import subprocess
import sys

import pytest

from slipway.cli import STAGES, build_parser, main

COMMANDS = [
    "plan",
    *STAGES,
    "release",
    "services",
    "services up",
    "services down",
    "services status",
    "schema",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command.split(), "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: slipway")


def test_console_script_runs():
    res = subprocess.run([sys.executable, "-m", "slipway.cli", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("slipway ")


def test_config_error_exit_code(tmp_path, capsys):
    bad = tmp_path / "release.toml"
    bad.write_text('[project]\nname = "x"\nbogus = 1\n')
    assert main(["plan", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "project.bogus" in err and "models" in err


def test_stage_options_read_environment(monkeypatch):
    monkeypatch.setenv("SLIPWAY_CONFIG", "other.toml")
    monkeypatch.setenv("SLIPWAY_OUT", "somewhere")
    args = build_parser().parse_args(["images"])
    assert args.config == "other.toml" and args.out == "somewhere"


def test_unknown_service_is_a_config_error(capsys):
    assert main(["services", "status", "postgres"]) == 2


@pytest.mark.parametrize("reader", ["head -1", "true"])
def test_a_closed_pipe_ends_quietly(tmp_path, reader):
    """`slipway plan | head -1`: the reader leaves before slipway has written everything (`true`
    leaves before the first byte), which must end without a BrokenPipeError traceback."""
    from pathlib import Path

    config = Path(__file__).resolve().parent.parent / "release.toml"
    script = f'"{sys.executable}" -m slipway.cli plan --config "{config}" | {reader}; echo "status=${{PIPESTATUS[0]}}"'
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.stderr == ""
    lines = res.stdout.splitlines()
    assert lines[-1] in ("status=0", "status=141"), res.stdout
    if reader == "true":
        assert lines == ["status=141"]
    else:
        assert lines[0] == "{"


def test_a_stage_reads_the_configuration_the_plan_was_made_from(tmp_path, monkeypatch, capsys):
    """On GitHub a stage job gets only the plan file; a calling repository's release.toml may be
    elsewhere (release.yml's input `config`), and the plan names it."""
    import json

    from slipway.cli import config_path

    monkeypatch.delenv("SLIPWAY_CONFIG", raising=False)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"config": "deploy/release.toml"}))
    assert config_path(build_parser().parse_args(["wheels", "--plan", str(plan)])) == "deploy/release.toml"
    # --config (or SLIPWAY_CONFIG) wins; without a plan, release.toml.
    assert config_path(build_parser().parse_args(["wheels", "--plan", str(plan), "--config", "x.toml"])) == "x.toml"
    monkeypatch.setenv("SLIPWAY_CONFIG", "y.toml")
    assert config_path(build_parser().parse_args(["images", "--plan", str(plan)])) == "y.toml"
    monkeypatch.delenv("SLIPWAY_CONFIG")
    assert config_path(build_parser().parse_args(["images"])) == "release.toml"
    # End to end: the stage fails on the plan's configuration, named, not on ./release.toml.
    monkeypatch.chdir(tmp_path)
    assert main(["wheels", "--plan", str(plan)]) == 2
    assert "deploy/release.toml" in capsys.readouterr().err


def test_a_missing_extra_is_named_not_a_traceback(monkeypatch, capsys):
    """A module of an extra this installation lacks: exit 1 naming the module and the extras."""
    import argparse

    import slipway.cli as cli

    def needs_a_module(args):
        import slipway_no_such_module  # noqa: F401

    class Parser:
        def parse_args(self, argv):
            return argparse.Namespace(func=needs_a_module)

    monkeypatch.setattr(cli, "build_parser", Parser)
    code = main(["plan"])
    err = capsys.readouterr().err
    assert code == 1
    assert "'slipway_no_such_module'" in err and "pip install 'slipway[" in err and "Traceback" not in err
