"""How well an embedding separates answered pairs: verification accuracy and ROC AUC."""

import numpy as np
from sklearn.metrics import roc_auc_score

__all__ = ["pair_verification_scores"]


def pair_verification_scores(X, pairs, same):
    """Verification scores of an embedding on answered pairs.

    Each pair is scored by the cosine similarity of its two rows of ``X``;
    the scores are compared with the answers ("same person" or not).

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Embeddings (rows are L2-normalised here; an all-zero row has
        similarity 0 with everything).
    pairs : array-like of shape (n_pairs, 2)
        Row indices of the answered pairs.
    same : array-like of shape (n_pairs,)
        The answers, True for "same person".

    Returns
    -------
    scores : dict
        ``auc``: ROC AUC of the similarities against the answers (NaN
        when the answers are all "same" or all "different"); ``auc_se``:
        its standard error by Hanley and McNeil (1982), from the AUC and
        the numbers of "same" and "different" pairs (NaN with ``auc``);
        ``accuracy``: the share of pairs classified right by the best
        single similarity threshold (optimistic by construction: it is
        chosen on the same pairs, so compare it across epochs, not with
        other data sets); ``threshold``: that threshold; ``n_pairs`` and
        ``n_same``.

    Examples
    --------
    >>> import numpy as np
    >>> from ucal.metrics import pair_verification_scores
    >>> X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> s = pair_verification_scores(X, [[0, 1], [0, 2], [1, 2]], [True, False, False])
    >>> float(s["auc"]), float(s["accuracy"])
    (1.0, 1.0)
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2D (n_samples, n_features), got shape {X.shape}.")
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    same = np.asarray(same, dtype=bool).ravel()
    if same.shape[0] != pairs.shape[0]:
        raise ValueError(
            f"pairs has {pairs.shape[0]} rows but same has {same.shape[0]} answers."
        )
    if pairs.size and (pairs.min() < 0 or pairs.max() >= X.shape[0]):
        raise ValueError(f"pairs index rows outside X's {X.shape[0]} samples.")
    from ..cluster._knn import l2_normalize

    Xn = l2_normalize(X, dtype=np.float64, zero_rows="keep")  # any scale, zero rows stay 0
    sims = np.einsum("ij,ij->i", Xn[pairs[:, 0]], Xn[pairs[:, 1]])
    n_same = int(same.sum())
    scores = {"n_pairs": int(len(same)), "n_same": n_same}
    if 0 < n_same < len(same):
        scores["auc"] = float(roc_auc_score(same, sims))
        scores["auc_se"] = auc_standard_error(scores["auc"], n_same, len(same) - n_same)
    else:
        scores["auc"] = scores["auc_se"] = float("nan")
    scores["accuracy"], scores["threshold"] = _best_threshold(sims, same)
    return scores


def auc_standard_error(auc, n_positive, n_negative):
    """Standard error of a ROC AUC (Hanley and McNeil, 1982, their Eq. 2)."""
    q1 = auc / (2 - auc)
    q2 = 2 * auc**2 / (1 + auc)
    variance = (
        auc * (1 - auc) + (n_positive - 1) * (q1 - auc**2) + (n_negative - 1) * (q2 - auc**2)
    ) / (n_positive * n_negative)
    return float(np.sqrt(max(variance, 0.0)))


def _best_threshold(sims, same):
    """The similarity threshold with the most pairs classified right, and that share."""
    if len(sims) == 0:
        return float("nan"), float("nan")
    order = np.argsort(-sims, kind="stable")
    s, y = sims[order], same[order]
    # Predict "same" for the first t pairs (t = 0..n): right = same among them + different after.
    right = np.concatenate([[0], np.cumsum(y)]) + np.concatenate(
        [[(~y).sum()], (~y).sum() - np.cumsum(~y)]
    )
    # Only cut between distinct similarities.
    valid = np.ones(len(s) + 1, dtype=bool)
    valid[1:-1] = s[:-1] != s[1:]
    t = int(np.flatnonzero(valid)[np.argmax(right[valid])])
    if t == 0:
        threshold = float(s[0]) + 1e-6
    elif t == len(s):
        threshold = float(s[-1])
    else:
        threshold = float((s[t - 1] + s[t]) / 2)
    return float(right[t] / len(s)), threshold
