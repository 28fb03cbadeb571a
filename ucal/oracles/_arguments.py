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
        If ``y`` is not 1D, has another length than ``n_samples``, or holds
        NaN (an unknown identity is no identity).

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
    if y.dtype.kind in "fc" and np.isnan(y).any():
        raise ValueError(
            f"y holds NaN (first at index {int(np.flatnonzero(np.isnan(y))[0])}): every "
            "sample needs a known identity; drop the unlabelled samples from y and X."
        )
    if y.dtype == object and any(v != v for v in y):  # NaN among Python objects
        raise ValueError("y holds NaN: every sample needs a known identity.")
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


def as_label_memory(label_memory=None, *, path=None, optional=False, infer=True, n_samples=None):
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
    n_samples : int, default=None
        The number of samples of the data the memory answers about: a
        memory with an answer about a larger index is refused.

    Returns
    -------
    memory : LabelMemory or None
        The memory.

    Raises
    ------
    TypeError
        If ``label_memory`` is anything else.
    ValueError
        If the memory answers about a sample index of ``n_samples`` or more.

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
        memory = label_memory
    elif isinstance(label_memory, (str, os.PathLike)):
        memory = LabelMemory(label_memory, infer=infer)
    elif label_memory is None:
        if optional:
            return None
        memory = LabelMemory(path, infer=infer)
    else:
        raise TypeError(
            "label_memory must be a ucal.oracles.LabelMemory or the path of its file, got "
            f"{type(label_memory).__name__}."
        )
    if n_samples is not None:
        largest = max((r.j for r in memory), default=-1)
        if largest >= n_samples:
            where = f" ({memory.path!r})" if memory.path else ""
            raise ValueError(
                f"The label memory{where} holds an answer about sample {largest}, but the "
                f"data has {n_samples} samples: it answers about other data."
            )
    return memory
