import pickle

import numpy as np
from scipy import sparse
import pytest
from sklearn.base import clone
from sklearn.cluster import DBSCAN

from ucal import SelfPacedDBSCAN
from ucal.cluster import jaccard_distance
from ucal.cluster._dbscan import sparse_dbscan

from .._helpers import clustered


def _spcl_reference(D, eps, gap, min_samples, threshold=None, quantile=0.9):
    """SpCL's reliability code, transcribed with dense N x N label matrices.

    DBSCAN itself is ours (tested against scikit-learn above): scikit-learn
    may put a border point reachable from two clusters in the other one,
    which legitimately changes the IoU scores.
    """

    def run(e):
        labels = sparse_dbscan(D, e, min_samples)
        out = labels.copy()
        noise = out < 0
        out[noise] = labels.max() + 1 + np.arange(noise.sum())
        return labels, out

    raw, normal = run(eps)
    _, tight = run(eps - gap)
    _, loose = run(eps + gap)
    same = normal[:, None] == normal[None, :]
    same_t = tight[:, None] == tight[None, :]
    same_l = loose[:, None] == loose[None, :]
    r_comp = 1 - np.minimum(same, same_t).sum(1) / np.maximum(same, same_t).sum(1)
    r_indep = 1 - np.minimum(same, same_l).sum(1) / np.maximum(same, same_l).sum(1)
    n_groups = normal.max() + 1
    c_comp = [min(r_comp[normal == c]) for c in range(n_groups)]
    c_indep = [min(r_indep[normal == c]) for c in range(n_groups)]
    sizes = np.bincount(normal)
    noins = [v for v, s in zip(c_indep, sizes) if s > 1]
    if threshold is None:
        srt = np.sort(noins)
        threshold = srt[min(len(noins) - 1, int(np.round(len(noins) * quantile)))]
    keep = np.array(
        [
            raw[i] >= 0 and c_indep[normal[i]] <= threshold and r_comp[i] <= c_comp[normal[i]]
            for i in range(len(raw))
        ]
    )
    return keep, threshold


def test_sparse_dbscan_matches_sklearn_on_cores_and_noise():
    X, _ = clustered(600, 30, 16, 0.6, seed=0)
    D = jaccard_distance(X, 20, 6)
    for eps in (0.45, 0.6, 0.7):
        ours = sparse_dbscan(D, eps, 4)
        ref = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit(D)
        core = np.zeros(600, dtype=bool)
        core[ref.core_sample_indices_] = True
        np.testing.assert_array_equal(ours[core], ref.labels_[core])
        np.testing.assert_array_equal(ours == -1, ref.labels_ == -1)


def _both_dbscans(monkeypatch, D, eps, min_samples):
    """sparse_dbscan's labels by the compiled kernel and by NumPy (each path checked to run)."""
    from ucal.cluster._compiled import compiled_dbscan

    monkeypatch.setenv("UCAL_NUMBA", "1")
    assert compiled_dbscan(0) is not None
    fast = sparse_dbscan(D, eps, min_samples)
    monkeypatch.setenv("UCAL_NUMBA", "0")
    assert compiled_dbscan(0) is None
    return fast, sparse_dbscan(D, eps, min_samples)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_dbscan_gives_numpys_labels(monkeypatch, dtype):
    # Cores, noise and numbering, label for label, with eps on stored values
    # (compared in the type NumPy compares in: a Python float or a float64).
    pytest.importorskip("numba")
    X, _ = clustered(600, 30, 16, 0.6, seed=5)
    D = jaccard_distance(X, 20, 6).astype(dtype)
    D.data[::7] = np.round(D.data[::7], 1)  # values exactly at eps
    D = ((D + D.T) / 2).tocsr()
    for eps in (0.3, 0.45, 0.6, 0.7, float(np.float32(0.6)), np.float64(0.6)):
        for min_samples in (1, 4, 12):
            fast, slow = _both_dbscans(monkeypatch, D, eps, min_samples)
            np.testing.assert_array_equal(fast, slow)
    assert (fast >= 0).any() and (fast < 0).any()


