"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), sparse and in blocks.

The usual implementation (torchreid's ``rerank.py``) concatenates the three
distance matrices into the full (q + g) x (q + g) matrix, argsorts every row
and fills several dense (q + g) x (q + g) float32 matrices. Here the full
matrix is only ever seen one block of columns at a time:

* the original distance of the definition is ``full ** 2`` with each column
  divided by its maximum, transposed: row ``i`` is column ``i`` of ``full``
  squared, over a constant, so it ranks like column ``i`` of ``full``;
* each block of columns gives those maxima and the ``k1 + 1`` nearest
  neighbours (a partial selection, not a full sort);
* the k-reciprocal encoding and its Jaccard distance come from the sparse
  engine shared with clustering, :func:`ucal.cluster._jaccard.jaccard_from_neighbors`;
* the final query x gallery distances are assembled a block of queries at
  a time.
"""

import logging
import numbers

import numpy as np

from ..cluster._jaccard import jaccard_from_neighbors
from ..utils import check_dense_2d

logger = logging.getLogger(__name__)

__all__ = ["rerank"]

# Bytes of one block of (columns x all samples) distances, counting the int64
# indices of the partial selection.
_BLOCK_BYTES = 64 * 2**20
# Bytes of the two gathered feature blocks per batch of pair distances.
_PAIR_BYTES = 32 * 2**20


def _validate_rerank_params(k1=20, k2=6, lambda_value=0.3):
    for name, value in (("k1", k1), ("k2", k2)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}.")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}.")
    if isinstance(lambda_value, (bool, np.bool_)) or not isinstance(lambda_value, numbers.Real):
        raise TypeError(f"lambda_value must be a real number, got {type(lambda_value).__name__}.")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}.")
    return int(k1), int(k2), float(lambda_value)


class _BlockSource:
    """The full distance matrix ``[[q_q, q_g], [q_g.T, g_g]]``, read in pieces."""

    def __init__(self, q_g, q_q, g_g):
        self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
        self.n_query, n_gallery = q_g.shape
        self.n_total = self.n_query + n_gallery
        self.dtype = q_g.dtype

    def columns_T(self, idx):
        """``full[:, idx].T``: row ``r`` holds column ``idx[r]`` of the full matrix."""
        nq = self.n_query
        out = np.empty((idx.size, self.n_total), dtype=self.dtype)
        q = idx < nq
        qi, gi = idx[q], idx[~q] - nq
        out[q, :nq] = self.q_q[:, qi].T
        out[q, nq:] = self.q_g[qi]
        out[~q, :nq] = self.q_g[:, gi].T
        out[~q, nq:] = self.g_g[:, gi].T
        return out

    def pairs(self, rows, cols):
        """``full[rows, cols]`` for equal-length index arrays."""
        nq = self.n_query
        out = np.empty(rows.size, dtype=np.float64)
        rq, cq = rows < nq, cols < nq
        for mask, block, dr, dc in (
            (rq & cq, self.q_q, 0, 0),
            (rq & ~cq, self.q_g, 0, nq),
            (~rq & ~cq, self.g_g, nq, nq),
        ):
            out[mask] = block[rows[mask] - dr, cols[mask] - dc]
        mask = ~rq & cq
        out[mask] = self.q_g[cols[mask], rows[mask] - nq]
        return out

    def query_gallery(self, idx):
        return self.q_g[idx]


class _FeatureSource:
    """Distances between feature vectors (queries first, then gallery), on demand."""

    def __init__(self, Q, G, metric):
        self.Q, self.G, self.metric = Q, G, metric
        self.n_query = Q.shape[0]
        self.n_total = Q.shape[0] + G.shape[0]
        self.dtype = Q.dtype
        if metric == "cosine":
            # Inverse norms instead of normalised copies: no copy of the gallery.
            self.q_scale, self.g_scale = self._inverse_norms(Q), self._inverse_norms(G)
        else:
            self.q_scale = np.einsum("ij,ij->i", Q, Q)
            self.g_scale = np.einsum("ij,ij->i", G, G)

    @staticmethod
    def _inverse_norms(X):
        norms = np.sqrt(np.einsum("ij,ij->i", X, X))
        with np.errstate(divide="ignore"):
            inv = 1.0 / norms
        inv[norms == 0] = 0.0  # zero vectors: cosine 0, distance 1
        return inv.astype(X.dtype, copy=False)

    def _samples(self, idx):
        """Features and scale terms of samples ``idx`` (indices into queries + gallery)."""
        nq = self.n_query
        if idx.size and idx.min() >= nq:
            return self.G[idx - nq], self.g_scale[idx - nq]
        if idx.size and idx.max() < nq:
            return self.Q[idx], self.q_scale[idx]
        q = idx < nq
        feats = np.empty((idx.size, self.Q.shape[1]), dtype=self.dtype)
        scale = np.empty(idx.size, dtype=self.dtype)
        feats[q], scale[q] = self.Q[idx[q]], self.q_scale[idx[q]]
        feats[~q], scale[~q] = self.G[idx[~q] - nq], self.g_scale[idx[~q] - nq]
        return feats, scale

    def _block(self, feats, scale, other, other_scale, out):
        """Distances between ``feats`` (few rows) and ``other`` (many), into ``out``.

        The small side is scaled before the product so that the large block
        sees as few elementwise passes as possible.
        """
        if self.metric == "cosine":
            np.matmul(feats * scale[:, None], other.T, out=out)
            out *= -other_scale[None, :]
            out += 1
        else:
            np.matmul(feats * -2, other.T, out=out)
            out += scale[:, None]
            out += other_scale[None, :]
            np.maximum(out, 0, out=out)  # rounding may dip below zero
            np.sqrt(out, out=out)
        return out

    def columns_T(self, idx):
        feats, scale = self._samples(idx)
        out = np.empty((idx.size, self.n_total), dtype=self.dtype)
        nq = self.n_query
        out[:, :nq] = self._block(feats, scale, self.Q, self.q_scale, np.empty_like(out[:, :nq]))
        out[:, nq:] = self._block(feats, scale, self.G, self.g_scale, np.empty_like(out[:, nq:]))
        # Rounding may give 1 - cos slightly below zero; ranks use squares.
        return np.maximum(out, 0, out=out)

    def query_gallery(self, idx):
        out = np.empty((idx.size, self.G.shape[0]), dtype=self.dtype)
        return self._block(self.Q[idx], self.q_scale[idx], self.G, self.g_scale, out)

    def pairs(self, rows, cols):
        out = np.empty(rows.size, dtype=np.float64)
        batch = max(1, _PAIR_BYTES // (2 * self.Q.itemsize * self.Q.shape[1]))
        for s in range(0, rows.size, batch):
            a, sa = self._samples(rows[s : s + batch])
            b, sb = self._samples(cols[s : s + batch])
            dot = np.einsum("ij,ij->i", a, b).astype(np.float64)
            if self.metric == "cosine":
                d = 1.0 - dot * sa * sb
            else:
                d = np.sqrt(np.maximum(sa.astype(np.float64) + sb - 2.0 * dot, 0.0))
            out[s : s + batch] = np.maximum(d, 0.0)
        return out


def _stable_smallest(values, k):
    """Column indices of the ``k`` smallest entries of each row, in stable order.

    Order is by value, then by column index (what a stable argsort gives),
    found with a partial selection; only rows whose ``k``-th value is tied
    across the boundary fall back to a full stable sort.
    """
    n = values.shape[1]
    if k >= n:
        return np.argsort(values, axis=1, kind="stable")
    part = np.argpartition(values, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(values, part, axis=1).max(axis=1)
    part.sort(axis=1)
    order = np.argsort(np.take_along_axis(values, part, axis=1), axis=1, kind="stable")
    out = np.take_along_axis(part, order, axis=1)
    # argpartition picks arbitrarily among values equal to the k-th one.
    ambiguous = np.flatnonzero(np.count_nonzero(values <= kth[:, None], axis=1) > k)
    if ambiguous.size:
        out[ambiguous] = np.argsort(values[ambiguous], axis=1, kind="stable")[:, :k]
    return out


def _neighbor_lists(source, width):
    """Each sample's ``width`` nearest (itself first), their original distances, the column maxima."""
    n_total = source.n_total
    col_max = np.empty(n_total, dtype=np.float64)
    knn_index = np.empty((n_total, width), dtype=np.int64)
    knn_distance = np.empty((n_total, width), dtype=np.float64)

    step = max(1, _BLOCK_BYTES // (n_total * 12))
    for s in range(0, n_total, step):
        idx = np.arange(s, min(s + step, n_total))
        local = np.arange(idx.size)
        block = source.columns_T(idx)
        peak = block.max(axis=1).astype(np.float64) ** 2
        # A sample at distance 0 from everything: its normalised distances are 0.
        col_max[idx] = np.where(peak > 0, peak, 1.0)
        self_value = block[local, idx].astype(np.float64)
        # Each sample ranks itself first, whatever duplicates or rounding say.
        block[local, idx] = -np.inf
        nearest = _stable_smallest(block, width)
        near = np.take_along_axis(block, nearest, axis=1).astype(np.float64)
        near[:, 0] = self_value
        knn_index[idx] = nearest
        knn_distance[idx] = near**2 / col_max[idx, None]
        logger.debug("rerank: neighbours of samples %d-%d of %d", s, idx[-1], n_total)

    return knn_index, knn_distance, col_max


def _rerank_blocks(source, k1, k2, lambda_value, out_dtype, neighbors=None):
    """Yield ``(start, block)`` of re-ranked query x gallery distances.

    ``neighbors(width)``, when given, returns the neighbour lists, their
    original distances and the column maxima (computed elsewhere, on a GPU)
    instead of the NumPy blocks below.
    """
    n_total, nq = source.n_total, source.n_query
    n_forward = min(k1 + 1, n_total)
    n_half = min(int(np.around(k1 / 2.0)) + 1, n_total)
    k2 = min(k2, n_total)
    width = max(n_forward, n_half, k2)
    if neighbors is not None:
        knn_index, knn_distance, col_max = neighbors(width)
    else:
        knn_index, knn_distance, col_max = _neighbor_lists(source, width)

    def pair_distance(rows, cols):
        # original_dist[i, j] = full[j, i] ** 2 / max_k full[k, i] ** 2
        return source.pairs(cols, rows) ** 2 / col_max[rows]

    jaccard = jaccard_from_neighbors(
        knn_index,
        pair_distance,
        n_forward=n_forward,
        n_half=n_half,
        k2=k2,
        knn_distance=knn_distance,
        n_rows=nq,  # only the query rows are read below
    )
    # Only the query x gallery block is needed; stored Jaccard entries become
    # similarities 1 - d, so that missing entries (distance 1) are zeros.
    similarity = jaccard[:nq][:, nq:]
    del jaccard
    similarity.data = 1.0 - similarity.data
    n_gallery = n_total - nq
    step = max(1, _BLOCK_BYTES // (n_gallery * 8))
    for s in range(0, nq, step):
        idx = np.arange(s, min(s + step, nq))
        original = source.query_gallery(idx).astype(np.float64) ** 2 / col_max[idx, None]
        jac = 1.0 - similarity[s : idx[-1] + 1].toarray()
        yield s, ((1.0 - lambda_value) * jac + lambda_value * original).astype(out_dtype)


def _check_block(value, name, shape):
    value = check_dense_2d(value, name, shape=shape)
    if value.min() < 0:
        raise ValueError(f"{name} has negative entries; distances must be >= 0.")
    return value


def rerank(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """Re-rank query-to-gallery distances by k-reciprocal encoding (Zhong et al., CVPR 2017).

    Follows the reference implementation (torchreid's ``re_ranking``):
    queries and gallery together form ``N = n_queries + n_gallery``
    samples with the full distance matrix ``[[q_q, q_g], [q_g.T, g_g]]``;
    its entries are squared and each column divided by its maximum, then
    transposed (the "original distance" ``d``). For every sample ``i``:

    * ``R(i)``: the ``k1 + 1`` nearest samples (``i`` first) that also have
      ``i`` among their own ``k1 + 1`` nearest;
    * each ``c`` in ``R(i)`` adds its own reciprocal set of the
      ``round(k1 / 2) + 1`` nearest when more than 2/3 of it lies in ``R(i)``;
    * ``V_i = softmax(-d(i, .))`` over that expanded set, then averaged over
      the ``k2`` nearest samples (local query expansion);
    * ``J(i, j) = 1 - sum(min(V_i, V_j)) / sum(max(V_i, V_j))``.

    The result is ``(1 - lambda_value) * J + lambda_value * d`` on the
    query x gallery block. Neighbour ties are broken by sample index (queries
    first); each sample is its own first neighbour. Memory grows with
    ``N * k1`` plus the inputs and the output, never with ``N ** 2`` copies.

    Parameters
    ----------
    q_g_dist : array-like of shape (n_queries, n_gallery)
        Query-to-gallery distances (finite, >= 0).
    q_q_dist : array-like of shape (n_queries, n_queries)
        Query-to-query distances.
    g_g_dist : array-like of shape (n_gallery, n_gallery)
        Gallery-to-gallery distances.
    k1 : int, default=20
        Size of the k-reciprocal neighbourhood (clipped to ``N - 1``).
    k2 : int, default=6
        Size of the local query expansion (1 disables it).
    lambda_value : float, default=0.3
        Weight of the original distance, in [0, 1].

    Returns
    -------
    distances : ndarray of shape (n_queries, n_gallery)
        Re-ranked distances; float64 when any input is float64, else float32.

    See Also
    --------
    evaluate_features : Evaluation with ``rerank=True`` works from features,
        without any distance matrix.
    ucal.cluster.jaccard_distance : The same Jaccard distance on features.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.spatial.distance import cdist
    >>> from ucal.metrics import rerank
    >>> rng = np.random.default_rng(0)
    >>> centers = rng.normal(size=(4, 8))
    >>> query = centers + 0.3 * rng.normal(size=(4, 8))
    >>> gallery = np.repeat(centers, 5, axis=0) + 0.3 * rng.normal(size=(20, 8))
    >>> dist = rerank(cdist(query, gallery), cdist(query, query),
    ...               cdist(gallery, gallery), k1=6, k2=3)
    >>> dist.shape
    (4, 20)
    >>> (dist.argmin(axis=1) // 5).tolist()  # nearest gallery entry: own identity
    [0, 1, 2, 3]
    """
    q_g = _check_block(q_g_dist, "q_g_dist", None)
    nq, ng = q_g.shape
    q_q = _check_block(q_q_dist, "q_q_dist", (nq, nq))
    g_g = _check_block(g_g_dist, "g_g_dist", (ng, ng))
    k1, k2, lambda_value = _validate_rerank_params(k1, k2, lambda_value)
    dtype = np.result_type(q_g.dtype, q_q.dtype, g_g.dtype, np.float32)
    if dtype.kind != "f" or dtype.itemsize > 8:
        dtype = np.dtype(np.float64)
    # Blocks share one dtype so that a column block can be assembled in place.
    q_g, q_q, g_g = (a.astype(dtype, copy=False) for a in (q_g, q_q, g_g))
    out = np.empty((nq, ng), dtype=dtype)
    for start, block in _rerank_blocks(_BlockSource(q_g, q_q, g_g), k1, k2, lambda_value, dtype):
        out[start : start + block.shape[0]] = block
    return out
