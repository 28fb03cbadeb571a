"""Never worse than the start: the held network against the start network on fair pairs."""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ucal.oracles import LabelOracle  # noqa: E402
from ucal.reid import Callback, UCALReID, save_weights  # noqa: E402
from ucal.reid._start_check import (  # noqa: E402
    FEW_ANCHORS,
    SIGNIFICANCE,
    SIGNIFICANCE_FEW,
    draw_questions,
    duel,
    significance,
)

from .test_estimator import RecordingOracle  # noqa: E402


def _answers(hits_held, hits_start, n_anchors, rng, per_side=3):
    """Per anchor ``per_side`` candidates of each network, each "same" with the given rate."""
    anchors = np.repeat(np.arange(n_anchors), 2 * per_side)
    held_side = np.tile([True] * per_side + [False] * per_side, n_anchors)
    rate = np.where(held_side, hits_held, hits_start)
    return anchors, held_side, rng.rand(len(anchors)) < rate


def test_duel_keeps_the_held_network_only_when_it_clearly_wins():
    rng = np.random.RandomState(0)
    anchors, held_side, same = _answers(0.6, 0.1, 40, rng)
    won = duel(anchors, held_side, same)
    assert won["keep"] == "held" and won["hits_held"] > 3 * won["hits_start"]
    assert won["n_anchors"] == 40 and won["n_pairs"] == 240
    assert won["hits_held"] == int(same[held_side].sum())
    # the same answers with the networks' roles swapped: the start stays
    assert duel(anchors, ~held_side, same)["keep"] == "start"
    # as many hits on both sides: no evidence that training helped
    tie = duel(anchors, held_side, np.ones(240, bool))
    assert tie["keep"] == "start" and tie["mean_diff"] == 0
    # the rule is the documented one, on a close call either way
    for seed in range(20):
        result = duel(*_answers(0.35, 0.3, 40, np.random.RandomState(seed)))
        per_anchor = result["mean_diff"]
        assert (result["keep"] == "held") == (per_anchor > SIGNIFICANCE * result["diff_se"])
    # the difference per anchor and its standard error, by hand
    anchors = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    held_side = np.tile([True, False], 5)
    same = np.array([1, 0, 1, 0, 1, 1, 0, 0, 1, 0], bool)
    result = duel(anchors, held_side, same)
    diff = np.array([1, 1, 0, 0, 1])
    assert result["mean_diff"] == pytest.approx(diff.mean())
    assert result["diff_se"] == pytest.approx(diff.std(ddof=1) / np.sqrt(5))
    assert result["keep"] == "held"
    # with few anchors the held network must win by SIGNIFICANCE_FEW standard errors
    assert significance(FEW_ANCHORS - 1) == SIGNIFICANCE_FEW > SIGNIFICANCE == significance(FEW_ANCHORS)
    anchors6 = np.repeat(np.arange(6), 2)
    held6 = np.tile([True, False], 6)
    # per-anchor differences 1, 1, 0, 0, 0, 0: mean 0.33, standard error 0.21
    same6 = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1], bool)
    close = duel(anchors6, held6, same6)
    assert close["diff_se"] == pytest.approx(np.std([1, 1, 0, 0, 0, 0], ddof=1) / np.sqrt(6))
    assert SIGNIFICANCE * close["diff_se"] < close["mean_diff"] < SIGNIFICANCE_FEW * close["diff_se"]
    assert close["keep"] == "start"
    # at the boundary: differences 1, 1, 0, 0, ... win by about 1.45 standard
    # errors over FEW_ANCHORS anchors (held) and over one anchor fewer (start)
    for n, kept in ((FEW_ANCHORS, "held"), (FEW_ANCHORS - 1, "start")):
        diffs = np.array([1, 1] + [0] * (n - 2), bool)
        edge = duel(np.repeat(np.arange(n), 2), np.tile([True, False], n),
                    np.column_stack([diffs, np.zeros(n, bool)]).ravel())
        ratio = edge["mean_diff"] / edge["diff_se"]
        assert SIGNIFICANCE < ratio < SIGNIFICANCE_FEW and edge["keep"] == kept, (n, ratio)
    # fewer anchors than MIN_ANCHORS show nothing, whatever they say
    few = duel(anchors[:8], held_side[:8], same[:8])
    assert few["keep"] == "start" and few["n_anchors"] == 4
    empty = duel(np.array([], int), np.array([], bool), np.array([], bool))
    assert empty["keep"] == "start" and empty["n_anchors"] == 0
    with pytest.raises(ValueError, match="one entry per pair"):
        duel(anchors, held_side[:3], same)


