"""Approximate k-nearest neighbours by an inverted file, computed with BLAS.

The samples are split into ``n_lists`` groups by spherical k-means (trained
on a sample of the rows). Each row is stored in the list of its nearest
centroid and *probes* the ``n_probe`` lists whose centroids are nearest to it;
its neighbours are searched among the members of those lists only.

Which lists a row belongs to and probes is decided in a smaller space where
the features allow it: the rows minus their mean, projected on the leading
principal directions of the k-means sample that hold most of its variance.
Assigning every row to every centroid is N x lists products, the largest
cost at a million rows; in 152 of 2,048 dimensions it costs a thirteenth.
The similarities of the neighbours themselves are exact, in all dimensions.

faiss scans an inverted list vector by vector. Here each list is scanned at
once for all the rows that probe it: one matrix product of (probing rows x
members) per list, the operation a CPU does fastest, with no copy of the
features (rows are gathered a list at a time). Every product also updates the
members' lists with the probing rows (a pair met from either side is found),
which raises recall at no extra product. A pair is handed to each of its two
rows exactly once: a member takes a probing row only when it does not probe
that row's list itself (where it would meet it there), so no list ever needs
its duplicates removed.
"""

import logging
import math
import time
from numbers import Integral

import numpy as np
from scipy import sparse

from ._knn import merge_top_k, merge_top_k_columns

logger = logging.getLogger(__name__)

__all__ = ["ivf_knn", "spherical_kmeans", "training_sample"]

# Most similarities computed at once per list (a tile and its transpose).
_TILE_CELLS = 8 * 2**20
# Rows assigned to centroids at a time.
_ASSIGN_ROWS = 8192
# Rows of the k-means sample the principal directions are computed from.
_PCA_ROWS = 32768


class _Quantizer:
    """The space rows are assigned to lists in: minus the sample's mean (features
    that all share a direction, as ReLU outputs do, otherwise give a few
    centroids near it that half the rows are nearest to), projected on the
    sample's leading principal directions, back on the unit sphere.

    ``n_components``: an int is that many directions; a float in (0, 1) the
    fewest directions that hold that share of the sample's variance, or all
    dimensions where that takes half of them or more (features without a
    low-dimensional structure, where a projection would lose the lists'
    meaning); None is all dimensions.
    """

    def __init__(self, sample, n_components):
        self.mean = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
        self.basis = None
        d = sample.shape[1]
        self.n_components, self.variance = d, 1.0
        fraction = not isinstance(n_components, Integral)
        if n_components is None or (not fraction and n_components >= d):
            return
        centred = sample - self.mean
        scatter = (centred.T @ centred).astype(np.float64)
        values, vectors = np.linalg.eigh(scatter)  # ascending
        values, vectors = np.clip(values[::-1], 0.0, None), vectors[:, ::-1]
        share = np.cumsum(values) / max(values.sum(), np.finfo(np.float64).tiny)
        if fraction:
            keep = int(np.searchsorted(share, n_components)) + 1
            if 2 * keep >= d:
                return
        else:
            keep = int(n_components)
        self.n_components, self.variance = keep, float(share[keep - 1])
        self.basis = np.ascontiguousarray(vectors[:, :keep], dtype=np.float32)

    def project(self, block):
        """The rows ``block`` minus the mean, on the principal directions kept:
        Euclidean distances there are the original ones less the part of the
        difference outside those directions (all of them, with no projection)."""
        z = block - self.mean
        return z if self.basis is None else z @ self.basis

    def embed(self, block):
        """The rows ``block`` in the assignment space, unit norm."""
        z = self.project(block)
        norms = np.linalg.norm(z, axis=1, keepdims=True)
        return z / np.where(norms > 0, norms, 1.0)

    def embed_rows(self, rows, index, embed=None):
        """The rows ``index`` of ``rows`` (UnitRows) embedded (by ``embed``,
        default :meth:`embed`), read a block at a time: no full-dimension copy
        of them at once."""
        embed = embed or self.embed
        return np.concatenate([
            embed(rows.take(index[a : a + _ASSIGN_ROWS]))
            for a in range(0, max(index.size, 1), _ASSIGN_ROWS)
        ])


