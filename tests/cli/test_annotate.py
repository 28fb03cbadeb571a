"""``ucal annotate``: parsed by argparse like every command, served, and its errors."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.annotation.test_web_oracle import Call, Client
from ucal.cli import build_parser, main
from ucal.cli._annotate import cmd_annotate
from ucal.oracles import LabelMemory

ROOT = Path(__file__).resolve().parents[2]


def _footage(tmp_path):
    root = tmp_path / "footage"
    for person in ("alice", "bob"):
        (root / person).mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (16, 32), (200 if person == "bob" else 20, 40 * k, 0)).save(
                root / person / f"{k}.png"
            )
    return root


def test_annotate_serves_the_review_of_a_folder_dataset(tmp_path, capsys):
    root = _footage(tmp_path)
    memory_path = str(tmp_path / "answers.jsonl")
    LabelMemory(memory_path).record([[0, 1], [1, 2]], [True, False])
    call = Call(main, ["annotate", "--memory", memory_path, "--dataset", "folder",
                       "--root", str(root)])
    err = ""
    deadline = time.monotonic() + 10
    # the log says "token=<hidden>"; the terminal line carries the real address
    while "?token=" not in err.replace("token=<hidden>", "") and time.monotonic() < deadline:
        time.sleep(0.01)
        err += capsys.readouterr().err
    url = err.rsplit("Review page: open ", 1)[1].split()[0]
    assert "token=<hidden>" in err
    client = Client(url)
    assert len(client.state()["records"]) == 2
    assert client.get("/img/3")[0] == 200 and client.get("/img/4")[0] == 404
    assert client.post("correct", {"i": 1, "j": 2, "answer": "same"})[0] == 200
    assert client.post("finish", {})[0] == 200
    assert call.join().result == 0
    assert "1 corrections recorded" in capsys.readouterr().err
    assert LabelMemory(memory_path).lookup([[0, 2]]).tolist() == [1]


def test_annotate_missing_memory_raises_in_the_command(tmp_path):
    args = build_parser().parse_args(
        ["annotate", "--memory", str(tmp_path / "none.jsonl"), "--dataset", "synthetic"]
    )
    with pytest.raises(FileNotFoundError, match="No label memory file"):
        cmd_annotate(args)


def test_annotate_missing_memory_is_a_clear_error(tmp_path, capsys):
    missing = str(tmp_path / "none.jsonl")
    assert main(["annotate", "--memory", missing, "--dataset", "synthetic"]) == 1
    err = capsys.readouterr().err
    assert f"ucal annotate: error: No label memory file {missing!r}." in err
    assert "Traceback" not in err


def test_annotate_missing_memory_through_the_console_entry_point(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ucal", "annotate", "--memory", str(tmp_path / "none.jsonl"),
         "--dataset", "synthetic"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "ucal annotate: error: No label memory file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_annotate_arguments():
    parser = build_parser()
    args = parser.parse_args(
        ["annotate", "--memory", "m.jsonl", "--dataset", "market1501", "--root", "data",
         "--port", "8765"]
    )
    assert (args.memory, args.dataset, args.root, args.port, args.host) == (
        "m.jsonl", "market1501", "data", 8765, "127.0.0.1"
    )
    assert args.func is cmd_annotate and args.open_browser is False
    assert (args.resolution, args.reviewer) == (None, None)
    team = parser.parse_args(["annotate", "--memory", "m.jsonl", "--dataset", "synthetic",
                              "--resolution", "majority", "--reviewer", "rev"])
    assert (team.resolution, team.reviewer) == ("majority", "rev")
    with pytest.raises(SystemExit):
        parser.parse_args(["annotate", "--memory", "m.jsonl", "--dataset", "imagenet"])


def test_annotate_help_lists_its_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["annotate", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--memory", "--dataset", "--root", "--pattern", "--random-state",
                   "--host", "--port", "--open-browser", "synthetic", "--resolution",
                   "--reviewer"):
        assert option in out, option


@pytest.mark.parametrize(
    "argv, message",
    [
        (["annotate", "--dataset", "synthetic"], "the following arguments are required: --memory"),
        (["annotate", "--memory", "m.jsonl"], "the following arguments are required: --dataset"),
        (["annotate", "--memory", "m.jsonl", "--dataset", "folder"], "--dataset folder needs --root"),
        (["annotate", "--memory", "m.jsonl", "--dataset", "synthetic", "--port", "x"],
         "--port: invalid int value"),
    ],
)
def test_annotate_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: ucal annotate" in err and message in err


@pytest.mark.parametrize("problem", ["missing root", "not an answers file"])
def test_annotate_bad_root_or_memory_file_is_one_error_line(tmp_path, capsys, problem):
    memory = tmp_path / "answers.jsonl"
    root = tmp_path / "no-such-root"
    if problem == "missing root":
        LabelMemory(memory).record([[0, 1]], [True])
    else:
        memory.write_text('{"epochs": 50}\n')
        root = _footage(tmp_path)
    code = main(["annotate", "--memory", str(memory), "--dataset", "folder", "--root", str(root)])
    err = capsys.readouterr().err
    assert code == 1 and "ucal annotate: error:" in err and "Traceback" not in err
    assert ("no-such-root" in err) if problem == "missing root" else ("not a label memory" in err)
