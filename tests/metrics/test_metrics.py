"""Tests for ucal.metrics: re-id evaluation (against a per-query reference
loop) and the clustering metrics."""

import itertools

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from ucal.metrics import (
    _reid,
    evaluate_features,
    evaluate_reid,
    labeling_cost,
    pairwise_precision_recall_fscore,
    rerank,
)


def reference_evaluate(distmat, q_pids, g_pids, q_camids=None, g_camids=None, max_rank=50,
                       same_set=False):
    """Plain torchreid-style per-query loop (``eval_market1501``), with a
    stable argsort, the query removed when ``same_set`` and mINP added."""
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    num_q, num_g = distmat.shape
    all_cmc, all_ap, all_inp = [], [], []
    n_skipped = 0
    for q_idx in range(num_q):
        order = np.argsort(distmat[q_idx], kind="stable")
        remove = np.zeros(num_g, dtype=bool)
        if q_camids is not None:
            remove |= (g_pids[order] == q_pids[q_idx]) & (
                np.asarray(g_camids)[order] == np.asarray(q_camids)[q_idx]
            )
        if same_set:
            remove |= order == q_idx
        raw_cmc = (g_pids[order] == q_pids[q_idx])[~remove].astype(np.int64)
        if not raw_cmc.any():
            n_skipped += 1
            continue
        cmc = raw_cmc.cumsum()
        cmc[cmc > 1] = 1
        # Past the end of the ranking every valid query has found its match.
        cmc = np.concatenate([cmc, np.ones(max(0, max_rank - cmc.size), dtype=np.int64)])
        all_cmc.append(cmc[:max_rank])
        num_rel = raw_cmc.sum()
        tmp_cmc = raw_cmc.cumsum()
        tmp_cmc = np.asarray([x / (i + 1.0) for i, x in enumerate(tmp_cmc)]) * raw_cmc
        all_ap.append(tmp_cmc.sum() / num_rel)
        last_hit = np.flatnonzero(raw_cmc)[-1]
        all_inp.append(num_rel / (last_hit + 1.0))
    return {
        "cmc": np.asarray(all_cmc, dtype=np.float64).mean(axis=0),
        "mAP": float(np.mean(all_ap)),
        "mINP": float(np.mean(all_inp)),
        "n_valid_queries": num_q - n_skipped,
        "n_skipped_queries": n_skipped,
    }


def assert_same_result(got, expected, atol=1e-6):
    assert set(got) == {"cmc", "mAP", "mINP", "n_valid_queries", "n_skipped_queries"}
    assert got["cmc"].shape == expected["cmc"].shape
    np.testing.assert_allclose(got["cmc"], expected["cmc"], atol=atol, rtol=0)
    assert got["mAP"] == pytest.approx(expected["mAP"], abs=atol)
    assert got["mINP"] == pytest.approx(expected["mINP"], abs=atol)
    assert got["n_valid_queries"] == expected["n_valid_queries"]
    assert got["n_skipped_queries"] == expected["n_skipped_queries"]


def random_problem(seed, n_query=40, n_gallery=120, n_ids=15, n_cams=3, ties=False,
                   dtype=np.float64):
    rng = np.random.default_rng(seed)
    # Some query identities are absent from the gallery (skipped queries).
    q_pids = rng.integers(0, n_ids + 3, size=n_query)
    g_pids = rng.integers(0, n_ids, size=n_gallery)
    q_cams = rng.integers(0, n_cams, size=n_query)
    g_cams = rng.integers(0, n_cams, size=n_gallery)
    if ties:
        distmat = rng.integers(0, 4, size=(n_query, n_gallery)).astype(dtype)
    else:
        distmat = rng.random((n_query, n_gallery)).astype(dtype)
    return distmat, q_pids, g_pids, q_cams, g_cams


@pytest.fixture
def small_blocks(monkeypatch):
    """A few query rows per block, so that block boundaries are exercised."""
    monkeypatch.setattr(_reid, "_BLOCK_BYTES", 7 * 120 * 8)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("cameras", [True, False])
@pytest.mark.parametrize("ties", [False, True])
def test_matches_reference_loop(seed, cameras, ties, small_blocks):
    distmat, q_pids, g_pids, q_cams, g_cams = random_problem(seed, ties=ties)
    cams = (q_cams, g_cams) if cameras else (None, None)
    expected = reference_evaluate(distmat, q_pids, g_pids, *cams, max_rank=20)
    got = evaluate_reid(distmat, q_pids, g_pids, *cams, max_rank=20)
    assert_same_result(got, expected)
    assert expected["n_skipped_queries"] > 0  # the problem does have skipped queries


