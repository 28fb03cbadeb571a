"""The oracle, ``y`` and label-memory arguments of every ``fit``, checked in one place.

The refiners (:class:`~ucal.active.SNPSSplitter`, :class:`~ucal.active.MPPSMerger`),
the trainer (:class:`~ucal.reid.UCALReID`) and the annotation page accept the
same things for these arguments, with the same messages.
"""

import os

import numpy as np
from sklearn.utils.validation import column_or_1d

from ._memory import LabelMemory
from ._simulated import LabelOracle

__all__ = ["as_label_memory", "check_identities", "resolve_oracle"]


def check_identities(y, n_samples):
    """Ground-truth identities of ``n_samples`` samples, as a 1D array.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        One identity per sample (any values NumPy can compare).
    n_samples : int
        The number of samples of the ``X`` they go with.

    Returns
    -------
    y : ndarray of shape (n_samples,)
        The identities.

    Raises
    ------
    ValueError
        If ``y`` is not 1D or has another length than ``n_samples``.

    Examples
    --------
    >>> from ucal.oracles import check_identities
    >>> check_identities((3, 3, 5), 3).tolist()
    [3, 3, 5]
    """
    y = column_or_1d(np.asarray(y), warn=True)
    if y.shape[0] != n_samples:
        raise ValueError(
            f"y has {y.shape[0]} labels but X has {n_samples} samples "
            "(inconsistent numbers of samples)."
        )
    return y


def resolve_oracle(oracle=None, y=None, *, n_samples):
    """The oracle a ``fit`` asks: ``oracle``, else a simulated one from ``y``, else None.

    Parameters
    ----------
    oracle : callable, default=None
        ``oracle(pairs) -> answers`` (see :mod:`ucal.oracles`).
    y : array-like of shape (n_samples,), default=None
        Ground-truth identities; without an ``oracle``, ``LabelOracle(y)``
        answers (the paper's simulated annotator).
    n_samples : int
        The number of samples the pairs index.

    Returns
    -------
    oracle : callable or None
        None when neither an oracle nor ``y`` is given.

    Raises
    ------
    TypeError
        If ``oracle`` is not callable.
    ValueError
        If ``y`` does not have one identity per sample.

    Examples
    --------
    >>> from ucal.oracles import resolve_oracle
    >>> oracle = resolve_oracle(y=[0, 0, 1], n_samples=3)
    >>> oracle([[0, 1], [0, 2]])
    array([ True, False])
    >>> resolve_oracle(n_samples=3) is None
    True
    """
    if oracle is not None:
        if not callable(oracle):
            raise TypeError(
                "oracle must be callable, oracle(pairs) -> answers; got "
                f"{type(oracle).__name__}."
            )
        if y is not None:
            check_identities(y, n_samples)
        return oracle
    if y is None:
        return None
    return LabelOracle(check_identities(y, n_samples))


def as_label_memory(label_memory=None, *, path=None, optional=False, infer=True):
    """The :class:`LabelMemory` a ``fit`` records into.

    Parameters
    ----------
    label_memory : LabelMemory, str, path-like or None, default=None
        A memory to share (used as is, updated in place), or the path of
        its JSON-lines file (opened, replayed, appended to).
    path : str or path-like, default=None
        Where a fresh memory persists when ``label_memory`` is None (None:
        in RAM only).
    optional : bool, default=False
        Return None for a None ``label_memory`` instead of a fresh memory
        (for a caller that records nothing without one, such as
        :class:`~ucal.annotation.WebOracle`).
    infer : bool, default=True
        ``LabelMemory(infer=...)`` of a memory opened here (a given
        :class:`LabelMemory` keeps its own).

    Returns
    -------
    memory : LabelMemory or None
        The memory.

    Raises
    ------
    TypeError
        If ``label_memory`` is anything else.

    Examples
    --------
    >>> from ucal.oracles import LabelMemory, as_label_memory
    >>> memory = LabelMemory()
    >>> as_label_memory(memory) is memory
    True
    >>> len(as_label_memory(None))
    0
    """
    if isinstance(label_memory, LabelMemory):
        return label_memory
    if isinstance(label_memory, (str, os.PathLike)):
        return LabelMemory(label_memory, infer=infer)
    if label_memory is None:
        return None if optional else LabelMemory(path, infer=infer)
    raise TypeError(
        "label_memory must be a ucal.oracles.LabelMemory or the path of its file, got "
        f"{type(label_memory).__name__}."
    )