def test_each_anchor_gets_the_candidates_the_networks_disagree_on():
    rng = np.random.RandomState(1)
    start, held = rng.randn(2, 60, 8)
    start /= np.linalg.norm(start, axis=1, keepdims=True)
    held /= np.linalg.norm(held, axis=1, keepdims=True)
    held[20] = start[20]  # one anchor on which the networks agree: nothing to ask
    held[30:] = start[30:]
    anchors, candidates = np.array([3, 10, 20]), np.arange(30, 60)
    pairs, held_side = draw_questions(start, held, anchors, candidates, 100, set(),
                                      random_state=0, k=3)
    assert 20 not in pairs[:, 0]
    for a in (3, 10):
        nearest = [set(candidates[np.argsort(-(f[candidates] @ f[a]))[:3]].tolist())
                   for f in (start, held)]
        mine = pairs[:, 0] == a
        assert set(pairs[mine & ~held_side, 1].tolist()) == nearest[0] - nearest[1]
        assert set(pairs[mine & held_side, 1].tolist()) == nearest[1] - nearest[0]
        assert (mine & held_side).sum() == (mine & ~held_side).sum() > 0
    again = draw_questions(start, held, anchors, candidates, 100, set(), random_state=0, k=3)
    np.testing.assert_array_equal(pairs, again[0])
    np.testing.assert_array_equal(held_side, again[1])
    # the budget counts only pairs not known yet, and anchors come whole
    first = pairs[pairs[:, 0] == pairs[0, 0]]
    assert len(draw_questions(start, held, anchors, candidates, len(first), set(), 0, k=3)[0]) \
        == len(first)
    assert len(draw_questions(start, held, anchors, candidates, 0, set(), 0, k=3)[0]) == 0
    # a resumed check: what was asked before costs nothing, so no budget is needed
    known = {(min(p), max(p)) for p in pairs.tolist()}
    np.testing.assert_array_equal(
        draw_questions(start, held, anchors, candidates, 0, known, 0, k=3)[0], pairs)


def _params(weights, **params):
    defaults = dict(backbone="tiny", pretrained=weights, image_size=(32, 16), epochs=2,
                    warmup_epochs=0, batch_size=16, iters_per_epoch=3, validation_size=12,
                    inference_batch_size=64, random_state=0)
    return {**defaults, **params}


@pytest.fixture(scope="module")
def data():
    """Persons enough for 12 held-out pairs of both answers."""
    from ucal.datasets import make_persons

    return make_persons(n_identities=20, n_test_identities=4, n_images_per_camera=(3, 4),
                        image_size=(32, 16), random_state=0)


@pytest.fixture(scope="module")
def good_start(data, tmp_path_factory):
    """Weights trained on the true identities: a start that training can only spoil."""
    model = UCALReID(**_params(False, supervised=True, epochs=6, iters_per_epoch=6))
    model.fit(data.train, data.train.pids)
    path = tmp_path_factory.mktemp("start") / "start.pt"
    save_weights(model.backbone_, path)
    return str(path)


class Wreck(Callback):
    """Wrecks the network after the last epoch (every image the same embedding: its
    convolutions zeroed) and plants a perfect validation AUC there.

    The best-epoch rule then holds the wrecked network: only the end-of-fit
    check can give the start back.
    """

    def on_epoch_end(self, loop, record):
        if loop.epoch == loop.estimator.epochs:
            with torch.no_grad():
                for module in loop.net.modules():
                    if isinstance(module, torch.nn.Conv2d):
                        module.weight.zero_()
            record["val_auc"], record["val_auc_se"] = 1.0, 0.0


@pytest.mark.filterwarnings("ignore::ucal.oracles.BudgetExhaustedWarning")
def test_a_wrecked_network_gives_the_start_back(data, good_start, monkeypatch):
    from ucal.reid import _start_check

    monkeypatch.setattr(_start_check, "MIN_QUESTIONS", 150)  # anchors enough to show it
    y = data.train.pids
    oracle = RecordingOracle(y, len(y))
    model = UCALReID(**_params(good_start, max_queries=1500, callbacks=[Wreck()])).fit(
        data.train, oracle=oracle, eval_set=data)
    check = model.start_check_
    assert check is not None and check["keep"] == "start" and model.best_epoch_ == 0, check
    assert check["n_anchors"] >= 5 and check["hits_start"] > check["hits_held"]
    # the start network itself, scored as at epoch 0
    assert model.evaluate(data)["mAP"] == pytest.approx(model.history_[0]["mAP"], abs=1e-6)
    # the check's questions are held out apart, inside the budget, counted, never repeated
    checked = {tuple(p) for p in model.start_check_memory_.to_arrays()[0].tolist()}
    trained = {tuple(p) for p in model.label_memory_.to_arrays()[0].tolist()}
    held = {tuple(p) for p in model.validation_memory_.to_arrays()[0].tolist()}
    assert checked and not checked & (trained | held)
    assert model.n_queries_ == oracle.n_asked == len(oracle.pairs) <= 1500


