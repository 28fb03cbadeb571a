"""The clustering step's hot loops compiled, where numba is installed.

The exact search's running top-k merges, the Jaccard min-sums and DBSCAN on
the sparse distance graph.

The exact NumPy search (:func:`ucal.cluster._knn.exact_knn`) computes the
upper block triangle of the similarity matrix, a tile at a time, and merges
every tile into the running top-k of its rows and of its columns. NumPy does
that with masks, partitions (the first tiles, where no bound is known yet)
and sorts of candidates: at Market-1501 size on features with wide
neighbourhoods, 0.8 s next to 1.8 s of matrix products (profiled). A compiled loop
reads each similarity once and inserts the few that beat the running k-th
into a sorted list, in the same order, so the result is the same to the bit
(ties included).

``sum_k min(V[i, k], V[j, k])`` over every pair sharing a column is the
Jaccard step's cost: at Market-1501 size on features with wide
neighbourhoods, about 285 million "meetings" of two entries in one column
for 14 million output distances. NumPy has to materialise every meeting
(indices, minimums) before adding them up; a compiled loop adds each one
into a dense per-row accumulator as it meets it (scipy's sparse product
does the same, but needs the meetings as a matrix first), so nothing per
meeting is ever stored. Rows are shared out to numba's threads in blocks of
about equal meetings, each block with its own accumulator.

The loop adds the same float32 minimums into float64 sums as the NumPy
path, row by row, so the distances agree with it to the last bits of a
float64 sum (identical float32 output in the project's benchmarks).

DBSCAN (:func:`ucal.cluster._dbscan.sparse_dbscan`) is a union-find over the
core points' edges and one pass for the border points, where the NumPy path
materialises a row index, masks and a graph for scipy's connected
components per entry: the same labels, in a fraction of the time (three
runs on 28 million stored distances per clustering step at Market-1501 size
on wide neighbourhoods).

The compiled loops run where the work is large enough to pay for loading
them (``_MIN_WORK``). Set the environment variable ``UCAL_NUMBA=0`` to use
the NumPy paths even where numba is installed, ``UCAL_NUMBA=1`` to use the
compiled loops at every size. numba compiles the loops once and caches them
beside this file (or in its user cache directory): a new process imports
numba and loads them in about half a second. Where neither can be written
they are compiled once per process (a few seconds). They run on numba's threads
(``NUMBA_NUM_THREADS``, all cores by default).
"""

import logging
import os

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["compiled_dbscan", "compiled_min_sums", "compiled_top_k", "upper_distances_compiled"]

# Output slots (4 + 8 bytes each) reserved at once: rows are taken in chunks
# whose bound on stored distances (per row: meetings, at most the columns
# right of it) fits.
_MAX_OUT = 8_000_000
# Blocks of rows per numba thread, so that uneven rows even out.
_BLOCKS_PER_THREAD = 4
# Fewest columns of a tile one thread merges into their top-k lists (256 bytes of a row).
_COLUMN_CHUNK = 64
# Below this many meetings (min-sums), stored distances (DBSCAN) or
# similarities (top-k merges, once the loops are loaded) the NumPy paths are
# used unless UCAL_NUMBA=1: they take well under a second there.
_MIN_WORK = 2_000_000
# The NumPy top-k merges cost about 0.8 s per 84 million similarities (profiled at
# Market-1501 size, N = 12,936): below this many, loading numba for them alone
# would cost more.
_MIN_SIMILARITIES = 50_000_000

_KERNELS = None


def _kernels(work):
    """``(min_sums, dbscan, top_k)`` compiled for ``work`` steps, or None.

    None where numba is missing, with ``UCAL_NUMBA=0``, and (unless
    ``UCAL_NUMBA=1``) for less work than ``_MIN_WORK``: there importing numba
    and loading the compiled loops (about half a second, once per process)
    would cost more than they save.
    """
    global _KERNELS
    setting = _setting()
    if setting == "off" or (setting == "auto" and work < _MIN_WORK):
        return None
    if _KERNELS is None:
        try:
            import numba
        except ImportError:
            return None
        try:
            _KERNELS = (_build_min_sums(numba, True), _build_dbscan(numba, True),
                        _build_top_k(numba, True))
        except RuntimeError as exc:  # nowhere to write numba's cache: compile each session
            logger.info("numba cannot cache the compiled loops (%s); compiling them per "
                        "process.", exc)
            _KERNELS = (_build_min_sums(numba, False), _build_dbscan(numba, False),
                        _build_top_k(numba, False))
    return _KERNELS


def _setting():
    """``UCAL_NUMBA`` as ``"on"``, ``"off"`` or ``"auto"``."""
    setting = os.environ.get("UCAL_NUMBA", "auto").strip().lower()
    if setting in ("0", "false", "no", "off"):
        return "off"
    return "on" if setting in ("1", "true", "yes", "on") else "auto"


def compiled_min_sums(meetings):
    """The compiled min-sum kernel for ``meetings`` meetings, or None (see ``_kernels``)."""
    kernels = _kernels(meetings)
    return None if kernels is None else kernels[0]