@pytest.mark.parametrize("seed", range(3))
def test_matches_reference_float32_and_infinities(seed):
    distmat, q_pids, g_pids, q_cams, g_cams = random_problem(seed, dtype=np.float32)
    rng = np.random.default_rng(seed)
    distmat[rng.random(distmat.shape) < 0.05] = np.inf
    distmat[0] = np.inf  # a whole row of ties at infinity
    expected = reference_evaluate(distmat, q_pids, g_pids, q_cams, g_cams)
    assert_same_result(evaluate_reid(distmat, q_pids, g_pids, q_cams, g_cams), expected)


@pytest.mark.parametrize("cameras", [True, False])
def test_same_set_matches_reference(cameras, small_blocks):
    rng = np.random.default_rng(5)
    pids = rng.integers(0, 12, size=60)
    cams = rng.integers(0, 2, size=60)
    X = rng.normal(size=(60, 4))
    distmat = cdist(X, X)
    cam_args = (cams, cams) if cameras else (None, None)
    expected = reference_evaluate(distmat, pids, pids, *cam_args, same_set=True)
    got = evaluate_reid(distmat, pids, pids, *cam_args, same_set=True)
    assert_same_result(got, expected)
    # Without same_set the query finds itself at rank 1 when cameras are absent.
    if not cameras:
        assert evaluate_reid(distmat, pids, pids)["cmc"][0] == 1.0


def test_hand_computed_example():
    distmat = np.array([[0.5, 0.1, 0.3], [0.4, 0.2, 0.6]])
    got = evaluate_reid(distmat, [0, 1], [0, 1, 0], max_rank=3)
    # Query 0 ranks gallery 1 (miss), 2 (hit), 0 (hit): AP = (1/2 + 2/3) / 2.
    # Query 1 ranks gallery 1 (hit) first: AP = 1, INP = 1.
    np.testing.assert_allclose(got["cmc"], [0.5, 1.0, 1.0])
    assert got["mAP"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1) / 2)
    assert got["mINP"] == pytest.approx((2 / 3 + 1) / 2)


def test_camera_removal_by_hand():
    # Gallery 0 shares the query's identity and camera: removed, so the
    # query's first true match (gallery 2, other camera) is at rank 2.
    distmat = np.array([[0.1, 0.2, 0.3]])
    got = evaluate_reid(distmat, [7], [7, 3, 7], [0], [0, 1, 1], max_rank=2)
    np.testing.assert_allclose(got["cmc"], [0.0, 1.0])
    assert got["mAP"] == pytest.approx(0.5)
    assert got["mINP"] == pytest.approx(0.5)
    # Without cameras gallery 0 counts as a hit.
    got = evaluate_reid(distmat, [7], [7, 3, 7], max_rank=2)
    assert got["mAP"] == pytest.approx((1 + 2 / 3) / 2)


