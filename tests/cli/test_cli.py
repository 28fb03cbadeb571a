"""The ``ucal`` command: demo, train, evaluate, annotate."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from ucal.cli import build_parser, main  # noqa: E402
from ucal.datasets import make_persons, save_market1501  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """The commands train tiny models: on one torch thread."""


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    root = tmp_path_factory.mktemp("market")
    data = make_persons(
        n_identities=6, n_test_identities=3, n_images_per_camera=(3, 4),
        image_size=(32, 16), random_state=0,
    )
    save_market1501(data, root, image_format="png")
    return str(root)


def _train_args(market, out, *extra):
    return [
        "train", "--dataset", "market1501", "--root", market, "--output", str(out),
        "--backbone", "small", "--pretrained", "none", "--image-size", "32", "16",
        "--epochs", "1", "--warmup-epochs", "0", "--iters", "2", "--batch-size", "16",
        "--k1", "10", "--workers", "0", "--threads", "1", "-q", *extra,
    ]


def _check_demo_output(out, stdout):
    for name in ("results.json", "history.json", "results.md", "map_vs_cost.png", "demo.log"):
        assert (out / name).is_file(), name
    # the models and the test images that docs/deploy.rst starts from
    for kind in ("ucal", "baseline", "supervised"):
        assert (out / "runs" / kind / "model.joblib").is_file(), kind
    market = out / "images" / "Market-1501-v15.09.15"
    assert any((market / "query").iterdir()) and any((market / "bounding_box_test").iterdir())
    results = json.loads((out / "results.json").read_text())
    methods = [r["method"] for r in results["results"]]
    assert methods == ["Start (pretrained, no training)", "Baseline", "UCAL", "Supervised"]
    by_method = {r["method"]: r for r in results["results"]}
    assert by_method["Baseline"]["n_queries"] == 0 and by_method["Baseline"]["cost"] == 0
    assert by_method["Supervised"]["cost"] == 1.0
    assert 0 < by_method["UCAL"]["cost"] < 1
    history = json.loads((out / "history.json").read_text())
    epochs = results["settings"]["epochs"]
    # UCAL validates: its epoch 0 is the pretrained start, asked about before training
    assert [r["epoch"] for r in history["ucal"]] == list(range(epochs + 1))
    assert [r["epoch"] for r in history["baseline"]] == list(range(1, epochs + 1))
    start = history["ucal"][0]
    assert start["mAP"] == by_method["Start (pretrained, no training)"]["mAP"]
    assert start["validation_queries"] > 0
    for method in methods:
        assert f"| {method} |" in stdout
    assert "labeling cost" in stdout.lower()


def test_demo_quick_in_process(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--quick", "--jobs", "1", "--threads", "1", "--output", str(out), "-q",
            "--calibrate", "--precision", "fp32"]
    assert main(args) == 0
    _check_demo_output(out, capsys.readouterr().out)
    results = json.loads((out / "results.json").read_text())
    assert results["precision"] == "float32 on cpu"
    start = json.loads((out / "history.json").read_text())["ucal"][0]
    assert start["calibration_queries"] > 0 and "calibrated" in start
    # docs/deploy.rst's commands, on this demo's output
    market = out / "images" / "Market-1501-v15.09.15"
    assert main(["export", str(out / "runs" / "ucal"), "--format", "torchscript", "-q"]) == 0
    assert main(["index", str(out / "runs" / "ucal"), str(market / "bounding_box_test"),
                 "--out", str(out / "gallery"), "--pattern", r"(?P<pid>-?\d+)_c(?P<camid>\d+)",
                 "-q"]) == 0
    capsys.readouterr()
    query = sorted((market / "query").iterdir())[0]
    assert main(["search", str(out / "gallery"), str(query), "--top", "3", "--json", "-q"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["matches"]) == 3


def test_demo_quick_parallel_runs(tmp_path):
    # The default path of `make demo`: worker processes, through the console entry point.
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "ucal", "demo", "--quick", "--jobs", "2", "--threads", "1",
         "--output", str(out), "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_demo_output(out, proc.stdout)


def test_train_evaluate_and_resume(market, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train_args(market, out)) == 0
    for name in ("model.joblib", "history.json", "results.json", "train.log"):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "checkpoint.pt").is_file()
    assert "| UCAL |" in capsys.readouterr().out

    # Running again into the same folder without --resume is refused, not overwritten.
    assert main(_train_args(market, out)) == 1
    assert "resume" in capsys.readouterr().err

    args = _train_args(market, out, "--resume")
    args[args.index("--epochs") + 1] = "2"
    assert main(args) == 0
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [0, 1, 2]  # 0: the start, validated

    scores = tmp_path / "scores.json"
    assert main(["evaluate", "--model", str(out / "model.joblib"), "--dataset", "market1501",
                 "--root", market, "--output", str(scores), "--threads", "1", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "| model.joblib |" in printed
    result = json.loads(scores.read_text())
    # the saved model is the network of the epoch it reports (its best validated one)
    summary = json.loads((out / "results.json").read_text())
    # without a best validated epoch (one-sided answers on tiny data) the last one is held
    held = next(r for r in history if r["epoch"] == summary.get("epoch", history[-1]["epoch"]))
    assert result["mAP"] == pytest.approx(held["mAP"], abs=1e-6) == summary["mAP"]


@pytest.mark.parametrize("flags", [["--oracle", "none"], ["--no-snps", "--no-mpps"]])
def test_train_baseline(market, tmp_path, flags):
    out = tmp_path / "base"
    assert main(_train_args(market, out, *flags)) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["n_queries"] == 0
    assert not (out / "checkpoints" / "label_memory.jsonl").exists()


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    code = main(_train_args(str(tmp_path / "nowhere"), tmp_path / "out"))
    assert code == 1
    assert "ucal train: error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # a failed train leaves no folder behind


def test_a_failed_train_keeps_an_output_folder_with_answers_or_one_it_did_not_make(
    tmp_path, capsys
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(_train_args(str(tmp_path / "nowhere"), out)) == 1
    assert (out / "notes.txt").read_text() == "mine"
    from ucal.cli._train import _remove_if_unused

    made = tmp_path / "made"
    (made / "checkpoints").mkdir(parents=True)
    (made / "checkpoints" / "label_memory.jsonl").write_text('{"i": 0, "j": 1, "same": true}\n')
    _remove_if_unused(str(made))
    assert (made / "checkpoints" / "label_memory.jsonl").exists()  # answers are never removed


@pytest.mark.parametrize("content", [b'{"a": 1}\n', b"not a pickle at all", None])
def test_evaluate_on_a_file_that_is_not_a_model_is_a_clear_error(tmp_path, capsys, content):
    path = tmp_path / "model.joblib"
    if content is None:
        import joblib

        joblib.dump({"weights": [1, 2]}, path)  # a joblib file, but not a model
    else:
        path.write_bytes(content)
    code = main(["evaluate", "--model", str(path), "--dataset", "synthetic", "-q"])
    assert code == 1
    err = capsys.readouterr().err
    assert "ucal evaluate: error:" in err and "model.joblib" in err and "Traceback" not in err


def test_parser_lists_commands_and_validates(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for command in ("demo", "train", "evaluate", "annotate"):
        assert command in text
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["train", "--dataset", "cifar", "--root", "x", "--output", "y"])
    assert info.value.code == 2


def test_annotate_is_parsed_by_argparse(capsys):
    with pytest.raises(SystemExit) as info:
        main(["annotate", "--help"])
    assert info.value.code == 0
    assert "--memory" in capsys.readouterr().out


def test_demo_rejects_warmup_longer_than_training(tmp_path, capsys):
    # One error handler for every command: a one-line error and exit code 1, as before.
    code = main(["demo", "--epochs", "3", "--warmup-epochs", "3", "--output", str(tmp_path)])
    assert code == 1
    assert "ucal demo: error: --warmup-epochs must be smaller than --epochs." in (
        capsys.readouterr().err
    )
    assert not os.listdir(tmp_path)  # refused before anything was written


def test_evaluate_missing_model_is_a_clear_error(market, tmp_path, capsys):
    code = main(["evaluate", "--model", str(tmp_path / "none.joblib"), "--dataset",
                 "market1501", "--root", market, "-q"])
    assert code == 1
    err = capsys.readouterr().err
    assert "ucal evaluate: error:" in err and "none.joblib" in err


def test_refiner_from_flags():
    from ucal.active import MPPSMerger, SNPSSplitter
    from ucal.cli._train import refiner_from_flags

    assert refiner_from_flags() is None
    assert isinstance(refiner_from_flags(no_snps=True), MPPSMerger)
    assert isinstance(refiner_from_flags(no_mpps=True), SNPSSplitter)
    assert refiner_from_flags(no_snps=True, no_mpps=True) == "passthrough"
    assert refiner_from_flags(oracle="none") == "passthrough"
    assert refiner_from_flags(oracle="web") is None


def test_train_and_evaluate_on_synthetic_persons(tmp_path, capsys):
    out = tmp_path / "synthetic"
    args = [a for a in _train_args("unused", out) if a not in ("--root", "unused")]
    args[args.index("market1501")] = "synthetic"
    assert main(args) == 0
    assert "| UCAL |" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(out / "model.joblib"), "--dataset", "synthetic",
                 "--threads", "1", "-q"]) == 0
    assert "| model.joblib |" in capsys.readouterr().out


def test_train_web_oracle_is_wired_to_the_run_memory(market, tmp_path, monkeypatch):
    import numpy as np

    import ucal.oracles
    from ucal.oracles import LabelMemory

    seen = {}

    class FakeWebOracle:
        """Stands in for the browser: answers from the split's identities."""

        def __init__(self, images, *, label_memory, host, port, open_browser):
            seen["memory"] = label_memory
            self.pids = np.asarray(images.pids)
            self.url = "http://127.0.0.1:0/"
            self.closed = False
            seen["oracle"] = self

        def __call__(self, pairs):
            return self.pids[pairs[:, 0]] == self.pids[pairs[:, 1]]

        def close(self):
            self.closed = True

    monkeypatch.setattr(ucal.oracles, "WebOracle", FakeWebOracle, raising=False)
    out = tmp_path / "web"
    memory_file = tmp_path / "answers.jsonl"
    assert main(_train_args(market, out, "--oracle", "web", "--memory", str(memory_file))) == 0
    assert isinstance(seen["memory"], LabelMemory)
    assert seen["oracle"].closed
    results = json.loads((out / "results.json").read_text())
    assert results["n_queries"] > 0
    # every answer is on disk: training answers in the given file, held-out ones in the run
    held_out = LabelMemory(out / "checkpoints" / "validation_memory.jsonl")
    assert len(held_out) > 0
    check = out / "checkpoints" / "start_check.jsonl"  # the end-of-fit check, when it ran
    checked = len(LabelMemory(check)) if check.exists() else 0
    assert len(LabelMemory(memory_file)) + len(held_out) + checked == results["n_queries"]


