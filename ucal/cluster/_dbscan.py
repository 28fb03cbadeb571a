"""DBSCAN on a sparse precomputed distance graph.

The three DBSCAN runs of the self-paced criterion share one sparse Jaccard
graph. Running them here instead of through ``sklearn.cluster.DBSCAN`` avoids
a copy of the graph per run and a Python-level neighbourhood expansion: core
points are those with at least ``min_samples`` stored entries within ``eps``
(the point itself included, as in scikit-learn), clusters are the connected
components of core points, and a border point joins the cluster of its
nearest core neighbour.
"""

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

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
    distance = sparse.csr_matrix(distance)
    rows = np.repeat(np.arange(n), np.diff(distance.indptr))
    cols = distance.indices
    within = distance.data <= eps
    rows, cols, dist = rows[within], cols[within], distance.data[within]
    is_core = np.bincount(rows, minlength=n) >= min_samples
    labels = np.full(n, -1, dtype=np.int64)
    if not is_core.any():
        return labels
    core_edge = is_core[rows] & is_core[cols]
    graph = sparse.csr_matrix(
        (np.ones(core_edge.sum(), dtype=np.int8), (rows[core_edge], cols[core_edge])),
        shape=(n, n),
    )
    _, component = connected_components(graph, directed=False)
    core_idx = np.flatnonzero(is_core)
    # Number clusters by their first core point, as scikit-learn does.
    _, first = np.unique(component[core_idx], return_index=True)
    order = np.argsort(first)
    remap = np.empty(order.size, dtype=np.int64)
    remap[order] = np.arange(order.size)
    _, inverse = np.unique(component[core_idx], return_inverse=True)
    labels[core_idx] = remap[inverse]
    # Border points: non-core points with a core neighbour join its cluster.
    border_edge = ~is_core[rows] & is_core[cols]
    if border_edge.any():
        b_rows, b_cols, b_dist = rows[border_edge], cols[border_edge], dist[border_edge]
        order = np.lexsort((labels[b_cols], b_dist, b_rows))
        b_rows, b_cols = b_rows[order], b_cols[order]
        first_of_row = np.r_[True, b_rows[1:] != b_rows[:-1]]
        labels[b_rows[first_of_row]] = labels[b_cols[first_of_row]]
    return labels
