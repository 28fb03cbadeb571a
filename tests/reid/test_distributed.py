"""UCALReID with 2 processes on CPUs (gloo), launched as torchrun would launch them."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():  # pragma: no cover - depends on the build
    pytest.skip("torch.distributed is not available in this build", allow_module_level=True)

WORKER = Path(__file__).with_name("ddp_worker.py")
# these tests start processes of their own: one xdist worker runs them all
pytestmark = pytest.mark.xdist_group("distributed")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path, name, world_size, timeout=240, **config):
    """Run the worker in ``world_size`` processes; return (results by rank, processes)."""
    out = tmp_path / name
    out.mkdir()
    config_path = out / "config.json"
    config_path.write_text(json.dumps({"out": str(out), **config}))
    port = _free_port()
    procs = []
    for rank in range(world_size):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)
        if world_size > 1:
            env.update(WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(
            [sys.executable, str(WORKER), str(config_path)], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    outputs = []
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise AssertionError(f"{name}: the processes did not end within {timeout} s")
        outputs.append((proc.returncode, stderr))
    results = {}
    for rank in range(world_size):
        path = out / f"rank{rank}.json"
        if path.exists():
            results[rank] = json.loads(path.read_text())
    return results, outputs


def _history(result):
    """The epoch records without their wall-clock times."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in result["history"]]


def _ok(outputs):
    for code, stderr in outputs:
        assert code == 0, stderr[-3000:]


def test_two_processes_train_as_one_and_stay_identical(tmp_path):
    one, outputs = _launch(tmp_path, "one", 1)
    _ok(outputs)
    two, outputs = _launch(tmp_path, "two", 2)
    _ok(outputs)
    # after every step, both ranks hold the same weights and the same memory
    assert two[0]["weights"] == two[1]["weights"]
    assert two[0]["memories"] == two[1]["memories"]
    assert len(two[0]["losses"]) == len(one[0]["losses"]) == 6
    # the same global batch, split by identities: the losses of one process
    first_epoch = slice(0, 3)
    for a, b in zip(one[0]["losses"][first_epoch], two[0]["losses"][first_epoch]):
        assert abs(a - b) < 1e-4, (one[0]["losses"], two[0]["losses"])
    assert two[0]["losses"] == two[1]["losses"]
    # the history is the same on every rank; the fitted model has plain BatchNorm again
    assert _history(two[0]) == _history(two[1])
    assert "SyncBatchNorm" not in two[0]["batchnorm_types"]
    # rank 0 asks, once per pair; rank 1 never calls its oracle
    asked = [tuple(p) for p in two[0]["asked"]]
    assert asked and len(asked) == len(set(asked))
    assert two[1]["asked"] == []
    assert two[1]["n_queries"] == two[0]["n_queries"] == len(asked)
    # the fit ends its process group: no gloo thread outlives it to race the exit
    for rank in (0, 1):
        if two[rank]["threads"] is not None:  # Linux: the names in /proc
            assert [t for t in two[rank]["threads_in_fit"] if "gloo" in t]  # seen, then gone
            assert not [t for t in two[rank]["threads"] if "gloo" in t], two[rank]["threads"]


def test_a_checkpoint_of_two_processes_resumes_in_one_and_back(tmp_path):
    run = str(tmp_path / "run")
    params = {"checkpoint_dir": run, "epochs": 1}
    two, outputs = _launch(tmp_path, "two", 2, params=params)
    _ok(outputs)
    assert sorted(os.listdir(run)).count("checkpoint.pt") == 1
    one, outputs = _launch(tmp_path, "one", 1, params={**params, "epochs": 2}, resume=True)
    _ok(outputs)
    assert [r["epoch"] for r in one[0]["history"]] == [1, 2]
    assert _history(one[0])[0] == _history(two[0])[0]
    # and back: 1 process's checkpoint continued by 2
    again, outputs = _launch(tmp_path, "again", 2, params={**params, "epochs": 3}, resume=True)
    _ok(outputs)
    assert [r["epoch"] for r in again[0]["history"]] == [1, 2, 3]
    assert _history(again[0])[:2] == _history(one[0])
    # answers given before are never asked again
    asked = {tuple(p) for p in two[0]["asked"]}
    assert not asked & {tuple(p) for p in one[0]["asked"]}


def test_an_oracle_error_ends_every_process_within_seconds(tmp_path):
    start = time.monotonic()
    results, outputs = _launch(tmp_path, "fails", 2, timeout=120, oracle_fails=True)
    elapsed = time.monotonic() - start
    assert results == {}
    (code0, err0), (code1, err1) = outputs
    assert code0 != 0 and "the annotator walked away" in err0
    assert code1 != 0 and "Rank 0 failed" in err1 and "the annotator walked away" in err1
    assert elapsed < 60


