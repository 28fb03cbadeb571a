"""Data makers and test doubles shared by several test modules."""

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin


def identities(n_ids=12, per_id=20, dim=32, noise=0.4, seed=0):
    """Samples around random identity directions in ``dim`` dimensions; returns (X, y)."""
    rng = np.random.RandomState(seed)
    centres = rng.randn(n_ids, dim)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(n_ids), per_id)
    X = centres[y] + noise * rng.randn(len(y), dim) / np.sqrt(dim)
    return X, y


def clustered(n, n_groups, dim, noise, seed):
    """``n`` samples drawn around ``n_groups`` Gaussian centres; returns (X, ids)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_groups, dim))
    ids = rng.integers(0, n_groups, n)
    return centers[ids] + noise * rng.normal(size=(n, dim)), ids


def fragment(y, ids, labels=None):
    """Initial labels in which each identity of ``ids`` is cut in two halves."""
    labels = y.copy() if labels is None else labels.copy()
    for s in ids:
        idx = np.flatnonzero(y == s)
        labels[idx[: len(idx) // 2]] = 1000 + s
    return labels


def merge_pairs(y, pairs):
    """Initial labels in which each (a, b) of ``pairs`` shares one cluster."""
    labels = y.copy()
    for a, b in pairs:
        labels[y == b] = a
    return labels


class FixedLabels(ClusterMixin, BaseEstimator):
    """A 'clusterer' returning given labels: initial clusters for nested refiners."""

    def __init__(self, labels=None):
        self.labels = labels

    def fit(self, X, y=None):
        self.labels_ = np.asarray(self.labels)
        return self
