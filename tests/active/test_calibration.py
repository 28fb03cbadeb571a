"""ClusteringCalibrator and near-neighbour questions: the scale chosen by the answers."""

import numpy as np
import pytest

from ucal import SelfPacedDBSCAN
from ucal.active import ClusteringCalibrator, near_neighbour_pairs
from ucal.metrics import pairwise_precision_recall_fscore
from ucal.oracles import LabelMemory, LabelOracle

EPS_GRID = (0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)


def blobs(noise, n_ids=20, per_id=12, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_ids), per_id)
    X = rng.normal(size=(n_ids, 16))[y] + noise * rng.normal(size=(n_ids * per_id, 16))
    return X, y


def test_near_neighbour_pairs_are_distinct_neighbours_outside_exclude():
    X, _ = blobs(0.8)
    exclude = [(0, 1), (5, 2)]
    pairs = near_neighbour_pairs(X, 100, n_neighbors=5, exclude=exclude, random_state=0)
    assert pairs.shape == (100, 2) and (pairs[:, 0] < pairs[:, 1]).all()
    keys = set(map(tuple, pairs.tolist()))
    assert len(keys) == 100 and not keys & {(0, 1), (2, 5)}
    # every partner is among its anchor's 5 nearest others (in one direction or the other)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    sims = Xn @ Xn.T
    np.fill_diagonal(sims, -np.inf)
    rank = (-sims).argsort(axis=1)[:, :5]
    assert all(j in rank[i] or i in rank[j] for i, j in keys)
    # the neighbourhoods run out: all distinct pairs at most
    assert len(near_neighbour_pairs(X[:4], 50, n_neighbors=10, random_state=0)) == 6


@pytest.mark.parametrize("noise", [0.8, 1.0])
def test_calibration_recovers_the_planted_scale(noise):
    # The eps that best recovers the true identities is planted by the noise level;
    # a clusterer started far from it (eps=0.35) is moved close to the best.
    X, y = blobs(noise)
    true_f = [
        pairwise_precision_recall_fscore(y, SelfPacedDBSCAN(k1=10, k2=3, eps=e).fit(X).labels_)[2]
        for e in EPS_GRID
    ]
    cal = ClusteringCalibrator(
        SelfPacedDBSCAN(k1=10, k2=3, eps=0.35), n_queries=200, random_state=0
    ).fit(X, y)
    chosen = EPS_GRID.index(cal.best_params_["eps"])
    assert true_f[chosen] >= max(true_f) - 0.07
    assert true_f[chosen] > true_f[0] + 0.1  # better than where it started
    assert cal.best_estimator_.eps == cal.best_params_["eps"]
    np.testing.assert_array_equal(cal.labels_, cal.best_estimator_.labels_)
    assert len(cal.cv_results_["score"]) == len(EPS_GRID)
    assert 0 < cal.n_queries_ <= 200 and cal.n_pairs_ >= cal.n_queries_
    assert 0 < cal.n_same_ < cal.n_pairs_


def test_precision_is_estimated_without_bias_for_every_candidate():
    # Pairs drawn within the candidates' clusters, re-weighted: the estimated precision
    # of a loose (over-merging) candidate matches its true pairwise precision.
    X, y = blobs(1.0)
    cal = ClusteringCalibrator(SelfPacedDBSCAN(k1=10, k2=3), n_queries=400,
                               random_state=0).fit(X, y)
    for params, estimate in zip(cal.cv_results_["params"], cal.cv_results_["precision"]):
        labels = SelfPacedDBSCAN(k1=10, k2=3, **params).fit(X).labels_
        truth = pairwise_precision_recall_fscore(y, labels)[0]
        assert abs(estimate - truth) < 0.15, (params, estimate, truth)


def test_answers_in_the_memory_are_reused_and_cost_nothing():
    X, y = blobs(0.8)
    memory = LabelMemory()
    first = ClusteringCalibrator(SelfPacedDBSCAN(k1=10, k2=3), n_queries=50, random_state=0)
    first.fit(X, oracle=LabelOracle(y), label_memory=memory)
    assert 0 < first.n_queries_ <= 50 and len(memory) == first.n_queries_

    def no_questions(pairs):
        raise AssertionError("asked again")

    # the same draw on the same memory: every answer is known
    again = ClusteringCalibrator(SelfPacedDBSCAN(k1=10, k2=3), n_queries=50, random_state=0)
    again.fit(X, oracle=no_questions, label_memory=memory)
    assert again.n_queries_ == 0 and again.best_params_ == first.best_params_
    # another draw: only what is unknown is asked, within query_limit
    more = ClusteringCalibrator(SelfPacedDBSCAN(k1=10, k2=3), n_queries=80, random_state=2)
    more.fit(X, oracle=LabelOracle(y), label_memory=memory, query_limit=10)
    assert more.n_queries_ == 10


def test_held_out_pairs_are_never_asked():
    X, y = blobs(0.8)
    memory = LabelMemory()
    everything = np.array([(i, j) for i in range(len(y)) for j in range(i + 1, len(y))])
    memory.hold_out(everything[: len(everything) // 2])
    oracle = LabelOracle(y)
    asked = []

    def recording(pairs):
        asked.extend(map(tuple, np.sort(pairs, axis=1).tolist()))
        return oracle(pairs)

    ClusteringCalibrator(SelfPacedDBSCAN(k1=10, k2=3), n_queries=100, random_state=0).fit(
        X, oracle=recording, label_memory=memory
    )
    held = set(map(tuple, memory.held_out().tolist()))
    assert asked and not held & set(asked)


def test_one_sided_answers_keep_the_clusterers_own_parameters(caplog):
    # All "same": nothing says where clusters must stop, so no scale is chosen.
    X, y = blobs(0.2)
    cal = ClusteringCalibrator(SelfPacedDBSCAN(k1=10, k2=3, eps=0.45), n_queries=30,
                               random_state=0)
    with caplog.at_level("WARNING"):
        cal.fit(X, y)
    assert cal.n_same_ == cal.n_pairs_ > 0
    assert cal.best_params_ == {} and cal.best_estimator_.eps == 0.45
    assert "too few of each answer" in caplog.text


def test_grid_and_limits_are_validated():
    X, y = blobs(0.8)
    with pytest.raises(ValueError, match="n_queries"):
        ClusteringCalibrator(n_queries=-1).fit(X, y)
    with pytest.raises(ValueError, match="no candidate"):
        ClusteringCalibrator(SelfPacedDBSCAN(k1=10, k2=3), param_grid=[]).fit(X, y)
    with pytest.raises(ValueError, match="query_limit"):
        ClusteringCalibrator(SelfPacedDBSCAN(k1=10, k2=3)).fit(X, y, query_limit=-1)
