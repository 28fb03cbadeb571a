"""Approximate k-nearest neighbours by an inverted file, computed with BLAS.

The samples are split into ``n_lists`` groups by spherical k-means (trained
on a sample of the rows). Each row is stored in the list of its nearest
centroid and *probes* the ``n_probe`` lists whose centroids are nearest to it;
its neighbours are searched among the members of those lists only.

faiss scans an inverted list vector by vector. Here each list is scanned at
once for all the rows that probe it: one matrix product of (probing rows x
members) per list, the operation a CPU does fastest, with no copy of the
features (rows are gathered a list at a time). Every product also updates
the members' own lists with the probing rows (a pair met from either side is
found), which raises recall at no extra product.
"""

import logging
import math

import numpy as np
from scipy import sparse

from ._knn import merge_top_k

logger = logging.getLogger(__name__)

__all__ = ["ivf_knn", "spherical_kmeans"]

# Most similarities computed at once per list (a tile and its transpose).
_TILE_CELLS = 8 * 2**20
# Rows assigned to centroids at a time.
_ASSIGN_ROWS = 8192


def _centred(block, mean):
    """Rows minus the mean, back on the unit sphere (the partition's geometry)."""
    block = block - mean
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    return block / np.where(norms > 0, norms, 1.0)


def _nearest_centroids(rows, centroids, n_nearest, mean, index=None):
    """The ``n_nearest`` centroids of each centred row (most similar first), int32."""
    n = rows.n_samples if index is None else index.size
    out = np.empty((n, n_nearest), dtype=np.int32)
    n_centroids = centroids.shape[0]
    for start in range(0, n, _ASSIGN_ROWS):
        stop = min(start + _ASSIGN_ROWS, n)
        block = rows.block(start, stop) if index is None else rows.take(index[start:stop])
        sims = _centred(block, mean) @ centroids.T
        if n_nearest < n_centroids:
            part = np.argpartition(-sims, n_nearest - 1, axis=1)[:, :n_nearest]
        else:
            part = np.broadcast_to(np.arange(n_centroids), sims.shape).copy()
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
        out[start:stop] = np.take_along_axis(part, order, axis=1)
    return out


