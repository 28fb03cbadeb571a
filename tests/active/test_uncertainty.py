"""MPPS's uncertainty selection: calibrated P(same), the least certain first, diverse rounds."""

import logging

import numpy as np
import pytest

from ucal.active import MPPSMerger
from ucal.active._uncertainty import diverse_rounds, same_probability, uncertainty_order
from ucal.oracles import LabelMemory

from .._helpers import fragment, identities


def _unit(X):
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def _answered(X, y, n, seed=0):
    """A memory with ``n`` true answers about random pairs of ``X``."""
    rng = np.random.RandomState(seed)
    pairs = rng.randint(0, len(X), size=(4 * n, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]][:n]
    # make sure both answers are there: add same-identity pairs
    same_pairs = np.array([np.flatnonzero(y == k)[:2] for k in np.unique(y)])
    pairs = np.vstack([pairs, same_pairs])
    memory = LabelMemory()
    memory.record(pairs, y[pairs[:, 0]] == y[pairs[:, 1]])
    return memory


def test_probability_rises_with_similarity_once_both_answers_are_known():
    X, y = identities(n_ids=6, per_id=10)
    Xn = _unit(X)
    memory = _answered(Xn, y, 60)
    p = same_probability(np.array([-0.5, 0.0, 0.5, 0.9]), memory, Xn)
    assert p is not None and np.all(np.diff(p) > 0)
    assert p[0] < 0.5 < p[-1]


def test_no_calibration_from_too_few_or_one_kind_of_answers():
    X, y = identities(n_ids=3, per_id=10)
    Xn = _unit(X)
    memory = LabelMemory()
    memory.record([[0, 1], [2, 3]], [True, True])
    assert same_probability(np.array([0.5]), memory, Xn) is None
    memory.record(np.array([[i, i + 10] for i in range(10)]), [False] * 10)
    assert same_probability(np.array([0.5]), memory, Xn, min_answers=100) is None
    assert same_probability(np.array([0.5]), memory, Xn, min_answers=5) is not None


def test_rounds_spread_the_first_questions_over_all_clusters():
    pairs = np.array([[0, 1], [0, 2], [0, 3], [1, 2], [4, 5], [3, 4]])
    order = diverse_rounds(pairs, 6)
    assert sorted(order.tolist()) == list(range(6))
    first_round = pairs[order[:2]]
    # the first round uses each cluster at most once: (0, 1) then (4, 5)
    assert first_round.tolist() == [[0, 1], [4, 5]]
    assert len(np.unique(first_round)) == first_round.size


def test_the_least_certain_pairs_come_first():
    X, y = identities(n_ids=6, per_id=10)
    Xn = _unit(X)
    memory = _answered(Xn, y, 80)
    pairs = np.array([[0, 1], [2, 3], [4, 5]])
    sims = np.array([0.95, -0.4, 0.3])
    p = same_probability(sims, memory, Xn)
    order, calibrated = uncertainty_order(pairs, sims, memory, Xn, 6)
    assert calibrated
    np.testing.assert_array_equal(order, np.argsort(np.abs(p - 0.5), kind="stable"))
    empty = LabelMemory()
    order, calibrated = uncertainty_order(pairs, sims, empty, Xn, 6)
    assert not calibrated and order.tolist() == [0, 2, 1]  # similarity order


@pytest.mark.filterwarnings("ignore::ucal.oracles.BudgetExhaustedWarning")
def test_uncertain_selection_repairs_fragments_and_asks_nearer_even_odds(caplog):
    X, y = identities(n_ids=10, per_id=12, noise=0.9, seed=2)
    labels = fragment(y, range(10))
    gap_memory, unc_memory = _answered(_unit(X), y, 60), _answered(_unit(X), y, 60)
    before = len(gap_memory)
    gap = MPPSMerger(max_merge_ratio=0.5, confirm_size=None).fit(
        X, y, labels=labels, label_memory=gap_memory, query_limit=8)
    with caplog.at_level(logging.INFO, logger="ucal.active._mpps"):
        unc = MPPSMerger(max_merge_ratio=0.5, confirm_size=None, selection="uncertain").fit(
            X, y, labels=labels, label_memory=unc_memory, query_limit=8)
    assert "calibrate" not in caplog.text  # 60 answers calibrate
    assert gap.n_queries_ == unc.n_queries_ == 8 and len(unc_memory) == before + 8
    Xn = _unit(X)
    p_gap = same_probability(np.einsum("ij,ij->i", Xn[gap.queries_["pairs"][:, 0]],
                                       Xn[gap.queries_["pairs"][:, 1]]), gap_memory, Xn)
    p_unc = same_probability(np.einsum("ij,ij->i", Xn[unc.queries_["pairs"][:, 0]],
                                       Xn[unc.queries_["pairs"][:, 1]]), gap_memory, Xn)
    # its questions sit nearer even odds than the most-similar-first rule's
    assert np.mean(np.abs(p_unc - 0.5)) < np.mean(np.abs(p_gap - 0.5))
    # with the budget to ask, it still merges the fragments back
    full = MPPSMerger(max_merge_ratio=1.0, confirm_size=None, selection="uncertain").fit(
        X, y, labels=labels)
    assert full.n_clusters_ == 10 and full.n_merges_ == 10


def test_uncertain_selection_without_answers_asks_by_similarity(caplog):
    X, y = identities(n_ids=4, per_id=10)
    labels = fragment(y, range(4))
    with caplog.at_level(logging.INFO, logger="ucal.active._mpps"):
        model = MPPSMerger(selection="uncertain", max_merge_ratio=1.0).fit(X, y, labels=labels)
    assert "Too few answers to calibrate" in caplog.text
    assert model.n_clusters_ == 4
