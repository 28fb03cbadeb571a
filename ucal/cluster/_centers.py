"""Cluster geometry on the unit sphere: centres, medoids, distances to centres."""

import warnings

import numpy as np
from scipy import sparse
from sklearn.utils.validation import check_is_fitted, validate_data

from ._knn import UnitRows, l2_normalize

__all__ = [
    "CenterDistancesMixin",
    "center_distances",
    "cluster_centers",
    "cluster_medoids",
    "unit_rows",
    "warn_zero_rows",
    "zero_rows",
]


def unit_rows(X):
    """Rows of X scaled to unit norm in X's float dtype; all-zero rows stay zero."""
    return l2_normalize(X, dtype=X.dtype if X.dtype.kind == "f" else np.float64, zero_rows="keep")


def zero_rows(Xn, owner, labels=None):
    """Mask of the all-zero rows of the normalised ``Xn``, with a warning that counts them.

    A zero vector has no direction, hence no cosine similarity: following
    scikit-learn's ``cosine_distances`` it is at distance 1 from everything,
    so the estimators make it noise (label -1). Given the ``labels`` it is
    about to change, the warning is only issued when one of those rows is
    in a cluster (an inner estimator has already warned otherwise).
    """
    return warn_zero_rows(~Xn.any(axis=1), owner, labels, stacklevel=4)


def warn_zero_rows(zero, owner, labels=None, *, stacklevel=3):
    """:func:`zero_rows` given the mask ``zero`` of the all-zero rows."""
    if zero.any() and (labels is None or (labels[zero] >= 0).any()):
        warnings.warn(
            f"{owner}: X has {int(zero.sum())} all-zero row(s) (first at index "
            f"{int(np.flatnonzero(zero)[0])}); they have no direction, so they are "
            "made noise (label -1).",
            UserWarning,
            stacklevel=stacklevel,
        )
    return zero


def cluster_centers(Xn, labels, n_clusters):
    """L2-normalised mean of each cluster's (unit) samples, float64.

    ``Xn`` is an array of unit rows or a :class:`~ucal.cluster._knn.UnitRows`
    (read a block at a time).
    """
    clustered = np.flatnonzero(labels >= 0)
    # sparse indicator @ X: a vectorised per-cluster sum (np.add.at is slow)
    indicator = sparse.csr_matrix(
        (np.ones(clustered.size), (labels[clustered], clustered)),
        shape=(n_clusters, Xn.shape[0]),
    )
    if isinstance(Xn, UnitRows):
        sums = np.zeros((n_clusters, Xn.n_features))
        for start, stop, block in Xn.blocks():
            sums += indicator[:, start:stop] @ block
    else:
        sums = np.asarray(indicator @ Xn, dtype=np.float64)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    # a cluster of exactly opposite samples has no direction: keep it at 0
    return np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)


def cluster_medoids(Xn, labels, centers):
    """Index of each cluster's sample nearest its centre (what a human sees)."""
    members = np.flatnonzero(labels >= 0)
    sims = np.einsum("ij,ij->i", Xn[members], centers[labels[members]])
    # sort by cluster, then by decreasing similarity: first of each cluster wins
    order = np.lexsort((-sims, labels[members]))
    first = np.r_[True, np.diff(labels[members][order]) != 0]
    return members[order[first]]


def center_distances(X, centers, *, preserve_dtype=False):
    """Cosine distances ``1 - cos(x, centre)``; a zero row is at distance 1.

    In the centres' dtype, or in X's float dtype with ``preserve_dtype``.
    """
    Xn = unit_rows(X)
    return 1.0 - Xn @ (centers.T.astype(Xn.dtype) if preserve_dtype else centers.T)


class CenterDistancesMixin:
    """``transform``: cosine distances to the fitted ``cluster_centers_``.

    ``_transform_dtypes`` lists the accepted float dtypes, the first being
    what other inputs are converted to; ``_preserve_transform_dtype`` keeps
    X's float dtype in the output (else the centres' float64).
    """

    _transform_dtypes = [np.float64, np.float32]
    _preserve_transform_dtype = False

    def transform(self, X):
        """Cosine distances of ``X`` to the cluster centres.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings. An all-zero row is at distance 1 from every centre.

        Returns
        -------
        distances : ndarray of shape (n_samples, n_clusters)
            ``1 - cos(x, centre)``, in ``[0, 2]``.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=self._transform_dtypes, reset=False)
        return center_distances(
            X, self.cluster_centers_, preserve_dtype=self._preserve_transform_dtype
        )
