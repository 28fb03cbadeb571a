"""Re-id retrieval evaluation: CMC, mAP and mINP (market-1501 protocol).

The usual implementations (torchreid, fast-reid) argsort every row of the
query x gallery distance matrix and walk it in a per-query loop, with a
Cython extension as the fast path. CMC, AP and INP only need the rank of
each *true match* in a query's filtered ranking, so this module computes
just those ranks, for blocks of queries at a time:

* the true matches of a query are the gallery entries with its identity,
  found by a binary search in the gallery identities sorted once;
* the position of an entry in the stable order of its row (distance, then
  gallery index) is the number of smaller distances in the row, read by a
  binary search in the row sorted by value (a fast SIMD sort, no argsort),
  plus the number of equal distances at smaller gallery indices (counted
  directly, and only for the rare entries whose distance is tied);
* removed entries (same identity and same camera, or the query itself) all
  share the query's identity, so the number of them ranked before a match
  is found among that handful of entries.

Only one block of distances and its sorted copy are alive at a time;
:func:`evaluate_features` computes the distance blocks from features and
never holds the full matrix.
"""

import logging
import numbers

import numpy as np
from sklearn.utils.validation import column_or_1d

from ..utils import check_dense_2d
from ._rerank import _FeatureSource, _rerank_blocks, _validate_rerank_params

logger = logging.getLogger(__name__)

__all__ = ["evaluate_features", "evaluate_reid"]

# Bytes of one block of distances. With its sorted copy and the temporaries
# of the feature products, evaluation stays well under 1 GB at MSMT17 size.
_BLOCK_BYTES = 64 * 2**20


def _rows_per_block(n_columns, itemsize):
    return max(1, _BLOCK_BYTES // max(1, n_columns * itemsize))


def _check_ids(values, name, n_expected, axis_name):
    if values is None:
        raise ValueError(f"{name} is required.")
    values = column_or_1d(np.asarray(values), warn=False)
    if values.shape[0] != n_expected:
        raise ValueError(
            f"{name} has {values.shape[0]} entries but there are {n_expected} {axis_name}."
        )
    if values.dtype.kind == "f" and np.isnan(values).any():
        raise ValueError(f"{name} contains NaN.")
    return values


def _check_protocol(q_pids, g_pids, q_camids, g_camids, n_query, n_gallery, same_set, max_rank):
    """Validate identities, cameras and options; return integer codes."""
    if isinstance(max_rank, (bool, np.bool_)) or not isinstance(max_rank, numbers.Integral):
        raise TypeError(f"max_rank must be an int, got {type(max_rank).__name__}.")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}.")
    if not isinstance(same_set, (bool, np.bool_)):
        raise TypeError(f"same_set must be True or False, got {same_set!r}.")
    q_pids = _check_ids(q_pids, "q_pids", n_query, "queries")
    g_pids = _check_ids(g_pids, "g_pids", n_gallery, "gallery entries")
    if (q_camids is None) != (g_camids is None):
        raise ValueError(
            "Give both q_camids and g_camids, or neither (evaluation without cameras)."
        )
    # Joint integer codes make any hashable, sortable id type work the same.
    _, pid_codes = np.unique(np.concatenate([q_pids, g_pids]), return_inverse=True)
    q_codes, g_codes = pid_codes[:n_query], pid_codes[n_query:]
    q_cams = g_cams = None
    if q_camids is not None:
        q_camids = _check_ids(q_camids, "q_camids", n_query, "queries")
        g_camids = _check_ids(g_camids, "g_camids", n_gallery, "gallery entries")
        _, cam_codes = np.unique(np.concatenate([q_camids, g_camids]), return_inverse=True)
        q_cams, g_cams = cam_codes[:n_query], cam_codes[n_query:]
    if same_set:
        if n_query != n_gallery:
            raise ValueError(
                f"same_set=True needs as many queries as gallery entries, got "
                f"{n_query} queries and {n_gallery} gallery entries."
            )
        if not np.array_equal(q_codes, g_codes):
            raise ValueError(
                "same_set=True but q_pids and g_pids differ: query i must be gallery entry i."
            )
        if q_cams is not None and not np.array_equal(q_cams, g_cams):
            raise ValueError(
                "same_set=True but q_camids and g_camids differ: query i must be gallery entry i."
            )
    return q_codes, g_codes, q_cams, g_cams


