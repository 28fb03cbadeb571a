"""SNPSSplitter: split impure clusters at their group medoids (Eq. 2 to 4)."""

import sys
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score
from sklearn.pipeline import make_pipeline
from sklearn.utils._param_validation import InvalidParameterError

from ucal.active import SNPSSplitter
from ucal.active._snps import default_k_max, split_criterion
from ucal.cluster import SelfPacedDBSCAN
from ucal.metrics import labeling_cost, pairwise_precision_recall_fscore
from ucal.oracles import LabelMemory, LabelOracle

from .._helpers import identities, merge_pairs


def test_split_criterion_matches_eq_2_to_4_by_hand():
    S = np.array(
        [
            [1.0, 0.8, 0.2, 0.1],
            [0.8, 1.0, 0.3, 0.2],
            [0.2, 0.3, 1.0, 0.9],
            [0.1, 0.2, 0.9, 1.0],
        ]
    )
    groups = np.array([0, 0, 1, 1])
    # comp = (0.8, 0.9), indep = (1 - 0.3, 1 - 0.3)
    assert split_criterion(S, groups, 2) == pytest.approx(0.8 * 0.7 + 0.9 * 0.7)
    # negative similarities are clipped to 0: comp 0 -> criterion 0 for group 0
    S2 = S.copy()
    S2[0, 1] = S2[1, 0] = -0.5
    assert split_criterion(S2, groups, 2) == pytest.approx(0.9 * 0.7)


@pytest.mark.parametrize("size, k_max", [(8, 1), (31, 1), (32, 2), (127, 3), (128, 4)])
def test_default_k_max_is_the_papers(size, k_max):
    assert default_k_max(size) == k_max


def test_snps_raises_precision_on_merged_identities():
    X, y = identities(per_id=20)
    labels = merge_pairs(y, [(0, 1), (2, 3), (4, 5), (6, 7)])  # clusters of 40
    p0, r0, _ = pairwise_precision_recall_fscore(y, labels)
    oracle = LabelOracle(y)
    # the paper's SNPS: one medoid pair per group pair, no confirmation
    model = SNPSSplitter(random_state=0, k_max_rule="floor", cluster_inference=False).fit(
        X, labels=labels, oracle=oracle
    )
    p1, r1, _ = pairwise_precision_recall_fscore(y, model.labels_)
    assert p0 < 0.6 and p1 == 1.0 and r1 >= r0 - 0.01
    # only the four clusters of 40 reach k_max = 2: one medoid pair each
    assert model.n_splits_ == 4 and model.n_clusters_ == 12
    assert model.n_queries_ == oracle.n_queries == 4
    assert model.cost_ == labeling_cost(4, len(X))
    assert model.queries_["answers"].tolist() == [0, 0, 0, 0]
    assert set(model.queries_["stage"]) == {"snps"}
    assert model.stage_queries_ == {"snps": 4}
    # the pairs sent are inside one initial cluster
    pairs = model.queries_["pairs"]
    assert np.all(labels[pairs[:, 0]] == labels[pairs[:, 1]])
    assert np.all(pairs[:, 0] < pairs[:, 1])


def test_pure_clusters_are_asked_but_not_split():
    X, y = identities(n_ids=5, per_id=40)
    model = SNPSSplitter(random_state=0, k_max_rule="floor").fit(X, y, labels=y)
    assert model.n_queries_ == 5 and model.n_splits_ == 0
    assert adjusted_rand_score(model.labels_, y) == 1.0


