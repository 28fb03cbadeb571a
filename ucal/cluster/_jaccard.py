"""Sparse, exact k-reciprocal encoded Jaccard distance (SpCL / Zhong et al.).

SpCL builds this distance as a dense N x N matrix with Python loops. Every
quantity in the definition only involves each sample's k-nearest
neighbourhood, so the same numbers fit in sparse matrices whose size grows
with N * k instead of N ** 2:

1. reciprocal sets ``R(i, n) = {j in kNN_n(i) : i in kNN_n(j)}`` are the
   pattern of ``A_n .* A_n^T`` with ``A_n`` the n-NN indicator matrix;
2. the expansion test ``|R_half(c) & R(i)| > 2/3 |R_half(c)|`` for every
   ``c in R(i)`` is one sparse product ``R @ R_half^T`` read on R's pattern;
3. weights are a softmax of minus the distance over each expanded set;
4. local query expansion is the sparse product ``Q @ V / k2``;
5. ``sum(min(V_i, V_j))`` only involves pairs sharing a support column, so it
   is accumulated column by column (an inverted index), in row chunks.
"""

import logging
import time

import numpy as np
from scipy import sparse

from ..utils import check_dense_2d
from ._compiled import compiled_min_sums, upper_distances_compiled
from ._knn import UnitRows
from ._search import resolve_search

logger = logging.getLogger(__name__)

__all__ = ["jaccard_distance", "jaccard_from_neighbors"]

# Upper bound on (row, column, partner) triples materialised at once in the
# min-sum step (about 60 to 70 bytes of temporaries each), and on the cells
# of the dense per-chunk accumulation buffer (8 bytes each).
_MAX_TRIPLES = 4_000_000
_MAX_BUFFER = 4_000_000
# A chunk is summed in the dense buffer where it has at most this many cells
# per meeting, by a sparse product otherwise.
_DENSE_RATIO = 32
# Entries per column above which a column's meetings are summed densely.
_HEAVY_COLUMN = 256


def _indicator(knn_index, n):
    """Boolean CSR matrix with row i set at the columns ``knn_index[i]``."""
    n_rows, width = knn_index.shape
    indptr = np.arange(0, n_rows * width + 1, width, dtype=np.int64)
    data = np.ones(n_rows * width, dtype=bool)
    mat = sparse.csr_matrix((data, knn_index.ravel(), indptr), shape=(n_rows, n))
    mat.sum_duplicates()
    return mat


def _reciprocal(knn_index, n_nearest, n):
    a = _indicator(knn_index[:, :n_nearest], n)
    return a.multiply(a.T).tocsr().astype(bool)


def _expanded_sets(knn_index, n_forward, n_half, n):
    """Pattern of the expanded k-reciprocal sets, as a boolean CSR matrix."""
    recip = _reciprocal(knn_index, n_forward, n)
    recip_half = _reciprocal(knn_index, n_half, n)
    recip_f = recip.astype(np.float32)
    half_f = recip_half.astype(np.float32)
    # overlap[i, c] = |R_half(c) & R(i)|, needed only where c is in R(i).
    overlap = (recip_f @ half_f.T).multiply(recip_f).tocsr()
    half_size = np.asarray(half_f.sum(axis=1)).ravel()
    overlap = overlap.tocoo()
    keep = overlap.data > (2.0 / 3.0) * half_size[overlap.col]
    chosen = sparse.csr_matrix(
        (np.ones(keep.sum(), dtype=np.float32), (overlap.row[keep], overlap.col[keep])),
        shape=(n, n),
    )
    expanded = (recip_f + chosen @ half_f).tocsr()
    expanded.data[:] = 1.0
    expanded.sort_indices()
    return expanded


def _edge_distances(pattern, knn_index, knn_distance, pair_distance):
    """Distances on the pattern's entries: from the kNN lists when known."""
    rows = np.repeat(np.arange(pattern.shape[0]), np.diff(pattern.indptr))
    cols = pattern.indices.astype(np.int64)
    dist = np.empty(cols.size, dtype=np.float64)
    known = np.zeros(cols.size, dtype=bool)
    if knn_distance is not None:
        n = pattern.shape[1]
        # Sorted (row * n + col) keys of the kNN lists: a binary search tells
        # which pattern entries already have a distance.
        keys = (np.arange(knn_index.shape[0])[:, None] * n + knn_index).ravel()
        order = np.argsort(keys, kind="stable")
        keys, vals = keys[order], np.asarray(knn_distance).ravel()[order]
        query = rows * n + cols
        pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
        known = keys[pos] == query
        dist[known] = vals[pos[known]]
    missing = ~known
    if missing.any():
        dist[missing] = pair_distance(rows[missing], cols[missing])
    return rows, cols, dist


