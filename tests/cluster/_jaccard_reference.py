"""A straightforward dense implementation of SpCL's k-reciprocal Jaccard distance.

Kept as the reference the sparse implementation is tested against: it follows
SpCL's ``compute_jaccard_distance`` line by line (NumPy instead of torch),
with O(N^2) memory, so it is only usable on small N.
"""

import numpy as np


def _k_reciprocal(rank, i, width):
    forward = rank[i, :width]
    backward = rank[forward, :width]
    return forward[np.where(backward == i)[0]]


def dense_jaccard(X, k1, k2):
    X = np.asarray(X, dtype=np.float64)
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    n = X.shape[0]
    k1 = min(k1, n)
    k2 = min(k2, n)
    sim = X @ X.T
    np.fill_diagonal(sim, np.inf)  # the sample itself ranks first
    rank = np.argsort(-sim, axis=1, kind="stable")[:, : max(k1, k2)]
    half = min(int(np.around(k1 / 2.0)) + 1, k1)
    sq_dist = 2.0 - 2.0 * (X @ X.T)
    V = np.zeros((n, n))
    for i in range(n):
        recip = _k_reciprocal(rank, i, k1)
        expansion = recip
        for cand in recip:
            cand_recip = _k_reciprocal(rank, cand, half)
            if len(np.intersect1d(cand_recip, recip)) > 2.0 / 3.0 * len(cand_recip):
                expansion = np.append(expansion, cand_recip)
        expansion = np.unique(expansion)
        w = np.exp(-sq_dist[i, expansion])
        V[i, expansion] = w / w.sum()
    if k2 > 1:
        V = np.stack([V[rank[i, :k2]].mean(axis=0) for i in range(n)])
    D = np.ones((n, n))
    for i in range(n):
        mins = np.minimum(V[i], V).sum(axis=1)
        maxs = np.maximum(V[i], V).sum(axis=1)
        D[i] = 1.0 - mins / maxs
    return np.clip(D, 0.0, 1.0), V
