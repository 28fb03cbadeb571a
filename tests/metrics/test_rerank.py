"""Tests for ucal.metrics.rerank against a dense implementation of the
k-reciprocal re-ranking definition (Zhong et al., CVPR 2017)."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from ucal.metrics import _rerank, rerank
from ucal.utils._validation import first_non_finite


def dense_rerank(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3):
    """Straightforward dense re-ranking, written from the definition (and
    torchreid's ``re_ranking``), in float64 with a stable argsort."""
    nq = q_g.shape[0]
    full = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float64) ** 2
    original = (full / full.max(axis=0)).T
    n = original.shape[0]
    initial_rank = np.argsort(original, axis=1, kind="stable")
    n_half = int(np.around(k1 / 2.0)) + 1

    def reciprocal(i, size):
        forward = initial_rank[i, :size]
        return np.array([j for j in forward if i in initial_rank[j, :size]], dtype=int)

    V = np.zeros((n, n))
    for i in range(n):
        base = reciprocal(i, k1 + 1)
        expanded = set(base.tolist())
        for c in base:
            half = reciprocal(c, n_half)
            if len(np.intersect1d(half, base)) > 2.0 / 3.0 * len(half):
                expanded |= set(half.tolist())
        members = np.array(sorted(expanded))
        weight = np.exp(-original[i, members])
        V[i, members] = weight / weight.sum()
    if k2 > 1:
        V = np.array([V[initial_rank[i, :k2]].mean(axis=0) for i in range(n)])
    jaccard = np.empty((nq, n))
    for i in range(nq):
        jaccard[i] = 1.0 - np.minimum(V[i], V).sum(axis=1) / np.maximum(V[i], V).sum(axis=1)
    final = (1.0 - lambda_value) * jaccard + lambda_value * original[:nq]
    return final[:, nq:]


def feature_problem(seed, n_query=12, n_gallery=40, n_ids=6, dim=8, noise=0.6):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_ids, dim))
    Q = centers[rng.integers(0, n_ids, n_query)] + noise * rng.normal(size=(n_query, dim))
    G = centers[rng.integers(0, n_ids, n_gallery)] + noise * rng.normal(size=(n_gallery, dim))
    return cdist(Q, G), cdist(Q, Q), cdist(G, G)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    "k1, k2, lambda_value",
    [(20, 6, 0.3), (5, 3, 0.3), (7, 1, 0.0), (4, 2, 1.0), (9, 4, 0.5)],
)
def test_matches_dense_definition(seed, k1, k2, lambda_value):
    q_g, q_q, g_g = feature_problem(seed)
    expected = dense_rerank(q_g, q_q, g_g, k1, k2, lambda_value)
    got = rerank(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value)
    assert got.shape == expected.shape and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_asymmetric_inputs_follow_the_column_normalisation(monkeypatch):
    # The reference squares the full matrix, divides each column by its
    # maximum and transposes: with asymmetric blocks this is not the same as
    # normalising rows, and the result must still agree.
    rng = np.random.default_rng(1)
    q_g, q_q, g_g = feature_problem(1, n_query=10, n_gallery=30)
    q_g = q_g * rng.uniform(0.8, 1.2, q_g.shape)
    q_q = q_q * rng.uniform(0.8, 1.2, q_q.shape)
    g_g = g_g * rng.uniform(0.8, 1.2, g_g.shape)
    # Make sure the weights of expanded members outside the kNN lists are
    # asked for (the transposed lookup is then exercised).
    asked = []
    engine = _rerank.jaccard_from_neighbors

    def counting_engine(knn_index, pair_distance, **kwargs):
        def counted(rows, cols):
            asked.append(rows.size)
            return pair_distance(rows, cols)

        return engine(knn_index, counted, **kwargs)

    monkeypatch.setattr(_rerank, "jaccard_from_neighbors", counting_engine)
    expected = dense_rerank(q_g, q_q, g_g, k1=8, k2=3)
    np.testing.assert_allclose(rerank(q_g, q_q, g_g, k1=8, k2=3), expected, atol=1e-5, rtol=0)
    assert sum(asked) > 0


def test_k1_larger_than_the_sample_count():
    q_g, q_q, g_g = feature_problem(2, n_query=3, n_gallery=7)
    expected = dense_rerank(q_g, q_q, g_g, k1=50, k2=20)
    np.testing.assert_allclose(rerank(q_g, q_q, g_g, k1=50, k2=20), expected, atol=1e-5)


