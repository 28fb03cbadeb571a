"""The oracle protocol: how pairs are asked and how answers are checked.

An oracle is any callable ``oracle(pairs) -> answers``. ``pairs`` is an int
array of shape ``(m, 2)`` of sample indices into the ``X`` given to ``fit``;
``answers`` is array-like of shape ``(m,)`` of bool (``True`` = same
identity) or of ints in ``{-1, 0, 1}`` where ``-1`` means "not sure".

Optional hook: an oracle with a ``set_context(labels)`` method is given,
right before each batch, an int array of shape ``(n_samples,)`` in which the
samples sharing a queried sample's value form its group (SNPS) or its
cluster (MPPS), ``-1`` meaning none. An annotation page uses it to show
context images next to the two samples of a pair.
"""

import numbers
import os
import stat

import numpy as np

__all__ = [
    "BudgetExhaustedWarning",
    "OracleError",
    "check_oracle_answers",
    "check_pairs",
]

# Code used internally for an answer the oracle gave in an invalid form.
_INVALID = -2


# Sample indices stay below 2**31: pair keys pack two of them into one int64.
MAX_INDEX = 2**31


class OracleError(RuntimeError):
    """An oracle failed: it raised, or returned answers of the wrong form.

    The message names the oracle and what it did wrong. Answers received
    before the failure (and the valid answers of the failing batch) are
    kept in the label memory; ``memory`` is that
    :class:`~ucal.oracles.LabelMemory` when the error came out of a
    refiner's ``fit`` or :meth:`LabelMemory.ask <ucal.oracles.LabelMemory.ask>`, else ``None``.

    Parameters
    ----------
    message : str
        What the oracle did wrong.
    memory : LabelMemory, default=None
        The memory holding the answers received so far.
    unsaved_pairs, unsaved_answers : ndarray, default=None
        Answers the oracle gave that could not be saved (the answers file
        could not be written): pairs ``(m, 2)`` and codes ``(m,)`` (1
        same, 0 different, -1 not sure), to record again once the file is
        writable. Empty when every answer was saved.

    Examples
    --------
    >>> import numpy as np
    >>> from ucal.oracles import LabelMemory, OracleError
    >>> def broken(pairs):
    ...     return np.full(len(pairs), 0.5)
    >>> try:
    ...     LabelMemory().ask([[0, 1]], broken)
    ... except OracleError as exc:
    ...     print(type(exc).__name__, len(exc.memory))
    OracleError 0
    """

    def __init__(self, message, *, memory=None, unsaved_pairs=None, unsaved_answers=None):
        super().__init__(message)
        self.memory = memory
        self.unsaved_pairs = (
            np.empty((0, 2), dtype=np.int64) if unsaved_pairs is None
            else np.asarray(unsaved_pairs, dtype=np.int64).reshape(-1, 2)
        )
        self.unsaved_answers = (
            np.empty(0, dtype=np.int8) if unsaved_answers is None
            else np.asarray(unsaved_answers, dtype=np.int8)
        )


class BudgetExhaustedWarning(UserWarning):
    """The query budget (``max_queries``) ran out during a refinement.

    Pairs that did not fit in the budget were not sent to the oracle; the
    refinement went on with what the label memory already knew.

    Examples
    --------
    >>> import warnings
    >>> from ucal.oracles import BudgetExhaustedWarning
    >>> issubclass(BudgetExhaustedWarning, UserWarning)
    True
    """


def _describe(oracle, limit=80):
    text = repr(oracle)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_person(name, what="annotator"):
    """``name`` of a person (an annotator, a reviewer): a non-empty str or None, else ValueError.

    The name must be writable as UTF-8 (no lone surrogate), so that every
    file it is stored in or exported to can hold it.
    """
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"{what} must be a non-empty string or None, got {name!r}.")
    if name is not None:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"{what} {name!r} cannot be written as UTF-8 (it holds a lone surrogate)."
            ) from None
    return name


