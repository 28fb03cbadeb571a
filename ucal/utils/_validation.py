"""Input checks whose messages name the argument and the problem."""

import numpy as np
from scipy import sparse

__all__ = ["check_dense_2d", "check_labels", "first_non_finite"]


def first_non_finite(X):
    """``(row, column)`` of the first NaN or infinity of a 2D array, or None.

    A float64 sum is finite when every entry is (barring overflow, which
    falls back to the full check), and needs no boolean copy of ``X``.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.sum(X, dtype=np.float64)
    if np.isfinite(total):
        return None
    bad = np.argwhere(~np.isfinite(X))
    return (int(bad[0][0]), int(bad[0][1])) if bad.size else None


def check_dense_2d(value, name, *, kinds="iuf", numeric_phrase="hold real numbers",
                   axes="(n_rows, n_columns)", shape=None, finite=True):
    """A non-empty dense 2D numeric array, or an error that names ``name``.

    Parameters
    ----------
    value : array-like
        What the user passed.
    name : str
        The argument's name, used in the messages.
    kinds : str, default="iuf"
        Accepted ``dtype.kind`` letters (``"b"`` adds booleans).
    numeric_phrase : str, default="hold real numbers"
        How the dtype message says what is expected.
    axes : str, default="(n_rows, n_columns)"
        How the shape message names the two axes.
    shape : tuple of int, default=None
        The exact shape required, if any.
    finite : bool, default=True
        Refuse NaN and infinity, naming the first.

    Returns
    -------
    array : ndarray
        ``value`` as an array (no copy when it already is one).
    """
    if sparse.issparse(value):
        raise TypeError(f"{name} must be a dense array, got a sparse matrix.")
    array = np.asarray(value)
    if array.dtype.kind not in kinds:
        raise ValueError(f"{name} must {numeric_phrase}, got dtype {array.dtype}.")
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be 2D (a 2D array of shape {axes}), got {array.ndim}D with "
            f"shape {array.shape}."
        )
    if shape is not None and array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}.")
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}).")
    if finite:
        bad = first_non_finite(array)
        if bad is not None:
            raise ValueError(
                f"{name} contains NaN or infinity (first at row {bad[0]}, column {bad[1]})."
            )
    return array


def check_labels(labels, n_samples, name="labels"):
    """Integer cluster labels of length ``n_samples``, ``-1`` = outlier.

    Parameters
    ----------
    labels : array-like of shape (n_samples,)
        The labels to check.
    n_samples : int
        How many samples they must label.
    name : str, default="labels"
        The argument's name, used in the messages.

    Returns
    -------
    labels : ndarray of shape (n_samples,), dtype int64
    """
    array = np.asarray(labels)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array.ravel()  # a column vector, as column_or_1d accepts
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1D of shape ({n_samples},), got shape {array.shape}.")
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            f"{name} must be integer cluster labels (-1 = outlier), got dtype {array.dtype}."
        )
    if len(array) != n_samples:
        raise ValueError(f"{name} has {len(array)} entries but X has {n_samples} samples.")
    if len(array) and array.min() < -1:
        raise ValueError(f"{name} must be >= -1 (-1 = outlier), got {array.min()}.")
    return array.astype(np.int64, copy=False)
