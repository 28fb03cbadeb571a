"""Unit-norm feature rows read in blocks, and exact k-nearest-neighbour search.

* :class:`UnitRows`: the rows of a feature matrix scaled to unit norm, read a
  block at a time. Rows that are already unit-norm float32 are used in place;
  float16 features (half the memory) and very large matrices are normalised
  block by block instead of copied, so that no second N x d matrix exists.
* ``"numpy"`` exact search: blocked BLAS matrix products. The similarity
  matrix is symmetric, so only its upper block triangle is computed: each tile
  updates the running top-k of its rows *and* of its columns, which halves the
  dominant matrix-product cost. Only one tile of similarities is alive at a
  time, never the N x N matrix. Where numba is installed, the merges are
  compiled loops with the same result (:mod:`ucal.cluster._compiled`).
* ``"faiss"`` exact search: ``faiss.IndexFlatIP``, when faiss is installed.
"""

import logging
import math

import numpy as np

from ._compiled import compiled_top_k
from ._faiss import gpu_of, import_faiss, on_device, search_index

logger = logging.getLogger(__name__)

__all__ = ["UnitRows", "exact_knn", "l2_normalize", "merge_top_k"]

# Rows per block: 1024 to 2048, and at most 48 MB of float32 similarities
# per tile. Blocks of
# fewer rows make BLAS slower and cost more merges (about 12 % at N = 12,936).
_MIN_BLOCK_ROWS = 1024
_MAX_BLOCK_ROWS = 2048
_MAX_BLOCK_BYTES = 48 * 2**20
# Largest normalised float32 copy UnitRows makes; above it, rows are
# normalised block by block as they are read.
_MAX_COPY_BYTES = 2 * 2**30
# Rows normalised at a time in float64 (4,096 x 2,048 features: 64 MiB).
_NORMALIZE_BLOCK = 4096
# Relative deviation of a row norm from 1 that still counts as unit-norm.
_UNIT_TOLERANCE = 1e-4
# Entries below this are never neighbour candidates: only -inf (a masked pair).
_LOWEST = np.finfo(np.float32).min


def l2_normalize(X, *, copy=True, dtype=np.float32, zero_rows="raise"):
    """Return ``X`` (as ``dtype``) with rows scaled to unit Euclidean norm.

    ``zero_rows="raise"`` raises ``ValueError`` naming the first all-zero
    row, which has no direction and therefore no cosine similarity;
    ``"keep"`` leaves such rows at zero (scikit-learn's convention: a zero
    vector is at cosine distance 1 from everything).

    Each row is first divided by its largest absolute value, in float64 and
    by blocks of rows: features of any finite scale (1e-300 or 1e300) keep
    their direction, where squaring them would underflow or overflow.
    """
    X = np.asarray(X)
    out = X if not copy and X.dtype == dtype and X.flags.c_contiguous else np.empty(
        X.shape, dtype=dtype
    )
    zero = []
    for start in range(0, X.shape[0], _NORMALIZE_BLOCK):
        block = np.array(X[start:start + _NORMALIZE_BLOCK], dtype=np.float64)
        scale = np.maximum(block.max(axis=1, initial=0.0), -block.min(axis=1, initial=0.0))
        empty = scale == 0
        scale[empty] = 1.0
        block /= scale[:, None]
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        norms[empty] = 1.0
        block /= norms[:, None]
        out[start:start + _NORMALIZE_BLOCK] = block
        zero.append(np.flatnonzero(empty) + start)
    zero = np.concatenate(zero) if zero else np.empty(0, dtype=np.int64)
    if zero.size and zero_rows == "raise":
        raise _zero_rows_error(zero)
    return out


def _zero_rows_error(zero):
    """The error for the all-zero rows at the (sorted) indices ``zero``."""
    return ValueError(
        f"X has {zero.size} all-zero row(s) (first at index {zero[0]}); "
        "they have no direction, so cosine similarity and the Jaccard "
        "distance are undefined for them. Remove them or fix the features."
    )


