"""Answers held out to validate every epoch, the best-epoch restore, and calibration."""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ucal import SelfPacedDBSCAN  # noqa: E402
from ucal.active import ClusteringCalibrator, MPPSMerger, SNPSSplitter  # noqa: E402
from ucal.reid import BestEpoch, Callback, DegenerateClusteringWarning, UCALReID  # noqa: E402

from .test_estimator import SIZE, RecordingOracle  # noqa: E402


@pytest.fixture(scope="module")
def data():
    """More images than the trainer tests' data: a tenth of them may sit out as validation."""
    from ucal.datasets import make_persons

    return make_persons(n_identities=24, n_test_identities=3, n_images_per_camera=(3, 4),
                        image_size=SIZE, random_state=0)


def _model(**params):
    defaults = dict(
        backbone="tiny",
        pretrained=False,
        image_size=SIZE,
        epochs=2,
        warmup_epochs=0,
        batch_size=16,
        iters_per_epoch=2,
        inference_batch_size=64,
        clusterer=SelfPacedDBSCAN(k1=6, k2=2, min_samples=2),
        refiner=MPPSMerger(clusterer=SNPSSplitter(k_max=2), delta=0.0),
        validation_size=15,  # a tenth of this data's images at most
        random_state=0,
    )
    defaults.update(params)
    return UCALReID(**defaults)


def _pairs(memory):
    pairs, _ = memory.to_arrays()
    return {tuple(p) for p in pairs.tolist()}


def test_validation_answers_are_held_out_and_scored_every_epoch(data, tmp_path):
    y = data.train.pids
    oracle = RecordingOracle(y, len(y))
    model = _model(
        epochs=2, checkpoint_dir=str(tmp_path / "run"),
        calibrator=ClusteringCalibrator(param_grid={"eps": [0.4, 0.6]}, n_queries=20),
    ).fit(data.train, oracle=oracle, eval_set=data)
    held = _pairs(model.validation_memory_)
    assert len(held) == 15
    # never among the answers the clustering and refiners are given
    assert not held & _pairs(model.label_memory_)
    assert (tmp_path / "run" / "validation_memory.jsonl").stat().st_size > 0
    # epoch 0 is the starting network; every epoch has its validation figure
    assert [r["epoch"] for r in model.history_] == [0, 1, 2]
    start = model.history_[0]
    assert start["val_pairs"] == 15 and start["validation_queries"] == 15
    assert "mAP" in start and "calibrated" in start
    for record in model.history_:
        assert 0 <= record["val_auc"] <= 1 and 0 <= record["val_accuracy"] <= 1
    # the questions count in the cost, each asked once
    assert model.n_queries_ == oracle.n_asked == len(oracle.pairs)
    assert start["n_queries"] == 15 + start["calibration_queries"]


def test_validation_scores_use_the_held_out_pairs_only(data, monkeypatch):
    import ucal.metrics

    seen = []
    original = ucal.metrics.pair_verification_scores

    def spy(X, pairs, same):
        seen.append(len(same))
        return original(X, pairs, same)

    monkeypatch.setattr(ucal.metrics, "pair_verification_scores", spy)
    model = _model(epochs=1, validation_size=4).fit(data.train, data.train.pids)
    assert seen == [4, 4]  # epoch 0 and epoch 1, on the 4 held-out answers
    assert len(model.validation_memory_) == 4


def test_the_best_network_is_restored_and_said(data, caplog):
    class Planted(Callback):
        """Plants a score that peaks at epoch 1 and keeps each epoch's weights."""

        def __init__(self):
            self.weights = {}

        def on_epoch_end(self, loop, record):
            record["score"] = {1: 0.9, 2: 0.4, 3: 0.5}[loop.epoch]
            self.weights[loop.epoch] = {
                k: v.clone() for k, v in loop.net.state_dict().items()
            }

    planted = Planted()
    model = _model(epochs=3, validation_size=0,
                   callbacks=[planted, BestEpoch(monitor="score")])
    with caplog.at_level("INFO"):
        model.fit(data.train, data.train.pids)
    assert model.best_epoch_ == 1
    for key, value in model.backbone_.state_dict().items():
        torch.testing.assert_close(value.cpu(), planted.weights[1][key].cpu())
    assert "Restored the network of epoch 1" in caplog.text
    # restore=False keeps the last network, the best is still reported in the log
    last = Planted()
    kept = _model(epochs=3, validation_size=0,
                  callbacks=[last, BestEpoch(monitor="score", restore=False)])
    kept.fit(data.train, data.train.pids)
    assert kept.best_epoch_ is None
    for key, value in kept.backbone_.state_dict().items():
        torch.testing.assert_close(value.cpu(), last.weights[3][key].cpu())