def test_ties_break_by_gallery_index():
    # All distances equal: the stable order is the gallery order.
    distmat = np.zeros((2, 3))
    q_pids, g_pids = [1, 2], [0, 2, 1]
    got = evaluate_reid(distmat, q_pids, g_pids, max_rank=3)
    # Query 0 (pid 1) meets its match third, query 1 (pid 2) second.
    np.testing.assert_allclose(got["cmc"], [0.0, 0.5, 1.0])
    assert got["mAP"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    # A tie with a smaller distance elsewhere: [0.5, 0.2, 0.5] for pid 0 at
    # gallery 2 and a miss at gallery 0 -> ranks: 1 (miss), 0 (miss), 2 (hit).
    got = evaluate_reid([[0.5, 0.2, 0.5]], [0], [1, 1, 0])
    assert got["mAP"] == pytest.approx(1 / 3)
    got = evaluate_reid([[0.5, 0.2, 0.5]], [0], [0, 1, 1])
    assert got["mAP"] == pytest.approx(1 / 2)


def test_max_rank_beyond_gallery_and_skipped_count():
    distmat = np.array([[0.3, 0.1], [0.4, 0.2], [0.1, 0.2]])
    got = evaluate_reid(distmat, [0, 1, 9], [0, 1], max_rank=5)
    # Query 0 meets its match second, query 1 first, query 2 (pid 9) never.
    assert got["cmc"].shape == (5,)
    np.testing.assert_allclose(got["cmc"], [0.5, 1.0, 1.0, 1.0, 1.0])
    assert (got["n_valid_queries"], got["n_skipped_queries"]) == (2, 1)


def test_string_ids_and_memmap(tmp_path):
    distmat, q_pids, g_pids, q_cams, g_cams = random_problem(11)
    expected = evaluate_reid(distmat, q_pids, g_pids, q_cams, g_cams)
    path = tmp_path / "dist.npy"
    np.save(path, distmat)
    mapped = np.load(path, mmap_mode="r")
    got = evaluate_reid(
        mapped,
        np.char.add("p", q_pids.astype(str)),
        np.char.add("p", g_pids.astype(str)),
        np.char.add("c", q_cams.astype(str)),
        np.char.add("c", g_cams.astype(str)),
    )
    assert_same_result(got, expected, atol=0)


def test_invalid_inputs_raise():
    d = np.random.default_rng(0).random((3, 4))
    q, g = [0, 1, 2], [0, 1, 2, 0]
    with pytest.raises(ValueError, match="2D"):
        evaluate_reid(d[0], q, g)
    with pytest.raises(ValueError, match="empty"):
        evaluate_reid(np.zeros((0, 4)), [], g)
    with pytest.raises(ValueError, match="q_pids has 2 entries"):
        evaluate_reid(d, [0, 1], g)
    with pytest.raises(ValueError, match="g_pids has 3 entries"):
        evaluate_reid(d, q, [0, 1, 2])
    bad = d.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN \(first at row 1, column 2\)"):
        evaluate_reid(bad, q, g)
    with pytest.raises(ValueError, match="both q_camids and g_camids"):
        evaluate_reid(d, q, g, q_camids=[0, 0, 0])
    with pytest.raises(ValueError, match="g_camids has 2 entries"):
        evaluate_reid(d, q, g, [0, 0, 0], [0, 1])
    with pytest.raises(ValueError, match="No query has a true match"):
        evaluate_reid(d, [5, 6, 7], g)
    with pytest.raises(ValueError, match="max_rank must be >= 1"):
        evaluate_reid(d, q, g, max_rank=0)
    with pytest.raises(TypeError, match="max_rank must be an int"):
        evaluate_reid(d, q, g, max_rank=2.5)
    with pytest.raises(ValueError, match="real numbers"):
        evaluate_reid(d.astype(str), q, g)
    with pytest.raises(ValueError, match="same_set=True needs as many queries"):
        evaluate_reid(d, q, g, same_set=True)
    with pytest.raises(ValueError, match="q_pids and g_pids differ"):
        evaluate_reid(d[:, :3], q, [0, 2, 1], same_set=True)
    with pytest.raises(TypeError, match="same_set must be True or False"):
        evaluate_reid(d, q, g, same_set="yes")


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_evaluate_features_equals_evaluate_reid(metric, dtype, small_blocks):
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(15, 16))
    q_pids, g_pids = rng.integers(0, 15, 40), rng.integers(0, 15, 120)
    q_cams, g_cams = rng.integers(0, 3, 40), rng.integers(0, 3, 120)
    Q = (centers[q_pids] + rng.normal(size=(40, 16))).astype(dtype)
    G = (centers[g_pids] + rng.normal(size=(120, 16))).astype(dtype)
    G[5] = 0.0  # an all-zero vector is at cosine distance 1 from everything
    got = evaluate_features(Q, G, q_pids, g_pids, q_cams, g_cams, metric=metric, max_rank=10)
    distmat = cdist(Q.astype(np.float64), G.astype(np.float64), metric=metric)
    distmat[:, 5] = 1.0 if metric == "cosine" else distmat[:, 5]
    expected = reference_evaluate(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    assert_same_result(got, expected)


def test_evaluate_features_same_set():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(30, 8))
    pids = rng.integers(0, 6, 30)
    got = evaluate_features(X, X, pids, pids, same_set=True, metric="euclidean")
    expected = reference_evaluate(cdist(X, X), pids, pids, same_set=True)
    assert_same_result(got, expected)


def test_evaluate_features_rerank_equals_rerank_of_matrices():
    rng = np.random.default_rng(6)
    centers = rng.normal(size=(8, 12))
    q_pids, g_pids = rng.integers(0, 8, 20), rng.integers(0, 8, 50)
    Q = centers[q_pids] + 0.7 * rng.normal(size=(20, 12))
    G = centers[g_pids] + 0.7 * rng.normal(size=(50, 12))
    params = {"k1": 7, "k2": 3, "lambda_value": 0.2}
    for metric in ("cosine", "euclidean"):
        got = evaluate_features(Q, G, q_pids, g_pids, metric=metric, rerank=params)
        distmat = rerank(
            cdist(Q, G, metric=metric), cdist(Q, Q, metric=metric),
            cdist(G, G, metric=metric), **params,
        )
        assert_same_result(got, reference_evaluate(distmat, q_pids, g_pids))
    # rerank=True means the default parameters.
    default = evaluate_features(Q, G, q_pids, g_pids, rerank=True)
    explicit = evaluate_features(
        Q, G, q_pids, g_pids, rerank={"k1": 20, "k2": 6, "lambda_value": 0.3}
    )
    assert_same_result(default, explicit, atol=0)


