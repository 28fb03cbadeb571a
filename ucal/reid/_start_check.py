"""Never worse than the start: the held network meets the start network on fair questions.

The held-out validation pairs are drawn among the *start* network's near
neighbours, before training, and scored by one AUC over all pairs. Both
choices handicap the start network: its "different" pairs are exactly the
look-alikes it confuses, and similarities of different anchors are not
comparable in dense neighbourhoods. Measured on the project's start benchmarks,
the start network's AUC on its own pairs was 0.27 to 0.70, 230 of 288 trained
epochs scored higher, and ``val_auc`` followed mAP over a run's epochs with a
mean rank correlation of 0.17 (``docs/answers.rst``): the best-epoch rule
could almost never keep the start network.

The check at the end of a fit asks retrieval questions that favour neither
network. For held-out images (never trained on), taken in a seeded random
order, the candidates are the union of both networks' ``k`` nearest training
images; each (anchor, candidate) pair is asked, until the check's budget is
spent. Each network is then scored by the average precision of its own
ranking of each anchor's answered candidates (a small mAP over the anchors
that have both answers), and the held network stays only when its mean
beats the start network's by more than ``SIGNIFICANCE`` standard errors of
the paired difference (a bootstrap over anchors). Otherwise, including when
no anchor has both answers, the start network is put back: the answers
could not show that training beat it.
"""

import numpy as np

__all__ = [
    "K_NEAREST", "MIN_ANCHORS", "MIN_CHECK", "MIN_QUESTIONS", "SIGNIFICANCE",
    "anchor_average_precision", "draw_questions", "duel",
]

# The held network must beat the start network by this many standard errors.
SIGNIFICANCE = 1.0
# Each network contributes its k nearest training images to an anchor's candidates.
K_NEAREST = 3
# Fewer anchors with both answers than this show nothing: the start network stays.
MIN_ANCHORS = 5
# The check asks as many questions as the validation set holds pairs, and at least this.
MIN_QUESTIONS = 60
# A share of the budget below this (5 anchors of up to 2 K candidates) cannot show anything.
MIN_CHECK = MIN_ANCHORS * 2 * K_NEAREST
_N_BOOTSTRAP = 2000


def _nearest(features, anchors, candidates, k):
    sims = features[anchors] @ features[candidates].T
    sims[anchors[:, None] == candidates[None, :]] = -np.inf  # never the anchor itself
    k = min(k, len(candidates) - 1)
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return candidates[top]


def draw_questions(start, held, anchors, candidates, budget, known, random_state, k=K_NEAREST):
    """Each anchor with the union of both networks' ``k`` nearest candidates.

    Parameters
    ----------
    start, held : ndarray of shape (n_samples, dim)
        L2-normalised features of every image under each network.
    anchors : ndarray of int
        Held-out images, taken in a random order.
    candidates : ndarray of int
        The images an anchor may be paired with (the training images).
    budget : int
        Most pairs not in ``known`` to return.
    known : set of (int, int)
        Pairs (``i < j``) that cost nothing (already answered here) or may
        not be asked (trained on, or validation answers): see ``skip``.
    random_state : int
        Seeds the order of the anchors, so that a resumed fit draws the same.
    k : int
        Nearest candidates per network and anchor.

    Returns
    -------
    pairs : ndarray of shape (m, 2), dtype int64
        ``(anchor, candidate)`` pairs, grouped by anchor, anchors whole.
    """
    rng = np.random.RandomState(random_state)
    anchors = rng.permutation(np.asarray(anchors, dtype=np.int64))
    candidates = np.asarray(candidates, dtype=np.int64)
    if not len(anchors) or len(candidates) < 2:
        return np.empty((0, 2), dtype=np.int64)
    near = np.concatenate([_nearest(start, anchors, candidates, k),
                           _nearest(held, anchors, candidates, k)], axis=1)
    pairs, cost = [], 0
    for a, row in zip(anchors.tolist(), near.tolist()):
        mine = [(a, c) for c in dict.fromkeys(row) if c != a]
        new = sum((min(p), max(p)) not in known for p in mine)
        if cost + new > budget:
            break
        cost += new
        pairs.extend(mine)
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def anchor_average_precision(sims, same):
    """Average precision of ranking one anchor's candidates by ``sims`` (ties: pessimistic)."""
    order = np.lexsort((same, -sims))  # among equal similarities, "different" first
    hits = same[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def duel(anchors, start_sims, held_sims, same, random_state=0):
    """The held network's small mAP against the start network's on the same questions.

    Parameters
    ----------
    anchors : ndarray of shape (m,)
        The anchor of each answered pair.
    start_sims, held_sims : ndarray of shape (m,)
        Each network's cosine similarity of every pair.
    same : ndarray of shape (m,), dtype bool
        The answers.
    random_state : int
        Seeds the bootstrap.

    Returns
    -------
    result : dict
        ``map_start`` and ``map_held`` (means over the ``n_anchors`` anchors
        with both answers), ``diff_se`` (bootstrap standard error of their
        difference), ``n_pairs`` and ``keep``: ``"held"`` when the
        difference exceeds ``SIGNIFICANCE * diff_se``, else ``"start"``
        (also with fewer than ``MIN_ANCHORS`` anchors that have both
        answers: too few to show anything).
    """
    anchors = np.asarray(anchors)
    same = np.asarray(same, dtype=bool)
    start_sims, held_sims = np.asarray(start_sims, float), np.asarray(held_sims, float)
    ap_start, ap_held = [], []
    for a in np.unique(anchors):
        mine = anchors == a
        if same[mine].all() or not same[mine].any():
            continue  # one kind only: no ranking to score
        ap_start.append(anchor_average_precision(start_sims[mine], same[mine]))
        ap_held.append(anchor_average_precision(held_sims[mine], same[mine]))
    out = {"n_pairs": int(len(same)), "n_anchors": len(ap_start), "map_start": float("nan"),
           "map_held": float("nan"), "diff_se": float("nan"), "keep": "start"}
    if len(ap_start) < MIN_ANCHORS:
        return out
    ap_start, ap_held = np.array(ap_start), np.array(ap_held)
    out["map_start"], out["map_held"] = float(ap_start.mean()), float(ap_held.mean())
    diff = ap_held - ap_start
    rng = np.random.RandomState(random_state)
    boot = diff[rng.randint(0, len(diff), size=(_N_BOOTSTRAP, len(diff)))].mean(axis=1)
    out["diff_se"] = float(boot.std(ddof=1))
    if diff.mean() > SIGNIFICANCE * out["diff_se"] and diff.mean() > 0:
        out["keep"] = "held"
    return out
