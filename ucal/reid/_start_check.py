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
network, and only where the two disagree. For held-out images (never trained
on), taken in a seeded random order, each network names its ``k`` nearest
training images; an image both networks name says nothing about which is
better, so only the images one network names and the other does not are
asked (as many of each, since both name ``k``), until the check's budget is
spent. An anchor scores the "same" answers among the held network's own
candidates minus those among the start network's (``hits``). The held
network stays only when the mean over anchors beats zero by more than
``SIGNIFICANCE`` standard errors (``SIGNIFICANCE_FEW`` with fewer than
``FEW_ANCHORS`` anchors: the small shares of small budgets); otherwise,
including when fewer than ``MIN_ANCHORS`` anchors have answers, the start
network is put back: the answers could not show that training beat it.

Asking only where the networks disagree is interleaving, the comparison of
two rankers that information retrieval prefers to an absolute score for its
sensitivity per judgement. On 84 trained networks of the start benchmark
(every distinct epoch of 9 runs), replayed with simulated answers
(``benchmarks/bench_check.py``), the earlier design (both networks' 3
nearest asked, each network's small mAP compared) kept networks more than 3
test mAP above the start in 53 % of replays with about 90 questions (61 %
with 143); this one keeps them in 90 % with 143 (``docs/answers.rst``).
"""

import numpy as np

__all__ = [
    "FEW_ANCHORS", "K_NEAREST", "MIN_ANCHORS", "MIN_CHECK", "MIN_QUESTIONS", "SIGNIFICANCE",
    "SIGNIFICANCE_FEW", "draw_questions", "duel", "significance",
]

# The held network must beat the start network by this many standard errors ...
SIGNIFICANCE = 1.0
# ... and by this many where fewer than FEW_ANCHORS anchors have answers. A few
# anchors' standard error is itself uncertain, and the anchors lean towards the
# trained network (it retrieves the people it trained beside better than new
# people): replayed with 31 questions (7 or 8 anchors), one standard error kept
# networks more than 1 test mAP below the start in 16 % of replays, two in 3 %
# (benchmarks/results/check_rules.md).
SIGNIFICANCE_FEW = 2.0
FEW_ANCHORS = 20
# Each network names its k nearest training images per anchor.
K_NEAREST = 3
# Fewer anchors with answers than this show nothing: the start network stays.
MIN_ANCHORS = 5
# The check asks twice as many questions as the validation set holds pairs, and at least this.
MIN_QUESTIONS = 60
# A share of the budget below this (5 anchors of up to 2 K questions) cannot show anything.
MIN_CHECK = MIN_ANCHORS * 2 * K_NEAREST


def _nearest(features, anchors, candidates, k):
    """Each anchor's ``k`` nearest candidates, nearest first (ties: the lower index)."""
    sims = features[anchors] @ features[candidates].T
    sims[anchors[:, None] == candidates[None, :]] = -np.inf  # never the anchor itself
    k = min(k, len(candidates) - 1)
    return candidates[np.argsort(-sims, axis=1, kind="stable")[:, :k]]


def draw_questions(start, held, anchors, candidates, budget, known, random_state, k=K_NEAREST):
    """The candidates one network names among an anchor's ``k`` nearest and the other does not.

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
        Pairs (``i < j``) that cost nothing: answered already (a resumed
        check, or another memory's answers, which are read, never asked).
    random_state : int
        Seeds the order of the anchors, so that a resumed fit draws the same.
    k : int
        Nearest candidates per network and anchor.

    Returns
    -------
    pairs : ndarray of shape (m, 2), dtype int64
        ``(anchor, candidate)`` pairs, grouped by anchor, anchors whole.
        Anchors whose two sets of nearest candidates are the same are left
        out: they cost nothing and show nothing.
    held_side : ndarray of shape (m,), dtype bool
        True where the held network named the candidate, False where the
        start network did.
    """
    rng = np.random.RandomState(random_state)
    anchors = rng.permutation(np.asarray(anchors, dtype=np.int64))
    candidates = np.asarray(candidates, dtype=np.int64)
    pairs, sides, cost = [], [], 0
    if len(anchors) and len(candidates) >= 2:
        near_start = _nearest(start, anchors, candidates, k).tolist()
        near_held = _nearest(held, anchors, candidates, k).tolist()
        for a, mine, theirs in zip(anchors.tolist(), near_start, near_held):
            start_only = [c for c in mine if c not in theirs]
            held_only = [c for c in theirs if c not in mine]
            asked = [(a, c) for c in start_only + held_only]
            new = sum((min(p), max(p)) not in known for p in asked)
            if cost + new > budget:
                break
            cost += new
            pairs.extend(asked)
            sides.extend([False] * len(start_only) + [True] * len(held_only))
    return (np.array(pairs, dtype=np.int64).reshape(-1, 2), np.array(sides, dtype=bool))


def significance(n_anchors):
    """Standard errors the held network must win by, with ``n_anchors`` anchors answered."""
    return SIGNIFICANCE if n_anchors >= FEW_ANCHORS else SIGNIFICANCE_FEW


def duel(anchors, held_side, same):
    """Does the held network name more of each anchor's people than the start network?

    Parameters
    ----------
    anchors : ndarray of shape (m,)
        The anchor of each answered pair.
    held_side : ndarray of shape (m,), dtype bool
        Whether the held network (True) or the start network (False) named
        the pair's candidate.
    same : ndarray of shape (m,), dtype bool
        The answers.

    Returns
    -------
    result : dict
        ``hits_start`` and ``hits_held`` ("same" answers among each
        network's own candidates), ``mean_diff`` (their difference per
        anchor, averaged over the ``n_anchors`` anchors with answers),
        ``diff_se`` (its standard error), ``n_pairs`` and ``keep``:
        ``"held"`` when ``mean_diff`` exceeds zero and ``significance(n_anchors)
        * diff_se`` (``SIGNIFICANCE`` standard errors, ``SIGNIFICANCE_FEW``
        with fewer than ``FEW_ANCHORS`` anchors), else ``"start"`` (also
        with fewer than ``MIN_ANCHORS`` anchors: too few to show anything).
    """
    anchors = np.asarray(anchors)
    held_side = np.asarray(held_side, dtype=bool)
    same = np.asarray(same, dtype=bool)
    if not anchors.shape == held_side.shape == same.shape:
        raise ValueError(
            f"anchors, held_side and same must have one entry per pair; got shapes "
            f"{anchors.shape}, {held_side.shape} and {same.shape}."
        )
    _, which = np.unique(anchors, return_inverse=True)
    n_anchors = int(which.max()) + 1 if len(which) else 0
    diff = (np.bincount(which, weights=same & held_side, minlength=n_anchors)
            - np.bincount(which, weights=same & ~held_side, minlength=n_anchors))
    out = {"n_pairs": int(len(same)), "n_anchors": n_anchors,
           "hits_start": int(np.sum(same & ~held_side)), "hits_held": int(np.sum(same & held_side)),
           "mean_diff": float("nan"), "diff_se": float("nan"), "keep": "start"}
    if n_anchors < MIN_ANCHORS:
        return out
    out["mean_diff"] = float(diff.mean())
    out["diff_se"] = float(diff.std(ddof=1) / np.sqrt(n_anchors))
    if out["mean_diff"] > significance(n_anchors) * out["diff_se"] and out["mean_diff"] > 0:
        out["keep"] = "held"
    return out