def test_small_clusters_are_left_alone():
    X, y = identities(per_id=15)
    labels = merge_pairs(y, [(0, 1)])  # 30 samples: the paper's k_max = 1
    oracle = LabelOracle(y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = SNPSSplitter(k_max_rule="floor").fit(X, labels=labels, oracle=oracle)
    assert oracle.n_queries == 0 and model.n_splits_ == 0
    assert adjusted_rand_score(model.labels_, labels) == 1.0
    # rounded up (the default), k_max = 2 reaches it, and the split is found
    split = SNPSSplitter(random_state=0).fit(X, labels=labels, oracle=LabelOracle(y))
    assert split.n_splits_ == 1 and pairwise_precision_recall_fscore(y, split.labels_)[0] == 1.0


def test_explicit_k_max_finds_three_identities_in_one_cluster():
    X, y = identities(n_ids=6, per_id=20, noise=0.3)
    labels = merge_pairs(y, [(0, 1), (0, 2)])
    model = SNPSSplitter(k_max=3, random_state=0, cluster_inference=False).fit(
        X, y, labels=labels
    )
    # the cluster of 3 identities: k* = 3, all 3 medoid pairs asked;
    # the pure clusters of 20 (k <= 10) are asked and kept
    assert adjusted_rand_score(model.labels_, y) == 1.0
    assert model.n_splits_ == 1
    merged = labels[model.queries_["pairs"][:, 0]] == 0
    assert merged.sum() == 3


def test_outliers_stay_outliers_and_are_never_queried():
    X, y = identities(per_id=20)
    labels = merge_pairs(y, [(0, 1), (2, 3)])
    rng = np.random.RandomState(1)
    outliers = rng.choice(len(y), 30, replace=False)
    labels[outliers] = -1
    model = SNPSSplitter(k_max=2, random_state=0).fit(X, y, labels=labels)
    np.testing.assert_array_equal(np.flatnonzero(model.labels_ == -1), np.sort(outliers))
    assert not np.isin(model.queries_["pairs"], outliers).any()
    assert model.labels_.max() == model.n_clusters_ - 1


def test_budget_asks_the_clusters_with_the_best_criterion_first():
    X, y = identities(n_ids=6, per_id=20, seed=3)
    # identities 2 and 3 are made near-duplicates: a poor split structure
    X[y == 3] = X[y == 3] * 0.3 + X[y == 2][:20] * 0.7
    labels = merge_pairs(y, [(0, 1), (2, 3)])
    full = SNPSSplitter(random_state=0, k_max_rule="floor", cluster_inference=False).fit(X, y, labels=labels)
    assert full.n_queries_ == 2
    with pytest.warns(UserWarning, match="budget"):
        cut = SNPSSplitter(random_state=0, max_queries=1, k_max_rule="floor", cluster_inference=False).fit(X, y, labels=labels)
    assert cut.n_queries_ == 1
    # the well separated cluster (0, 1) was split, the other one not
    assert np.all(labels[cut.queries_["pairs"]] == 0)
    assert len(np.unique(cut.labels_[y == 0])) == 1
    assert np.unique(cut.labels_[(y == 0) | (y == 1)]).size == 2
    assert np.unique(cut.labels_[(y == 2) | (y == 3)]).size == 1


def test_memory_answers_a_repeated_refinement():
    X, y = identities()
    labels = merge_pairs(y, [(0, 1), (2, 3)])
    memory = LabelMemory()
    first = SNPSSplitter(random_state=0, k_max_rule="floor", cluster_inference=False).fit(X, y, labels=labels, label_memory=memory)
    oracle = LabelOracle(y)
    second = SNPSSplitter(random_state=0, k_max_rule="floor", cluster_inference=False).fit(X, labels=labels, oracle=oracle, label_memory=memory)
    assert first.n_queries_ == 2 and oracle.n_queries == 0
    assert second.n_queries_ == 0 and second.n_inferred_ == 2
    assert second.label_memory_ is memory
    np.testing.assert_array_equal(first.labels_, second.labels_)


def test_random_state_makes_fits_reproducible():
    X, y = identities()
    labels = merge_pairs(y, [(0, 1), (2, 3), (4, 5)])
    a = SNPSSplitter(random_state=7).fit(X, y, labels=labels)
    b = SNPSSplitter(random_state=7).fit(X, y, labels=labels)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.queries_["pairs"], b.queries_["pairs"])


def test_clusterer_in_a_pipeline_with_pca():
    X, y = identities(n_ids=12, per_id=20)
    # 6 k-means clusters for 12 identities: most clusters hold two
    kmeans = KMeans(n_clusters=6, n_init=3, random_state=0)
    initial = kmeans.fit_predict(PCA(n_components=16, random_state=0).fit_transform(X))
    pipe = make_pipeline(
        PCA(n_components=16, random_state=0),
        SNPSSplitter(clusterer=KMeans(n_clusters=6, n_init=3, random_state=0), random_state=0),
    )
    refined = pipe.fit(X, y)[-1].labels_
    np.testing.assert_array_equal(pipe[-1].clusterer_.labels_, initial)
    p0 = pairwise_precision_recall_fscore(y, initial)[0]
    p1 = pairwise_precision_recall_fscore(y, refined)[0]
    assert p1 > p0 + 0.2
    assert pipe.transform(X).shape == (len(X), pipe[-1].n_clusters_)