def _row_searchsorted(sorted_rows, rows, values, side):
    """``np.searchsorted(sorted_rows[r], v, side)`` for many (r, v) at once."""
    n_cols = sorted_rows.shape[1]
    flat = sorted_rows.reshape(-1)
    base = rows.astype(np.int64) * n_cols
    lo = np.zeros(rows.size, dtype=np.int64)
    hi = np.full(rows.size, n_cols, dtype=np.int64)
    for _ in range(int(n_cols).bit_length() + 1):
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        probe = flat[base + np.minimum(mid, n_cols - 1)]
        right = probe < values if side == "left" else probe <= values
        right &= active
        lo = np.where(right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)
    return lo


def _group_exclusive_cumsum(flags, offset, counts):
    """Number of True ``flags`` before each entry within its group."""
    total = np.concatenate([[0], np.cumsum(flags)])
    return total[:-1] - np.repeat(total[offset], counts)


class _RankAccumulator:
    """Per-query statistics from blocks of distance rows.

    For each query it keeps the number of valid true matches, the sum of the
    precisions at their ranks and the ranks of the first and last match.
    """

    def __init__(self, q_codes, g_codes, q_cams, g_cams, same_set):
        n_query = q_codes.shape[0]
        self.q_codes, self.q_cams, self.g_cams = q_codes, q_cams, g_cams
        self.same_set = same_set
        self.g_order = np.argsort(g_codes, kind="stable")
        self.g_sorted = g_codes[self.g_order]
        self.n_match = np.zeros(n_query, dtype=np.int64)
        self.precision_sum = np.zeros(n_query, dtype=np.float64)
        self.first_rank = np.zeros(n_query, dtype=np.int64)
        self.last_rank = np.zeros(n_query, dtype=np.int64)

    def add(self, start, dist):
        """Account for queries ``start : start + len(dist)`` with distances ``dist``."""
        n_rows, n_gallery = dist.shape
        if dist.dtype.kind == "f" and np.isnan(dist).any():
            r, c = np.argwhere(np.isnan(dist))[0]
            raise ValueError(f"distmat contains NaN (first at row {start + r}, column {c}).")
        queries = np.arange(start, start + n_rows)
        codes = self.q_codes[queries]
        lo = np.searchsorted(self.g_sorted, codes, side="left")
        counts = np.searchsorted(self.g_sorted, codes, side="right") - lo
        n_pairs = int(counts.sum())
        if n_pairs == 0:
            return
        # Every (query, gallery entry with the query's identity) pair, grouped
        # by query; group r occupies [offset[r], offset[r] + counts[r]).
        offset = np.cumsum(counts) - counts
        row = np.repeat(np.arange(n_rows), counts)
        within = np.arange(n_pairs) - offset[row]
        col = self.g_order[lo[row] + within]
        value = dist[row, col]
        removed = np.zeros(n_pairs, dtype=bool)
        if self.q_cams is not None:
            removed |= self.q_cams[queries[row]] == self.g_cams[col]
        if self.same_set:
            removed |= col == queries[row]

        # Position of each pair in the stable (distance, index) order of its row.
        sorted_dist = np.sort(dist, axis=1)
        position = _row_searchsorted(sorted_dist, row, value, "left")
        n_equal = _row_searchsorted(sorted_dist, row, value, "right") - position
        tied = np.flatnonzero(n_equal > 1)
        step = max(1, (16 * 2**20) // n_gallery)
        gallery_index = np.arange(n_gallery)
        for s in range(0, tied.size, step):
            t = tied[s : s + step]
            before = (dist[row[t]] == value[t, None]) & (gallery_index < col[t, None])
            position[t] += np.count_nonzero(before, axis=1)

        # Order each query's pairs by position (keys are unique) and count,
        # for each, the removed entries and the matches ranked before it.
        order = np.argsort(row * np.int64(n_gallery) + position, kind="stable")
        position, removed = position[order], removed[order]
        removed_before = _group_exclusive_cumsum(removed, offset, counts)
        keep = ~removed
        match_before = _group_exclusive_cumsum(keep, offset, counts)
        rank = (position - removed_before + 1)[keep]
        kth = (match_before + 1)[keep]
        match_row = row[keep]

        n_match = np.bincount(match_row, minlength=n_rows)
        self.n_match[queries] = n_match
        self.precision_sum[queries] = np.bincount(match_row, weights=kth / rank, minlength=n_rows)
        first = kth == 1
        self.first_rank[queries[match_row[first]]] = rank[first]
        last = kth == n_match[match_row]
        self.last_rank[queries[match_row[last]]] = rank[last]

    def result(self, max_rank):
        valid = self.n_match > 0
        n_valid = int(valid.sum())
        n_skipped = int(valid.size - n_valid)
        if n_valid == 0:
            raise ValueError(
                "No query has a true match in the gallery after removing same-identity "
                "same-camera entries: nothing to evaluate. Check that q_pids and g_pids "
                "use the same identity labels."
            )
        if n_skipped:
            logger.info("evaluate_reid: %d queries have no true match and are skipped.", n_skipped)
        first = np.minimum(self.first_rank[valid], max_rank + 1) - 1
        cmc = np.cumsum(np.bincount(first, minlength=max_rank + 1)[:max_rank]) / n_valid
        ap = self.precision_sum[valid] / self.n_match[valid]
        inp = self.n_match[valid] / self.last_rank[valid]
        return {
            "cmc": cmc.astype(np.float64),
            "mAP": float(ap.mean()),
            "mINP": float(inp.mean()),
            "n_valid_queries": n_valid,
            "n_skipped_queries": n_skipped,
        }


def _check_distmat(distmat):
    # infinities are allowed in a distance matrix; NaN is checked per block
    return check_dense_2d(distmat, "distmat", axes="(n_queries, n_gallery)", finite=False)


def evaluate_reid(
    distmat, q_pids, g_pids, q_camids=None, g_camids=None, max_rank=50, *, same_set=False
):
    """CMC, mAP and mINP of a re-id retrieval, by the market-1501 protocol.

    For each query the gallery is ranked by increasing distance; ties keep
    gallery order (a stable sort). Gallery entries with the query's identity
    *and* the query's camera are removed from its ranking, as is the query
    itself when query and gallery are the same set (``same_set=True``).
    Queries left without a true match are skipped and counted. This is the
    protocol of torchreid and fast-reid, computed without a per-query loop or
    a full argsort, in blocks of queries (bounded memory; ``distmat`` may be
    a ``numpy.memmap``).

    Parameters
    ----------
    distmat : array-like of shape (n_queries, n_gallery)
        Query-to-gallery distances (smaller = more similar). Any real dtype;
        NaN is an error, infinities are allowed.
    q_pids : array-like of shape (n_queries,)
        Query identities.
    g_pids : array-like of shape (n_gallery,)
        Gallery identities (same labels as ``q_pids``; any other label, such
        as distractors, never matches).
    q_camids : array-like of shape (n_queries,), default=None
        Query cameras. Give both camera arrays or neither.
    g_camids : array-like of shape (n_gallery,), default=None
        Gallery cameras. Without cameras no gallery entry is removed (but for
        the query itself when ``same_set=True``).
    max_rank : int, default=50
        Length of the CMC curve. Ranks past the gallery size are allowed:
        the curve is then 1.0 there.
    same_set : bool, default=False
        Whether query ``i`` and gallery entry ``i`` are the same sample (for
        example ``distmat`` computed from one feature set against itself).
        Then each query's own entry is removed from its ranking, ``distmat``
        must be square and the identities (and cameras) of the two sides
        must agree.

    Returns
    -------
    result : dict
        ``"cmc"``: ndarray of shape (max_rank,), the fraction of valid queries
        whose first true match is within rank ``r + 1``;
        ``"mAP"``: mean over valid queries of the average precision (mean of
        the precision at each true match);
        ``"mINP"``: mean of ``n_true_matches / rank_of_the_last_true_match``;
        ``"n_valid_queries"``, ``"n_skipped_queries"``: ints.
        Fractions are in [0, 1].

    Raises
    ------
    ValueError
        On malformed inputs, or when no query has a true match.

    See Also
    --------
    evaluate_features : Same evaluation from feature vectors.
    rerank : The k-reciprocal re-ranking of a distance matrix.

    Examples
    --------
    >>> import numpy as np
    >>> from ucal.metrics import evaluate_reid
    >>> distmat = np.array([[0.5, 0.1, 0.3],
    ...                     [0.4, 0.2, 0.6]])
    >>> result = evaluate_reid(distmat, q_pids=[0, 1], g_pids=[0, 1, 0], max_rank=3)
    >>> result["cmc"]  # query 0 finds its first match at rank 2
    array([0.5, 1. , 1. ])
    >>> round(result["mAP"], 4), round(result["mINP"], 4)
    (0.7917, 0.8333)
    >>> result["n_valid_queries"], result["n_skipped_queries"]
    (2, 0)
    """
    distmat = _check_distmat(distmat)
    n_query, n_gallery = distmat.shape
    q_codes, g_codes, q_cams, g_cams = _check_protocol(
        q_pids, g_pids, q_camids, g_camids, n_query, n_gallery, same_set, max_rank
    )
    acc = _RankAccumulator(q_codes, g_codes, q_cams, g_cams, same_set)
    step = _rows_per_block(n_gallery, distmat.dtype.itemsize)
    for start in range(0, n_query, step):
        acc.add(start, np.asarray(distmat[start : start + step]))
    return acc.result(int(max_rank))


def _check_features(X, name):
    X = check_dense_2d(X, name, axes="(n_samples, n_features)")
    return X if X.dtype.kind == "f" else X.astype(np.float64)


def _rerank_search(search, Q, G, source, metric):
    """The ``neighbors`` hook of re-ranking for ``search`` (None: NumPy blocks)."""
    if search is None:
        return None
    from ..cluster import ExactSearch

    if isinstance(search, str):
        search = ExactSearch(search) if search in ("numpy", "faiss", "torch") else search
    if not isinstance(search, ExactSearch):
        raise ValueError(
            "Re-ranking needs exact neighbours: rerank['search'] must be None, 'numpy', "
            f"'torch' or an ExactSearch, got {search!r}."
        )
    search._validate_params()
    if search.backend != "torch":
        return None  # the NumPy blocks are the exact CPU path
    if metric != "cosine":
        raise ValueError("Re-ranking on a torch device supports metric='cosine' only.")
    from ..reid._neighbors import torch_rerank_neighbors

    def neighbors(width):
        rows = np.vstack([Q * source.q_scale[:, None], G * source.g_scale[:, None]])
        return torch_rerank_neighbors(rows, width, device=search.device, block_rows=search.block_rows)

    return neighbors


def evaluate_features(
    query_features,
    gallery_features,
    q_pids,
    g_pids,
    q_camids=None,
    g_camids=None,
    *,
    metric="cosine",
    rerank=False,
    max_rank=50,
    same_set=False,
):
    """Re-id evaluation from feature vectors, never holding the distance matrix.

    Distances are computed for blocks of queries and evaluated at once by
    the protocol of :func:`evaluate_reid`, so memory stays bounded at any
    gallery size (MSMT17: 11,659 x 82,161) and the result equals
    ``evaluate_reid`` on the full distance matrix.

    Parameters
    ----------
    query_features : array-like of shape (n_queries, n_features)
        Query embeddings (finite). float32 input is computed in float32,
        other input in float64.
    gallery_features : array-like of shape (n_gallery, n_features)
        Gallery embeddings.
    q_pids : array-like of shape (n_queries,)
        Query identities.
    g_pids : array-like of shape (n_gallery,)
        Gallery identities.
    q_camids : array-like of shape (n_queries,), default=None
        Query cameras (give both camera arrays or neither).
    g_camids : array-like of shape (n_gallery,), default=None
        Gallery cameras; see :func:`evaluate_reid` for the protocol.
    metric : {"cosine", "euclidean"}, default="cosine"
        ``"cosine"``: ``1 - cos(q, g)`` (an all-zero vector is at distance 1
        from everything); ``"euclidean"``: the Euclidean distance (not
        squared; the ranking is the same either way).
    rerank : bool or dict, default=False
        Apply k-reciprocal re-ranking (:func:`rerank`) before evaluating.
        ``True`` uses ``k1=20, k2=6, lambda_value=0.3``; a dict overrides
        any of them. Re-ranking considers the query and gallery sets
        together and computes all their pairwise distances in blocks (time
        grows with ``(n_queries + n_gallery) ** 2``, memory does not). The
        key ``"search"`` chooses where: ``None`` (NumPy blocks) or an exact
        search, ``ExactSearch("torch", device="cuda")`` for a GPU (cosine
        metric); :meth:`ucal.UCALReID.evaluate` passes its own GPU.
    max_rank : int, default=50
        Length of the CMC curve.
    same_set : bool, default=False
        Whether the query and gallery sets are the same samples in the same
        order (see :func:`evaluate_reid`).

    Returns
    -------
    result : dict
        As returned by :func:`evaluate_reid`.

    See Also
    --------
    evaluate_reid : Evaluation from a distance matrix.

    Examples
    --------
    >>> import numpy as np
    >>> from ucal.metrics import evaluate_features
    >>> rng = np.random.default_rng(0)
    >>> centers = rng.normal(size=(5, 32))
    >>> q_pids, g_pids = np.arange(5), np.repeat(np.arange(5), 4)
    >>> query = centers[q_pids] + 0.1 * rng.normal(size=(5, 32))
    >>> gallery = centers[g_pids] + 0.1 * rng.normal(size=(20, 32))
    >>> result = evaluate_features(query, gallery, q_pids, g_pids, max_rank=5)
    >>> result["mAP"], float(result["cmc"][0])
    (1.0, 1.0)
    """
    Q = _check_features(query_features, "query_features")
    G = _check_features(gallery_features, "gallery_features")
    if Q.shape[1] != G.shape[1]:
        raise ValueError(
            f"query_features have {Q.shape[1]} features but gallery_features have {G.shape[1]}."
        )
    dtype = np.result_type(Q.dtype, G.dtype)
    Q, G = Q.astype(dtype, copy=False), G.astype(dtype, copy=False)
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}.")
    n_query, n_gallery = Q.shape[0], G.shape[0]
    q_codes, g_codes, q_cams, g_cams = _check_protocol(
        q_pids, g_pids, q_camids, g_camids, n_query, n_gallery, same_set, max_rank
    )
    if isinstance(rerank, dict):
        params = {"k1": 20, "k2": 6, "lambda_value": 0.3, "search": None}
        unknown = set(rerank) - set(params)
        if unknown:
            raise ValueError(
                f"Unknown re-ranking parameter(s) {sorted(unknown)}; "
                "expected k1, k2, lambda_value and search."
            )
        params.update(rerank)
        do_rerank = True
    elif isinstance(rerank, (bool, np.bool_)):
        params = {"k1": 20, "k2": 6, "lambda_value": 0.3}
        do_rerank = bool(rerank)
    else:
        raise TypeError(f"rerank must be a bool or a dict of parameters, got {rerank!r}.")

    source = _FeatureSource(Q, G, metric)
    acc = _RankAccumulator(q_codes, g_codes, q_cams, g_cams, same_set)
    if do_rerank:
        neighbors = _rerank_search(params.pop("search", None), Q, G, source, metric)
        k1, k2, lam = _validate_rerank_params(**params)
        blocks = _rerank_blocks(source, k1, k2, lam, dtype, neighbors=neighbors)
    else:
        step = _rows_per_block(n_gallery, np.dtype(dtype).itemsize)
        blocks = (
            (s, source.query_gallery(np.arange(s, min(s + step, n_query))))
            for s in range(0, n_query, step)
        )
    for start, block in blocks:
        acc.add(start, block)
    return acc.result(int(max_rank))
