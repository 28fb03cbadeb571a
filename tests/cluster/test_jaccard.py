import numpy as np
import pytest
from scipy import sparse

from ucal.cluster import jaccard_distance
from ucal.cluster._knn import exact_knn, l2_normalize

from .._helpers import clustered
from ._jaccard_reference import dense_jaccard


@pytest.fixture(params=["numpy", "compiled"])
def min_sums(request, monkeypatch):
    """Each test taking it runs with NumPy's min-sums and with the compiled ones."""
    if request.param == "compiled":
        pytest.importorskip("numba")
    monkeypatch.setenv("UCAL_NUMBA", "1" if request.param == "compiled" else "0")
    return request.param


def _dense(D):
    out = np.ones(D.shape)
    coo = D.tocoo()
    out[coo.row, coo.col] = coo.data
    return out


@pytest.mark.parametrize(
    "n, k1, k2, noise",
    [(60, 8, 3, 0.3), (200, 20, 6, 0.4), (150, 30, 6, 0.3), (40, 5, 1, 0.3), (120, 31, 2, 1.0)],
)
def test_equals_dense_reference(n, k1, k2, noise, min_sums):
    X = clustered(n, max(2, n // 10), 16, noise, seed=n + k1)[0]
    expected, _ = dense_jaccard(X, k1, k2)
    D = jaccard_distance(X, k1, k2)
    assert sparse.isspmatrix_csr(D)
    np.testing.assert_allclose(_dense(D), expected, atol=1e-5)
    # A stored entry is exactly a pair sharing support; the rest is 1.
    assert D.nnz == int((expected < 1 - 1e-12).sum() + 0)
    assert np.all(D.diagonal() <= 1e-5)
    assert (D != D.T).nnz == 0


def test_diagonal_and_explicit_zeros_are_stored(min_sums):
    # Exact duplicates have identical encodings: distance exactly 0, stored.
    rng = np.random.default_rng(0)
    base = rng.normal(size=(10, 8))
    X = np.repeat(base, 4, axis=0)
    D = jaccard_distance(X, k1=4, k2=1)
    rows = np.repeat(np.arange(D.shape[0]), np.diff(D.indptr))
    assert np.all(np.isin(np.arange(40), rows[D.indices == rows]))
    assert (D.data == 0).sum() >= 40


def test_input_is_l2_normalised_first():
    X = clustered(80, 8, 12, 0.3, seed=1)[0]
    scales = np.random.default_rng(2).uniform(0.1, 10, size=(80, 1))
    np.testing.assert_allclose(
        jaccard_distance(X, 10, 4).toarray(), jaccard_distance(X * scales, 10, 4).toarray(), atol=1e-6
    )


def test_numpy_and_faiss_knn_agree():
    pytest.importorskip("faiss", reason="faiss-cpu is an optional extra")
    X = l2_normalize(clustered(3000, 150, 64, 0.5, seed=3)[0])
    i_np, s_np = exact_knn(X, 25, search="numpy", block_size=700)
    i_fa, s_fa = exact_knn(X, 25, search="faiss")
    np.testing.assert_allclose(s_np, s_fa, atol=1e-5)
    assert (i_np == i_fa).mean() > 0.999  # only exact ties may swap
    D_np = jaccard_distance(X, 20, 6, search="numpy")
    D_fa = jaccard_distance(X, 20, 6, search="faiss")
    # Similarities that differ by one float32 ulp between the engines may swap two
    # neighbours, which moves the k-reciprocal sets of a few rows: a few entries only.
    differ = (abs(D_np - D_fa).data > 1e-5).sum()
    assert differ <= 0.001 * D_np.nnz


@pytest.mark.parametrize("block_size", [1, 7, 64, 5000])
def test_blocked_knn_is_exact(block_size):
    X = l2_normalize(clustered(300, 20, 10, 0.5, seed=4)[0])
    idx, sim = exact_knn(X, 12, search="numpy", block_size=block_size)
    full = X @ X.T
    np.fill_diagonal(full, np.inf)
    ref = np.argsort(-full, axis=1, kind="stable")[:, :12]
    assert (idx[:, 0] == np.arange(300)).all()
    np.testing.assert_array_equal(idx, ref)
    np.testing.assert_allclose(sim[:, 1:], np.take_along_axis(X @ X.T, ref, axis=1)[:, 1:], atol=1e-6)


def test_deterministic():
    X = clustered(500, 25, 32, 0.5, seed=5)[0]
    a = jaccard_distance(X, 20, 6)
    b = jaccard_distance(X, 20, 6)
    assert (a != b).nnz == 0


def test_k1_larger_than_n_is_clipped():
    X = clustered(12, 3, 5, 0.2, seed=6)[0]
    expected, _ = dense_jaccard(X, 12, 3)
    np.testing.assert_allclose(_dense(jaccard_distance(X, k1=50, k2=3)), expected, atol=1e-5)


@pytest.mark.parametrize(
    "X, match",
    [
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN or infinity"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), "NaN or infinity"),
        (np.zeros((3, 2)), "all-zero row"),
        (np.ones(5), "2D array"),
        (np.array([["a", "b"]]), "numeric"),
    ],
)
def test_bad_input(X, match):
    with pytest.raises(ValueError, match=match):
        jaccard_distance(X, 3, 2)


def test_bad_k():
    with pytest.raises(ValueError, match="k1 and k2"):
        jaccard_distance(np.eye(4), 0, 2)
    with pytest.raises(ValueError, match="search must be one of 'auto', 'numpy', 'faiss', 'torch', 'faiss-ivf', 'hnsw'"):
        jaccard_distance(np.eye(4) + 0.1, 2, 2, search="annoy")


def test_max_distance_keeps_exactly_the_near_entries(min_sums):
    X = clustered(300, 20, 16, 0.6, seed=11)[0]
    full = jaccard_distance(X, 20, 6)
    cut = jaccard_distance(X, 20, 6, max_distance=0.62)
    coo = full.tocoo()
    near = (coo.data <= 0.62) | (coo.row == coo.col)
    expected = {(r, c): v for r, c, v in zip(coo.row[near], coo.col[near], coo.data[near])}
    got = cut.tocoo()
    assert len(expected) == got.nnz < full.nnz
    for r, c, v in zip(got.row, got.col, got.data):
        assert expected[(r, c)] == pytest.approx(v, abs=1e-7)


def test_n_rows_computes_exactly_the_leading_rows(min_sums):
    from ucal.cluster._jaccard import jaccard_from_neighbors
    from ucal.cluster._knn import exact_knn, l2_normalize

    X = l2_normalize(clustered(200, 12, 16, 0.5, seed=12)[0])
    idx, sim = exact_knn(X, 20)

    def pair_distance(r, c):
        return 2.0 - 2.0 * np.einsum("ij,ij->i", X[r], X[c])

    kw = dict(n_forward=20, n_half=11, k2=6, knn_distance=2.0 - 2.0 * sim)
    full = jaccard_from_neighbors(idx, pair_distance, **kw)
    part = jaccard_from_neighbors(idx, pair_distance, n_rows=50, **kw)
    assert abs(full[:50] - part[:50]).max() == 0
    assert abs(full[:, :50] - part[:, :50]).max() == 0
    assert part[50:, 50:].nnz == 0 < full[50:, 50:].nnz


@pytest.mark.parametrize("heavy", [1, 3, 10**9])
def test_dense_heavy_columns_give_the_same_distances(monkeypatch, heavy):
    import ucal.cluster._jaccard as jaccard_module

    monkeypatch.setenv("UCAL_NUMBA", "0")  # NumPy's min-sums: the paths under test
    X = clustered(240, 6, 16, 0.5, seed=21)[0]  # groups of ~40: columns with many entries
    expected, _ = dense_jaccard(X, 20, 6)
    monkeypatch.setattr(jaccard_module, "_HEAVY_COLUMN", heavy)
    monkeypatch.setattr(jaccard_module, "_MAX_TRIPLES", 5000)  # many chunks
    D = jaccard_distance(X, 20, 6)
    np.testing.assert_allclose(_dense(D), expected, atol=1e-5)


def test_symmetric_layout_keeps_explicit_zeros_and_sorted_rows():
    from scipy import sparse

    from ucal.cluster._jaccard import _symmetric_csr

    n = 300
    upper = sparse.triu(sparse.random(n, n, density=0.05, random_state=0, format="csr"))
    upper.setdiag(0.5)
    coo = upper.tocoo()
    order = np.lexsort((coo.col, coo.row))  # row-major
    i, j = coo.row[order].astype(np.int32), coo.col[order].astype(np.int32)
    d = coo.data[order].astype(np.float32)
    d[::7] = 0.0  # a distance of 0 is an entry, not a missing one
    got = _symmetric_csr(i, j, d, n)
    shuffled = np.random.default_rng(0).permutation(len(i))  # any order gives the same
    again = _symmetric_csr(i[shuffled], j[shuffled], d[shuffled], n)
    np.testing.assert_array_equal(again.indices, got.indices)
    np.testing.assert_array_equal(again.data, got.data)
    # grouped by row but unsorted within rows, as the min-sums give them
    grouped = np.lexsort((np.random.default_rng(1).random(len(i)), i))
    assert (np.diff(j[grouped]) < 0).any() and (np.diff(i[grouped]) >= 0).all()
    within = _symmetric_csr(i[grouped], j[grouped], d[grouped], n)
    np.testing.assert_array_equal(within.indices, got.indices)
    np.testing.assert_array_equal(within.data, got.data)
    strictly = i != j
    want = sparse.csr_matrix(
        (np.r_[d, d[strictly]], (np.r_[i, j[strictly]], np.r_[j, i[strictly]])), shape=(n, n)
    )
    want.sort_indices()
    assert got.has_sorted_indices
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.data, want.data)


def test_meeting_sums_add_every_meeting_of_a_cell():
    from ucal.cluster._jaccard import _sum_meetings

    rng = np.random.default_rng(3)
    shape = (7, 40)
    rows = np.sort(rng.integers(0, shape[0] - 1, 500))  # the last row has no meeting
    cols = rng.integers(0, shape[1], 500)
    values = rng.random(500).astype(np.float32)
    more = [(rng.integers(0, shape[0], 60), rng.integers(0, shape[1], 60), rng.random(60))
            for _ in range(2)]
    expected = np.zeros(shape)
    np.add.at(expected, (rows, cols), values)
    for r, c, v in more:
        np.add.at(expected, (r, c), v)
    got = _sum_meetings(rows, cols, values, shape, iter(more))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got.toarray(), expected, rtol=1e-6)
    alone = _sum_meetings(rows, cols, values, shape)
    np.testing.assert_allclose(alone.toarray(), expected - sum(
        np.bincount(r * shape[1] + c, v, shape[0] * shape[1]).reshape(shape) for r, c, v in more),
        rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("dense_ratio", [0, 10**9])
@pytest.mark.parametrize("heavy", [3, 10**9])
@pytest.mark.parametrize("max_distance", [None, 0.62])
def test_chunked_sums_match_the_dense_definition(monkeypatch, heavy, max_distance, dense_ratio):
    # Many small chunks, each summed by its own sparse product (ratio 0) or
    # dense buffer, with and without heavy columns: the dense definition's
    # distances.
    import ucal.cluster._jaccard as jaccard_module

    monkeypatch.setenv("UCAL_NUMBA", "0")  # NumPy's min-sums: the paths under test
    X = clustered(240, 6, 16, 0.5, seed=22)[0]
    expected = dense_jaccard(X, 20, 6)[0]
    monkeypatch.setattr(jaccard_module, "_HEAVY_COLUMN", heavy)
    monkeypatch.setattr(jaccard_module, "_MAX_TRIPLES", 500)
    monkeypatch.setattr(jaccard_module, "_DENSE_RATIO", dense_ratio)
    calls = []
    original = jaccard_module._sum_meetings
    monkeypatch.setattr(jaccard_module, "_sum_meetings", lambda *a: calls.append(1) or original(*a))
    D = jaccard_distance(X, 20, 6, max_distance=max_distance)
    assert len(calls) > 10 if dense_ratio == 0 else not calls
    # the rows really are sorted (the sparse product leaves them unsorted), not just flagged so
    for r in range(D.shape[0]):
        assert (np.diff(D.indices[D.indptr[r] : D.indptr[r + 1]]) > 0).all()
    # both ways of summing give the same matrix, bit for bit
    monkeypatch.setattr(jaccard_module, "_DENSE_RATIO", 10**9 - dense_ratio)
    other = jaccard_distance(X, 20, 6, max_distance=max_distance)
    np.testing.assert_array_equal(other.indptr, D.indptr)
    np.testing.assert_array_equal(other.indices, D.indices)
    np.testing.assert_array_equal(other.data, D.data)
    if max_distance is not None:
        expected = np.where(expected <= max_distance, expected, 1.0)
    np.testing.assert_allclose(_dense(D), expected, atol=1e-5)


@pytest.mark.parametrize("max_out", [1, 300, 10**9])
@pytest.mark.parametrize("max_distance", [None, 0.62])
def test_compiled_min_sums_match_numpys(monkeypatch, max_out, max_distance):
    # One output slot per chunk (a row at a time), small chunks, one chunk:
    # the NumPy path's matrix, entry for entry, with hub columns and n_rows.
    pytest.importorskip("numba")
    import ucal.cluster._compiled as compiled_module
    from ucal.cluster._jaccard import _encodings, _upper_distances

    X = l2_normalize(clustered(240, 6, 16, 0.5, seed=23)[0])
    idx, sim = exact_knn(X, 20)

    def pair_distance(r, c):
        return 2.0 - 2.0 * np.einsum("ij,ij->i", X[r], X[c])

    V = _encodings(idx, pair_distance, 20, 11, 6, 2.0 - 2.0 * sim)
    monkeypatch.setattr(compiled_module, "_MAX_OUT", max_out)
    calls = []
    original = compiled_module.upper_distances_compiled
    monkeypatch.setattr("ucal.cluster._jaccard.upper_distances_compiled",
                        lambda *a: calls.append(1) or original(*a))
    for n_rows in (None, 100):
        monkeypatch.setenv("UCAL_NUMBA", "1")
        got = sparse.csr_matrix((lambda i, j, d: (d.astype(np.float64) + 1, (i, j)))(
            *_upper_distances(V, max_distance, n_rows)), shape=V.shape)
        monkeypatch.setenv("UCAL_NUMBA", "0")
        want = sparse.csr_matrix((lambda i, j, d: (d.astype(np.float64) + 1, (i, j)))(
            *_upper_distances(V, max_distance, n_rows)), shape=V.shape)
        for m in (got, want):
            m.sort_indices()
        np.testing.assert_array_equal(got.indptr, want.indptr)
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_allclose(got.data, want.data, rtol=0, atol=1e-7)
    assert len(calls) == 2  # the compiled path really ran, once per n_rows


def test_compiled_min_sums_leave_non_positive_encodings_to_numpy(monkeypatch):
    # The compiled loop takes an untouched cell for an exact 0.0: a stored
    # zero or NaN would break that, so such encodings take the NumPy path.
    pytest.importorskip("numba")
    import ucal.cluster._jaccard as jaccard_module

    calls = []
    original = jaccard_module.upper_distances_compiled
    monkeypatch.setattr(jaccard_module, "upper_distances_compiled",
                        lambda *a: calls.append(1) or original(*a))
    monkeypatch.setenv("UCAL_NUMBA", "1")
    V = sparse.csr_matrix(np.array([[0.5, 0.5, 0.0], [0.25, 0.75, 0.0], [0.0, 0.5, 0.5]]))
    jaccard_module._upper_distances(V, None)
    assert calls == [1]
    V.data[0] = 0.0  # a stored zero
    i, j, d = jaccard_module._upper_distances(V, None)
    assert calls == [1]
    assert len(set(zip(i.tolist(), j.tolist()))) == len(i)  # every cell once


_CACHE_PROBE = """
import json, numpy as np
from ucal import SelfPacedDBSCAN
from ucal.cluster._compiled import _kernels
from ucal.cluster._knn import exact_knn
X = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
SelfPacedDBSCAN(k1=10, k2=3).fit(X)
exact_knn(X, 10, block_size=64)  # several blocks: the column merges run too
min_sums, dbscan, (rows, columns) = _kernels(0)
print(json.dumps({name: [sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values())]
                  for name, k in [("min_sums", min_sums), ("dbscan", dbscan), ("rows", rows),
                                  ("columns", columns)]}))
"""


def test_compiled_loops_are_loaded_from_numbas_cache_in_a_new_process(tmp_path):
    # A kernel numba cannot key (one that calls another compiled function)
    # is compiled again in every process, a second or more each time.
    pytest.importorskip("numba")
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "UCAL_NUMBA": "1", "NUMBA_CACHE_DIR": str(tmp_path)}

    def probe():
        out = subprocess.run([sys.executable, "-c", _CACHE_PROBE], env=env, check=True,
                             capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    probe()  # compiles (and caches) whatever is not cached yet
    stats = probe()
    for name, (hits, misses) in stats.items():
        assert hits >= 1 and misses == 0, (name, stats)


def test_compiled_loops_run_where_they_pay(monkeypatch):
    # By default only above _MIN_WORK (loading them costs about half a second per
    # process); UCAL_NUMBA=1 forces them, UCAL_NUMBA=0 (or "off") forbids them.
    pytest.importorskip("numba")
    from ucal.cluster._compiled import _MIN_WORK, compiled_dbscan, compiled_min_sums, compiled_top_k

    import ucal.cluster._compiled as compiled_module

    monkeypatch.delenv("UCAL_NUMBA", raising=False)
    # the top-k merges alone load numba only for a large search ...
    monkeypatch.setattr(compiled_module, "_KERNELS", None)
    assert compiled_top_k(_MIN_WORK) is None and compiled_module._KERNELS is None
    assert compiled_top_k(compiled_module._MIN_SIMILARITIES) is not None
    # ... once loaded, every loop runs from _MIN_WORK on
    for kernel in (compiled_min_sums, compiled_dbscan, compiled_top_k):
        assert kernel(_MIN_WORK - 1) is None and kernel(_MIN_WORK) is not None
    monkeypatch.setenv("UCAL_NUMBA", "1")
    assert compiled_min_sums(0) is not None
    for off in ("0", "off", " False "):
        monkeypatch.setenv("UCAL_NUMBA", off)
        assert all(kernel(10**12) is None for kernel in (compiled_min_sums, compiled_dbscan, compiled_top_k))