def test_float32_input_gives_float32(monkeypatch):
    q_g, q_q, g_g = feature_problem(4)
    expected = dense_rerank(q_g, q_q, g_g, k1=6, k2=3)
    got = rerank(*(a.astype(np.float32) for a in (q_g, q_q, g_g)), k1=6, k2=3)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_block_boundaries_do_not_change_the_result(monkeypatch):
    q_g, q_q, g_g = feature_problem(5, n_query=17, n_gallery=45)
    whole = rerank(q_g, q_q, g_g, k1=8, k2=3)
    # A few samples per block in both passes.
    monkeypatch.setattr(_rerank, "_BLOCK_BYTES", 5 * 62 * 12)
    np.testing.assert_array_equal(rerank(q_g, q_q, g_g, k1=8, k2=3), whole)


def test_reranking_improves_a_noisy_ranking():
    # Identities with several gallery views: re-ranking should not hurt
    # rank-1 retrieval, and typically it helps.
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 16))
    q_ids, g_ids = np.arange(10), np.repeat(np.arange(10), 6)
    Q = centers[q_ids] + 0.9 * rng.normal(size=(10, 16))
    G = centers[g_ids] + 0.9 * rng.normal(size=(60, 16))
    before = cdist(Q, G)
    after = rerank(before, cdist(Q, Q), cdist(G, G))

    def mean_ap(dist):
        aps = []
        for i in range(len(dist)):
            hits = g_ids[np.argsort(dist[i], kind="stable")] == q_ids[i]
            aps.append((np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)).mean())
        return np.mean(aps)

    assert mean_ap(after) > mean_ap(before)


def test_duplicate_gallery_entries_get_equal_distances():
    q_g, q_q, g_g = feature_problem(7, n_query=5, n_gallery=20)
    # Gallery entry 20 duplicates entry 3: each is the other's distance-0
    # neighbour, so the tie is broken by index and by "self first".
    q_g = np.hstack([q_g, q_g[:, [3]]])
    g_g = np.vstack([g_g, g_g[[3]]])
    g_g = np.hstack([g_g, g_g[:, [3]]])
    g_g[20, 20] = 0.0
    got = rerank(q_g, q_q, g_g, k1=6, k2=3)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[:, 3], got[:, 20], atol=1e-6)


def test_feature_source_matches_matrix_source():
    rng = np.random.default_rng(8)
    Q, G = rng.normal(size=(9, 5)), rng.normal(size=(25, 5))
    for metric in ("cosine", "euclidean"):
        feats = _rerank._FeatureSource(Q, G, metric)
        blocks = _rerank._BlockSource(
            cdist(Q, G, metric), cdist(Q, Q, metric), cdist(G, G, metric)
        )
        idx = np.array([0, 8, 9, 30])
        np.testing.assert_allclose(
            np.maximum(feats.columns_T(idx), 0), blocks.columns_T(idx), atol=1e-9
        )
        rows, cols = rng.integers(0, 34, 50), rng.integers(0, 34, 50)
        np.testing.assert_allclose(feats.pairs(rows, cols), blocks.pairs(rows, cols), atol=1e-9)
        from_features = np.vstack([b for _, b in _rerank._rerank_blocks(feats, 6, 3, 0.3, float)])
        from_matrices = np.vstack([b for _, b in _rerank._rerank_blocks(blocks, 6, 3, 0.3, float)])
        np.testing.assert_allclose(from_features, from_matrices, atol=1e-6)


def test_invalid_inputs_raise():
    q_g, q_q, g_g = feature_problem(0, n_query=3, n_gallery=5)
    with pytest.raises(ValueError, match=r"q_q_dist must have shape \(3, 3\)"):
        rerank(q_g, q_q[:2], g_g)
    with pytest.raises(ValueError, match=r"g_g_dist must have shape \(5, 5\)"):
        rerank(q_g, q_q, g_g[:, :4])
    with pytest.raises(ValueError, match="negative entries"):
        rerank(-q_g, q_q, g_g)
    bad = q_g.copy()
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match="q_g_dist contains NaN"):
        rerank(bad, q_q, g_g)
    with pytest.raises(ValueError, match="k1 must be >= 1"):
        rerank(q_g, q_q, g_g, k1=0)
    with pytest.raises(TypeError, match="k2 must be an int"):
        rerank(q_g, q_q, g_g, k2=2.0)
    with pytest.raises(ValueError, match=r"lambda_value must be in \[0, 1\]"):
        rerank(q_g, q_q, g_g, lambda_value=1.5)
    with pytest.raises(ValueError, match="q_g_dist must be 2D"):
        rerank(q_g[0], q_q, g_g)


def test_first_non_finite_locates_entries_without_false_alarms():
    big = np.full((3, 2), 1e308)  # finite, but its sum overflows
    assert first_non_finite(big) is None
    big[2, 1] = -np.inf
    assert first_non_finite(big) == (2, 1)
    q_g, q_q, g_g = feature_problem(0, n_query=3, n_gallery=5)
    g_g[4, 0] = np.inf
    with pytest.raises(ValueError, match=r"g_g_dist contains NaN or infinity \(first at row 4"):
        rerank(q_g, q_q, g_g)