def spherical_kmeans(data, n_clusters, *, n_iter, rng):
    """Unit-norm centroids of spherical k-means on the unit rows ``data``.

    Lloyd iterations on cosine similarity; an emptied cluster is re-seeded
    with the sample row farthest from its centroid. On high-dimensional
    features k-means leaves a few huge clusters (a list's cost grows with its
    size times the rows that probe it), so every cluster of more than twice
    the mean size is split again by k-means of its own members.
    """
    centroids, assign = _lloyd(data, min(n_clusters, data.shape[0]), n_iter, rng)
    mean_size = data.shape[0] / centroids.shape[0]
    counts = np.bincount(assign, minlength=centroids.shape[0])
    parts = [centroids[counts <= 2 * mean_size]]
    for c in np.flatnonzero(counts > 2 * mean_size):
        members = data[assign == c]
        pieces = int(np.ceil(counts[c] / mean_size))
        parts.append(_lloyd(members, pieces, max(1, n_iter // 2), rng)[0])
    return np.concatenate(parts).astype(np.float32)


def _lloyd(data, n_clusters, n_iter, rng):
    """Spherical k-means of the unit rows ``data``: (centroids, assignment)."""
    centroids = data[rng.choice(data.shape[0], n_clusters, replace=False)].copy()
    assign, best = _assign(data, centroids)
    for _ in range(max(1, n_iter)):
        sums = _sum_by(assign, data, n_clusters)
        counts = np.bincount(assign, minlength=n_clusters)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            far = np.argsort(best)[: empty.size]
            sums[empty] = data[far]
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        assign, best = _assign(data, centroids)
    return centroids, assign


def _assign(data, centroids):
    """Nearest centroid of each row and its similarity, a block of rows at a time."""
    assign = np.empty(data.shape[0], dtype=np.int64)
    best = np.empty(data.shape[0], dtype=np.float32)
    step = max(1, _TILE_CELLS // max(1, centroids.shape[0]))
    for start in range(0, data.shape[0], step):
        sims = data[start:start + step] @ centroids.T
        assign[start:start + step] = sims.argmax(axis=1)
        best[start:start + step] = sims[np.arange(sims.shape[0]), assign[start:start + step]]
    return assign, best


def _sum_by(assign, data, n_clusters):
    """Row ``c``: the sum of the rows of ``data`` assigned to ``c`` (a sparse product)."""
    indicator = sparse.csr_matrix(
        (np.ones(assign.size, dtype=np.float32), (assign, np.arange(assign.size))),
        shape=(n_clusters, assign.size),
    )
    return np.asarray(indicator @ data, dtype=np.float32)


def _by_list(list_of, n_lists):
    """Rows grouped by list: ``order[ptr[c]:ptr[c + 1]]`` are the rows of list ``c``, ascending."""
    order = np.argsort(list_of, kind="stable")
    ptr = np.concatenate([[0], np.cumsum(np.bincount(list_of, minlength=n_lists))])
    return order, ptr


def ivf_knn(rows, n_neighbors, *, n_lists, n_probe, n_iter, sample_size, rng, progress=None):
    """Approximate nearest neighbours of every row among all rows.

    Parameters
    ----------
    rows : UnitRows
        The unit-norm rows.
    n_neighbors : int
        Neighbours per row, the row itself included (it comes first).
    n_lists, n_probe, n_iter, sample_size : int
        Number of lists, lists probed per row, k-means iterations and rows
        the k-means is trained on.
    rng : numpy.random.RandomState
        Chooses the k-means sample and its initial centroids.
    progress : callable, default=None
        Called with the number of lists done after each list.

    Returns
    -------
    indices : ndarray of shape (n_samples, n_neighbors), int64
        Neighbours by decreasing similarity, ``indices[i, 0] == i``; ``-1``
        where fewer neighbours were met than asked for.
    similarities : ndarray of shape (n_samples, n_neighbors), float32
        Cosine similarities (``-inf`` where the index is ``-1``).
    """
    n = rows.n_samples
    k = min(int(n_neighbors), n)
    n_lists = max(1, min(int(n_lists), n))
    n_probe = max(1, min(int(n_probe), n_lists))
    sample = rng.choice(n, size=min(n, max(int(sample_size), n_lists)), replace=False)
    # The lists partition the rows minus their mean: features that all share
    # a direction (ReLU outputs are all positive) otherwise give a few
    # centroids near that direction that half the rows are nearest to.
    sampled = rows.take(np.sort(sample))
    mean = sampled.mean(axis=0)
    centroids = spherical_kmeans(_centred(sampled, mean), n_lists, n_iter=n_iter, rng=rng)
    del sampled
    probes = _nearest_centroids(rows, centroids, n_probe, mean)
    # Lists far above the mean size still happen on all the rows (a centroid
    # many rows are nearest to): split them by k-means of their members.
    sizes = np.bincount(probes[:, 0], minlength=centroids.shape[0])
    giant = np.flatnonzero(sizes > 4 * n / centroids.shape[0])
    if giant.size:
        mean_size = n / centroids.shape[0]
        parts = [np.delete(centroids, giant, axis=0)]
        for c in giant:
            members = np.flatnonzero(probes[:, 0] == c)
            if members.size > sample_size:
                members = np.sort(rng.choice(members, int(sample_size), replace=False))
            pieces = int(np.ceil(sizes[c] / mean_size))
            parts.append(_lloyd(_centred(rows.take(members), mean), min(pieces, members.size), max(1, n_iter // 2), rng)[0])
        centroids = np.concatenate(parts)
        logger.debug("ivf_knn: split %d giant lists; %d lists now", giant.size, centroids.shape[0])
        probes = _nearest_centroids(rows, centroids, n_probe, mean)
    n_lists = centroids.shape[0]
    members, member_ptr = _by_list(probes[:, 0], n_lists)
    # Rows probing each list (their own list included): flat positions / n_probe.
    probing, probe_ptr = _by_list(probes.ravel(), n_lists)
    probing = probing // n_probe
    del probes
    best_sim = np.full((n, k), -np.inf, dtype=np.float32)
    best_idx = np.full((n, k), -1, dtype=np.int64)
    for c in range(n_lists):
        mem = members[member_ptr[c] : member_ptr[c + 1]]
        if mem.size:
            _scan_list(rows, mem, probing[probe_ptr[c] : probe_ptr[c + 1]], best_sim, best_idx, k)
        if progress is not None:
            progress(c + 1)
    # The row itself was given +inf so that it ranks first.
    best_sim[best_idx == np.arange(n)[:, None]] = 1.0
    return best_idx, best_sim


def _scan_list(rows, mem, probers, best_sim, best_idx, k):
    """All similarities of (probing rows x members) of one list, merged both ways."""
    # Probers that are not members update the members' lists too (a member
    # pair is already seen from both of its sides).
    outside = ~np.isin(probers, mem, assume_unique=True)
    mem_step = max(1, min(mem.size, _TILE_CELLS // max(1, min(probers.size, 4096))))
    for m0 in range(0, mem.size, mem_step):
        m_ids = mem[m0 : m0 + mem_step]
        X_mem = rows.take(m_ids)
        p_step = max(1, _TILE_CELLS // m_ids.size)
        for p0 in range(0, probers.size, p_step):
            p_ids = probers[p0 : p0 + p_step]
            tile = rows.take(p_ids) @ X_mem.T
            # Self pairs: +inf, so that each row ranks itself first.
            pos = np.searchsorted(m_ids, p_ids)
            hit = (pos < m_ids.size) & (m_ids[np.minimum(pos, m_ids.size - 1)] == p_ids)
            tile[np.flatnonzero(hit), pos[hit]] = np.inf
            merge_top_k(best_sim, best_idx, p_ids, tile, m_ids, k, dedupe=True)
            out = outside[p0 : p0 + p_step]
            if out.any():
                back = np.ascontiguousarray(tile[out].T)
                merge_top_k(best_sim, best_idx, m_ids, back, p_ids[out], k, dedupe=True)


def default_n_lists(n_samples):
    """Lists of about 32 rows, but at most ``2 sqrt(32 N)`` lists.

    Small lists follow the identities more closely (measured: at N = 100,000,
    32 probes of lists of 32 rows find 0.90 of the exact neighbours, of lists
    of 128 rows 0.75); the cap bounds the assignment of every row to the
    lists (N x lists products), the largest cost at a million rows.
    """
    cap = 2.0 * math.sqrt(32 * n_samples)
    return max(1, min(n_samples, int(round(min(n_samples / 32.0, cap)))))
