"""UCALReID end to end on tiny data with a tiny backbone."""

import os
import pickle
import warnings

import joblib
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sklearn.base import clone  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.utils._param_validation import InvalidParameterError  # noqa: E402

from ucal.active import MPPSMerger, SNPSSplitter  # noqa: E402
from ucal.datasets import ReIDSplit  # noqa: E402
from ucal.metrics import labeling_cost  # noqa: E402
from ucal.oracles import BudgetExhaustedWarning, LabelOracle  # noqa: E402
from ucal.reid import UCALReID  # noqa: E402

SIZE = (32, 16)




def _model(**params):
    """A tiny, fast configuration; KMeans clusters so that refinement always has work."""
    defaults = dict(
        backbone="small",
        pretrained=False,
        image_size=SIZE,
        epochs=2,
        warmup_epochs=0,
        batch_size=16,
        iters_per_epoch=2,
        inference_batch_size=64,
        clusterer=KMeans(n_clusters=5, n_init=1, random_state=0),
        refiner=MPPSMerger(clusterer=SNPSSplitter(k_max=2), delta=0.0),
        # validation and calibration have tests of their own (test_validation.py)
        validation_size=0,
        random_state=0,
    )
    defaults.update(params)
    return UCALReID(**defaults)


class RecordingOracle:
    """Answers from true ids; checks and records every batch it is sent."""

    def __init__(self, y, n_samples, interrupt_after=None):
        self.y = np.asarray(y)
        self.n_samples = n_samples
        self.batches = []
        self.interrupt_after = interrupt_after

    def __call__(self, pairs):
        assert isinstance(pairs, np.ndarray) and pairs.dtype.kind == "i"
        assert pairs.ndim == 2 and pairs.shape[1] == 2 and len(pairs) > 0
        assert pairs.min() >= 0 and pairs.max() < self.n_samples
        assert (pairs[:, 0] != pairs[:, 1]).all()
        if self.interrupt_after is not None and len(self.batches) >= self.interrupt_after:
            raise KeyboardInterrupt  # like Ctrl-C or a kill while the human answers
        self.batches.append(pairs.copy())
        return self.y[pairs[:, 0]] == self.y[pairs[:, 1]]

    @property
    def pairs(self):
        if not self.batches:
            return set()
        return {tuple(sorted(p)) for p in np.concatenate(self.batches).tolist()}

    @property
    def n_asked(self):
        return sum(len(b) for b in self.batches)


def test_fit_transform_shapes_and_normalisation(data):
    model = _model(refiner="passthrough").fit(data.train)
    features = model.transform(data.query)
    assert features.shape == (len(data.query), 256)
    assert features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
    assert model.feature_dim_ == 256
    assert model.labels_.shape == (len(data.train),)
    assert isinstance(model.backbone_, torch.nn.Module) and not model.backbone_.training
    assert model.get_feature_names_out().shape == (256,)


def test_transform_accepts_every_input_form(data, tmp_path):
    model = _model(refiner="passthrough", epochs=1).fit(data.train.images)
    images = data.query.images[:3]
    paths = []
    from PIL import Image

    for i, im in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(im).save(paths[-1])
    a = model.transform(images)
    b = model.transform(paths)
    c = model.transform(data.query[:3])
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-6)


def test_unsupervised_baseline_warns(data):
    with pytest.warns(UserWarning, match="no SNPS/MPPS refinement"):
        model = _model(epochs=1).fit(data.train)
    assert model.n_queries_ == 0 and model.cost_ == 0.0
    assert model.label_memory_ is None


