"""Oracles, the oracle protocol, budgets and oracle faults inside refiners."""

import pickle
import sys
import warnings

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

import ucal.oracles
from ucal.active import MPPSMerger, SNPSSplitter
from ucal.oracles import (
    BudgetExhaustedWarning,
    LabelMemory,
    LabelOracle,
    NoisyOracle,
    OracleError,
    check_oracle_answers,
    check_pairs,
)

from .._helpers import FixedLabels, identities


def blobs():
    return identities(n_ids=8, per_id=40, dim=16, noise=0.3, seed=0)


def merged_and_split(y):
    """Labels that merge identities (0, 1), (2, 3) and split 4, 5, 6 in halves."""
    labels = y.copy()
    labels[y == 1], labels[y == 3] = 0, 2
    for s in (4, 5, 6):
        idx = np.flatnonzero(y == s)
        labels[idx[: len(idx) // 2]] = 100 + s
    return labels


# -- simulated oracles ----------------------------------------------------------


def test_label_oracle_answers_from_identities():
    oracle = LabelOracle(np.array(["ann", "bob", "ann"]))
    np.testing.assert_array_equal(oracle([[0, 2], [0, 1], [2, 1]]), [True, False, False])
    assert oracle.n_queries == 3
    assert oracle(np.empty((0, 2), dtype=int)).shape == (0,)
    with pytest.raises(ValueError, match="only 3 samples"):
        oracle([[0, 3]])
    assert repr(oracle) == "LabelOracle(n_samples=3)"


def test_noisy_oracle_flips_at_the_given_rate():
    y = np.repeat(np.arange(50), 4)
    rng = np.random.RandomState(0)
    pairs = rng.randint(0, len(y), size=(4000, 2))
    truth = LabelOracle(y)(pairs).astype(np.int8)
    assert np.array_equal(NoisyOracle(LabelOracle(y), 0.0, random_state=0)(pairs), truth)
    assert np.array_equal(NoisyOracle(LabelOracle(y), 1.0, random_state=0)(pairs), 1 - truth)
    noisy = NoisyOracle(LabelOracle(y), 0.2, random_state=0)
    flipped = noisy(pairs) != truth
    assert 0.17 < flipped.mean() < 0.23 and noisy.n_flipped == flipped.sum()
    # a second call draws fresh noise
    again = NoisyOracle(LabelOracle(y), 0.2, random_state=0)
    first, second = again(pairs), again(pairs)
    assert not np.array_equal(first, second)
    assert again.n_flipped == np.sum(first != truth) + np.sum(second != truth)


def test_noisy_oracle_keeps_abstentions_and_forwards_context():
    seen = []

    class Unsure:
        def set_context(self, labels):
            seen.append(labels)

        def __call__(self, pairs):
            return np.full(len(pairs), -1)

    noisy = NoisyOracle(Unsure(), 1.0, random_state=0)
    assert noisy([[0, 1], [1, 2]]).tolist() == [-1, -1]
    noisy.set_context(np.array([3, 3, -1]))
    assert seen[0].tolist() == [3, 3, -1]
    with pytest.raises(ValueError, match="error_rate"):
        NoisyOracle(LabelOracle([0, 1]), 1.5)
    with pytest.raises(TypeError, match="callable"):
        NoisyOracle([0, 1], 0.1)


# -- the protocol ------------------------------------------------------------------


@pytest.mark.parametrize(
    "answers, expected",
    [
        ([True, False, True], [1, 0, 1]),
        (np.array([1, 0, -1]), [1, 0, -1]),
        ([np.True_, 0, -1], [1, 0, -1]),
        (np.array([1, 0, 1], dtype=np.uint8), [1, 0, 1]),
    ],
)
def test_check_oracle_answers_accepts_bools_and_ternary_ints(answers, expected):
    codes = check_oracle_answers(answers, 3)
    assert codes.dtype == np.int8 and codes.tolist() == expected


@pytest.mark.parametrize(
    "answers, match",
    [
        (None, "None"),
        ([True, False], r"shape \(2,\) for 3 pairs"),
        (np.ones((3, 1), dtype=bool), r"shape \(3, 1\)"),
        (np.array([1.0, 0.0, 1.0]), "dtype float64"),
        (["yes", "no", "yes"], "dtype <U3"),
        ([1, 2, 0], r"invalid answer\(s\) at position\(s\) \[1\]"),
        ([True, None, False], "invalid answer"),
        (True, r"shape \(\)"),
    ],
)
def test_check_oracle_answers_rejects_everything_else(answers, match):
    with pytest.raises(OracleError, match=match):
        check_oracle_answers(answers, 3, oracle=LabelOracle([0, 0, 1]))


def test_check_pairs():
    assert check_pairs([[1, 0]]).dtype == np.int64
    with pytest.raises(ValueError, match=r"shape \(m, 2\)"):
        check_pairs([[0, 1, 2]])
    with pytest.raises(TypeError, match="integer"):
        check_pairs([[True, False]])
    with pytest.raises(ValueError, match="only 2 samples"):
        check_pairs([[0, 2]], n_samples=2)


def test_web_oracle_is_loaded_lazily():
    assert "WebOracle" in dir(ucal.oracles)
    assert "ucal.annotation._oracle" not in sys.modules or "WebOracle" in vars(ucal.oracles)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        ucal.oracles.Nope


# -- oracle faults in refiners -------------------------------------------------------


def test_refiner_names_an_oracle_that_raises_and_keeps_earlier_answers(tmp_path):
    X, y = blobs()
    labels = merged_and_split(y)
    truth = LabelOracle(y)
    calls = []

    def flaky(pairs):
        calls.append(len(pairs))
        if len(calls) == 2:  # the MPPS batch, after SNPS was answered
            raise ConnectionError("annotation server down")
        return truth(pairs)

    path = tmp_path / "answers.jsonl"
    model = MPPSMerger(
        clusterer=SNPSSplitter(clusterer=FixedLabels(labels), k_max=2, random_state=0),
        memory_path=path,
    )
    with pytest.raises(OracleError, match="raised ConnectionError: annotation server down") as info:
        model.fit(X, oracle=flaky)
    assert calls[0] > 0
    assert len(info.value.memory) == calls[0]  # the SNPS answers are kept
    assert len(LabelMemory(path)) == calls[0]  # ... on disk too


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda pairs: np.ones(len(pairs) + 1, dtype=bool), "shape"),
        (lambda pairs: np.full(len(pairs), 0.9), "dtype float64"),
        (lambda pairs: None, "None"),
    ],
)
def test_refiner_rejects_malformed_answers(bad, match):
    X, y = blobs()
    with pytest.raises(OracleError, match=f"The oracle <function.*{match}"):
        SNPSSplitter(k_max=2, random_state=0).fit(X, labels=merged_and_split(y), oracle=bad)