def check_regular_file(path, what="the file"):
    """Raise ValueError unless ``path`` (which exists) is a regular file.

    A named pipe or a device would block or never end when read.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise ValueError(
            f"{path!r} is not a regular file ({what} must be one; a named pipe or a "
            "device would block or never end)."
        )


def check_pairs(pairs, n_samples=None):
    """Validate an array of sample pairs.

    Parameters
    ----------
    pairs : array-like of shape (m, 2)
        Integer sample indices, one pair per row.
    n_samples : int, default=None
        When given, every index must be smaller than it.

    Returns
    -------
    pairs : ndarray of shape (m, 2), dtype int64
        The pairs, as given (not reordered).

    Raises
    ------
    TypeError
        If the indices are not integers.
    ValueError
        If the shape is not ``(m, 2)`` or an index is out of range.

    Examples
    --------
    >>> from ucal.oracles import check_pairs
    >>> check_pairs([[0, 3], [2, 1]], n_samples=4)
    array([[0, 3],
           [2, 1]])
    """
    array = np.asarray(pairs)
    if array.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            f"pairs must be an integer array of sample indices, got dtype {array.dtype}."
        )
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"pairs must have shape (m, 2), got shape {array.shape}.")
    if array.min() < 0:
        raise ValueError(f"pairs hold a negative sample index ({array.min()}).")
    if array.max() >= MAX_INDEX:
        raise ValueError(
            f"pairs hold the sample index {array.max()}; indices must be below 2**31."
        )
    if n_samples is not None and array.max() >= n_samples:
        raise ValueError(
            f"pairs hold sample index {array.max()}, but there are only "
            f"{n_samples} samples."
        )
    return array.astype(np.int64, copy=False)


def _coerce_answers(answers, n_pairs):
    """Answers -> (codes, problem).

    ``codes`` is an int8 array of 1 / 0 / -1 with ``_INVALID`` where an
    element is not a valid answer, or None when the whole reply is unusable
    (wrong shape or type). ``problem`` describes the fault, or is None.
    """
    if answers is None:
        return None, "None instead of an array of answers"
    try:
        array = np.asarray(answers)
    except Exception as exc:  # ragged lists and the like
        return None, f"answers that are not array-like ({exc})"
    if array.ndim != 1 or array.shape[0] != n_pairs:
        return None, (
            f"answers of shape {array.shape} for {n_pairs} pairs; "
            f"expected shape ({n_pairs},)"
        )
    if array.dtype == bool:
        return array.astype(np.int8), None
    if np.issubdtype(array.dtype, np.integer):
        codes = np.where(np.isin(array, (-1, 0, 1)), array, _INVALID).astype(np.int8)
    elif array.dtype == object:
        codes = np.array([_coerce_one(value) for value in array], dtype=np.int8)
    else:
        # floats, strings, complex: no element is a valid answer
        return np.full(n_pairs, _INVALID, dtype=np.int8), (
            f"answers of dtype {array.dtype}"
        )
    bad = np.flatnonzero(codes == _INVALID)
    if bad.size:
        shown = ", ".join(repr(array[i]) for i in bad[:5])
        return codes, (
            f"{bad.size} invalid answer(s) at position(s) {bad[:5].tolist()}"
            f"{'...' if bad.size > 5 else ''} (values {shown})"
        )
    return codes, None


def _coerce_one(value):
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, numbers.Integral) and value in (-1, 0, 1):
        return int(value)
    return _INVALID


def check_oracle_answers(answers, n_pairs, *, oracle=None):
    """Validate an oracle's answers and convert them to int8 codes.

    Parameters
    ----------
    answers : array-like of shape (n_pairs,)
        Bool (``True`` = same identity) or ints in ``{-1, 0, 1}``
        (``-1`` = not sure).
    n_pairs : int
        Number of pairs that were asked.
    oracle : object, default=None
        The oracle that answered, named in the error message.

    Returns
    -------
    codes : ndarray of shape (n_pairs,), dtype int8
        1 same, 0 different, -1 not sure.

    Raises
    ------
    OracleError
        If the answers have the wrong shape or hold anything else than
        bools or ints in ``{-1, 0, 1}`` (floats, strings, None...).

    Examples
    --------
    >>> from ucal.oracles import check_oracle_answers
    >>> check_oracle_answers([True, False, -1], 3)
    array([ 1,  0, -1], dtype=int8)
    """
    codes, problem = _coerce_answers(answers, n_pairs)
    if problem is not None:
        raise OracleError(_fault_message(oracle, problem))
    return codes


def _fault_message(oracle, problem):
    who = "The oracle" if oracle is None else f"The oracle {_describe(oracle)}"
    return (
        f"{who} returned {problem}. An oracle must return, for m pairs, an "
        "array of shape (m,) of bool (True = same identity) or of ints in "
        "{-1, 0, 1} (-1 = not sure)."
    )


def query_oracle(oracle, pairs, context=None):
    """Send one batch to ``oracle``; return ``(codes, problem, exc)``.

    Never raises for the oracle's faults: the caller records what is valid
    first, then raises :class:`OracleError` (so that no answer is lost).
    ``codes`` is None when nothing usable came back.
    """
    pairs = np.ascontiguousarray(pairs, dtype=np.int64)
    try:
        if context is not None and callable(getattr(oracle, "set_context", None)):
            oracle.set_context(np.asarray(context, dtype=np.int64))
        answers = oracle(pairs.copy())  # a copy: the oracle may not alter ours
    except Exception as exc:
        problem = (
            f"The oracle {_describe(oracle)} raised {type(exc).__name__}: {exc} "
            f"while answering a batch of {len(pairs)} pairs"
        )
        return None, problem, exc
    codes, problem = _coerce_answers(answers, len(pairs))
    if problem is not None:
        problem = _fault_message(oracle, problem)
    return codes, problem, None
