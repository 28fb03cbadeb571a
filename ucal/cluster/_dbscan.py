"""DBSCAN on a sparse precomputed distance graph.

The three DBSCAN runs of the self-paced criterion share one sparse Jaccard
graph. Running them here instead of through ``sklearn.cluster.DBSCAN`` avoids
a copy of the graph per run and a Python-level neighbourhood expansion: core
points are those with at least ``min_samples`` stored entries within ``eps``
(the point itself included, as in scikit-learn), clusters are the connected
components of core points, and a border point joins the cluster of its
nearest core neighbour. Where numba is installed, one compiled pass does
the same (:mod:`ucal.cluster._compiled`).
"""

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from ._compiled import compiled_dbscan

__all__ = ["sparse_dbscan"]


def sparse_dbscan(distance, eps, min_samples):
    """Cluster a sparse precomputed distance matrix with DBSCAN.

    Parameters
    ----------
    distance : scipy.sparse.csr_matrix of shape (n_samples, n_samples)
        Symmetric distances; entries that are not stored are infinitely far
        (for the Jaccard distance they are 1, above any useful ``eps``). The
        diagonal must be stored so each point is in its own neighbourhood.
    eps : float
        Neighbourhood radius (inclusive, like scikit-learn).
    min_samples : int
        Neighbours, the point itself included, that make a core point.

    Returns
    -------
    labels : ndarray of shape (n_samples,), int64
        Cluster labels numbered in order of their first core point (the
        numbering of ``sklearn.cluster.DBSCAN``); ``-1`` for noise.

    Notes
    -----
    Core points and noise are exactly those of ``sklearn.cluster.DBSCAN``.
    A border point within ``eps`` of core points of two clusters joins the
    nearest one here (ties: the lower cluster label), where scikit-learn
    takes whichever cluster its expansion reaches first.
    """
    n = distance.shape[0]
    if distance.shape != (n, n):
        raise ValueError(f"distance must be a square matrix; got shape {distance.shape}.")
    distance = sparse.csr_matrix(distance)
    labels = np.full(n, -1, dtype=np.int64)
    kernel = compiled_dbscan(distance.nnz)
    if kernel is not None and distance.data.dtype in (np.float32, np.float64):
        # eps in the type NumPy compares in below (a Python float: the distances')
        eps = np.result_type(distance.data, eps).type(eps)
        kernel(distance.indptr, distance.indices, distance.data, eps, int(min_samples), labels)
        return labels
    indptr = distance.indptr
    within = distance.data <= eps
    # entries within eps per row, from a running count (no row index per entry yet)
    running = np.concatenate([[0], np.cumsum(within, dtype=np.int64)])
    is_core = running[indptr[1:]] - running[indptr[:-1]] >= min_samples
    if not is_core.any():
        return labels
    rows = np.repeat(np.arange(n), np.diff(indptr))
    cols = distance.indices
    # The graph of core points within eps, built straight as CSR (the entries are
    # already in row order). It is symmetric, so its strongly connected components
    # are its connected components, found without the transpose an undirected
    # search builds.
    core_edge = within & is_core[rows] & is_core[cols]
    graph = sparse.csr_matrix(
        (np.ones(int(core_edge.sum()), dtype=np.int8), cols[core_edge],
         np.concatenate([[0], np.cumsum(np.bincount(rows[core_edge], minlength=n))])),
        shape=(n, n),
    )
    del core_edge
    _, component = connected_components(graph, directed=True, connection="strong")
    core_idx = np.flatnonzero(is_core)
    # Number clusters by their first core point, as scikit-learn does.
    _, first = np.unique(component[core_idx], return_index=True)
    order = np.argsort(first)
    remap = np.empty(order.size, dtype=np.int64)
    remap[order] = np.arange(order.size)
    _, inverse = np.unique(component[core_idx], return_inverse=True)
    labels[core_idx] = remap[inverse]
    # Border points: non-core points with a core neighbour join its cluster.
    border_edge = np.flatnonzero(within & ~is_core[rows] & is_core[cols])
    if border_edge.size:
        b_rows, b_cols = rows[border_edge], cols[border_edge]
        b_dist = distance.data[border_edge]
        order = np.lexsort((labels[b_cols], b_dist, b_rows))
        b_rows, b_cols = b_rows[order], b_cols[order]
        first_of_row = np.r_[True, b_rows[1:] != b_rows[:-1]]
        labels[b_rows[first_of_row]] = labels[b_cols[first_of_row]]
    return labels
