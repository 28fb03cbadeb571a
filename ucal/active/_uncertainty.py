"""Questions where the answer is least certain: a calibrated P(same) and diverse rounds.

MPPS's gap rule (Eq. 5, 6) asks the most similar centroid pairs first, so its
answers are mostly "same" the features already implied. The uncertainty rule
asks where the current model cannot tell:

1. ``P(same | s)`` is fitted, by a one-dimensional logistic regression
   (standardised ``s``, a weak penalty), on the cosine similarity ``s`` of
   every pair the memory holds an answer for
   (both answers present, at least ``min_answers`` of them; otherwise the
   rule falls back on the similarity order);
2. a candidate cluster pair is scored by the similarity of the pair of
   images that would be shown (the two medoids), and ranked by the
   binary entropy of its ``P(same)``: the pairs nearest even odds first;
3. the ranking is laid out in rounds in which each cluster appears at most
   once (round ``r`` holds each cluster's ``r``-th most uncertain pair),
   so that a batch of questions spreads over the clusters instead of
   asking about one ambiguous cluster ten times.
"""

import numpy as np

__all__ = ["diverse_rounds", "same_probability", "uncertainty_order"]

# Fewer answers (or none of one kind) than this: no calibration, similarity order.
MIN_ANSWERS = 10
# Inverse penalty of the calibration's logistic fit, on standardised similarities.
_C = 100.0


def same_probability(similarity, memory, Xn, min_answers=MIN_ANSWERS):
    """``P(same)`` of each similarity, from the answers the memory holds.

    Parameters
    ----------
    similarity : ndarray of shape (m,)
        Cosine similarities of the pairs to score.
    memory : LabelMemory
        Its definite answers calibrate the probability.
    Xn : ndarray of shape (n_samples, n_features)
        L2-normalised samples (the answered pairs' similarities).
    min_answers : int
        Fewest answers, with both kinds present, that calibrate.

    Returns
    -------
    proba : ndarray of shape (m,) or None
        None when the answers cannot calibrate (too few, or one kind only).
    """
    from sklearn.linear_model import LogisticRegression

    pairs, same = memory.to_arrays()
    inside = (pairs < len(Xn)).all(axis=1) if len(pairs) else np.zeros(0, dtype=bool)
    pairs, same = pairs[inside], same[inside]
    if len(same) < min_answers or same.all() or not same.any():
        return None
    s = np.einsum("ij,ij->i", Xn[pairs[:, 0]], Xn[pairs[:, 1]])
    # similarities span a narrow range: standardised, and barely penalised, so that the
    # fitted boundary is the answers' (an L2 penalty on the raw scale shrinks the slope
    # and pulls the boundary towards the majority answer)
    mean, scale = s.mean(), max(float(s.std()), 1e-6)
    model = LogisticRegression(C=_C).fit(((s - mean) / scale)[:, None], same)
    z = (np.asarray(similarity, dtype=float) - mean) / scale
    return model.predict_proba(z[:, None])[:, 1]


def diverse_rounds(pairs, n_items):
    """The order of ``pairs`` (already ranked) laid out in rounds of distinct items.

    Round ``r`` takes, in rank order, the pairs whose two items each had
    ``r`` pairs placed before them; within a round no item appears twice
    except where ranks collide (a pair is placed in the later of its two
    items' rounds).

    Returns
    -------
    order : ndarray of int
        Indices into ``pairs``.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    used = np.zeros(n_items, dtype=np.int64)
    rounds = np.empty(len(pairs), dtype=np.int64)
    for k, (a, b) in enumerate(pairs.tolist()):
        r = max(used[a], used[b])
        rounds[k] = r
        used[a] = used[b] = r + 1
    return np.argsort(rounds, kind="stable")


def uncertainty_order(pairs, similarity, memory, Xn, n_items, min_answers=MIN_ANSWERS):
    """Rank candidate pairs by how uncertain their answer is, in diverse rounds.

    Parameters
    ----------
    pairs : ndarray of shape (m, 2)
        Candidate item pairs (clusters).
    similarity : ndarray of shape (m,)
        Cosine similarity of the image pair each candidate would show.
    memory : LabelMemory
        The answers so far (calibration).
    Xn : ndarray of shape (n_samples, n_features)
        L2-normalised samples.
    n_items : int
        Number of items (clusters) the pairs index.
    min_answers : int
        See :func:`same_probability`.

    Returns
    -------
    order : ndarray of int
        Indices into ``pairs``, the most uncertain first.
    calibrated : bool
        False when the answers could not calibrate ``P(same)`` and the
        similarity order was used instead.
    """
    similarity = np.asarray(similarity, dtype=float)
    proba = same_probability(similarity, memory, Xn, min_answers)
    if proba is None:
        ranked = np.argsort(-similarity, kind="stable")
        calibrated = False
    else:
        p = np.clip(proba, 1e-12, 1 - 1e-12)
        entropy = -(p * np.log(p) + (1 - p) * np.log1p(-p))
        # most uncertain first; ties by similarity (a merge is worth more than a split)
        ranked = np.lexsort((-similarity, -np.round(entropy, 12)))
        calibrated = True
    order = diverse_rounds(np.asarray(pairs)[ranked], n_items)
    return ranked[order], calibrated