def test_transform_and_score():
    X, y = identities(n_ids=4, per_id=20)
    labels = merge_pairs(y, [(0, 1)])
    model = SNPSSplitter(k_max=2, random_state=0).fit(X, y, labels=labels)
    D = model.transform(X)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    np.testing.assert_allclose(D, 1 - Xn @ model.cluster_centers_.T)
    np.testing.assert_allclose(np.linalg.norm(model.cluster_centers_, axis=1), 1.0)
    expected = pairwise_precision_recall_fscore(y, D.argmin(axis=1))[2]
    assert model.score(X, y) == pytest.approx(expected)
    assert model.score(X, y) == pytest.approx(1.0)


def test_input_validation():
    X, y = identities(n_ids=2, per_id=10)
    model = SNPSSplitter()
    with pytest.raises(TypeError, match="integer cluster labels"):
        model.fit(X, y, labels=y.astype(float))
    with pytest.raises(ValueError, match="19 entries but X has 20"):
        model.fit(X, y, labels=y[:-1])
    with pytest.raises(ValueError, match=">= -1"):
        model.fit(X, y, labels=y - 2)
    X0 = X.copy()
    X0[3] = 0
    # scikit-learn's convention: a zero vector is at distance 1 from everything,
    # so it is made noise, with a warning that counts it
    with pytest.warns(UserWarning, match="1 all-zero row.*index 3.*noise"):
        zeroed = clone(model).fit(X0, y, labels=y)
    assert zeroed.labels_[3] == -1
    assert (zeroed.labels_[np.arange(20) != 3] >= 0).all()
    assert zeroed.transform(X0)[3] == pytest.approx(np.ones(zeroed.n_clusters_))
    with pytest.raises(TypeError, match="oracle must be callable"):
        model.fit(X, labels=y, oracle="human")
    with pytest.raises(TypeError, match="LabelMemory"):
        model.fit(X, y, labels=y, label_memory={})
    with pytest.raises(InvalidParameterError, match="engine"):
        SNPSSplitter(engine="pam").fit(X, y, labels=y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        model.fit(X, y[:-1], labels=y)


def test_labels_win_over_the_clusterer():
    class Exploding(KMeans):
        def fit(self, X, y=None, sample_weight=None):
            raise AssertionError("the clusterer must not be fitted when labels are given")

    X, y = identities(n_ids=4, per_id=20)
    model = SNPSSplitter(clusterer=Exploding(), k_max=2).fit(X, y, labels=y)
    assert model.clusterer_ is None
    assert adjusted_rand_score(model.labels_, y) == 1.0


def test_sklearn_extra_engine_missing_raises_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn_extra", None)  # import fails
    X, y = identities(n_ids=2, per_id=20)
    with pytest.raises(ImportError, match="scikit-learn-extra.*NumPy 2.*fasterpam"):
        SNPSSplitter(engine="sklearn_extra").fit(X, y, labels=np.zeros(40, dtype=int))


def test_sklearn_extra_engine_agrees_with_fasterpam():
    try:
        import sklearn_extra.cluster  # noqa: F401
    except Exception as exc:  # ImportError, or its NumPy 2 ABI failure
        pytest.skip(f"scikit-learn-extra is not importable here: {exc}")
    X, y = identities(n_ids=4, per_id=20)
    labels = merge_pairs(y, [(0, 1), (2, 3)])
    a = SNPSSplitter(engine="sklearn_extra", random_state=0).fit(X, y, labels=labels)
    b = SNPSSplitter(engine="fasterpam", random_state=0).fit(X, y, labels=labels)
    assert adjusted_rand_score(a.labels_, b.labels_) > 0.95


def test_default_clusterer_is_self_paced_dbscan():
    X, y = identities(n_ids=6, per_id=40, noise=0.3)
    model = SNPSSplitter(random_state=0).fit(X, y)
    assert isinstance(model.clusterer_, SelfPacedDBSCAN)
    assert SNPSSplitter().clusterer is None  # the parameter itself stays None
    before = pairwise_precision_recall_fscore(y, model.clusterer_.labels_)[0]
    assert pairwise_precision_recall_fscore(y, model.labels_)[0] >= before


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_dtypes_of_x(dtype):
    # scikit-learn's dtype check is an expected failure (its integer X has
    # an all-zero row): the dtypes themselves are checked here
    X, y = identities(n_ids=4, per_id=20)
    labels = merge_pairs(y, [(0, 1)])
    Xd = (10 * X).astype(dtype)
    model = SNPSSplitter(k_max=2, random_state=0).fit(Xd, y, labels=labels)
    assert model.labels_.dtype == np.int64
    assert model.transform(Xd).dtype == np.float64
    assert adjusted_rand_score(model.labels_, y) > 0.9