def test_every_oracle_call_is_valid_and_cost_is_counted(data):
    y = data.train.pids
    oracle = RecordingOracle(y, len(y))
    model = _model(epochs=3).fit(data.train, oracle=oracle)
    assert oracle.n_asked > 0
    assert model.n_queries_ == oracle.n_asked
    assert model.cost_ == pytest.approx(labeling_cost(oracle.n_asked, len(y)))
    per_epoch = sum(r["snps_queries"] + r["mpps_queries"] for r in model.history_)
    assert per_epoch == oracle.n_asked
    assert model.history_[-1]["n_queries"] == oracle.n_asked
    # A pair is never asked twice: the label memory answers repeats.
    assert len(oracle.pairs) == oracle.n_asked
    assert len(model.label_memory_) == oracle.n_asked


def test_y_gives_a_simulated_oracle_and_warmup_delays_queries(data):
    model = _model(epochs=3, warmup_epochs=2).fit(data.train, data.train.pids)
    queries = [r["snps_queries"] + r["mpps_queries"] for r in model.history_]
    assert queries[:2] == [0, 0]
    assert queries[2] > 0


def test_ablation_switches(data):
    y = data.train.pids
    only_merge = _model(refiner=MPPSMerger(delta=0.0), epochs=1).fit(data.train, y)
    assert all(r["snps_queries"] == 0 for r in only_merge.history_)
    assert only_merge.history_[0]["mpps_queries"] > 0
    only_split = _model(refiner=SNPSSplitter(k_max=2), epochs=1).fit(data.train, y)
    assert all(r["mpps_queries"] == 0 for r in only_split.history_)
    assert only_split.history_[0]["snps_queries"] > 0


def test_query_budget_is_respected(data):
    y = data.train.pids
    oracle = RecordingOracle(y, len(y))
    with pytest.warns(BudgetExhaustedWarning) as record:
        model = _model(epochs=3, max_queries=3).fit(data.train, oracle=oracle)
    assert oracle.n_asked <= 3
    assert model.n_queries_ == oracle.n_asked
    assert len([w for w in record if issubclass(w.category, BudgetExhaustedWarning)]) == 1


def test_history_records_epochs_and_evaluation(data):
    model = _model(epochs=2).fit(data.train, data.train.pids, eval_set=data)
    assert [r["epoch"] for r in model.history_] == [1, 2]
    for r in model.history_:
        for key in ("n_clusters", "n_outliers", "snps_queries", "mpps_queries", "loss",
                    "seconds", "cost", "mAP", "R1", "R5", "R10"):
            assert key in r, key
        assert 0 <= r["mAP"] <= 1 and r["R1"] <= r["R5"] <= r["R10"] <= 1
        assert np.isfinite(r["loss"])
    scores = model.evaluate((data.query, data.gallery))
    assert scores["mAP"] == pytest.approx(model.history_[-1]["mAP"], abs=1e-6)


def test_supervised_upper_bound(data):
    y = data.train.pids
    model = _model(supervised=True, epochs=1).fit(data.train, y)
    assert model.cost_ == 1.0
    assert len(np.unique(model.labels_)) == len(np.unique(y))
    np.testing.assert_array_equal(np.unique(model.labels_, return_inverse=True)[1],
                                  np.unique(y, return_inverse=True)[1])
    with pytest.raises(ValueError, match="pass y"):
        _model(supervised=True).fit(data.train)


def test_random_state_makes_cpu_runs_repeatable(data):
    y = data.train.pids
    a = _model().fit(data.train, y).transform(data.query)
    b = _model().fit(data.train, y).transform(data.query)
    np.testing.assert_array_equal(a, b)
    c = _model(random_state=1).fit(data.train, y).transform(data.query)
    assert not np.array_equal(a, c)