def training_sample(rows, n_lists, sample_size, rng, n_components, min_rows=0):
    """The sorted rows the lists are trained on (``sample_size``, at least
    ``n_lists`` and ``min_rows``, at most all) and the :class:`_Quantizer` of
    their space, whose principal directions need far fewer rows."""
    n = rows.n_samples
    size = min(n, max(int(sample_size), int(n_lists), int(min_rows)))
    sample = np.sort(rng.choice(n, size=size, replace=False))
    quantizer = _Quantizer(rows.take(sample[:: max(1, sample.size // _PCA_ROWS)]), n_components)
    return sample, quantizer


def _top_columns(sims, n_top):
    """Per row, the ``n_top`` columns of ``sims`` with the largest values, largest
    first: (columns int32, values float32)."""
    m = sims.shape[1]
    if n_top < m:
        part = np.argpartition(sims, m - n_top, axis=1)[:, m - n_top:]
    else:
        part = np.broadcast_to(np.arange(m), sims.shape)
    values = np.take_along_axis(sims, part, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return (np.take_along_axis(part, order, axis=1).astype(np.int32),
            np.take_along_axis(values, order, axis=1).astype(np.float32))


def _nearest_centroids(rows, quantizer, centroids, n_nearest):
    """The ``n_nearest`` centroids of every row (most similar first) and their similarities."""
    n = rows.n_samples
    probes = np.empty((n, n_nearest), dtype=np.int32)
    sims = np.empty((n, n_nearest), dtype=np.float32)
    for start in range(0, n, _ASSIGN_ROWS):
        stop = min(start + _ASSIGN_ROWS, n)
        block = quantizer.embed(rows.block(start, stop)) @ centroids.T
        probes[start:stop], sims[start:stop] = _top_columns(block, n_nearest)
    return probes, sims


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


def _split_giant_lists(rows, quantizer, centroids, probes, sims, *, sample_size, n_iter, rng):
    """Split the lists far above the mean size (a centroid many rows are
    nearest to) by k-means of their members, and give the rows that probed
    them the nearest of the pieces instead: no second pass over every row.

    Returns the new centroids; ``probes`` and ``sims`` are updated in place.
    """
    n, n_lists = rows.n_samples, centroids.shape[0]
    n_probe = probes.shape[1]
    sizes = np.bincount(probes[:, 0], minlength=n_lists)
    mean_size = n / n_lists
    giant = np.flatnonzero(sizes > 4 * mean_size)
    if not giant.size:
        return centroids
    by_primary, ptr = _by_list(probes[:, 0], n_lists)
    pieces = []
    for c in giant:
        members = by_primary[ptr[c] : ptr[c + 1]]
        if members.size > sample_size:
            members = np.sort(rng.choice(members, int(sample_size), replace=False))
        n_pieces = min(int(np.ceil(sizes[c] / mean_size)), members.size)
        pieces.append(_lloyd(quantizer.embed_rows(rows, members), n_pieces, max(1, n_iter // 2), rng)[0])
    pieces = np.concatenate(pieces)
    is_giant = np.zeros(n_lists, dtype=bool)
    is_giant[giant] = True
    renumber = np.full(n_lists, -1, dtype=np.int32)
    renumber[~is_giant] = np.arange(n_lists - giant.size, dtype=np.int32)
    piece_ids = np.arange(n_lists - giant.size, n_lists - giant.size + pieces.shape[0], dtype=np.int32)
    hit = is_giant[probes]
    affected = np.flatnonzero(hit.any(axis=1))
    probes[...] = renumber[probes]
    for start in range(0, affected.size, _ASSIGN_ROWS):
        idx = affected[start : start + _ASSIGN_ROWS]
        near = quantizer.embed_rows(rows, idx) @ pieces.T
        cand_sims = np.concatenate([np.where(hit[idx], -np.inf, sims[idx]), near], axis=1)
        cand_ids = np.concatenate([probes[idx], np.broadcast_to(piece_ids, near.shape)], axis=1)
        top, sims[idx] = _top_columns(cand_sims, n_probe)
        probes[idx] = np.take_along_axis(cand_ids, top, axis=1)
    logger.debug("ivf_knn: split %d giant lists into %d; %d rows re-probed",
                 giant.size, pieces.shape[0], affected.size)
    return np.concatenate([centroids[~is_giant], pieces])


def ivf_knn(rows, n_neighbors, *, n_lists, n_probe, n_iter, sample_size, rng, n_components=0.8,
            progress=None):
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
    n_components : int, float or None, default=0.8
        Dimensions of the space rows are assigned to lists in: principal
        components of the sample, that many (int) or holding that share of
        its variance (float; all dimensions where that is half of them or
        more); None: all dimensions.
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
    clock = time.perf_counter()
    sample, quantizer = training_sample(rows, n_lists, sample_size, rng, n_components)
    centroids = spherical_kmeans(quantizer.embed_rows(rows, sample), n_lists, n_iter=n_iter, rng=rng)
    trained = time.perf_counter()
    # (k-means may have made more lists than asked: n_probe >= n_lists probes all)
    n_probe = max(1, min(int(n_probe), centroids.shape[0]))
    probes, probe_sims = _nearest_centroids(rows, quantizer, centroids, n_probe)
    assigned = time.perf_counter()
    if n_probe < centroids.shape[0]:  # where every row probes every list, no list is giant
        centroids = _split_giant_lists(rows, quantizer, centroids, probes, probe_sims,
                                       sample_size=sample_size, n_iter=n_iter, rng=rng)
    del probe_sims
    split = time.perf_counter()
    logger.info(
        "ivf_knn: %d rows, %d lists, assigned in %d of %d dimensions (%.2f of the variance); "
        "k-means on %d rows %.1f s, assignment %.1f s, giant lists %.1f s", n, centroids.shape[0],
        quantizer.n_components, rows.n_features, quantizer.variance, sample.size,
        trained - clock, assigned - trained, split - assigned,
    )
    n_lists = centroids.shape[0]
    primary = probes[:, 0].copy()
    members, member_ptr = _by_list(primary, n_lists)
    # Rows probing each list (their own list included): flat positions / n_probe.
    probing, probe_ptr = _by_list(probes.ravel(), n_lists)
    probing //= probes.shape[1]
    best_sim = np.full((n, k), -np.inf, dtype=np.float32)
    best_idx = np.full((n, k), -1, dtype=np.int64)
    position = np.full(n_lists, -1, dtype=np.int32)  # scratch of _scan_list
    for c in range(n_lists):
        mem = members[member_ptr[c] : member_ptr[c + 1]]
        if mem.size:
            _scan_list(rows, mem, probing[probe_ptr[c] : probe_ptr[c + 1]], probes, primary,
                       position, best_sim, best_idx, k)
        if progress is not None:
            progress(c + 1)
    logger.info("ivf_knn: lists scanned in %.1f s", time.perf_counter() - split)
    # The row itself was given +inf so that it ranks first.
    best_sim[best_idx == np.arange(n)[:, None]] = 1.0
    return best_idx, best_sim


def _scan_list(rows, mem, probers, probes, primary, position, best_sim, best_idx, k):
    """All similarities of (probing rows x members) of one list, merged both ways.

    The probing rows take the members. A member takes a probing row only
    where it does not probe that row's own list: there it meets the row as a
    member, so the pair reaches each side once.
    """
    # covers[u, j]: member j probes list lists[u] (the last row stays False).
    lists, which = np.unique(primary[probers], return_inverse=True)
    position[lists] = np.arange(lists.size, dtype=np.int32)
    covers = np.zeros((lists.size + 1, mem.size), dtype=bool)
    covers[position[probes[mem]], np.arange(mem.size)[:, None]] = True
    position[lists] = -1
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
            merge_top_k(best_sim, best_idx, p_ids, tile, m_ids, k)
            tile[covers[which[p0 : p0 + p_step], m0 : m0 + mem_step]] = -np.inf
            merge_top_k_columns(best_sim, best_idx, m_ids, tile, p_ids, k)


def default_n_lists(n_samples):
    """Lists of about 32 rows, but at most ``2 sqrt(32 N)`` lists.

    Small lists follow the identities more closely (measured: at N = 100,000,
    32 probes of lists of 32 rows find 0.90 of the exact neighbours, of lists
    of 128 rows 0.75); the cap bounds the assignment of every row to the
    lists (N x lists products), the largest cost at a million rows.
    """
    cap = 2.0 * math.sqrt(32 * n_samples)
    return max(1, min(n_samples, int(round(min(n_samples / 32.0, cap)))))