def test_ranks_called_differently_are_told_so_instead_of_mispairing(tmp_path):
    results, outputs = _launch(tmp_path, "differ", 2, timeout=120, oracle_on_rank0_only=True)
    assert results == {}
    for code, stderr in outputs:
        assert code != 0 and "oracle given: rank 0 True, rank 1 False" in stderr


def test_random_state_none_gives_every_rank_the_same_draws(tmp_path):
    results, outputs = _launch(tmp_path, "unseeded", 2, params={"random_state": None})
    _ok(outputs)
    assert results[0]["weights"] == results[1]["weights"]
    assert results[0]["memories"] == results[1]["memories"]


def test_an_image_only_one_rank_reads_ends_every_rank_with_its_error(tmp_path):
    results, outputs = _launch(tmp_path, "bad_image", 2, timeout=120, bad_eval_image=True)
    assert results == {}
    (code0, err0), (code1, err1) = outputs
    assert code0 != 0 and code1 != 0
    # rank 1 reads the last query image (its block): its own error; rank 0 is told
    assert "UnidentifiedImageError" in err1 and "Another rank failed" not in err1
    assert "Another rank failed" in err0 and "rank 1" in err0


def test_torchrun_runs_ucal_train_with_two_processes(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():  # pragma: no cover - installed with torch
        pytest.skip("torchrun is not installed beside this Python")
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node=2", "--master_port", str(_free_port()),
         "-m", "ucal", "train", "--dataset", "synthetic", "--output", str(out),
         "--backbone", "tiny", "--pretrained", "none", "--image-size", "32", "16",
         "--epochs", "1", "--warmup-epochs", "0", "--iters", "2", "--batch-size", "16",
         "--k1", "10", "--validation-size", "4", "--threads", "1", "-q"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["n_queries"] > 0
    assert (out / "model.joblib").is_file() and (out / "checkpoints" / "checkpoint.pt").is_file()
    # one log file, one table: rank 0 writes
    assert proc.stdout.count("| UCAL |") == 1


def test_the_pair_term_trains_two_processes_as_one(tmp_path):
    params = {"pair_weight": 1.0}
    one, outputs = _launch(tmp_path, "one", 1, params=params)
    _ok(outputs)
    two, outputs = _launch(tmp_path, "two", 2, params=params)
    _ok(outputs)
    # rank 0 holds the answers; every rank's loss sees them (epoch 2: both kinds answered)
    assert one[0]["history"][1]["pair_answers"] > 0
    assert _history(two[0]) == _history(two[1])
    assert two[0]["history"][1]["pair_answers"] == one[0]["history"][1]["pair_answers"]
    assert two[0]["weights"] == two[1]["weights"]
    # the same global batches' losses, the pair term's epoch included
    assert len(one[0]["losses"]) == len(two[0]["losses"]) == 6
    for a, b in zip(one[0]["losses"], two[0]["losses"]):
        assert abs(a - b) < 1e-3, (one[0]["losses"], two[0]["losses"])


# The first step starts from the same weights: its loss matches to float precision. Later
# steps differ by the rounding of the averaged gradients, which the hard choices (the top-k
# negative proxies, the hardest instances) can turn into 1e-3 after a few steps.
@pytest.mark.parametrize("params, tolerance", [
    ({"loss": "camera_proxies", "pooling": "avg"}, 1e-2),
    ({"pooling": "gem"}, 1e-3),
    ({"loss": "cluster_memory_hard", "pooling": "avg"}, 1e-2),
])
def test_the_other_bases_train_two_processes_as_one(tmp_path, params, tolerance):
    one, outputs = _launch(tmp_path, "one", 1, params=params)
    _ok(outputs)
    two, outputs = _launch(tmp_path, "two", 2, params=params)
    _ok(outputs)
    assert _history(two[0]) == _history(two[1])
    assert two[0]["weights"] == two[1]["weights"]
    # each rank's loss of its rows, and the prototypes moved by the whole batch in order
    assert len(one[0]["losses"]) == len(two[0]["losses"]) == 6
    assert abs(one[0]["losses"][0] - two[0]["losses"][0]) < 1e-5
    for a, b in zip(one[0]["losses"], two[0]["losses"]):
        assert abs(a - b) < tolerance, (one[0]["losses"], two[0]["losses"])
