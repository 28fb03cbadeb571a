"""Simulated annotators: answers from ground-truth identities, and noise."""

import numbers

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils.validation import column_or_1d

from ._protocol import check_oracle_answers, check_pairs

__all__ = ["LabelOracle", "NoisyOracle"]


class LabelOracle:
    """The simulated annotator of the paper's experiments.

    Answers a pair of samples with ``True`` when their ground-truth
    identities are equal.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Ground-truth identity of every sample (any hashable labels that
        NumPy can compare; no value is special).

    Attributes
    ----------
    n_queries : int
        Number of pairs answered so far.

    See Also
    --------
    NoisyOracle : Flips a fraction of another oracle's answers.

    Examples
    --------
    >>> from ucal.oracles import LabelOracle
    >>> oracle = LabelOracle([7, 7, 3])
    >>> oracle([[0, 1], [1, 2]])
    array([ True, False])
    >>> oracle.n_queries
    2
    """

    def __init__(self, y):
        self.y = column_or_1d(np.asarray(y), warn=True)
        self.n_queries = 0

    def __call__(self, pairs):
        """Answer pairs from the ground-truth identities.

        Parameters
        ----------
        pairs : array-like of shape (m, 2)
            Sample indices.

        Returns
        -------
        answers : ndarray of shape (m,), dtype bool
            True where the two samples share an identity.
        """
        pairs = check_pairs(pairs, n_samples=len(self.y))
        self.n_queries += len(pairs)
        return self.y[pairs[:, 0]] == self.y[pairs[:, 1]]

    def __repr__(self):
        return f"LabelOracle(n_samples={len(self.y)})"


class NoisyOracle:
    """Wrap an oracle and flip each of its answers with a given probability.

    For robustness studies: a human annotator makes mistakes. "Not sure"
    answers (``-1``) are passed through unchanged. Each call draws fresh
    noise, so asking the same pair twice may give two different answers
    (which :class:`LabelMemory` counts as a contradiction).

    Parameters
    ----------
    oracle : callable
        The oracle whose answers are flipped.
    error_rate : float
        Probability, in ``[0, 1]``, that an answer is flipped.
    random_state : int, RandomState instance or None, default=None
        Seeds the flips.

    Attributes
    ----------
    n_flipped : int
        Number of answers flipped so far.

    Examples
    --------
    >>> from ucal.oracles import LabelOracle, NoisyOracle
    >>> oracle = NoisyOracle(LabelOracle([0, 0, 1]), error_rate=1.0, random_state=0)
    >>> oracle([[0, 1], [0, 2]])
    array([0, 1], dtype=int8)
    """

    def __init__(self, oracle, error_rate, random_state=None):
        if not callable(oracle):
            raise TypeError(f"oracle must be callable, got {type(oracle).__name__}.")
        if (
            isinstance(error_rate, bool)
            or not isinstance(error_rate, numbers.Real)
            or not 0.0 <= error_rate <= 1.0
        ):
            raise ValueError(f"error_rate must be a float in [0, 1], got {error_rate!r}.")
        self.oracle = oracle
        self.error_rate = float(error_rate)
        self.random_state = random_state
        # Not an estimator: the generator advances from call to call.
        self._rng = check_random_state(random_state)
        self.n_flipped = 0

    def set_context(self, labels):
        """Forward the context hook to the wrapped oracle, if it has one.

        Parameters
        ----------
        labels : ndarray of shape (n_samples,)
            See the oracle protocol in :mod:`ucal.oracles`.

        Examples
        --------
        >>> from ucal.oracles import LabelOracle, NoisyOracle
        >>> NoisyOracle(LabelOracle([0, 1]), 0.1).set_context([0, -1])
        """
        hook = getattr(self.oracle, "set_context", None)
        if callable(hook):
            hook(labels)

    def __call__(self, pairs):
        """Ask the wrapped oracle, then flip some of its answers.

        Parameters
        ----------
        pairs : array-like of shape (m, 2)
            Sample indices.

        Returns
        -------
        answers : ndarray of shape (m,), dtype int8
            1 same, 0 different, -1 not sure (never flipped).
        """
        pairs = check_pairs(pairs)
        codes = check_oracle_answers(self.oracle(pairs), len(pairs), oracle=self.oracle)
        flip = (self._rng.random_sample(len(codes)) < self.error_rate) & (codes >= 0)
        self.n_flipped += int(flip.sum())
        codes[flip] = 1 - codes[flip]
        return codes

    def __repr__(self):
        return f"NoisyOracle({self.oracle!r}, error_rate={self.error_rate})"