def compiled_dbscan(entries):
    """The compiled DBSCAN kernel for a graph of ``entries`` entries, or None."""
    kernels = _kernels(entries)
    return None if kernels is None else kernels[1]


def compiled_top_k(similarities):
    """``(rows, columns)``: the compiled top-k merges for a search computing
    ``similarities`` similarities, or None (see ``_kernels``).

    ``rows(best_sim, best_idx, row0, tile, col0)`` merges ``tile`` into the
    lists of rows ``row0, row0 + 1, ...`` (its columns are the samples
    ``col0, col0 + 1, ...``); ``columns(best_sim, best_idx, col0, tile, lo,
    row0)`` merges the tile's columns ``lo:`` into the lists of the samples
    ``col0 + lo, ...`` (its rows are the samples ``row0, ...``), in chunks
    of columns shared out to numba's threads. Both give
    :func:`ucal.cluster._knn.merge_top_k` and ``merge_top_k_columns``'s lists
    exactly, for similarities that are not NaN (the search refuses features
    with NaN). Until the loops are loaded (by a step of the Jaccard
    distance, or an earlier search), only from ``_MIN_SIMILARITIES``
    similarities on.
    """
    if _KERNELS is None and _setting() == "auto" and similarities < _MIN_SIMILARITIES:
        return None
    kernels = _kernels(similarities)
    if kernels is None:
        return None
    import numba

    rows, columns = kernels[2]
    n_chunks = _BLOCKS_PER_THREAD * numba.get_num_threads()
    return rows, lambda *args: columns(*args, n_chunks)