def test_compiled_dbscan_breaks_border_ties_as_numpy_does(monkeypatch):
    # Border points within eps of cores of two clusters: the nearer cluster,
    # on a tie the lower label; random graphs full of equal distances.
    pytest.importorskip("numba")
    #  cluster 0: points 0-3, cluster 1: points 5-8 (min_samples 4); point 4 at
    #  0.5 from both 3 and 5, point 9 nearer to cluster 1 (0.4) than to 0 (0.5)
    edges = {(9, 1): 0.5, (9, 8): 0.4, (3, 4): 0.5, (4, 5): 0.5}
    for members in ((0, 1, 2, 3), (5, 6, 7, 8)):
        edges.update({(i, j): 0.1 for i in members for j in members if i < j})
    rows, cols, vals = [], [], []
    for (i, j), d in edges.items():
        rows += [i, j]
        cols += [j, i]
        vals += [d, d]
    D = sparse.csr_matrix((vals + [0.0] * 10, (rows + list(range(10)), cols + list(range(10)))),
                          shape=(10, 10))
    fast, slow = _both_dbscans(monkeypatch, D, 0.5, 4)
    np.testing.assert_array_equal(fast, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(fast, slow)
    rng = np.random.default_rng(0)
    ties = 0
    for _ in range(200):
        n = int(rng.integers(5, 40))
        dense = rng.choice([0.1, 0.2, 0.3], size=(n, n)) * (rng.random((n, n)) < 0.2)
        dense = np.maximum(dense, dense.T)
        np.fill_diagonal(dense, 0.0)
        graph = sparse.csr_matrix(dense)
        graph.setdiag(0.0)  # stored: each point is in its own neighbourhood
        graph = graph.tocsr()
        fast, slow = _both_dbscans(monkeypatch, graph, 0.25, int(rng.integers(2, 5)))
        np.testing.assert_array_equal(fast, slow)
        ties += len(np.unique(fast[fast >= 0])) > 1
    assert ties > 10  # graphs with several clusters to choose between


def test_sparse_dbscan_needs_a_square_graph():
    with pytest.raises(ValueError, match="square matrix; got shape \\(3, 5\\)"):
        sparse_dbscan(sparse.csr_matrix(np.ones((3, 5))), 0.5, 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_self_paced_matches_spcl_reference(seed):
    X, _ = clustered(400, 25, 16, 0.8, seed=seed)
    D = jaccard_distance(X, 20, 6)
    keep, thr = _spcl_reference(D, 0.6, 0.02, 4)
    est = SelfPacedDBSCAN(k1=20, k2=6, k1_rule="fixed").fit(X)
    np.testing.assert_array_equal(est.labels_ >= 0, keep)
    assert est.independence_threshold_ == pytest.approx(1 - thr)
    # Kept samples keep their DBSCAN grouping.
    kept = est.labels_ >= 0
    pairs_ours = est.labels_[kept][:, None] == est.labels_[kept][None, :]
    pairs_raw = est.dbscan_labels_[kept][:, None] == est.dbscan_labels_[kept][None, :]
    np.testing.assert_array_equal(pairs_ours, pairs_raw)


def test_threshold_is_kept_across_refits_and_reset_by_clone():
    X1, _ = clustered(400, 25, 16, 0.8, seed=3)
    X2, _ = clustered(400, 25, 16, 0.9, seed=4)
    est = SelfPacedDBSCAN(k1=20).fit(X1)
    thr = est.independence_threshold_
    est.fit(X2)
    assert est.independence_threshold_ == thr
    fresh = clone(est).fit(X2)
    D = jaccard_distance(X2, 20, 6)
    keep_kept, _ = _spcl_reference(D, 0.6, 0.02, 4, threshold=1 - thr)
    np.testing.assert_array_equal(est.labels_ >= 0, keep_kept)
    assert fresh.independence_threshold_ != thr or np.array_equal(fresh.labels_, est.labels_)


def test_plain_dbscan_when_not_self_paced():
    X, _ = clustered(300, 20, 16, 0.6, seed=5)
    est = SelfPacedDBSCAN(self_paced=False, k1=15).fit(X)
    np.testing.assert_array_equal(est.labels_, sparse_dbscan(jaccard_distance(X, 15, 6), 0.6, 4))
    assert not hasattr(est, "independence_threshold_")


def test_recovers_clean_identities_and_fitted_attributes():
    X, ids = clustered(300, 10, 32, 0.3, seed=6)
    est = SelfPacedDBSCAN(k1=20).fit(X)
    assert est.n_clusters_ == 10
    in_cluster = est.labels_ >= 0
    assert in_cluster.mean() > 0.9
    # Every cluster is one identity.
    for c in range(est.n_clusters_):
        assert len(np.unique(ids[est.labels_ == c])) == 1
    norms = np.linalg.norm(est.cluster_centers_, axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    dist = est.transform(X)
    assert dist.shape == (300, 10)
    np.testing.assert_array_equal(dist[in_cluster].argmin(axis=1), est.labels_[in_cluster])
    assert est.get_feature_names_out().tolist()[0] == "selfpaceddbscan0"


def test_deterministic_and_picklable():
    X, _ = clustered(300, 15, 16, 0.7, seed=7)
    a = SelfPacedDBSCAN(k1=15).fit(X)
    b = pickle.loads(pickle.dumps(SelfPacedDBSCAN(k1=15).fit(X)))
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.transform(X), b.transform(X))


@pytest.mark.parametrize(
    "X, match",
    [
        (np.array([[1.0, np.nan]] * 10), "NaN"),
        (np.array([[1.0, np.inf]] * 10), "infinity"),
        (np.ones(10), "2D array"),
        (np.ones((3, 4)), "min_samples=4 samples, got n_samples = 3"),
    ],
)
def test_bad_input(X, match):
    with pytest.raises(ValueError, match=match):
        SelfPacedDBSCAN().fit(X)


def test_bad_parameters():
    X, _ = clustered(50, 5, 8, 0.3, seed=8)
    with pytest.raises(ValueError, match="eps"):
        SelfPacedDBSCAN(eps=1.5).fit(X)
    with pytest.raises(ValueError, match="min_samples"):
        SelfPacedDBSCAN(min_samples=0).fit(X)
    with pytest.raises(ValueError, match="search"):
        SelfPacedDBSCAN(search="annoy").fit(X)


def test_transform_checks_feature_count():
    X, _ = clustered(60, 4, 8, 0.2, seed=9)
    est = SelfPacedDBSCAN(k1=10).fit(X)
    with pytest.raises(ValueError, match="features"):
        est.transform(X[:, :5])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
def test_accepts_numeric_dtypes(dtype):
    X, _ = clustered(120, 6, 8, 0.2, seed=10)
    Xd = (X * 100).astype(dtype)
    est = SelfPacedDBSCAN(k1=10).fit(Xd)
    # Integers are computed in float32, like float32 input.
    work = np.float64 if dtype == np.float64 else np.float32
    ref = SelfPacedDBSCAN(k1=10).fit(Xd.astype(work))
    np.testing.assert_array_equal(est.labels_, ref.labels_)
    assert est.transform(Xd).dtype == work


def test_zero_rows_are_noise_with_a_warning():
    X, _ = clustered(60, 4, 8, 0.2, seed=9)
    reference = SelfPacedDBSCAN(k1=10).fit(X)
    X0 = np.vstack([np.zeros((2, X.shape[1])), X])
    with pytest.warns(UserWarning, match="2 all-zero row.*first at index 0.*noise"):
        est = SelfPacedDBSCAN(k1=10).fit(X0)
    # the zero rows are noise, and the other samples cluster as without them
    np.testing.assert_array_equal(est.labels_[:2], [-1, -1])
    np.testing.assert_array_equal(est.labels_[2:], reference.labels_)
    np.testing.assert_allclose(est.transform(X0[:2]), 1.0)


def test_k1_rule_bounds_k1_by_the_cluster_sizes_and_stops_the_chaining():
    from ucal.metrics import pairwise_precision_recall_fscore

    X, ids = clustered(360, 60, 16, 0.8, seed=0)  # 60 people of 6 images: k1 = 30 chains
    fixed = SelfPacedDBSCAN(k1=30, k1_rule="fixed").fit(X)
    ruled = SelfPacedDBSCAN(k1=30).fit(X)
    assert fixed.k1_ == 30
    # the documented rule: twice the median size of the clusters found at k1 = 30
    sizes = np.bincount(fixed.dbscan_labels_[fixed.dbscan_labels_ >= 0])
    assert ruled.k1_ == max(7, int(np.ceil(2 * np.median(sizes)))) < 30
    f_fixed = pairwise_precision_recall_fscore(ids, fixed.labels_)[2]
    f_ruled = pairwise_precision_recall_fscore(ids, ruled.labels_)[2]
    assert f_ruled > 2 * f_fixed
    # groups as large as SpCL expects: nothing changes
    X, _ = clustered(400, 20, 16, 0.5, seed=1)  # 20 images each
    assert SelfPacedDBSCAN(k1=30).fit(X).k1_ == 30
    np.testing.assert_array_equal(
        SelfPacedDBSCAN(k1=30).fit(X).labels_, SelfPacedDBSCAN(k1=30, k1_rule="fixed").fit(X).labels_
    )


def test_the_paper_preset_keeps_k1_fixed():
    pytest.importorskip("torch")
    from ucal.reid import UCALReID

    assert UCALReID.from_preset("paper").clusterer.k1_rule == "fixed"
    assert UCALReID().clusterer is None  # the default: SelfPacedDBSCAN(), whose rule is on
    assert SelfPacedDBSCAN().k1_rule == "cluster_size"