def test_a_resumed_finished_fit_asks_nothing_again(data, good_start, tmp_path):
    y = data.train.pids
    run = str(tmp_path / "run")
    first = RecordingOracle(y, len(y))
    done = UCALReID(**_params(good_start, checkpoint_dir=run, callbacks=[Wreck()])).fit(
        data.train, oracle=first)
    assert done.start_check_ is not None
    assert os.path.getsize(os.path.join(run, "start_check.jsonl")) > 0
    again = RecordingOracle(y, len(y))
    resumed = UCALReID(**_params(good_start, checkpoint_dir=run, callbacks=[Wreck()])).fit(
        data.train, oracle=again, resume=True)
    assert again.n_asked == 0
    np.testing.assert_equal(resumed.start_check_, done.start_check_)  # NaN == NaN here
    assert resumed.n_queries_ == done.n_queries_ == first.n_asked


def test_no_check_without_the_built_in_best_epoch_rule(data, good_start):
    from ucal.reid import BestEpoch

    y = data.train.pids
    for params in ({"keep_best": False}, {"callbacks": [BestEpoch(monitor="val_accuracy")]},
                   {"validation_size": 0}):
        model = UCALReID(**_params(good_start, lr=0.5, **params)).fit(
            data.train, oracle=LabelOracle(y))
        assert model.start_check_ is None


@pytest.mark.filterwarnings("ignore::ucal.oracles.BudgetExhaustedWarning")
def test_the_check_has_its_share_of_the_budget_or_does_not_run(data, good_start, caplog):
    y = data.train.pids
    oracle = RecordingOracle(y, len(y))
    model = UCALReID(**_params(good_start, max_queries=400, callbacks=[Wreck()])).fit(
        data.train, oracle=oracle)
    # a tenth of the budget is the check's, whatever refinement would have spent
    assert model.start_check_ is not None
    assert 0 < len(model.start_check_memory_) <= 40
    assert model.n_queries_ == oracle.n_asked <= 400
    # a tenth too small to show anything: no check, and refinement may spend it all
    small = RecordingOracle(y, len(y))
    with caplog.at_level("INFO", logger="ucal.reid._loop"):
        model = UCALReID(**_params(good_start, max_queries=100, callbacks=[Wreck()])).fit(
            data.train, oracle=small)
    assert model.start_check_ is None and model.best_epoch_ == 2
    assert "too few questions to check" in caplog.text
    assert model.n_queries_ == small.n_asked <= 100


class UnsureAfterTraining(RecordingOracle):
    """True answers during training; "not sure" to every question after the last epoch."""

    def __init__(self, y, n_samples, last_epoch):
        super().__init__(y, n_samples)
        self.last_epoch = last_epoch
        self.loop = None

    def __call__(self, pairs):
        answers = super().__call__(pairs).astype(np.int8)
        if self.loop is not None and self.loop.epoch >= self.last_epoch:
            answers[:] = -1
        return answers


class Watch(Callback):
    def __init__(self, oracle):
        self.oracle = oracle

    def on_fit_begin(self, loop):
        self.oracle.loop = loop


def test_a_fit_killed_in_the_check_resumes_without_asking_twice(data, good_start, tmp_path,
                                                                 monkeypatch):
    from ucal.reid import _loop

    y = data.train.pids
    run = str(tmp_path / "run")
    original = _loop.TrainingLoop._start_net

    def killed(self):
        raise KeyboardInterrupt  # the process dies as the check begins

    monkeypatch.setattr(_loop.TrainingLoop, "_start_net", killed)
    first = UnsureAfterTraining(y, len(y), last_epoch=2)
    with pytest.raises(KeyboardInterrupt):
        UCALReID(**_params(good_start, checkpoint_dir=run,
                           callbacks=[Wreck(), Watch(first)])).fit(data.train, oracle=first)
    monkeypatch.setattr(_loop.TrainingLoop, "_start_net", original)
    second = UnsureAfterTraining(y, len(y), last_epoch=2)
    model = UCALReID(**_params(good_start, checkpoint_dir=run,
                               callbacks=[Wreck(), Watch(second)])).fit(
        data.train, oracle=second, resume=True)
    # the check ran once, after the resume; every one of its answers was "not sure"
    assert model.start_check_ is not None
    assert len(model.start_check_memory_) > 0 and second.n_asked > 0
    assert not first.pairs & second.pairs
    assert model.n_queries_ == first.n_asked + second.n_asked
    # not sure about everything: nothing to show, the start network is given back
    assert model.start_check_["keep"] == "start" and model.best_epoch_ == 0
    # a second resume asks nothing, not even the pairs answered "not sure"
    third = UnsureAfterTraining(y, len(y), last_epoch=2)
    again = UCALReID(**_params(good_start, checkpoint_dir=run,
                               callbacks=[Wreck(), Watch(third)])).fit(
        data.train, oracle=third, resume=True)
    assert third.n_asked == 0 and again.n_queries_ == model.n_queries_
