"""Clustering quality against identities, and the labeling cost of Eq. 7."""

import numpy as np
from scipy import sparse
from sklearn.utils.validation import check_consistent_length, column_or_1d

__all__ = ["labeling_cost", "pairwise_precision_recall_fscore"]


def labeling_cost(n_queries, n_samples):
    """Labeling cost of Eq. 7: the fraction of all sample pairs sent to a human.

    Parameters
    ----------
    n_queries : int
        Number of pairs the oracle answered (``M`` in the paper).
    n_samples : int
        Number of training samples (``N``).

    Returns
    -------
    cost : float
        ``n_queries / (n_samples * (n_samples - 1) / 2)``, a fraction
        (multiply by 100 for the paper's percentages).

    Examples
    --------
    >>> from ucal.metrics import labeling_cost
    >>> round(100 * labeling_cost(773, 2080), 4)
    0.0358
    """
    n_queries = int(n_queries)
    n_samples = int(n_samples)
    if n_queries < 0:
        raise ValueError(f"n_queries must be >= 0, got {n_queries}.")
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2 to form a pair, got {n_samples}.")
    return n_queries / (n_samples * (n_samples - 1) / 2.0)


def _same_pairs(labels):
    """Number of unordered pairs sharing a label, ignoring label -1."""
    labels = labels[labels >= 0]
    if labels.size == 0:
        return 0
    counts = np.bincount(np.unique(labels, return_inverse=True)[1])
    return int((counts * (counts - 1) // 2).sum())


def pairwise_precision_recall_fscore(labels_true, labels_pred):
    """Pairwise precision, recall and F-score of a clustering.

    A pair of samples is predicted positive when both carry the same
    cluster label (``-1``, un-clustered, pairs with nothing) and is truly
    positive when both carry the same identity. This is the usual
    measure of pseudo-label quality in clustering-based re-id.

    Parameters
    ----------
    labels_true : array-like of shape (n_samples,)
        Ground-truth identities.
    labels_pred : array-like of shape (n_samples,)
        Cluster labels; ``-1`` marks un-clustered samples.

    Returns
    -------
    precision, recall, fscore : float
        Each 0.0 when undefined (no predicted or no true pair).

    Examples
    --------
    >>> from ucal.metrics import pairwise_precision_recall_fscore
    >>> pairwise_precision_recall_fscore([0, 0, 1, 1], [0, 0, 0, 1])
    (0.3333333333333333, 0.5, 0.4)
    """
    labels_true = column_or_1d(labels_true)
    labels_pred = column_or_1d(labels_pred)
    check_consistent_length(labels_true, labels_pred)
    _, true_codes = np.unique(labels_true, return_inverse=True)
    pred = np.asarray(labels_pred)
    clustered = pred != -1
    if not clustered.any():  # nothing clustered: no predicted pair
        return 0.0, 0.0, 0.0
    _, pred_codes = np.unique(pred[clustered], return_inverse=True)
    # Contingency table of clustered samples: n_ij pairs are true positives.
    table = sparse.coo_matrix(
        (np.ones(pred_codes.size), (pred_codes, true_codes[clustered])),
    ).tocsr()
    table.sum_duplicates()
    tp = float((table.data * (table.data - 1) / 2).sum())
    n_pred_pairs = _same_pairs(np.where(clustered, pred, -1))
    n_true_pairs = _same_pairs(true_codes)
    precision = tp / n_pred_pairs if n_pred_pairs else 0.0
    recall = tp / n_true_pairs if n_true_pairs else 0.0
    fscore = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, fscore