# -- budget --------------------------------------------------------------------------


def test_zero_budget_warns_and_keeps_the_clustering():
    X, y = blobs()
    labels = merged_and_split(y)
    oracle = LabelOracle(y)
    with pytest.warns(BudgetExhaustedWarning, match="budget") as record:
        model = MPPSMerger(max_queries=0).fit(X, labels=labels, oracle=oracle)
    assert len([w for w in record if w.category is BudgetExhaustedWarning]) == 1
    assert oracle.n_queries == 0 and model.n_queries_ == 0
    assert model.n_clusters_ == len(np.unique(labels))


def test_budget_caps_nested_refiners_in_total_and_warns_once():
    X, y = blobs()
    labels = merged_and_split(y)

    def nested(outer_cap=None, inner_cap=None):
        inner = SNPSSplitter(FixedLabels(labels), k_max=2, random_state=0, max_queries=inner_cap)
        return MPPSMerger(inner, max_merge_ratio=0.5, max_queries=outer_cap)

    unlimited = nested().fit(X, y)
    assert unlimited.stage_queries_["snps"] > 3 and unlimited.stage_queries_["mpps"] > 3
    oracle = LabelOracle(y)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        capped = nested(outer_cap=3).fit(X, oracle=oracle)
    # the outer cap covers the inner stage too: SNPS spends it all
    assert oracle.n_queries == capped.n_queries_ == 3
    assert capped.stage_queries_ == {"snps": 3, "mpps": 0}
    assert sum(w.category is BudgetExhaustedWarning for w in record) == 1
    # an inner cap bounds its own stage only
    with pytest.warns(BudgetExhaustedWarning, match="SNPSSplitter"):
        inner_capped = nested(inner_cap=1).fit(X, y)
    assert inner_capped.stage_queries_["snps"] == 1
    assert inner_capped.stage_queries_["mpps"] > 1  # not bound by the inner cap
    assert inner_capped.clusterer_.n_queries_ == 1