def test_kill_and_resume_never_asks_a_pair_twice(data, tmp_path):
    y = data.train.pids
    ckpt = tmp_path / "run"
    first = RecordingOracle(y, len(y), interrupt_after=3)
    with pytest.raises(KeyboardInterrupt):
        _model(epochs=4, checkpoint_dir=str(ckpt)).fit(data.train, oracle=first)
    assert first.n_asked > 0
    assert os.path.isfile(ckpt / "label_memory.jsonl")

    # The same directory without resume=True is refused: nothing is overwritten.
    with pytest.raises(FileExistsError, match="resume=True"):
        _model(epochs=4, checkpoint_dir=str(ckpt)).fit(data.train, oracle=first)

    second = RecordingOracle(y, len(y))
    model = _model(epochs=4, checkpoint_dir=str(ckpt)).fit(data.train, oracle=second, resume=True)
    assert not (first.pairs & second.pairs)
    assert [r["epoch"] for r in model.history_] == [1, 2, 3, 4]
    # Answers given before the kill count once in the labeling cost.
    assert model.n_queries_ == first.n_asked + second.n_asked


def test_resume_continues_from_the_last_epoch(data, tmp_path):
    y = data.train.pids
    ckpt = str(tmp_path / "run")
    straight = _model(epochs=3).fit(data.train, y)
    _model(epochs=2, checkpoint_dir=ckpt).fit(data.train, y)
    resumed = _model(epochs=3, checkpoint_dir=ckpt).fit(data.train, y, resume=True)
    assert len(resumed.history_) == 3
    # Restored model, optimizer, memory and RNG states: the same run as without a break.
    np.testing.assert_allclose(
        resumed.transform(data.query), straight.transform(data.query), atol=1e-5
    )
    assert resumed.n_queries_ == straight.n_queries_


def test_resume_with_other_settings_is_refused(data, tmp_path):
    ckpt = str(tmp_path / "run")
    _model(epochs=1, checkpoint_dir=ckpt).fit(data.train, data.train.pids)
    with pytest.raises(ValueError, match="batch_size"):
        _model(epochs=2, batch_size=8, checkpoint_dir=ckpt).fit(
            data.train, data.train.pids, resume=True
        )
    # the run's label memory answers about images 50 and up: refused first
    with pytest.raises(ValueError, match="n_samples|the data has 50 samples"):
        _model(epochs=2, checkpoint_dir=ckpt).fit(
            data.train[:50], data.train.pids[:50], resume=True
        )