class UnitRows:
    """The rows of a feature matrix scaled to unit Euclidean norm, read in blocks.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        Features (float16, float32 or float64; a ``numpy.memmap`` works and is
        read a block at a time).
    zero_rows : {"raise", "keep"}, default="raise"
        What an all-zero row does (see :func:`l2_normalize`).

    Notes
    -----
    Three layouts, chosen once: unit-norm float32 rows are used in place;
    otherwise float32 and float64 features up to 2 GiB normalised are copied
    once (:func:`l2_normalize`); float16 features and larger matrices keep
    their storage and each block read is normalised on the fly (the scale of
    every row is computed once, robustly, in float64).
    """

    def __init__(self, X, *, zero_rows="raise"):
        X = np.asarray(X) if not isinstance(X, np.ndarray) else X
        n, d = X.shape
        self.shape = (n, d)
        self.n_samples, self.n_features = n, d
        if X.dtype == np.float32 and X.flags.c_contiguous and self._already_unit(X):
            self.data, self._peak, self._inverse = X, None, None
            self.zero = np.zeros(n, dtype=bool)
            return
        peak, inverse = self._row_scales(X)
        broken = np.flatnonzero(~np.isfinite(peak))  # a NaN or an infinity in the row
        if broken.size:
            raise ValueError(
                f"X has {broken.size} row(s) with NaN or infinite values (first at index "
                f"{broken[0]}); they have no direction. Remove them or fix the features."
            )
        self.zero = peak == 0
        if self.zero.any() and zero_rows == "raise":
            raise _zero_rows_error(np.flatnonzero(self.zero))
        if X.dtype != np.float16 and n * d * 4 <= _MAX_COPY_BYTES:
            self.data = l2_normalize(X, zero_rows="keep")
            self._peak = self._inverse = None
        else:
            self.data, self._peak, self._inverse = X, peak, inverse

    @staticmethod
    def _already_unit(X):
        """Whether every row of the float32 ``X`` has norm 1 (to ``_UNIT_TOLERANCE``)."""
        for start in range(0, X.shape[0], _NORMALIZE_BLOCK):
            block = X[start:start + _NORMALIZE_BLOCK]
            sq = np.einsum("ij,ij->i", block, block, dtype=np.float64)
            if not np.all(np.abs(sq - 1.0) <= 2 * _UNIT_TOLERANCE):
                return False
        return True

    @staticmethod
    def _row_scales(X):
        """Per row: the largest absolute value, and 1 / norm of the row divided by it."""
        n = X.shape[0]
        peak = np.empty(n)
        inverse = np.empty(n)
        for start in range(0, n, _NORMALIZE_BLOCK):
            block = np.array(X[start:start + _NORMALIZE_BLOCK], dtype=np.float64)
            top = np.maximum(block.max(axis=1, initial=0.0), -block.min(axis=1, initial=0.0))
            safe = np.where(top > 0, top, 1.0)
            with np.errstate(invalid="ignore"):  # a row with an infinity: refused by the caller
                block /= safe[:, None]
            norms = np.sqrt(np.einsum("ij,ij->i", block, block))
            peak[start:start + _NORMALIZE_BLOCK] = top
            inverse[start:start + _NORMALIZE_BLOCK] = np.where(top > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)
        return peak, inverse

    @property
    def in_memory(self):
        """True when the normalised rows exist as one float32 array (``data``)."""
        return self._peak is None

    def _normalise(self, raw, peak, inverse):
        if peak is None:
            return np.ascontiguousarray(raw, dtype=np.float32)
        block = np.asarray(raw, dtype=np.float64)
        block = block / np.where(peak > 0, peak, 1.0)[:, None]
        block *= inverse[:, None]
        return block.astype(np.float32)

    def block(self, start, stop):
        """Normalised rows ``start:stop`` as a float32 array (a view when possible)."""
        if self._peak is None:
            return self.data[start:stop]
        return self._normalise(self.data[start:stop], self._peak[start:stop], self._inverse[start:stop])

    def take(self, index):
        """Normalised rows ``index`` (an integer array) as a float32 array."""
        index = np.asarray(index)
        if self._peak is None:
            return self.data[index]
        return self._normalise(self.data[index], self._peak[index], self._inverse[index])

    @classmethod
    def from_unit(cls, data, zero=None):
        """A :class:`UnitRows` over rows already normalised (no check, no copy of float32)."""
        out = object.__new__(cls)
        out.data = np.ascontiguousarray(data, dtype=np.float32)
        out.shape = out.data.shape
        out.n_samples, out.n_features = out.shape
        out.zero = np.zeros(out.n_samples, dtype=bool) if zero is None else zero
        out._peak = out._inverse = None
        return out

    def subset(self, index):
        """The rows ``index`` as a new :class:`UnitRows` (a normalised copy)."""
        return UnitRows.from_unit(self.take(index), self.zero[index])

    def blocks(self, block_rows=_NORMALIZE_BLOCK):
        """Yield ``(start, stop, rows)`` over all rows."""
        for start in range(0, self.n_samples, block_rows):
            stop = min(start + block_rows, self.n_samples)
            yield start, stop, self.block(start, stop)

    def pair_similarities(self, rows, cols, out=None):
        """Cosine similarities of the pairs ``(rows[i], cols[i])``, float64."""
        out = np.empty(rows.size, dtype=np.float64) if out is None else out
        step = max(1, (16 * 2**20) // (4 * self.n_features))  # 2 x 16 MB of gathered rows
        for s in range(0, rows.size, step):
            r, c = rows[s : s + step], cols[s : s + step]
            out[s : s + step] = np.einsum("ij,ij->i", self.take(r), self.take(c))
        return out


def exact_knn(X, n_neighbors, *, search="numpy", block_size=None, n_jobs=None, device=None):
    """Exact nearest neighbours of every row of ``X`` among the rows of ``X``.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features) or UnitRows
        L2-normalised float32 rows (see :func:`l2_normalize`), or a
        :class:`UnitRows`; similarity is the inner product.
    n_neighbors : int
        Neighbours per row, the row itself included (it always comes first).
    search : {"auto", "numpy", "faiss"}, default="numpy"
        Engine: blocked BLAS products, or ``faiss.IndexFlatIP`` (requires
        faiss). ``"auto"`` is ``"numpy"``, the faster of the two on CPUs in
        our benchmarks.
    block_size : int, default=None
        Rows per block of the NumPy engine (default: up to 2048, fewer for
        large N so that a tile stays under 48 MB).
    n_jobs : int, default=None
        Threads for faiss (None: faiss's default). The NumPy engine uses
        the threads of the BLAS library (and numba's, for its compiled
        merges).
    device : str, default=None
        CUDA device of the faiss engine (faiss's GPU build); None: the CPU.

    Returns
    -------
    indices : ndarray of shape (n_samples, n_neighbors), int64
        Neighbours sorted by decreasing similarity, ``indices[i, 0] == i``.
    similarities : ndarray of shape (n_samples, n_neighbors), float32
        The matching cosine similarities (1.0 for the row itself).
    """
    rows = X if isinstance(X, UnitRows) else UnitRows.from_unit(X)
    if int(n_neighbors) < 1:  # (an empty list has no k-th entry to merge against)
        raise ValueError(f"n_neighbors must be at least 1, got {n_neighbors!r}.")
    k = min(int(n_neighbors), rows.n_samples)
    if search in ("auto", "numpy"):
        if block_size is None:
            block_size = int(np.clip(_MAX_BLOCK_BYTES // (8 * rows.n_samples), _MIN_BLOCK_ROWS, _MAX_BLOCK_ROWS))
        return _knn_numpy(rows, k, int(block_size))
    if search == "faiss":
        return _knn_faiss(rows, k, n_jobs, device)
    raise ValueError(f"search must be 'auto', 'numpy' or 'faiss', got {search!r}.")


def _knn_faiss(rows, k, n_jobs, device=None):
    faiss = import_faiss("search='faiss'", n_jobs)
    index = on_device(faiss, faiss.IndexFlatIP(rows.n_features), gpu_of(faiss, device))
    return self_first(*search_index(index, rows, k))


def self_first(indices, sims):
    """Put each row itself in column 0 (ties with duplicates, or an approximate
    search that missed it, may displace it)."""
    n = indices.shape[0]
    rows = np.arange(n)
    has_self = indices == rows[:, None]
    pos = np.where(has_self.any(axis=1), has_self.argmax(axis=1), indices.shape[1] - 1)
    for col in range(indices.shape[1] - 1, 0, -1):
        move = pos >= col
        indices[move, col] = indices[move, col - 1]
        sims[move, col] = sims[move, col - 1]
    indices[:, 0] = rows
    sims[:, 0] = 1.0
    return indices, sims


def merge_top_k(best_sim, best_idx, rows, block, cols, k):
    """Merge the similarities ``block`` (len(rows) x len(cols)) into the running top-k.

    ``cols`` is an array of column indices, or an int: the index of the
    block's first column (the columns are then contiguous). Candidates are
    the entries at least as large as the row's current k-th best; where that
    bound is missing or loose (over ``4 k`` candidates in a row), a cheap
    ``np.partition`` finds the block's own k-th largest per row. Ties keep the earlier
    entry (the running list first, then lower block columns). Entries of
    ``-inf`` are never candidates (a caller masks pairs out with them).
    """
    n_rows, m = block.shape
    if n_rows == 0 or m == 0:
        return
    threshold = best_sim[rows, k - 1]
    if m > k and np.isneginf(threshold).any():
        # No bound yet for some rows: the block's own k-th largest is one.
        threshold = np.maximum(threshold, np.partition(block, m - k, axis=1)[:, m - k])
    threshold = np.maximum(threshold, _LOWEST)
    flat = np.flatnonzero(block >= threshold[:, None])
    cand_r, cand_c = np.divmod(flat, m)
    counts = np.bincount(cand_r, minlength=n_rows)
    if m > k and counts.max(initial=0) > 4 * k:
        # The running bound is loose for some rows: tighten it with the block's k-th.
        threshold = np.maximum(threshold, np.partition(block, m - k, axis=1)[:, m - k])
        flat = np.flatnonzero(block >= threshold[:, None])
        cand_r, cand_c = np.divmod(flat, m)
        counts = np.bincount(cand_r, minlength=n_rows)
    if flat.size == 0:
        return
    values = block.ravel()[flat]
    other = cand_c + cols if np.isscalar(cols) else np.asarray(cols)[cand_c]
    # Candidates come in row-major order (columns ascending within a row); the
    # stable sort in _merge_candidates orders them by value and keeps that tie order.
    _merge_candidates(best_sim, best_idx, rows, counts, cand_r, other, values, k)


def merge_top_k_columns(best_sim, best_idx, cols, block, rows, k):
    """Merge ``block`` (``rows`` x ``cols``) into the running top-k of its
    *columns*: :func:`merge_top_k` of ``block.T``, without the transposed
    copy (only the few candidates are regrouped by column). ``rows`` is an
    array of row indices, or an int: the index of the first of contiguous rows."""
    m, n_cols = block.shape
    if m == 0 or n_cols == 0:
        return
    threshold = best_sim[cols, k - 1]

    def kth_of_columns():
        # a partition along axis 0 gathers strided columns: transposing first is faster
        return np.partition(np.ascontiguousarray(block.T), m - k, axis=1)[:, m - k]

    if m > k and np.isneginf(threshold).any():
        threshold = np.maximum(threshold, kth_of_columns())
    threshold = np.maximum(threshold, _LOWEST)
    flat = np.flatnonzero(block >= threshold[None, :])
    counts = np.bincount(flat % n_cols, minlength=n_cols)
    if m > k and counts.max(initial=0) > 4 * k:
        threshold = np.maximum(threshold, kth_of_columns())
        flat = np.flatnonzero(block >= threshold[None, :])
        counts = np.bincount(flat % n_cols, minlength=n_cols)
    if flat.size == 0:
        return
    cand_r, cand_c = np.divmod(flat, n_cols)
    # by column, rows ascending within a column: the order merge_top_k sees in block.T
    by_col = np.argsort(cand_c, kind="stable")
    cand_r, cand_c = cand_r[by_col], cand_c[by_col]
    other = cand_r + rows if np.isscalar(rows) else np.asarray(rows)[cand_r]
    _merge_candidates(best_sim, best_idx, cols, counts, cand_c, other, block[cand_r, cand_c], k)


def _merge_candidates(best_sim, best_idx, owners, counts, cand_owner, other, values, k):
    """Merge candidates (grouped by owner, in tie order) into the owners' top-k lists.

    ``counts[o]`` candidates belong to ``owners[o]``; ``cand_owner`` gives each
    candidate's owner position (non-decreasing), ``other`` the index it points
    to and ``values`` its similarity.
    """
    touched = np.flatnonzero(counts)
    width = int(counts.max())
    starts = np.cumsum(counts) - counts
    local = np.repeat(np.arange(touched.size), counts[touched])
    pos = np.arange(cand_owner.size) - starts[cand_owner]
    new_sim = np.full((touched.size, width), -np.inf, dtype=np.float32)
    new_idx = np.full((touched.size, width), -1, dtype=np.int64)
    new_sim[local, pos] = values
    new_idx[local, pos] = other
    target = owners[touched]
    all_sim = np.concatenate([best_sim[target], new_sim], axis=1)
    all_idx = np.concatenate([best_idx[target], new_idx], axis=1)
    order = np.argsort(-all_sim, axis=1, kind="stable")[:, :k]
    best_sim[target] = np.take_along_axis(all_sim, order, axis=1)
    best_idx[target] = np.take_along_axis(all_idx, order, axis=1)


def _knn_numpy(rows, k, block_size):
    n = rows.n_samples
    best_sim = np.full((n, k), -np.inf, dtype=np.float32)
    best_idx = np.full((n, k), -1, dtype=np.int64)
    # Columns per tile: at least the row block, at most 48 MB of similarities.
    tile_cols = max(block_size, _MAX_BLOCK_BYTES // (4 * block_size))
    n_blocks = math.ceil(n / block_size)
    compiled = compiled_top_k(n * (n + 1) // 2)
    for b in range(n_blocks):
        start, stop = b * block_size, min((b + 1) * block_size, n)
        row_ids = np.arange(start, stop)
        Xb = rows.block(start, stop)
        # Upper block triangle only: this block's rows against every row from
        # `start` on, a tile of columns at a time.
        for c0 in range(start, n, tile_cols):
            c1 = min(c0 + tile_cols, n)
            tile = Xb @ rows.block(c0, c1).T
            if c0 == start:
                # The row itself always ranks first, whatever the rounding.
                diag = np.arange(min(stop, c1) - start)
                tile[diag, diag] = np.inf
            # The part right of the diagonal block updates its rows (the columns here).
            lo = max(c0, stop)
            if compiled is not None:
                compiled[0](best_sim, best_idx, start, tile, c0)
                if lo < c1:
                    compiled[1](best_sim, best_idx, c0, tile, lo - c0, start)
                continue
            merge_top_k(best_sim, best_idx, row_ids, tile, c0, k)
            if lo < c1:
                merge_top_k_columns(best_sim, best_idx, np.arange(lo, c1), tile[:, lo - c0 :],
                                    start, k)
        logger.debug("exact_knn: block %d/%d done", b + 1, n_blocks)
    best_sim[:, 0] = 1.0  # was +inf for the row itself
    return best_idx, best_sim