def _build_top_k(numba, cache):
    # (No helper functions shared between the kernels: numba's cache cannot
    # key a kernel that closes over another compiled function, and would
    # compile it again in every process.) A value is inserted after the
    # entries >= it: earlier candidates win ties, as in the NumPy merge's
    # stable sort.

    @numba.njit(parallel=True, cache=cache, nogil=True)
    def rows(best_sim, best_idx, row0, tile, col0):
        k = best_sim.shape[1]
        for r in numba.prange(tile.shape[0]):
            sims = best_sim[row0 + r]
            idx = best_idx[row0 + r]
            kth = sims[k - 1]
            for c in range(tile.shape[1]):
                v = tile[r, c]
                if v > kth:  # never -inf or NaN, as in the NumPy merge
                    p = k - 1
                    while p > 0 and sims[p - 1] < v:
                        sims[p] = sims[p - 1]
                        idx[p] = idx[p - 1]
                        p -= 1
                    sims[p] = v
                    idx[p] = col0 + c
                    kth = sims[k - 1]

    @numba.njit(parallel=True, cache=cache, nogil=True)
    def columns(best_sim, best_idx, col0, tile, lo, row0, n_chunks):
        k = best_sim.shape[1]
        n_cols = tile.shape[1]
        # a few wide chunks of columns per thread: each reads its part of a row
        # contiguously, and keeps its columns' bounds in cache
        width = max(_COLUMN_CHUNK, (n_cols - lo + n_chunks - 1) // n_chunks)
        for q in numba.prange((n_cols - lo + width - 1) // width):
            a = lo + q * width
            b = min(a + width, n_cols)
            kth = np.empty(b - a, best_sim.dtype)  # the chunk's bounds, side by side
            for c in range(a, b):
                kth[c - a] = best_sim[col0 + c, k - 1]
            for r in range(tile.shape[0]):  # rows ascending: the NumPy merge's tie order
                for c in range(a, b):
                    v = tile[r, c]
                    if v > kth[c - a]:
                        sims = best_sim[col0 + c]
                        idx = best_idx[col0 + c]
                        p = k - 1
                        while p > 0 and sims[p - 1] < v:
                            sims[p] = sims[p - 1]
                            idx[p] = idx[p - 1]
                            p -= 1
                        sims[p] = v
                        idx[p] = row0 + r
                        kth[c - a] = sims[k - 1]

    return rows, columns


def _build_dbscan(numba, cache):
    # (the union-find's root search is written out where it is used: a kernel
    # that calls another compiled function is compiled again in every process)
    @numba.njit(cache=cache, nogil=True)
    def kernel(indptr, indices, data, eps, min_samples, labels):
        n = indptr.size - 1
        is_core = np.zeros(n, np.bool_)
        for i in range(n):
            count = 0
            for e in range(indptr[i], indptr[i + 1]):
                if data[e] <= eps:
                    count += 1
            is_core[i] = count >= min_samples
        # clusters: connected components of the core points within eps; the
        # smaller index is the root, so components keep their first core point
        parent = np.arange(n)
        for i in range(n):
            if is_core[i]:
                for e in range(indptr[i], indptr[i + 1]):
                    j = indices[e]
                    if j != i and is_core[j] and data[e] <= eps:
                        a = i
                        while parent[a] != a:
                            parent[a] = parent[parent[a]]  # path halving
                            a = parent[a]
                        b = j
                        while parent[b] != b:
                            parent[b] = parent[parent[b]]
                            b = parent[b]
                        if a < b:
                            parent[b] = a
                        elif b < a:
                            parent[a] = b
        # numbered in order of their first core point, as scikit-learn does
        number = np.full(n, -1, np.int64)
        clusters = 0
        for i in range(n):
            if is_core[i]:
                r = i
                while parent[r] != r:
                    r = parent[r]
                if number[r] < 0:
                    number[r] = clusters
                    clusters += 1
                labels[i] = number[r]
        # a border point joins its nearest core neighbour's cluster (ties: the lower label)
        for i in range(n):
            if not is_core[i]:
                best_d = np.inf
                best = -1
                for e in range(indptr[i], indptr[i + 1]):
                    j = indices[e]
                    d = data[e]
                    if d <= eps and is_core[j]:
                        if best < 0 or d < best_d or (d == best_d and labels[j] < best):
                            best_d = d
                            best = labels[j]
                labels[i] = best

    return kernel


def _build_min_sums(numba, cache):
    @numba.njit(parallel=True, cache=cache, nogil=True)
    def kernel(row_ptr, row_vals, csc_pos, partners, csc_rows, csc_vals, totals, min_shared,
               max_distance, start, blocks, offsets, out_j, out_d, counts):
        n = totals.size
        for b in numba.prange(blocks.size - 1):
            # Values are positive, so an untouched cell is an exact 0.0; the
            # touched cells are put back to 0 after their row.
            acc = np.zeros(n, np.float64)
            touched = np.empty(n, np.int64)
            for i in range(blocks[b], blocks[b + 1]):
                t = 0
                for e in range(row_ptr[i], row_ptr[i + 1]):
                    v = row_vals[e]
                    for p in range(csc_pos[e], csc_pos[e] + partners[e]):
                        j = csc_rows[p]
                        w = csc_vals[p]
                        if acc[j] == 0.0:
                            touched[t] = j
                            t += 1
                        acc[j] += v if v < w else w
                o = offsets[i - start]
                c = 0
                for q in range(t):
                    j = touched[q]
                    m = acc[j]
                    acc[j] = 0.0
                    if m >= min_shared:
                        d = 1.0 - m / (totals[i] + totals[j] - m)
                        d = min(max(d, 0.0), 1.0)
                        if d <= max_distance or i == j:
                            out_j[o + c] = j
                            out_d[o + c] = d
                            c += 1
                counts[i - start] = c

    return kernel


def upper_distances_compiled(kernel, index, cum, totals, min_shared, max_distance, n_rows):
    """:func:`ucal.cluster._jaccard._upper_distances` by the compiled ``kernel``.

    ``index`` is ``(row_ptr, row_vals, csc_rows, csc_vals, csc_pos,
    partners)`` of :func:`ucal.cluster._jaccard._inverted_index`, ``cum``
    the meetings before each entry (``partners``' running sum from 0).
    Returns ``(i, j, d)``, grouped by row ``i`` (columns within a row
    unsorted).
    """
    import numba

    row_ptr, row_vals, csc_rows, csc_vals, csc_pos, partners = index
    n = totals.size
    # meetings per row (the later entries of its columns, itself included), cumulated
    cum_meetings = cum[row_ptr]
    meetings = np.diff(cum_meetings)
    cum_bound = np.concatenate([[0], np.cumsum(np.minimum(meetings, n - np.arange(n)))])
    max_distance = np.inf if max_distance is None else float(max_distance)
    n_blocks = _BLOCKS_PER_THREAD * numba.get_num_threads()
    out_i, out_j, out_d = [], [], []
    start = 0
    while start < n_rows:
        stop = int(np.searchsorted(cum_bound, cum_bound[start] + _MAX_OUT, side="right")) - 1
        stop = min(max(stop, start + 1), n_rows)
        offsets = cum_bound[start : stop + 1] - cum_bound[start]
        # blocks of about equal meetings
        targets = np.linspace(cum_meetings[start], cum_meetings[stop], min(n_blocks, stop - start) + 1)
        blocks = np.unique(np.clip(np.searchsorted(cum_meetings, targets), start, stop))
        blocks[0], blocks[-1] = start, stop
        slots_j = np.empty(int(offsets[-1]), dtype=np.int32)
        slots_d = np.empty(int(offsets[-1]), dtype=np.float64)
        counts = np.zeros(stop - start, dtype=np.int64)
        kernel(row_ptr, row_vals, csc_pos, partners, csc_rows, csc_vals, totals, min_shared,
               max_distance, start, blocks.astype(np.int64), offsets, slots_j, slots_d, counts)
        # each row's first counts[r] slots hold its distances
        filled = np.repeat(offsets[:-1] - (np.cumsum(counts) - counts), counts)
        filled += np.arange(filled.size)
        out_i.append(np.repeat(np.arange(start, stop, dtype=np.int32), counts))
        out_j.append(slots_j[filled])
        out_d.append(slots_d[filled].astype(np.float32))
        del slots_j, slots_d, filled
        start = stop
    if not out_i:
        return (np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0, np.float32))
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)
