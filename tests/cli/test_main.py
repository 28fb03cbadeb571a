"""The one error handler of ``ucal``: expected failures of every command are one line."""

import importlib

import pytest

from ucal.cli import build_parser, main

ARGV = {
    "demo": ["demo"],
    "train": ["train", "--dataset", "synthetic"],
    "evaluate": ["evaluate", "--model", "m.joblib", "--dataset", "synthetic"],
    "annotate": ["annotate", "--memory", "m.jsonl", "--dataset", "synthetic"],
}


def _replace_command(monkeypatch, command, func):
    """Make ``ucal <command>`` run ``func`` (the parser looks it up when built)."""
    module = importlib.import_module(f"ucal.cli._{command}")
    monkeypatch.setattr(module, f"cmd_{command}", func)


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError("No such file: 'x'"),
        FileExistsError("'run' already holds a run"),
        PermissionError("Permission denied: 'out'"),
        OSError("No space left on device"),
        ValueError("bad value"),
    ],
)
@pytest.mark.parametrize("command", sorted(ARGV))
def test_expected_failures_are_one_line_and_exit_code_1(command, error, monkeypatch, capsys):
    def fail(args):
        raise error

    _replace_command(monkeypatch, command, fail)
    assert main(ARGV[command]) == 1
    err = capsys.readouterr().err
    assert f"ucal {command}: error: {error}\n" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", sorted(ARGV))
def test_unexpected_failures_keep_their_traceback(command, monkeypatch):
    def bug(args):
        raise KeyError("a bug")

    _replace_command(monkeypatch, command, bug)
    with pytest.raises(KeyError, match="a bug"):
        main(ARGV[command])


def test_every_command_has_a_parser_and_a_function():
    parser = build_parser()
    for argv in ARGV.values():
        args = parser.parse_args(argv)
        assert args.command == argv[0]
        assert callable(args.func) and args.func.__name__ == f"cmd_{argv[0]}"


@pytest.mark.parametrize("command", ["train", "evaluate", "annotate"])
def test_dataset_choices_come_from_the_registry(command, capsys):
    from ucal.datasets import DATASET_NAMES

    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "{" + ",".join(DATASET_NAMES) + "}" in out


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_dataset_on_disk_needs_a_root(command, capsys):
    argv = [command, "--dataset", "market1501"]
    if command == "evaluate":
        argv += ["--model", "m.joblib"]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert f"ucal {command}: error: --dataset market1501 needs --root DIR." in (
        capsys.readouterr().err
    )