def test_best_epoch_min_delta_keeps_a_last_epoch_within_it_and_patience_stops(data):
    class Planted(Callback):
        def __init__(self, values):
            self.values = values

        def on_epoch_end(self, loop, record):
            record["score"] = self.values[loop.epoch]

    close = _model(epochs=2, validation_size=0, callbacks=[
        Planted({1: 0.80, 2: 0.79}), BestEpoch(monitor="score", min_delta=0.02)])
    close.fit(data.train, data.train.pids)
    assert close.best_epoch_ == 2  # within min_delta of the best: the most trained is kept
    stop = _model(epochs=4, validation_size=0, callbacks=[
        Planted({1: 0.8, 2: 0.7, 3: 0.6, 4: 0.9}), BestEpoch(monitor="score", patience=2)])
    stop.fit(data.train, data.train.pids)
    assert [r["epoch"] for r in stop.history_] == [1, 2, 3]
    assert stop.best_epoch_ == 1
    with pytest.raises(ValueError, match="mode"):
        BestEpoch(mode="up")


def test_best_epoch_significance_weighs_the_fall_by_its_standard_error(data):
    class Planted(Callback):
        def __init__(self, values, se):
            self.values, self.se = values, se

        def on_epoch_end(self, loop, record):
            record["score"] = self.values[loop.epoch]
            record["score_se"] = self.se

    def held(se, significance):
        model = _model(epochs=2, validation_size=0, callbacks=[
            Planted({1: 0.80, 2: 0.72}, se),
            BestEpoch(monitor="score", min_delta=0.02, significance=significance)])
        return model.fit(data.train, data.train.pids).best_epoch_

    assert held(0.05, 2.0) == 2  # a fall of 0.08 is within 2 standard errors of 0.05
    assert held(0.01, 2.0) == 1  # ...not within 2 of 0.01: the best is restored
    assert held(0.05, None) == 1  # min_delta alone
    with pytest.raises(ValueError, match="significance"):
        BestEpoch(significance=-1)