def test_interrupted_checkpoint_write_keeps_the_previous_one(data, tmp_path, monkeypatch):
    from ucal.reid import _run_dir

    ckpt = str(tmp_path / "run")
    _model(epochs=1, checkpoint_dir=ckpt).fit(data.train, data.train.pids)
    before = _run_dir.RunDirectory(ckpt, resume=True).load()["epoch"]

    def crash(state, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(_run_dir.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        _model(epochs=2, checkpoint_dir=ckpt).fit(data.train, data.train.pids, resume=True)
    monkeypatch.undo()
    assert _run_dir.RunDirectory(ckpt, resume=True).load()["epoch"] == before
    assert [f for f in os.listdir(ckpt) if ".tmp" in f] == []


def test_pickles_without_oracle_and_loads_on_cpu(data, tmp_path):
    y = data.train.pids
    closure = LabelOracle(y)
    model = _model(epochs=1).fit(data.train, oracle=lambda pairs: closure(pairs))  # unpicklable
    expected = model.transform(data.query)
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    loaded = joblib.load(path)
    np.testing.assert_allclose(loaded.transform(data.query), expected, atol=1e-6)
    state = model.__getstate__()
    assert "backbone_" not in state
    assert all(t.device.type == "cpu" for t in state["_backbone_state"].values())
    assert "backbone_" in model.__dict__  # pickling left the live model alone
    assert loaded.n_queries_ == model.n_queries_ and len(loaded.label_memory_) == len(
        model.label_memory_
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU fallback")
def test_model_saved_for_cuda_loads_on_a_cpu_machine(data):
    model = _model(epochs=1, refiner="passthrough").fit(data.train)
    expected = model.transform(data.query)
    model.set_params(device="cuda")  # as if it had been trained on a GPU
    with pytest.warns(RuntimeWarning, match="CUDA is not available"):
        loaded = pickle.loads(pickle.dumps(model))
    assert next(loaded.backbone_.parameters()).device.type == "cpu"
    np.testing.assert_allclose(loaded.transform(data.query), expected, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_fit_then_cpu_state(data):  # pragma: no cover - GPU machines only
    model = _model(epochs=1, device="cuda").fit(data.train, data.train.pids)
    assert next(model.backbone_.parameters()).device.type == "cuda"
    state = model.__getstate__()
    assert all(t.device.type == "cpu" for t in state["_backbone_state"].values())


def test_custom_module_backbone(data):
    body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU())
    model = _model(backbone=body, epochs=1, refiner="passthrough").fit(data.train)
    assert model.transform(data.query).shape == (len(data.query), 8)
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(
        restored.transform(data.query), model.transform(data.query), atol=1e-6
    )


def test_bad_inputs_give_clear_errors(data):
    model = _model(epochs=1, refiner="passthrough")
    with pytest.raises(ValueError, match="empty"):
        model.fit(np.zeros((0, 32, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="y has 3 labels but X has"):
        model.fit(data.train, [1, 2, 3])
    with pytest.raises(TypeError, match="uint8"):
        model.fit(data.train.images.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        model.fit(data.train.images[..., 0])
    with pytest.raises(ValueError, match="at least 2"):
        model.fit(data.train.images[:1])
    with pytest.raises(TypeError, match="callable"):
        model.fit(data.train, oracle="human")
    with pytest.raises(TypeError, match="eval_set"):
        model.fit(data.train, eval_set=data.query)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        model.fit(data.train, resume=True)
    with pytest.raises(ValueError, match="num_instances"):
        _model(batch_size=4, num_instances=8).fit(data.train)
    with pytest.raises(NotFittedError):
        _model().transform(data.query)


@pytest.mark.parametrize(
    "params",
    [
        {"backbone": "vgg"},
        {"epochs": 0},
        {"lr": -1.0},
        {"temperature": 0},
        {"mixed_precision": "fp8"},
        {"clusterer": "dbscan"},
        {"max_queries": -1},
    ],
)
def test_invalid_parameters(params, data):
    with pytest.raises(InvalidParameterError):
        _model(**params).fit(data.train)


def test_image_size_is_checked(data):
    with pytest.raises(ValueError, match="image_size"):
        _model(image_size=(32,)).fit(data.train)


def test_is_a_scikit_learn_estimator():
    model = _model(lr=1e-3)
    cloned = clone(model)
    assert cloned.get_params()["lr"] == 1e-3
    assert cloned.get_params()["clusterer"] is not model.clusterer
    assert "backbone" in model.get_params()


def test_offline_pretrained_error_reaches_fit(data, tmp_path, monkeypatch):
    import socket

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)
    with pytest.raises(OSError, match="pretrained=False"):
        _model(backbone="resnet18", pretrained=True, refiner="passthrough").fit(data.train)


def test_split_camids_reach_the_sampler(data, monkeypatch):
    from ucal.reid import _loop

    seen = {}
    original = _loop.PseudoIdentitySampler

    def spy(labels, camids, *args):
        seen["camids"] = camids
        return original(labels, camids, *args)

    monkeypatch.setattr(_loop, "PseudoIdentitySampler", spy)
    _model(epochs=1, refiner="passthrough").fit(data.train)
    np.testing.assert_array_equal(seen["camids"], data.train.camids)
    _model(epochs=1, refiner="passthrough").fit(ReIDSplit(data.train.images, data.train.pids))
    assert seen["camids"] is None


def test_no_warning_for_the_explicit_baseline(data):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _model(epochs=1, refiner="passthrough").fit(data.train)


def test_given_label_memory_is_used_and_its_answers_are_free(data, tmp_path):
    from ucal.oracles import LabelMemory

    y = data.train.pids
    first = RecordingOracle(y, len(y))
    path = tmp_path / "answers.jsonl"
    _model(epochs=1).fit(data.train, oracle=first, label_memory=str(path))
    assert first.n_asked > 0
    memory = LabelMemory(path)
    assert len(memory) == first.n_asked
    second = RecordingOracle(y, len(y))
    model = _model(epochs=1).fit(data.train, oracle=second, label_memory=memory)
    assert model.label_memory_ is memory
    assert not (first.pairs & second.pairs)  # known pairs are never asked again
    assert model.n_queries_ == second.n_asked
    with pytest.raises(TypeError, match="label_memory"):
        _model(epochs=1).fit(data.train, y, label_memory=42)
    with pytest.raises(ValueError, match="oracle"):
        _model(epochs=1, refiner="passthrough").fit(data.train, label_memory=memory)


def test_scores_without_camera_ids_keep_true_matches():
    from ucal.datasets import ReIDSplit
    from ucal.reid._features import reid_scores

    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(10), 2)
    feats = np.eye(10)[pids] + 0.01 * rng.normal(size=(20, 10))
    images = np.zeros((10, 8, 4, 3), dtype=np.uint8)
    query = ReIDSplit(images, pids[::2])  # camids absent: -1
    gallery = ReIDSplit(images, pids[1::2])
    out = reid_scores(feats[::2].astype(np.float32), feats[1::2].astype(np.float32), query, gallery)
    assert out["mAP"] > 0.99


def test_composed_refiner_runs_both_steps_and_keeps_its_parameters(data):
    y = data.train.pids
    refiner = MPPSMerger(clusterer=SNPSSplitter(k_max=2, max_queries=1000), delta=0.0)
    model = _model(epochs=2, refiner=refiner, max_queries=10_000).fit(data.train, y)
    # both steps of the nested chain asked questions in the same epoch
    assert all(r["snps_queries"] > 0 and r["mpps_queries"] > 0 for r in model.history_)
    assert sum(r["n_splits"] for r in model.history_) > 0
    # the user's objects are never rewritten: budgets and seeds travel through fit
    params = refiner.get_params()
    assert params["max_queries"] is None and params["clusterer__max_queries"] == 1000
    assert params["clusterer__random_state"] is None
    assert not hasattr(refiner, "labels_")


def test_refiner_budget_is_what_is_left_of_max_queries(data):
    oracle = RecordingOracle(data.train.pids, len(data.train))
    with pytest.warns(BudgetExhaustedWarning, match="max_queries=7"):
        model = _model(epochs=3, max_queries=7).fit(data.train, oracle=oracle)
    assert model.n_queries_ == oracle.n_asked <= 7
    assert model.history_[-1]["n_queries"] == model.n_queries_


def test_passthrough_is_the_baseline(data):
    oracle = RecordingOracle(data.train.pids, len(data.train))
    model = _model(epochs=1, refiner="passthrough").fit(data.train, oracle=oracle)
    assert oracle.n_asked == 0 and model.n_queries_ == 0 and model.label_memory_ is None
    assert model.history_[0]["snps_queries"] == model.history_[0]["mpps_queries"] == 0


def test_a_refiners_own_base_clusterer_is_reported_unused(data):
    refiner = SNPSSplitter(clusterer=KMeans(n_clusters=2, n_init=1), k_max=2)
    with pytest.warns(UserWarning, match="base clusterer KMeans.*is not used"):
        _model(epochs=1, refiner=refiner).fit(data.train, data.train.pids)


def test_user_callback_sees_every_hook_and_stops_training_early(data):
    from ucal.reid import Callback

    class StopAfterTwo(Callback):
        def __init__(self):
            self.calls = []

        def on_fit_begin(self, loop):
            self.calls.append("fit_begin")

        def on_epoch_begin(self, loop, epoch):
            self.calls.append(f"epoch_begin {epoch}")

        def on_batch_end(self, loop, batch, loss):
            assert 0 <= batch < loop.n_batches and torch.isfinite(loss)
            self.calls.append("batch")

        def on_epoch_end(self, loop, record):
            # the built-in evaluation ran first; what we add is kept in history
            assert "mAP" in record and record is loop.history[-1]
            record["seen_by_user"] = True
            self.calls.append(f"epoch_end {record['epoch']}")
            if record["epoch"] == 2:
                loop.stop_training = True

        def on_fit_end(self, loop):
            self.calls.append("fit_end")

    callback = StopAfterTwo()
    model = _model(epochs=5, refiner="passthrough", callbacks=[callback])
    model.fit(data.train, eval_set=data)
    assert [r["epoch"] for r in model.history_] == [1, 2]
    assert all(r["seen_by_user"] for r in model.history_)
    assert callback.calls == (
        ["fit_begin", "epoch_begin 1", "batch", "batch", "epoch_end 1",
         "epoch_begin 2", "batch", "batch", "epoch_end 2", "fit_end"]
    )
    with pytest.raises(TypeError, match="Callback"):
        _model(epochs=1, callbacks=[object()]).fit(data.train)


def _halve_every_epoch(optimizer, epochs):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ("step", [1.0, 1.0, 0.1]),  # lr_step=2
        ("constant", [1.0, 1.0, 1.0]),
        ("cosine", [1.0, 0.75, 0.25]),
        (_halve_every_epoch, [1.0, 0.5, 0.25]),
    ],
)
def test_lr_schedule_is_a_parameter(data, schedule, expected):
    model = _model(epochs=3, lr=1e-3, lr_schedule=schedule, lr_step=2, refiner="passthrough")
    model.fit(data.train)
    lrs = [r["lr"] / 1e-3 for r in model.history_]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)


def test_lr_schedule_callable_must_return_a_scheduler(data):
    with pytest.raises(TypeError, match="lr_schedule"):
        _model(epochs=1, lr_schedule=lambda optimizer, epochs: 3, refiner="passthrough").fit(
            data.train
        )


# scikit-learn's generated checks feed 2D arrays, which an estimator of images
# does not take (it declares two_d_array=False, so parametrize_with_checks
# yields none for it): the API checks that need no data run here instead.
_API_CHECKS = [
    "check_no_attributes_set_in_init",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
    "check_estimator_cloneable",
    "check_estimator_repr",
    "check_estimator_tags_renamed",
    "check_valid_tag_types",
    "check_mixin_order",
    "check_do_not_raise_errors_in_init_or_set_params",
]


@pytest.mark.parametrize("check", _API_CHECKS)
def test_scikit_learn_api_checks(check):
    import sklearn.utils.estimator_checks as checks

    getattr(checks, check)("UCALReID", _model(callbacks=[]))


def test_cosine_schedule_spans_the_epochs_of_a_longer_resumed_fit(data, tmp_path):
    ckpt = str(tmp_path / "run")
    params = dict(lr=1e-3, lr_schedule="cosine", refiner="passthrough", checkpoint_dir=ckpt)
    _model(epochs=2, **params).fit(data.train)
    resumed = _model(epochs=4, **params).fit(data.train, resume=True)
    # epochs 3 and 4 of a 4-epoch cosine: (1 + cos(pi k / 4)) / 2 for k = 2, 3
    lrs = [r["lr"] / 1e-3 for r in resumed.history_[2:]]
    np.testing.assert_allclose(lrs, [0.5, (1 + np.cos(3 * np.pi / 4)) / 2], rtol=1e-6)


def test_default_refiner_applies_the_answers_then_snps_then_mpps(data):
    from ucal.active import AnswerConstraints
    from ucal.reid._pseudo_labels import default_refiner

    chain = default_refiner()
    assert isinstance(chain, MPPSMerger) and isinstance(chain.clusterer, SNPSSplitter)
    assert isinstance(chain.clusterer.clusterer, AnswerConstraints)
    model = _model(epochs=3, refiner=None).fit(data.train, data.train.pids)
    stages = {k for r in model.history_ for k in r if k.endswith("_queries")}
    assert {"constraints_queries", "snps_queries", "mpps_queries"} <= stages
    # answers of earlier epochs were settled from the memory in later ones
    assert sum(r.get("mpps_inferred", 0) + r.get("snps_inferred", 0)
               for r in model.history_[1:]) > 0


def test_paper_preset_is_the_paper_literally():
    paper = UCALReID.from_preset("paper", backbone="small", epochs=3)
    assert paper.epochs == 3 and paper.backbone == "small"  # overrides win
    assert paper.iters_per_epoch == 400 and paper.warmup_epochs == 15
    assert paper.lr_schedule == "step" and paper.lr_step == 20 and paper.lr_gamma == 0.1
    assert paper.memory_inference is False and paper.query_pacing == "greedy"
    snps = paper.refiner.clusterer
    assert paper.refiner.cluster_inference is False and paper.refiner.confirm_size is None
    assert snps.cluster_inference is False and snps.k_max_rule == "floor"
    assert snps.clusterer is None  # no answers applied to new clusterings
    # no questions before training, no model selection on answers
    assert paper.calibrator is None and paper.validation_size == 0
    assert paper.keep_best is False
    assert UCALReID.from_preset("default").get_params() == UCALReID().get_params()
    with pytest.raises(ValueError, match="Unknown preset 'spcl'.*default.*paper"):
        UCALReID.from_preset("spcl")


def test_neighbors_preset_is_the_default_asking_about_neighbours_early():
    from ucal.active import AnswerConstraints, MPPSMerger, SNPSSplitter

    early = UCALReID.from_preset("neighbors", epochs=3)
    assert early.epochs == 3 and early.query_pacing == "greedy"
    mpps = early.refiner
    assert isinstance(mpps, MPPSMerger) and mpps.selection == "neighbors"
    assert isinstance(mpps.clusterer, SNPSSplitter)
    assert isinstance(mpps.clusterer.clusterer, AnswerConstraints)
    # everything else is the default's, the chain's other parameters included
    default = MPPSMerger(clusterer=SNPSSplitter(clusterer=AnswerConstraints()))
    assert {k: v for k, v in mpps.get_params(deep=False).items() if k != "clusterer"} == {
        k: v for k, v in default.set_params(selection="neighbors").get_params(deep=False).items()
        if k != "clusterer"}
    others = {k: v for k, v in early.get_params(deep=False).items()
              if k not in ("refiner", "query_pacing", "epochs")}
    assert others == {k: v for k, v in UCALReID().get_params(deep=False).items()
                      if k not in ("refiner", "query_pacing", "epochs")}
    # each call builds its own refiner: fitting one estimator cannot touch another's
    assert UCALReID.from_preset("neighbors").refiner is not mpps


def test_even_pacing_spreads_the_budget_over_the_refinement_epochs(data):
    y = data.train.pids
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BudgetExhaustedWarning)
        even = _model(epochs=4, max_queries=40).fit(data.train, y)
        greedy = _model(epochs=4, max_queries=40, query_pacing="greedy").fit(data.train, y)
    per_epoch = [r["n_queries"] for r in even.history_]
    asked = np.diff([0] + per_epoch)
    # epoch e may spend at most ceil(left / epochs to come)
    left = 40
    for e, n in enumerate(asked):
        assert n <= int(np.ceil(left / (4 - e)))
        left -= n
    assert greedy.history_[0]["n_queries"] >= asked[0]


def test_memory_inference_is_a_parameter(data):
    exact = _model(epochs=1, memory_inference=False).fit(data.train, data.train.pids)
    assert exact.label_memory_.infer is False
    assert _model(epochs=1).fit(data.train, data.train.pids).label_memory_.infer is True
