"""Neighbour-search backends: exact ones agree, approximate ones approach them,
and the clustering step reads features in blocks (float16, memory maps)."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import ParameterGrid
from sklearn.utils._param_validation import InvalidParameterError

import ucal.cluster._knn as knn_module
import ucal.cluster._search as search_module
from ucal import SelfPacedDBSCAN
from ucal.cluster import ExactSearch, HNSWSearch, IVFSearch, jaccard_distance
from ucal.cluster._knn import UnitRows, l2_normalize
from ucal.cluster._search import _fill_missing, resolve_search
from ucal.metrics import pairwise_precision_recall_fscore
from ucal.utils import outliers_as_singletons

from .._helpers import clustered


def _agreement(a, b):
    """Pairwise F of two labelings, each outlier its own cluster."""
    return pairwise_precision_recall_fscore(outliers_as_singletons(a), outliers_as_singletons(b))[2]


def _brute(X, k):
    """Reference: stable sort of the similarity rows, each row itself first."""
    Xn = l2_normalize(X).astype(np.float64)
    S = Xn @ Xn.T
    np.fill_diagonal(S, np.inf)
    idx = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(S, idx, axis=1)


def _row_recall(approx, exact):
    return np.mean([np.intersect1d(a, e).size / e.size for a, e in zip(approx, exact)])


@pytest.mark.parametrize("block_rows", [None, 7, 64])
def test_numpy_exact_equals_brute_force_across_tiles(monkeypatch, block_rows):
    # Small tiles: every row block spans several column tiles and tails.
    monkeypatch.setattr(knn_module, "_MAX_BLOCK_BYTES", 4 * 64 * 50)
    X = np.random.default_rng(0).normal(size=(300, 12))
    idx, sim = ExactSearch(block_rows=block_rows).kneighbors(X, 15)
    ref_idx, ref_sim = _brute(X, 15)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sim[:, 1:], ref_sim[:, 1:], atol=1e-5)
    assert np.all(sim[:, 0] == 1.0)


def test_numpy_exact_breaks_ties_by_index():
    # Four copies of each point: the copies tie, lower index first, self first.
    base = np.random.default_rng(1).normal(size=(10, 6))
    X = np.repeat(base, 4, axis=0)
    idx, _ = ExactSearch(block_rows=3).kneighbors(X, 4)
    for i in range(X.shape[0]):
        group = 4 * (i // 4) + np.arange(4)
        assert idx[i, 0] == i
        np.testing.assert_array_equal(idx[i, 1:], group[group != i])


@pytest.mark.parametrize("seed", range(4))
def test_compiled_top_k_merges_give_numpys_lists(monkeypatch, seed):
    # Small tiles and few distinct similarities (features on a coarse grid,
    # repeated rows): many exact ties, broken the same way by both paths,
    # the compiled row and column merges both run.
    pytest.importorskip("numba")
    import ucal.cluster._compiled as compiled_module

    rng = np.random.default_rng(seed)
    base = rng.integers(-2, 3, size=(90, 5)).astype(np.float32)
    base[np.all(base == 0, axis=1), 0] = 1.0
    X = np.concatenate([base, base[rng.integers(0, 90, 60)]])
    # tiles of 20 columns: most blocks span several tiles (c0 > start), so the
    # row and column offsets of the kernels differ
    monkeypatch.setattr(knn_module, "_MAX_BLOCK_BYTES", 4 * 16 * 20)
    calls = []
    original = compiled_module.compiled_top_k
    monkeypatch.setattr(knn_module, "compiled_top_k", lambda n: calls.append(n) or original(n))
    results = {}
    for setting in ("0", "1"):
        monkeypatch.setenv("UCAL_NUMBA", setting)
        results[setting] = ExactSearch(block_rows=16).kneighbors(X, 13)
    np.testing.assert_array_equal(results["1"][0], results["0"][0])
    np.testing.assert_array_equal(results["1"][1], results["0"][1])
    assert len(calls) == 2 and original(0) is not None  # the compiled run used them
    sims = results["1"][1]
    assert (np.diff(sims[:, 1:], axis=1) == 0).mean() > 0.3  # ties are common here


def test_torch_backend_equals_numpy_on_cpu():
    pytest.importorskip("torch")
    X = clustered(400, 20, 32, 0.5, seed=3)[0]
    i_np, s_np = ExactSearch().kneighbors(X, 20)
    i_t, s_t = ExactSearch("torch", device="cpu", block_rows=50).kneighbors(X, 20)
    # Same neighbours, ties aside: where two similarities are equal to float32
    # rounding the order may differ, so compare the lists as sets plus values.
    np.testing.assert_allclose(s_t, s_np, atol=1e-5)
    gaps = np.abs(np.diff(s_np, axis=1)).min(axis=1) > 1e-5
    assert gaps.mean() > 0.9
    np.testing.assert_array_equal(i_t[gaps], i_np[gaps])
    assert np.all(i_t[:, 0] == np.arange(400))


def test_torch_backend_refuses_missing_cuda():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        ExactSearch("torch", device="cuda").kneighbors(np.eye(5) + 0.1, 2)


def _needs_faiss():
    pytest.importorskip("faiss", reason="faiss-cpu is an optional extra")


def test_ivf_probing_every_list_is_exact():
    _needs_faiss()
    X = clustered(500, 25, 16, 0.4, seed=5)[0]
    exact_idx, exact_sim = ExactSearch().kneighbors(X, 12)
    search = IVFSearch(n_probe=10, n_lists=10, encoding="flat", refine=1, random_state=0)
    idx, sim = search.kneighbors(X, 12)
    np.testing.assert_allclose(sim, exact_sim, atol=1e-5)
    assert _row_recall(idx, exact_idx) > 0.999


def test_ivf_recall_grows_with_probes_and_lists_have_no_repeats():
    _needs_faiss()
    X = clustered(3000, 150, 24, 0.5, seed=7)[0]
    exact_idx, _ = ExactSearch().kneighbors(X, 15)
    recalls = []
    for probe in (1, 4, 16):
        idx, sim = IVFSearch(n_probe=probe, n_lists=60, encoding="flat", refine=1,
                             random_state=0).kneighbors(X, 15)
        assert np.all(idx[:, 0] == np.arange(3000))
        # No neighbour twice (a row short of neighbours repeats itself only).
        others = [row[row != i] for i, row in enumerate(idx)]
        assert all(np.unique(o).size == o.size for o in others)
        assert np.all(np.diff(sim, axis=1) <= 1e-6)  # sorted by similarity
        recalls.append(_row_recall(idx, exact_idx))
    assert recalls[0] < recalls[1] < recalls[2]
    assert recalls[2] > 0.97


def test_ivf_is_reproducible_with_random_state():
    _needs_faiss()
    X = clustered(800, 40, 16, 0.5, seed=2)[0]
    a = IVFSearch(n_probe=3, random_state=4).kneighbors(X, 10)[0]
    b = IVFSearch(n_probe=3, random_state=4).kneighbors(X, 10)[0]
    np.testing.assert_array_equal(a, b)


def test_hnsw_finds_the_neighbours_of_clustered_data():
    pytest.importorskip("faiss", reason="faiss-cpu is an optional extra")
    X = clustered(1500, 75, 16, 0.4, seed=8)[0]
    exact_idx, _ = ExactSearch().kneighbors(X, 10)
    idx, _ = HNSWSearch(n_links=16, ef_search=64).kneighbors(X, 10)
    assert np.all(idx[:, 0] == np.arange(1500))
    assert _row_recall(idx, exact_idx) > 0.95


def test_missing_neighbours_repeat_the_row_itself():
    idx = np.array([[0, 2, -1], [1, -1, -1]])
    sim = np.array([[1.0, 0.5, -np.inf], [1.0, -np.inf, -np.inf]], dtype=np.float32)
    idx, sim = _fill_missing(idx, sim)
    np.testing.assert_array_equal(idx, [[0, 2, 0], [1, 1, 1]])
    np.testing.assert_allclose(sim, [[1.0, 0.5, 0.5], [1.0, 1.0, 1.0]])


def _same(a, b):
    return type(a) is type(b) and a.get_params() == b.get_params()


def test_auto_resolution(monkeypatch, caplog):
    assert _same(resolve_search("auto", 1000), ExactSearch("numpy"))
    monkeypatch.setattr(search_module, "AUTO_EXACT_MAX_SAMPLES", 500)
    # Above the limit on a CPU: faiss's inverted file, as measured, where faiss is installed ...
    monkeypatch.setattr(search_module, "_has_faiss", lambda: True)
    chosen = resolve_search("auto", 1000, n_jobs=2)
    assert _same(chosen, IVFSearch(n_jobs=2, random_state=0))
    assert (chosen.n_probe, chosen.encoding, chosen.refine) == (256, None, 1.5)
    assert _same(resolve_search("faiss-ivf", 10), IVFSearch(random_state=0))
    # ... else exact search, with a warning (once) that says what faiss would give.
    monkeypatch.setattr(search_module, "_has_faiss", lambda: False)
    monkeypatch.setattr(search_module, "_WARNED_NO_FAISS", [])
    with caplog.at_level("WARNING", logger="ucal.cluster._search"):
        assert _same(resolve_search("auto", 1000), ExactSearch("numpy"))
        assert _same(resolve_search("auto", 1000), ExactSearch("numpy"))
    assert "pip install 'ucal[faiss]'" in caplog.text and "1000 samples" in caplog.text
    assert caplog.text.count("without faiss") == 1
    assert _same(resolve_search("auto", 1000, device="cuda:1"), ExactSearch("torch", device="cuda:1"))
    assert _same(resolve_search("auto", 100, device="cuda:1"), ExactSearch("torch", device="cuda:1"))
    assert _same(resolve_search("auto", 100, device="cpu"), ExactSearch("numpy"))
    given = IVFSearch(n_probe=3)
    assert resolve_search(given, 10) is given
    assert isinstance(resolve_search("hnsw", 10), HNSWSearch)


def test_the_removed_numpy_inverted_file_is_named_in_the_error():
    removed = "'ivf', ucal's NumPy inverted file, was removed.*'faiss-ivf'"
    with pytest.raises(ValueError, match=removed):
        resolve_search("ivf", 10)
    with pytest.raises(ValueError, match=removed):
        SelfPacedDBSCAN(k1=3, k2=2, search="ivf").fit(np.eye(6) + 0.1)


def test_auto_without_faiss_clusters_exactly_above_the_limit(monkeypatch, caplog):
    monkeypatch.setattr(search_module, "AUTO_EXACT_MAX_SAMPLES", 100)
    monkeypatch.setattr(search_module, "_has_faiss", lambda: False)
    monkeypatch.setattr(search_module, "_WARNED_NO_FAISS", [])
    X = clustered(300, 15, 16, 0.3, seed=9)[0]
    with caplog.at_level("WARNING", logger="ucal.cluster._search"):
        est = SelfPacedDBSCAN(k1=10, k2=3).fit(X)
    assert _same(est.search_, ExactSearch("numpy"))
    assert "without faiss" in caplog.text
    exact = SelfPacedDBSCAN(k1=10, k2=3, search="numpy").fit(X)
    np.testing.assert_array_equal(est.labels_, exact.labels_)


def test_auto_switches_the_clusterer_to_ivf_above_the_limit(monkeypatch):
    _needs_faiss()
    monkeypatch.setattr(search_module, "AUTO_EXACT_MAX_SAMPLES", 100)
    X, y = clustered(600, 30, 16, 0.3, seed=9)
    est = SelfPacedDBSCAN(k1=10, k2=3).fit(X)
    assert isinstance(est.search_, IVFSearch)
    exact = SelfPacedDBSCAN(k1=10, k2=3, search="numpy").fit(X)
    assert _agreement(exact.labels_, est.labels_) > 0.98


def test_search_objects_compose_with_grid_search():
    est = SelfPacedDBSCAN(search=IVFSearch(n_probe=4))
    params = est.get_params(deep=True)
    assert params["search__n_probe"] == 4
    for setting in ParameterGrid({"search__n_probe": [2, 8]}):
        candidate = clone(est).set_params(**setting)
        assert candidate.search.n_probe == setting["search__n_probe"]
        assert candidate.search is not est.search
    X = clustered(300, 15, 16, 0.3, seed=1)[0]
    fitted = clone(est).set_params(search__n_probe=2, search__random_state=0)
    if search_module._has_faiss():
        fitted.fit(X)
        assert fitted.search_ is fitted.search


@pytest.mark.parametrize(
    "search, match",
    [
        (IVFSearch(n_probe=0), "n_probe"),
        (IVFSearch(encoding="annoy"), "encoding"),
        (HNSWSearch(ef_search=0), "ef_search"),
        (ExactSearch(backend="gpu"), "backend"),
    ],
)
def test_bad_search_parameters_are_named(search, match):
    with pytest.raises(InvalidParameterError, match=match):
        search.kneighbors(np.eye(6) + 0.1, 2)
    with pytest.raises(InvalidParameterError, match=match):
        SelfPacedDBSCAN(k1=3, k2=2, search=search).fit(np.eye(6) + 0.1)


def test_faiss_backends_say_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    for search in (HNSWSearch(), IVFSearch(), ExactSearch("faiss")):
        with pytest.raises(ImportError, match=r"pip install 'ucal\[faiss\]'"):
            search.kneighbors(np.eye(6) + 0.1, 2)


# ---------------------------------------------------------------- features read in blocks


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_block_normalised_rows_equal_the_copy(monkeypatch, dtype):
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(200, 24)) * rng.uniform(0.1, 50, size=(200, 1))).astype(dtype)
    copied = l2_normalize(X.astype(np.float64))
    monkeypatch.setattr(knn_module, "_MAX_COPY_BYTES", 0)
    rows = UnitRows(X)
    assert not rows.in_memory and rows.data is X  # no normalised copy
    tol = 2e-3 if dtype == np.float16 else 1e-6
    np.testing.assert_allclose(rows.block(10, 50), copied[10:50], atol=tol)
    np.testing.assert_allclose(rows.take(np.array([5, 199, 0])), copied[[5, 199, 0]], atol=tol)


def test_unit_float32_rows_are_used_in_place():
    X = l2_normalize(np.random.default_rng(0).normal(size=(50, 8)))
    rows = UnitRows(X)
    assert rows.data is X and rows.block(0, 10).base is X


def test_float16_and_memmap_features_cluster_like_float32(tmp_path, monkeypatch):
    X, y = clustered(600, 30, 32, 0.3, seed=4)
    X16 = X.astype(np.float16)
    reference = SelfPacedDBSCAN(k1=10, k2=3).fit(X16.astype(np.float32))
    path = tmp_path / "features.npy"
    np.save(path, X16)
    monkeypatch.setattr(knn_module, "_MAX_COPY_BYTES", 0)
    for data in (X16, np.load(path, mmap_mode="r")):
        est = SelfPacedDBSCAN(k1=10, k2=3).fit(data)
        assert _agreement(reference.labels_, est.labels_) > 0.98
        assert pairwise_precision_recall_fscore(y, est.labels_)[2] > 0.9
        assert est.cluster_centers_.dtype == np.float32


def test_block_normalised_clustering_equals_the_copied_path(monkeypatch):
    X, _ = clustered(500, 25, 16, 0.4, seed=6)
    X = X * np.random.default_rng(1).uniform(0.5, 3.0, size=(500, 1))  # not unit-norm
    copied = SelfPacedDBSCAN(k1=12, k2=4).fit(X)
    monkeypatch.setattr(knn_module, "_MAX_COPY_BYTES", 0)
    blocked = SelfPacedDBSCAN(k1=12, k2=4).fit(X)
    np.testing.assert_array_equal(blocked.labels_, copied.labels_)
    np.testing.assert_allclose(blocked.cluster_centers_, copied.cluster_centers_, atol=1e-5)


def test_fit_reports_its_split():
    X = clustered(400, 20, 16, 0.3, seed=2)[0]
    est = SelfPacedDBSCAN(k1=10, k2=3).fit(X)
    parts = est.timings_
    assert set(parts) == {"search", "jaccard", "dbscan", "total"}
    assert all(v >= 0 for v in parts.values())
    assert parts["search"] + parts["jaccard"] + parts["dbscan"] <= parts["total"] + 1e-6


def test_jaccard_distance_accepts_backends():
    _needs_faiss()
    X = clustered(300, 15, 16, 0.4, seed=12)[0]
    exact = jaccard_distance(X, 10, 3)
    full_probe = jaccard_distance(X, 10, 3, search=IVFSearch(n_probe=6, n_lists=6, encoding="flat",
                                                             n_components=None, random_state=0))
    assert abs(full_probe - exact).max() < 1e-5


def _low_rank(n, n_groups, latent, dim, noise, seed):
    """Groups in a ``latent``-dimensional space mapped to ``dim`` dimensions, as
    trained embeddings: most of the variance lies in a few directions."""
    Z, ids = clustered(n, n_groups, latent, noise, seed)
    W = np.random.default_rng(seed + 100).normal(size=(latent, dim))
    return Z @ W + 0.05 * np.random.default_rng(seed + 200).normal(size=(n, dim)), ids


def test_ivf_in_principal_components_keeps_recall_and_exact_similarities():
    _needs_faiss()
    X = _low_rank(2000, 100, 12, 160, 0.5, seed=11)[0]
    exact_idx, exact_sim = ExactSearch().kneighbors(X, 10)
    flat = dict(n_probe=6, n_lists=40, encoding="flat", refine=1, random_state=0)
    full = IVFSearch(n_components=None, **flat).kneighbors(X, 10)
    small = IVFSearch(n_components=16, **flat).kneighbors(X, 10)
    r_full, r_small = _row_recall(full[0], exact_idx), _row_recall(small[0], exact_idx)
    assert r_small > 0.9 and r_small > r_full - 0.03
    # The similarities are exact (all dimensions), whatever the assignment space.
    Xn = l2_normalize(X).astype(np.float64)
    pairs = np.einsum("ij,ikj->ik", Xn, Xn[small[0]])
    np.testing.assert_allclose(small[1][:, 1:], pairs[:, 1:], atol=1e-5)
    # Probing every list in all dimensions is exact.
    every = IVFSearch(**{**flat, "n_probe": 10**4}, n_components=None).kneighbors(X, 10)
    np.testing.assert_allclose(every[1], exact_sim, atol=1e-5)


def test_list_space_follows_the_variance_of_the_sample():
    from ucal.cluster._faiss import ListSpace

    low = l2_normalize(_low_rank(3000, 100, 8, 200, 0.5, seed=15)[0])
    spread = l2_normalize(clustered(3000, 100, 200, 1.0, seed=15)[0])
    q = ListSpace(low, 0.8)
    assert q.basis is not None and q.n_components <= 8 and q.variance >= 0.8
    z = q.project(low[:5])
    assert z.shape == (5, q.n_components)
    # Distances there are the original ones less the part outside the kept directions.
    d_full = np.linalg.norm(low[0] - low[1:5], axis=1)
    d_proj = np.linalg.norm(z[0] - z[1:], axis=1)
    assert np.all(d_proj <= d_full + 1e-5) and np.all(d_proj >= 0.8 * d_full)
    # Without a low-dimensional structure, the lists are made in all dimensions.
    q = ListSpace(spread, 0.8)
    assert q.basis is None and q.project(spread[:5]).shape == (5, 200)
    assert ListSpace(spread, 20).n_components == 20
    assert ListSpace(spread, None).basis is None
    with pytest.raises(InvalidParameterError, match="n_components"):
        IVFSearch(n_components=1.5).kneighbors(spread, 3)