def test_refiner_from_flags_with_the_paper_preset():
    from ucal.active import AnswerConstraints, MPPSMerger, SNPSSplitter
    from ucal.cli._train import refiner_from_flags

    paper = refiner_from_flags(preset="paper")
    assert isinstance(paper, MPPSMerger) and paper.cluster_inference is False
    assert paper.clusterer.k_max_rule == "floor" and paper.clusterer.clusterer is None
    only_snps = refiner_from_flags(no_mpps=True, preset="paper")
    assert isinstance(only_snps, SNPSSplitter) and only_snps.cluster_inference is False
    assert isinstance(refiner_from_flags(no_snps=True).clusterer, AnswerConstraints)
    assert refiner_from_flags(no_snps=True, no_mpps=True, preset="paper") == "passthrough"
    # --selection reaches MPPS, in the default chain, alone, and in the paper's
    chain = refiner_from_flags(selection="uncertain")
    assert chain.selection == "uncertain" and isinstance(chain.clusterer, SNPSSplitter)
    assert isinstance(chain.clusterer.clusterer, AnswerConstraints)
    assert refiner_from_flags(no_snps=True, selection="nearest").selection == "nearest"
    assert refiner_from_flags(preset="paper", selection="uncertain").selection == "uncertain"
    assert refiner_from_flags(selection="neighbors").selection == "neighbors"
    args = build_parser().parse_args(["train", "--dataset", "market1501", "--root", "x",
                                      "--output", "y", "--selection", "gap_then_neighbors"])
    assert refiner_from_flags(selection=args.selection).selection == "gap_then_neighbors"
    assert refiner_from_flags() is None  # no flag: the estimator's default
    # the neighbors preset's MPPS, in the full chain and alone; --selection still wins
    early = refiner_from_flags(preset="neighbors")
    assert early.selection == "neighbors" and isinstance(early.clusterer, SNPSSplitter)
    assert refiner_from_flags(preset="neighbors", no_snps=True).selection == "neighbors"
    assert refiner_from_flags(preset="neighbors", selection="gap").selection == "gap"
    assert refiner_from_flags(preset="neighbors", oracle="none") == "passthrough"


