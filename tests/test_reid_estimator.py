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
from ucal.datasets import ReIDSplit, make_persons  # noqa: E402
from ucal.metrics import labeling_cost  # noqa: E402
from ucal.oracles import BudgetExhaustedWarning, LabelOracle  # noqa: E402
from ucal.reid import UCALReID  # noqa: E402

SIZE = (32, 16)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models: one thread avoids OpenMP spinning against other processes on a shared CPU.
    import torch as _torch

    previous = _torch.get_num_threads()
    _torch.set_num_threads(1)
    yield
    _torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def data():
    return make_persons(
        n_identities=8,
        n_test_identities=3,
        n_images_per_camera=(3, 4),
        image_size=SIZE,
        random_state=0,
    )


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
        splitter=SNPSSplitter(k_max=2),
        merger=MPPSMerger(delta=0.0),
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
    model = _model(snps=False, mpps=False).fit(data.train)
    features = model.transform(data.query)
    assert features.shape == (len(data.query), 256)
    assert features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
    assert model.feature_dim_ == 256
    assert model.labels_.shape == (len(data.train),)
    assert isinstance(model.backbone_, torch.nn.Module) and not model.backbone_.training
    assert model.get_feature_names_out().shape == (256,)


def test_transform_accepts_every_input_form(data, tmp_path):
    model = _model(snps=False, mpps=False, epochs=1).fit(data.train.images)
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
    only_merge = _model(snps=False, epochs=1).fit(data.train, y)
    assert all(r["snps_queries"] == 0 for r in only_merge.history_)
    assert only_merge.history_[0]["mpps_queries"] > 0
    only_split = _model(mpps=False, epochs=1).fit(data.train, y)
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
    with pytest.raises(ValueError, match="n_samples"):
        _model(epochs=2, checkpoint_dir=ckpt).fit(
            data.train[:50], data.train.pids[:50], resume=True
        )


def test_interrupted_checkpoint_write_keeps_the_previous_one(data, tmp_path, monkeypatch):
    from ucal.reid import _checkpoint

    ckpt = str(tmp_path / "run")
    _model(epochs=1, checkpoint_dir=ckpt).fit(data.train, data.train.pids)
    before = _checkpoint.load_checkpoint(ckpt)["epoch"]

    def crash(state, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(_checkpoint.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        _model(epochs=2, checkpoint_dir=ckpt).fit(data.train, data.train.pids, resume=True)
    monkeypatch.undo()
    assert _checkpoint.load_checkpoint(ckpt)["epoch"] == before
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
    model = _model(epochs=1, snps=False, mpps=False).fit(data.train)
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
    model = _model(backbone=body, epochs=1, snps=False, mpps=False).fit(data.train)
    assert model.transform(data.query).shape == (len(data.query), 8)
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(
        restored.transform(data.query), model.transform(data.query), atol=1e-6
    )


def test_bad_inputs_give_clear_errors(data):
    model = _model(epochs=1, snps=False, mpps=False)
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
        _model(backbone="resnet18", pretrained=True, snps=False, mpps=False).fit(data.train)


def test_split_camids_reach_the_sampler(data, monkeypatch):
    from ucal.reid import _estimator

    seen = {}
    original = _estimator.PseudoIdentitySampler

    def spy(labels, camids, *args):
        seen["camids"] = camids
        return original(labels, camids, *args)

    monkeypatch.setattr(_estimator, "PseudoIdentitySampler", spy)
    _model(epochs=1, snps=False, mpps=False).fit(data.train)
    np.testing.assert_array_equal(seen["camids"], data.train.camids)
    _model(epochs=1, snps=False, mpps=False).fit(ReIDSplit(data.train.images, data.train.pids))
    assert seen["camids"] is None


def test_no_warning_for_the_explicit_baseline(data):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _model(epochs=1, snps=False, mpps=False).fit(data.train)


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
        _model(epochs=1, snps=False, mpps=False).fit(data.train, label_memory=memory)


def test_scores_without_camera_ids_keep_true_matches():
    from ucal.datasets import ReIDSplit
    from ucal.reid._estimator import _scores

    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(10), 2)
    feats = np.eye(10)[pids] + 0.01 * rng.normal(size=(20, 10))
    images = np.zeros((10, 8, 4, 3), dtype=np.uint8)
    query = ReIDSplit(images, pids[::2])  # camids absent: -1
    gallery = ReIDSplit(images, pids[1::2])
    out = _scores(feats[::2].astype(np.float32), feats[1::2].astype(np.float32), query, gallery)
    assert out["mAP"] > 0.99