def test_auc_standard_error_matches_the_spread_of_simulated_aucs():
    from scipy.stats import norm, rankdata

    from ucal.metrics._verification import auc_standard_error

    rng = np.random.default_rng(0)
    n_pos, n_neg, shift = 30, 60, norm.ppf(0.8) * np.sqrt(2)  # binormal, AUC 0.8
    pos = rng.normal(shift, 1, size=(4000, n_pos))
    neg = rng.normal(0, 1, size=(4000, n_neg))
    ranks = rankdata(np.hstack([pos, neg]), axis=1)[:, :n_pos].sum(axis=1)
    aucs = (ranks - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    assert aucs.mean() == pytest.approx(0.8, abs=0.01)
    assert auc_standard_error(0.8, n_pos, n_neg) == pytest.approx(aucs.std(), rel=0.1)
    assert auc_standard_error(1.0, 10, 10) == 0.0


def test_the_starting_network_can_be_the_best(data):
    class Sabotage(Callback):
        """Makes training destroy the network: validation must send it back to epoch 0."""

        def on_epoch_end(self, loop, record):
            with torch.no_grad():
                for p in loop.net.parameters():
                    p.normal_()
            record["val_auc"] = 0.0  # what the wrecked network scores
            record["val_auc_se"] = 0.0  # ...without doubt (Hanley-McNeil at AUC 0)

    start_weights = {}

    class Keep(Callback):
        def on_fit_begin(self, loop):
            start_weights.update({k: v.clone() for k, v in loop.net.state_dict().items()})
            # 15 pairs give the start a wide standard error: plant a start clearly better
            # than the wreck, so that the significance rule has a fall to act on
            loop.history[0].update(val_auc=0.9, val_auc_se=0.05)

    model = _model(epochs=2, callbacks=[Keep(), Sabotage()])
    model.fit(data.train, data.train.pids)
    assert model.best_epoch_ == 0
    for key, value in model.backbone_.state_dict().items():
        torch.testing.assert_close(value.cpu(), start_weights[key].cpu())


def test_resume_keeps_the_validation_set_and_the_best_epoch(data, tmp_path):
    y = data.train.pids
    run = str(tmp_path / "run")
    first = RecordingOracle(y, len(y))
    _model(epochs=2, checkpoint_dir=run).fit(data.train, oracle=first)
    again = RecordingOracle(y, len(y))
    model = _model(epochs=3, checkpoint_dir=run).fit(data.train, oracle=again, resume=True)
    assert not again.pairs & first.pairs  # nothing asked twice, validation included
    assert [r["epoch"] for r in model.history_] == [0, 1, 2, 3]
    assert len(model.validation_memory_) == 15
    assert model.best_epoch_ is not None


def test_calibration_sets_the_clusterer_and_counts_its_questions(data):
    y = data.train.pids
    oracle = RecordingOracle(y, len(y))
    calibrator = ClusteringCalibrator(param_grid={"eps": [0.3, 0.5, 0.7]}, n_queries=25)
    model = _model(epochs=1, validation_size=0, calibrator=calibrator).fit(
        data.train, oracle=oracle
    )
    assert model.calibrated_params_["eps"] in (0.3, 0.5, 0.7)
    # pairs drawn within the candidates' clusters: 25 at most, duplicates asked once
    assert 0 < model.history_[0]["calibration_queries"] <= 25
    assert model.n_queries_ == oracle.n_asked
    assert calibrator.get_params()["clusterer"] is None  # the user's object is untouched
    off = _model(epochs=1, validation_size=0).fit(data.train, y)  # off by default
    assert off.calibrated_params_ is None and off.history_[0]["epoch"] == 1


def test_questions_before_training_respect_max_queries(data):
    y = data.train.pids
    oracle = RecordingOracle(y, len(y))
    with pytest.warns(UserWarning):
        model = _model(epochs=1, max_queries=3, calibrator=ClusteringCalibrator()).fit(
            data.train, oracle=oracle
        )
    assert oracle.n_asked <= 3 and model.n_queries_ == oracle.n_asked
    assert len(model.validation_memory_) == 3  # the budget ran out first
    assert model.history_[0]["calibration_queries"] == 0


def test_a_degenerate_clustering_is_reported_once(data):
    class Nothing:
        """A clusterer that clusters nothing."""

        def fit(self, X, y=None):
            self.labels_ = np.full(len(X), -1)
            return self

        def get_params(self, deep=True):
            return {}

        def set_params(self, **params):
            return self

    match = "degenerate: 100 % of the images"
    with pytest.warns(DegenerateClusteringWarning, match=match) as caught:
        _model(epochs=2, clusterer=Nothing(), refiner="passthrough").fit(data.train)
    assert sum("degenerate" in str(w.message) for w in caught) == 1


class _FixedLabels:
    """A clusterer that returns the labels it was given, whatever the features."""

    def __init__(self, labels):
        self.labels = labels

    def fit(self, X, y=None):
        self.labels_ = np.asarray(self.labels)
        return self

    def get_params(self, deep=True):
        return {"eps": 0.75}


@pytest.mark.parametrize("sizes, outliers, problem", [
    ([60, 20, 10, 10], 0, "the largest of its 4 clusters holds 60 %"),  # under 10 clusters
    ([95], 5, "its only cluster holds 95 %"),  # SpCL's eps 0.75 on a good start
    ([51], 49, "its only cluster holds 51 %"),  # outliers under the 80 % rule
    ([30] * 2 + [5] * 8, 0, "its 3 largest clusters of 10 hold 65 %"),
    ([25] * 4, 0, None),  # four people, equally seen: nothing to report
    ([50, 50], 0, None),  # half is not more than half
])
def test_a_clustering_is_degenerate_by_the_documented_rules(sizes, outliers, problem):
    from ucal.reid._pseudo_labels import PseudoLabeler

    labels = np.concatenate([np.full(size, c) for c, size in enumerate(sizes)]
                            + [np.full(outliers, -1)])
    labeler = PseudoLabeler(_FixedLabels(labels), None, None, None, warmup_epochs=0,
                            max_queries=None, seed=0)
    features = np.zeros((len(labels), 4), dtype=np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        labeler(features, 0, {})
        labeler(features, 1, {})  # once per fit
    messages = [str(w.message) for w in caught if w.category is DegenerateClusteringWarning]
    if problem is None:
        assert messages == []
    else:
        assert len(messages) == 1 and f"degenerate: {problem}" in messages[0]
        assert "eps=0.75" in messages[0]


def test_an_oracle_that_records_itself_keeps_validation_answers_apart(data):
    # Like the web page: the oracle writes each answer into its own label_memory.
    from ucal.oracles import LabelMemory, LabelOracle

    class SelfRecording:
        def __init__(self, y, memory):
            self.truth = LabelOracle(y)
            self.label_memory = memory

        def __call__(self, pairs):
            answers = self.truth(pairs)
            self.label_memory.record(pairs, answers)
            return answers

    memory = LabelMemory()
    oracle = SelfRecording(data.train.pids, memory)
    model = _model(epochs=1).fit(
        data.train, oracle=oracle, label_memory=memory
    )
    held = _pairs(model.validation_memory_)
    assert len(held) == 15 and not held & _pairs(memory)
    assert oracle.label_memory is memory  # put back after the validation questions


def test_held_out_answers_are_saved_beside_a_given_answers_file(data, tmp_path):
    from ucal.oracles import LabelMemory

    answers = tmp_path / "answers.jsonl"
    model = _model(epochs=1).fit(data.train, data.train.pids, label_memory=str(answers))
    beside = tmp_path / "answers.validation.jsonl"
    assert len(LabelMemory(beside)) == len(model.validation_memory_) == 15
    # the end-of-fit check's answers are held out beside it too
    checked = len(model.start_check_memory_)
    if checked:
        assert len(LabelMemory(tmp_path / "answers.start_check.jsonl")) == checked
    assert len(LabelMemory(answers)) + 15 + checked == model.n_queries_


def test_validation_images_are_never_trained_on(data, monkeypatch):
    from ucal.reid import _loop

    trained = []
    original = _loop.PseudoIdentitySampler

    def spy(labels, camids, *args):
        trained.append(np.asarray(labels).copy())
        return original(labels, camids, *args)

    monkeypatch.setattr(_loop, "PseudoIdentitySampler", spy)
    model = _model(epochs=2).fit(data.train, data.train.pids)
    held_out = np.unique(model.validation_memory_.to_arrays()[0])
    assert len(trained) == 2 and len(held_out) > 0
    for labels in trained:
        assert (labels[held_out] == -1).all()  # -1: in no batch, no class
        assert (np.delete(labels, held_out) >= 0).all()  # every other image is trained on


def test_supervised_resume_before_any_checkpoint(data, tmp_path):
    # No pseudo labels, no oracle: resuming an empty run directory just trains.
    model = _model(epochs=1, supervised=True, checkpoint_dir=str(tmp_path / "run"))
    model.fit(data.train, data.train.pids, resume=True)
    assert model.n_queries_ == len(data.train) * (len(data.train) - 1) // 2


def test_validation_keeps_at_most_a_tenth_of_the_images_out_of_training(data):
    n = len(data.train)
    model = _model(epochs=1, validation_size=500).fit(data.train, data.train.pids)
    pairs = model.validation_memory_.to_arrays()[0]
    assert len(model.validation_memory_) == n // 20
    assert len(np.unique(pairs)) <= n // 10


def test_not_sure_validation_answers_are_held_out_too_and_released_after(data):
    from ucal.oracles import LabelMemory, LabelOracle

    truth = LabelOracle(data.train.pids)
    batches = []

    def unsure_first(pairs):
        batches.append(set(map(tuple, np.sort(pairs, axis=1).tolist())))
        if len(batches) == 1:  # the validation batch: "not sure" to everything
            return np.full(len(pairs), -1)
        return truth(pairs)

    memory = LabelMemory()
    _model(epochs=2).fit(data.train, oracle=unsure_first, label_memory=memory)
    assert len(batches) > 1 and len(batches[0]) == 15
    assert not batches[0] & set().union(*batches[1:])  # never asked again
    assert len(memory.held_out()) == 0  # released at the end of the fit


def test_resume_with_another_validation_size_is_refused(data, tmp_path):
    run = str(tmp_path / "run")
    _model(epochs=1, checkpoint_dir=run).fit(data.train, data.train.pids)
    with pytest.raises(ValueError, match="validation_size"):
        _model(epochs=2, checkpoint_dir=run, validation_size=0).fit(
            data.train, data.train.pids, resume=True
        )


def test_best_epoch_state_of_another_monitor_is_not_used():
    cb = BestEpoch(monitor="mAP")
    cb.load_state_dict({"monitor": "val_auc", "mode": "max", "best_epoch": 3,
                        "best_value": 0.9, "weights": {}})
    assert cb.best_epoch is None
    cb.load_state_dict({"monitor": "mAP", "mode": "max", "best_epoch": 3,
                        "best_value": 0.4, "weights": {}})
    assert cb.best_epoch == 3