def _upper_distances(V, max_distance, n_rows=None):
    """Upper triangle (j >= i) of the Jaccard distance between the rows of V.

    ``d(i, j) = 1 - m / (|V_i| + |V_j| - m)`` with ``m = sum_k min(V[i, k],
    V[j, k])``, since ``sum(max) = sum(V_i) + sum(V_j) - sum(min)``. Every
    stored entry ``V[i, k]`` meets the entries ``V[j, k]``, ``j >= i``, of its
    column (an inverted index: in CSC order they are the rest of the column
    after ``i`` itself). Where numba is installed, one compiled loop adds
    every meeting into a per-row accumulator (:mod:`ucal.cluster._compiled`).
    Otherwise, for a chunk of rows the ``min`` of each meeting is
    added into a dense per-chunk buffer with ``np.bincount``, unless N is so
    large that the buffer would be almost all empty cells: then the meetings
    are summed by a sparse product (:func:`_sum_meetings`), so the cost of
    each chunk stays O(meetings), not O(rows x N). Entries above
    ``max_distance`` are dropped chunk by chunk, so they never use memory.
    With ``n_rows``, only pairs whose smaller index is below it are computed.
    """
    n = V.shape[0]
    n_rows = n if n_rows is None else min(int(n_rows), n)
    totals = np.asarray(V.sum(axis=1)).ravel()
    # d(i, j) <= t needs m >= (1 - t) (|V_i| + |V_j|) / (2 - t): cells with less shared
    # mass are skipped before any distance is computed (all of them without a bound)
    min_shared = np.finfo(np.float64).tiny
    if max_distance is not None and n:
        t = min(float(max_distance), 1.0)
        min_shared = max(min_shared, (1.0 - t) * 2.0 * float(totals.min()) / (2.0 - t) * (1 - 1e-9))
    inverted = _inverted_index(V)
    row_ptr, row_vals, csc_rows, csc_vals, csc_pos, partners = inverted
    # meetings before each entry: a chunk's, or a row's, are a difference of two
    cum = np.concatenate([[0], np.cumsum(partners, dtype=np.int64)])
    kernel = compiled_min_sums(int(cum[-1]))
    if kernel is not None and bool(np.all(row_vals > 0)):  # see ucal.cluster._compiled
        return upper_distances_compiled(kernel, inverted, cum, totals, min_shared, max_distance,
                                        n_rows)
    del inverted
    # Entries of heavy columns (shared by many rows, such as hub images) are
    # done a column at a time with dense outer minimums instead of one
    # gathered triple per meeting: the same sums, several times faster.
    col_count = np.bincount(V.indices, minlength=n)
    heavy = col_count[V.indices] >= _HEAVY_COLUMN
    del col_count
    light_cnt = np.where(heavy, 0, partners)
    out_i, out_j, out_d = [], [], []
    start = 0
    while start < n_rows:
        width = n - start  # columns j >= start
        first_cum = cum[row_ptr[start]]
        last_entry = np.searchsorted(cum, first_cum + _MAX_TRIPLES, side="right") - 1
        stop = int(np.searchsorted(row_ptr, last_entry, side="right")) - 1
        stop = min(max(stop, start + 1), n_rows)
        # A dense buffer of (rows x width) cells sums the meetings fastest
        # (hub columns, small N) unless most of its cells would stay empty:
        # then a sparse product sums them in O(meetings).
        dense_stop = min(stop, start + max(1, _MAX_BUFFER // width))
        dense = (dense_stop - start) * width <= _DENSE_RATIO * (cum[row_ptr[dense_stop]] - first_cum)
        if dense:
            stop = dense_stop
        e0, e1 = row_ptr[start], row_ptr[stop]
        cnt = light_cnt[e0:e1]
        total = int(cnt.sum())
        first = np.cumsum(cnt) - cnt
        pos = np.repeat(csc_pos[e0:e1] - first, cnt) + np.arange(total)
        local_row = np.repeat(
            np.repeat(np.arange(stop - start, dtype=np.int64), np.diff(row_ptr[start : stop + 1])),
            cnt,
        )
        mins = np.minimum(np.repeat(row_vals[e0:e1], cnt), csc_vals[pos])
        cols = csc_rows[pos] - start
        del pos
        heavy_meetings = _heavy_meetings(heavy[e0:e1], csc_pos[e0:e1], partners[e0:e1], csc_rows,
                                         csc_vals, start)
        if dense:
            acc = np.bincount(local_row * width + cols, weights=mins, minlength=(stop - start) * width)
            acc = acc.astype(np.float64, copy=False)  # int64 when the chunk has no light meeting
            del local_row, cols, mins
            for h_rows, h_cols, h_mins in heavy_meetings:  # a column's cells are distinct
                acc[(h_rows.astype(np.int64) * width + h_cols).ravel()] += h_mins.ravel()
            hit = np.flatnonzero(acc >= min_shared)
            m = acc[hit]
            del acc
            i = hit // width + start
            j = hit % width + start
        else:
            sums = _sum_meetings(local_row, cols, mins, (stop - start, width), heavy_meetings)
            del local_row, cols, mins
            hit = sums.data >= min_shared
            m = sums.data[hit]
            i = np.repeat(np.arange(start, stop, dtype=np.int64), np.diff(sums.indptr))[hit]
            j = sums.indices[hit].astype(np.int64) + start
            del sums
        del hit
        d = 1.0 - m / (totals[i] + totals[j] - m)
        np.clip(d, 0.0, 1.0, out=d)
        if max_distance is not None:
            near = (d <= max_distance) | (i == j)
            i, j, d = i[near], j[near], d[near]
        out_i.append(i.astype(np.int32))
        out_j.append(j.astype(np.int32))
        out_d.append(d.astype(np.float32))
        start = stop
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


def _inverted_index(V):
    """``V``'s entries in row (CSR) and in column (CSC) order, and how they meet.

    Returns ``(row_ptr, row_vals, csc_rows, csc_vals, csc_pos, partners)``:
    the CSR row pointers and float32 values; the row and value of each entry
    in CSC order (rows ascending within a column); each CSR entry's CSC
    position; and the entries it meets (itself and every later row of its
    column).
    """
    n = V.shape[0]
    row_ptr = V.indptr.astype(np.int64)
    row_cols = V.indices
    row_vals = V.data.astype(np.float32)
    # Per-entry arrays are int32 where they fit (entries, and so samples, below
    # 2**31): at N = 1,000,000 they are what sets this step's peak memory.
    index = np.int32 if V.nnz < np.iinfo(np.int32).max else np.int64
    # CSC position of each CSR entry: a stable sort by column keeps rows
    # ascending within each column.
    to_csc = np.argsort(row_cols, kind="stable").astype(index)
    csc_rows = np.repeat(np.arange(n, dtype=index), np.diff(row_ptr))[to_csc]
    csc_vals = row_vals[to_csc]
    csc_pos = np.empty_like(to_csc)
    csc_pos[to_csc] = np.arange(to_csc.size, dtype=index)
    del to_csc
    # the entry itself and every later row of its column
    partners = np.cumsum(np.bincount(row_cols, minlength=n)).astype(index)[row_cols]
    partners -= csc_pos
    return row_ptr, row_vals, csc_rows, csc_vals, csc_pos, partners


def _heavy_meetings(heavy, pos, partners, csc_rows, csc_vals, start):
    """Yield ``(rows, columns, mins)`` of a chunk's heavy-column meetings.

    Per column: a column of rows, a row of columns (``start`` subtracted
    from both) and their outer minimum.

    The chunk's entries of one column are consecutive in CSC order (rows
    ascending), so its meetings are the upper triangle of one dense outer
    minimum: (chunk entries) x (the rest of the column from the first). The
    cells of one column are distinct (a row appears once per column). The
    lower triangle's cells come with a zero minimum (cheaper than a masked
    copy; a zero sum never reaches the output).
    """
    if not heavy.any():
        return
    pos, ends = pos[heavy], pos[heavy] + partners[heavy]
    order = np.argsort(pos, kind="stable")
    pos, ends = pos[order], ends[order]
    # Runs of consecutive CSC positions sharing one column end = one column.
    new_run = np.r_[True, (ends[1:] != ends[:-1]) | (pos[1:] != pos[:-1] + 1)]
    starts = np.flatnonzero(new_run)
    stops = np.r_[starts[1:], pos.size]
    for a, b in zip(starts, stops):
        p0, p1, end = pos[a], pos[b - 1] + 1, ends[a]
        mins = np.minimum.outer(csc_vals[p0:p1], csc_vals[p0:end])
        # the rectangle right of the run is all upper; within the run, only j >= i
        mins[:, : p1 - p0][np.tri(p1 - p0, k=-1, dtype=bool)] = 0.0
        yield (csc_rows[p0:p1, None] - start), (csc_rows[None, p0:end] - start), mins


def _sum_meetings(rows, cols, values, shape, more=()):
    """CSR matrix of the sum of the values met at each (row, column) cell.

    ``rows`` must be non-decreasing; ``more`` yields further ``(rows, cols,
    values)`` (broadcast together) in any order. The sums are one sparse
    product ``S @ C``: ``S`` (rows x meetings) holds each meeting's value in
    its row and ``C`` (meetings x columns) is the 0/1 matrix of its column,
    so scipy's compiled product adds them with a dense accumulator per row,
    in one pass and without sorting, where sorting the meetings' keys took
    about twice as long at N = 100,000. The columns of a row come unsorted.
    """
    extra = [np.broadcast_arrays(*part) for part in more]
    if extra:
        rows, cols, values = (np.concatenate([p.ravel() for p in parts])
                              for parts in zip((rows, cols, values), *extra))
    t = rows.size
    index = np.int32 if max(t, shape[1]) < np.iinfo(np.int32).max else np.int64
    # one range serves both matrices, in an index type scipy keeps as it is
    steps = np.arange(t + 1, dtype=index)
    values = values.astype(np.float64)
    if extra:  # rows in any order: bucketed by row, the meetings' order kept (no sort)
        S = sparse.coo_matrix((values, (rows, steps[:t])), shape=(shape[0], t)).tocsr()
    else:  # rows already grouped: the row pointers are where each row starts
        indptr = np.searchsorted(rows, np.arange(shape[0] + 1)).astype(index)
        S = sparse.csr_matrix((values, steps[:t], indptr), shape=(shape[0], t))
    C = sparse.csr_matrix((np.ones(t), cols.astype(index, copy=False), steps), shape=(t, shape[1]))
    return S @ C


def _symmetric_csr(i, j, d, n):
    """CSR matrix from its upper triangle (i <= j), explicit zeros kept.

    Row ``r`` of the result is the lower part (the transposed strict upper
    triangle: columns below ``r``) followed by the upper part (columns from
    ``r`` on), each half sorted, so the rows come out sorted. Entries grouped
    by row (as :func:`_upper_distances` gives them, columns in any order
    within a row) need no reordering across rows.
    """
    if np.any(np.diff(i) < 0):  # not grouped by row: put them in row-major order once
        order = np.lexsort((j, i))
        i, j, d = i[order], j[order], d[order]
    upper = sparse.csr_matrix((d, j, np.concatenate([[0], np.cumsum(np.bincount(i, minlength=n))])),
                              shape=(n, n))
    if not upper.has_sorted_indices:
        upper.sort_indices()
    strictly = i != j
    lower = sparse.csr_matrix((d[strictly], j[strictly], np.concatenate(
        [[0], np.cumsum(np.bincount(i[strictly], minlength=n))])), shape=(n, n)).T.tocsr()
    del strictly
    lower_count, upper_count = np.diff(lower.indptr), np.diff(upper.indptr)
    indptr = np.concatenate([[0], np.cumsum(lower_count + upper_count)])
    size = int(indptr[-1])
    indices = np.empty(size, dtype=np.int32)
    data = np.empty(size, dtype=d.dtype)
    # where each half's entries go: the row's start, plus (for the upper half) the lower count
    lower_at = np.repeat(indptr[:-1] - lower.indptr[:-1], lower_count) + np.arange(lower.nnz)
    upper_at = np.repeat(indptr[:-1] + lower_count - upper.indptr[:-1], upper_count) + np.arange(
        upper.nnz)
    indices[lower_at], data[lower_at] = lower.indices, lower.data
    indices[upper_at], data[upper_at] = upper.indices, upper.data
    out = sparse.csr_matrix((data, indices, indptr), shape=(n, n))
    out.has_sorted_indices = True
    return out


def jaccard_from_neighbors(
    knn_index,
    pair_distance,
    *,
    n_forward,
    n_half,
    k2,
    knn_distance=None,
    max_distance=None,
    n_rows=None,
):
    """k-reciprocal encoded Jaccard distance from a precomputed neighbour ranking.

    The engine behind :func:`jaccard_distance` and :func:`ucal.metrics.rerank`.

    Parameters
    ----------
    knn_index : ndarray of shape (n_samples, n_neighbors), int
        Each row's nearest neighbours by increasing distance, the row itself
        first; ``n_neighbors >= max(n_forward, k2)``.
    pair_distance : callable
        ``pair_distance(rows, cols)`` returns the distances used for the
        softmax weights, for equal-length index arrays.
    n_forward : int
        Size of the forward neighbour set (``k1`` in SpCL, ``k1 + 1`` in
        Zhong et al.'s re-ranking, the row itself included).
    n_half : int
        Size of the half sets used for expansion (``round(k1 / 2) + 1``).
    k2 : int
        Local query expansion: mean over the ``k2`` nearest rows (1 = none).
    knn_distance : ndarray of shape (n_samples, n_neighbors), default=None
        Distances matching ``knn_index``; they spare calls to
        ``pair_distance`` for pairs already in the neighbour lists.
    max_distance : float, default=None
        If given, entries above it are not stored (read as 1). Exact for any
        use that only looks at distances up to it, such as DBSCAN with
        ``eps <= max_distance``, and much smaller. The diagonal is always
        stored.
    n_rows : int, default=None
        If given, only the first ``n_rows`` rows (and columns) are complete:
        pairs of two later samples are not computed. Re-ranking needs only
        the query rows.

    Returns
    -------
    distance : scipy.sparse.csr_matrix of shape (n_samples, n_samples)
        Jaccard distances in [0, 1] for pairs whose encodings share support;
        an entry that is not stored means 1. The diagonal is stored.
    """
    knn_index = np.asarray(knn_index, dtype=np.int64)
    n, width = knn_index.shape
    if width < max(n_forward, n_half, k2):
        raise ValueError(
            f"knn_index has {width} neighbours per row; at least "
            f"max(n_forward, n_half, k2) = {max(n_forward, n_half, k2)} are needed."
        )
    V = _encodings(knn_index, pair_distance, n_forward, n_half, k2, knn_distance)
    return _symmetric_csr(*_upper_distances(V, max_distance, n_rows), n)


def _encodings(knn_index, pair_distance, n_forward, n_half, k2, knn_distance):
    """The rows' k-reciprocal encodings ``V`` (CSR, rows summing to 1)."""
    n = knn_index.shape[0]
    expanded = _expanded_sets(knn_index, n_forward, n_half, n)
    rows, cols, dist = _edge_distances(expanded, knn_index, knn_distance, pair_distance)
    del expanded
    # Softmax of -distance within each row (shifted by the row minimum for
    # numerical safety; the softmax is shift-invariant).
    row_min = np.full(n, np.inf)
    np.minimum.at(row_min, rows, dist)
    weights = np.exp(-(dist - row_min[rows]))
    del dist
    row_sum = np.bincount(rows, weights=weights, minlength=n)
    weights /= row_sum[rows]
    V = sparse.csr_matrix((weights, (rows, cols)), shape=(n, n))
    del rows, cols, weights
    if k2 > 1:
        Q = _indicator(knn_index[:, :k2], n).astype(np.float64) / k2
        V = (Q @ V).tocsr()
    V.sort_indices()
    V.eliminate_zeros()
    return V


def jaccard_distance(X, k1=30, k2=6, *, max_distance=None, search="auto", n_jobs=None):
    """k-reciprocal encoded Jaccard distance between the rows of ``X``.

    The distance SpCL clusters with (Ge et al., NeurIPS 2020, after Zhong
    et al., CVPR 2017), computed exactly but stored sparsely:

    * forward set: the ``k1`` nearest neighbours of a sample, itself included,
      by cosine similarity of the L2-normalised rows;
    * reciprocal set: the forward neighbours that also have the sample among
      their own ``k1`` nearest;
    * expansion: each member's reciprocal set of its ``round(k1 / 2) + 1``
      nearest is added when more than 2/3 of it already lies in the set;
    * encoding: softmax of minus the squared Euclidean distance
      ``2 - 2 cos`` over the expanded set;
    * local query expansion: the mean encoding of the ``k2`` nearest;
    * ``d(i, j) = 1 - sum(min(V_i, V_j)) / sum(max(V_i, V_j))``.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Feature vectors. Rows are L2-normalised first (all-zero rows are an
        error); non-finite values are an error. float16 features (and memory
        maps) are read and normalised a block at a time, never copied whole.
    k1 : int, default=30
        Size of the forward neighbour set (clipped to ``n_samples``).
    k2 : int, default=6
        Size of the local query expansion (1 disables it).
    max_distance : float, default=None
        If given, entries above it are not stored (they read as 1): exact for
        DBSCAN with ``eps <= max_distance`` and far smaller in memory.
        :class:`~ucal.SelfPacedDBSCAN` uses ``eps + eps_gap``.
    search : str or NeighborSearch, default="auto"
        The neighbour search: ``"numpy"``, ``"faiss"`` or ``"torch"`` (exact),
        ``"faiss-ivf"`` or ``"hnsw"`` (approximate, faiss), a configured
        :class:`~ucal.cluster.ExactSearch`, :class:`~ucal.cluster.IVFSearch`
        or :class:`~ucal.cluster.HNSWSearch`, or ``"auto"``: exact NumPy
        search up to 100,000 samples, faiss's inverted file above (exact
        search, with a warning, without faiss).
        With an approximate search the distance is exact given the
        neighbours found.
    n_jobs : int, default=None
        Threads of the faiss engines (as in :class:`~ucal.SelfPacedDBSCAN`).

    Returns
    -------
    distance : scipy.sparse.csr_matrix of shape (n_samples, n_samples), float32
        Stored entries are the computed distances (explicit zeros kept, the
        diagonal included); an entry that is not stored means distance 1
        (no shared neighbours). ``sklearn.cluster.DBSCAN(metric="precomputed")``
        accepts it directly.

    Examples
    --------
    >>> import numpy as np
    >>> from ucal.cluster import jaccard_distance
    >>> rng = np.random.default_rng(0)
    >>> centers = rng.normal(size=(3, 16))
    >>> X = np.repeat(centers, 10, axis=0) + 0.1 * rng.normal(size=(30, 16))
    >>> D = jaccard_distance(X, k1=8, k2=3)
    >>> D.shape
    (30, 30)
    >>> bool(D[0, 1] < 0.5)  # same group: near
    True
    >>> 29 in D[0].indices  # other group: not stored, i.e. distance 1
    False
    """
    rows = _check_features(X)
    search = resolve_search(search, rows.n_samples, n_jobs=n_jobs)
    return jaccard_from_rows(rows, k1, k2, max_distance=max_distance, search=search)


def jaccard_from_rows(rows, k1, k2, *, search, max_distance=None, timings=None):
    """:func:`jaccard_distance` on :class:`UnitRows` with a resolved ``search``.

    With a dict ``timings``, the seconds of the neighbour search and of the
    Jaccard computation are added to its ``"search"`` and ``"jaccard"``.
    """
    n = rows.n_samples
    k1 = int(k1)
    k2 = int(k2)
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}.")
    k1 = min(k1, n)
    k2 = min(k2, n)
    n_half = min(int(np.around(k1 / 2.0)) + 1, k1)
    clock = time.perf_counter()
    knn_index, knn_sim = search._search_rows(rows, max(k1, k2))
    searched = time.perf_counter()

    def pair_distance(pair_rows, pair_cols):
        return 2.0 - 2.0 * rows.pair_similarities(pair_rows, pair_cols)

    knn_distance = 2.0 - 2.0 * knn_sim.astype(np.float64)
    del knn_sim
    # jaccard_from_neighbors in two steps, so that the neighbour lists are
    # freed before the min-sums, the step's peak memory
    V = _encodings(knn_index.astype(np.int64, copy=False), pair_distance, k1, n_half, k2,
                   knn_distance)
    del knn_index, knn_distance
    distance = _symmetric_csr(*_upper_distances(V, max_distance), n)
    del V
    if timings is not None:
        timings["search"] = timings.get("search", 0.0) + searched - clock
        timings["jaccard"] = timings.get("jaccard", 0.0) + time.perf_counter() - searched
    return distance


def _check_features(X):
    """Validate a feature matrix (messages that name the problem) as :class:`UnitRows`."""
    X = check_dense_2d(
        X, "X", kinds="biuf", numeric_phrase="be numeric", axes="(n_samples, n_features)"
    )
    if X.dtype.kind != "f":
        X = X.astype(np.float64)
    return UnitRows(X)
