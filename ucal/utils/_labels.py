"""Cluster labels: ``-1`` is an outlier, clusters are numbered ``0..k-1``."""

import numpy as np

__all__ = ["outliers_as_singletons", "relabel"]


def relabel(labels, *, order="sorted"):
    """Clusters renumbered ``0..k-1``; ``-1`` (outlier) kept.

    Parameters
    ----------
    labels : array-like of int
        Cluster labels, any non-negative values, ``-1`` for outliers.
    order : {"sorted", "appearance"}, default="sorted"
        ``"sorted"``: new numbers follow the old ones' order (identity on
        labels that are already ``0..k-1``). ``"appearance"``: the first
        cluster met along the samples becomes 0, the next 1, and so on,
        so that two partitions equal up to names get equal labels (what
        the refiners return).

    Returns
    -------
    labels : ndarray of int64
        The renumbered labels.
    """
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full(labels.shape, -1, dtype=np.int64)
    clustered = labels >= 0
    if not clustered.any():
        return out
    _, first, inverse = np.unique(labels[clustered], return_index=True, return_inverse=True)
    if order == "sorted":
        out[clustered] = inverse
    elif order == "appearance":
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        out[clustered] = rank[inverse]
    else:
        raise ValueError(f"order must be 'sorted' or 'appearance', got {order!r}.")
    return out


def outliers_as_singletons(labels):
    """Every outlier (``-1``) becomes a cluster of its own, numbered after the others.

    SpCL trains on un-clustered images as single-image classes and scores
    its reliability criterion on such labels.

    Parameters
    ----------
    labels : ndarray of int
        Cluster labels, ``-1`` for outliers.

    Returns
    -------
    labels : ndarray of int
        A copy in which the ``m`` outliers hold ``max + 1 .. max + m``, in
        sample order.
    """
    out = np.array(labels, copy=True)
    noise = out < 0
    out[noise] = out.max(initial=-1) + 1 + np.arange(noise.sum())
    return out