def test_train_with_the_pair_term_and_the_uncertainty_selection(market, tmp_path):
    import joblib

    out = tmp_path / "pairs"
    args = _train_args(market, out, "--pair-weight", "0.5", "--pair-trim", "0.05",
                       "--selection", "uncertain",
                       "--epochs", "2")
    assert main(args) == 0
    model = joblib.load(out / "model.joblib")
    assert model.pair_weight == 0.5 and model.refiner.selection == "uncertain"
    assert model.pair_trim == 0.05
    assert model.n_queries_ > 0


def test_train_on_another_unsupervised_base(market, tmp_path):
    import joblib

    out = tmp_path / "base"
    args = _train_args(market, out, "--loss", "camera_proxies", "--pooling", "gem",
                       "--num-instances", "2", "--centroid-momentum", "0.3", "--outliers",
                       "drop", "--memory-refresh", "all", "--no-self-paced", "--epochs", "2")
    assert main(args) == 0
    model = joblib.load(out / "model.joblib")
    assert (model.loss, model.pooling, model.num_instances, model.centroid_momentum) == (
        "camera_proxies", "gem", 2, 0.3)
    assert (model.outliers, model.memory_refresh) == ("drop", "all")
    assert model.clusterer.self_paced is False
    assert hasattr(model.backbone_, "pool")