def test_no_oracle_warns_and_uses_memory_only():
    X, y = blobs()
    labels = merged_and_split(y)
    memory = LabelMemory()
    SNPSSplitter(k_max=2, random_state=0).fit(X, labels=labels, oracle=LabelOracle(y), label_memory=memory)
    # a second fit without oracle: everything it needs is in memory
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = SNPSSplitter(k_max=2, random_state=0).fit(X, labels=labels, label_memory=memory)
    assert again.n_queries_ == 0 and again.n_inferred_ > 0
    with pytest.warns(UserWarning, match="no oracle and no y"):
        alone = SNPSSplitter(k_max=2, random_state=0).fit(X, labels=labels)
    assert adjusted_rand_score(alone.labels_, labels) == 1.0


def test_user_oracle_wins_over_y():
    X, y = blobs()
    labels = merged_and_split(y)
    oracle = LabelOracle(y)
    wrong_y = np.zeros_like(y)  # would say "same" to everything
    model = SNPSSplitter(k_max=2, random_state=0).fit(X, wrong_y, labels=labels, oracle=oracle)
    assert oracle.n_queries == model.n_queries_ > 0
    assert model.n_splits_ > 0


# -- pickling and the context hook ----------------------------------------------------


def test_fitted_refiner_pickles_without_its_oracle():
    X, y = blobs()
    truth = LabelOracle(y)
    model = MPPSMerger().fit(X, labels=merged_and_split(y), oracle=lambda p: truth(p))
    restored = pickle.loads(pickle.dumps(model))  # a lambda oracle would not pickle
    np.testing.assert_array_equal(restored.labels_, model.labels_)
    np.testing.assert_allclose(restored.transform(X), model.transform(X))
    assert not any(callable(v) for v in vars(model).values())
    assert not any(isinstance(v, np.ndarray) and v.shape == X.shape for v in vars(model).values())


def test_context_hook_describes_groups_and_clusters():
    X, y = blobs()
    labels = merged_and_split(y)
    truth = LabelOracle(y)
    log = []

    class Annotator:
        def set_context(self, context):
            log.append(("context", np.array(context)))

        def __call__(self, pairs):
            log.append(("pairs", np.array(pairs)))
            return truth(pairs)

    SNPSSplitter(k_max=2, random_state=0, cluster_inference=False).fit(
        X, labels=labels, oracle=Annotator()
    )
    (kind1, context), (kind2, pairs) = log
    assert (kind1, kind2) == ("context", "pairs") and context.shape == (len(X),)
    # the two samples of a pair are medoids of two groups of one cluster
    assert np.all(context[pairs[:, 0]] != context[pairs[:, 1]])
    assert np.all(context[pairs] >= 0)
    assert np.all(labels[pairs[:, 0]] == labels[pairs[:, 1]])
    log.clear()
    MPPSMerger().fit(X, labels=labels, oracle=Annotator())
    # MPPS asks in batches, each with its context: the clustering itself
    kinds = [kind for kind, _ in log]
    assert kinds == ["context", "pairs"] * (len(log) // 2) and log
    for (_, context), (_, pairs) in zip(log[::2], log[1::2]):
        np.testing.assert_array_equal(context >= 0, labels >= 0)
        assert np.all(context[pairs[:, 0]] != context[pairs[:, 1]])