def test_evaluate_features_invalid_inputs():
    Q, G = np.ones((2, 3)), np.ones((4, 3))
    q, g = [0, 1], [0, 1, 0, 1]
    with pytest.raises(ValueError, match="3 features but gallery_features have 2"):
        evaluate_features(Q, G[:, :2], q, g)
    with pytest.raises(ValueError, match="query_features contains NaN or infinity"):
        evaluate_features(np.array([[0, np.nan, 1], [1, 1, 1]]), G, q, g)
    with pytest.raises(ValueError, match="gallery_features must be 2D"):
        evaluate_features(Q, G[0], q, g)
    with pytest.raises(ValueError, match="metric must be"):
        evaluate_features(Q, G, q, g, metric="manhattan")
    with pytest.raises(TypeError, match="rerank must be a bool or a dict"):
        evaluate_features(Q, G, q, g, rerank="yes")
    with pytest.raises(ValueError, match=r"Unknown re-ranking parameter\(s\) \['k3'\]"):
        evaluate_features(Q, G, q, g, rerank={"k3": 2})
    with pytest.raises(ValueError, match="k1 must be >= 1"):
        evaluate_features(Q, G, q, g, rerank={"k1": 0})


# --- clustering metrics (ucal/metrics/_clustering.py) ------------------------


def test_labeling_cost():
    assert labeling_cost(0, 10) == 0.0
    assert labeling_cost(45, 10) == 1.0  # every one of the 10 * 9 / 2 pairs
    with pytest.raises(ValueError, match="n_samples must be >= 2"):
        labeling_cost(1, 1)
    with pytest.raises(ValueError, match="n_queries must be >= 0"):
        labeling_cost(-1, 10)


@pytest.mark.parametrize("seed", range(3))
def test_pairwise_scores_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 5, 40)
    pred = rng.integers(-1, 6, 40)
    tp = fp = fn = 0
    for i, j in itertools.combinations(range(40), 2):
        same_pred = pred[i] == pred[j] and pred[i] != -1
        same_true = truth[i] == truth[j]
        tp += same_pred and same_true
        fp += same_pred and not same_true
        fn += same_true and not same_pred
    precision, recall, fscore = pairwise_precision_recall_fscore(truth, pred)
    assert precision == pytest.approx(tp / (tp + fp))
    assert recall == pytest.approx(tp / (tp + fn))
    assert fscore == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_pair_verification_scores_match_a_brute_force_threshold_search():
    from sklearn.metrics import roc_auc_score

    from ucal.metrics import pair_verification_scores

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 8))
    pairs = rng.choice(40, size=(120, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    sims = np.einsum("ij,ij->i", Xn[pairs[:, 0]], Xn[pairs[:, 1]])
    same = sims + 0.3 * rng.normal(size=len(sims)) > 0.1
    scores = pair_verification_scores(X, pairs, same)
    assert scores["auc"] == pytest.approx(roc_auc_score(same, sims))
    best = max(np.mean((sims >= t) == same) for t in np.concatenate([sims, [np.inf]]))
    assert scores["accuracy"] == pytest.approx(best)
    assert np.mean((sims >= scores["threshold"]) == same) == pytest.approx(best)
    assert scores["n_pairs"] == len(same) and scores["n_same"] == same.sum()


def test_pair_verification_scores_edge_cases():
    from ucal.metrics import pair_verification_scores

    X = np.eye(3)
    one_sided = pair_verification_scores(X, [[0, 1], [1, 2]], [False, False])
    assert np.isnan(one_sided["auc"]) and one_sided["accuracy"] == 1.0
    zero = pair_verification_scores(np.zeros((2, 3)), [[0, 1]], [True])
    assert zero["accuracy"] == 1.0  # an all-zero row has similarity 0, not NaN
    with pytest.raises(ValueError, match="answers"):
        pair_verification_scores(X, [[0, 1]], [True, False])
    with pytest.raises(ValueError, match="outside"):
        pair_verification_scores(X, [[0, 3]], [True])