def test_train_with_the_paper_preset(market, tmp_path):
    out = tmp_path / "paper"
    assert main(_train_args(market, out, "--preset", "paper")) == 0
    model = __import__("joblib").load(out / "model.joblib")
    # --iters from the test arguments wins over the preset's 400
    assert model.memory_inference is False and model.iters_per_epoch != 400


def test_train_with_the_neighbors_preset(market, tmp_path):
    out = tmp_path / "neighbors"
    assert main(_train_args(market, out, "--preset", "neighbors", "--epochs", "2")) == 0
    model = __import__("joblib").load(out / "model.joblib")
    assert model.refiner.selection == "neighbors" and model.query_pacing == "greedy"
    assert model.n_queries_ > 0


def test_train_with_an_approximate_search(market, tmp_path):
    import joblib

    pytest.importorskip("faiss", reason="faiss-cpu is an optional extra")
    out = tmp_path / "ivf"
    assert main(_train_args(market, out, "--oracle", "none", "--search", "faiss-ivf")) == 0
    model = joblib.load(out / "model.joblib")
    assert model.clusterer.search == "faiss-ivf"
    assert model.labels_.shape == (model.n_samples_fit_,)


def test_train_team_options_need_the_web_oracle(market, tmp_path, capsys):
    out = tmp_path / "team"
    assert main(_train_args(market, out, "--annotators", "ann", "bob")) == 1
    assert "--annotators and --reviewer need --oracle web" in capsys.readouterr().err
    assert main(_train_args(market, out, "--oracle", "web", "--reviewer", "rev")) == 1
    assert "--reviewer needs --annotators" in capsys.readouterr().err


def test_train_team_is_wired_to_a_majority_memory(market, tmp_path, monkeypatch):
    import numpy as np

    import ucal.annotation
    from ucal.oracles import LabelMemory

    seen = {}

    class FakeTeam:
        """Stands in for the team's pages: answers from the split's identities."""

        def __init__(self, images, annotators, *, reviewer, label_memory, double_fraction,
                     host, port, open_browser, random_state):
            seen.update(annotators=annotators, reviewer=reviewer, memory=label_memory,
                        double_fraction=double_fraction)
            self.pids = np.asarray(images.pids)
            self.closed = False

        def __call__(self, pairs):
            return self.pids[pairs[:, 0]] == self.pids[pairs[:, 1]]

        def close(self):
            self.closed = True

    monkeypatch.setattr(ucal.annotation, "TeamOracle", FakeTeam)
    out = tmp_path / "team"
    assert main(_train_args(market, out, "--oracle", "web", "--annotators", "ann", "bob",
                            "--reviewer", "rev", "--double-fraction", "0.5")) == 0
    assert seen["annotators"] == ["ann", "bob"] and seen["reviewer"] == "rev"
    assert seen["double_fraction"] == 0.5
    assert isinstance(seen["memory"], LabelMemory) and seen["memory"].resolution == "majority"


def test_double_annotation_defaults_to_none_for_one_person():
    from ucal.cli import build_parser
    from ucal.cli._train import _double_fraction

    def parse(*names, extra=()):
        return build_parser().parse_args(
            ["train", "--dataset", "synthetic", "--oracle", "web", "--annotators", *names, *extra]
        )

    assert _double_fraction(parse("ann")) == 0.0
    assert _double_fraction(parse("ann", "bob")) == 0.2
    assert _double_fraction(parse("ann", "bob", extra=("--double-fraction", "0.5"))) == 0.5
