"""Agreement between annotators: Cohen's kappa per pair of people, and overall."""

import itertools
import math

import numpy as np

from ._memory import existing_memory

__all__ = ["annotator_agreement", "cohen_kappa"]


def cohen_kappa(a, b):
    """Cohen's kappa of two people's yes/no answers to the same questions.

    Parameters
    ----------
    a, b : sequence of bool
        The two people's answers, question by question (True/False, or
        1/0; anything else is refused).

    Returns
    -------
    kappa : float
        ``(p_o - p_e) / (1 - p_e)``: observed agreement ``p_o`` corrected for
        the agreement ``p_e`` their answer rates would give by chance. NaN
        with no question, or when chance agreement is certain (both always
        gave one and the same answer).

    Examples
    --------
    >>> from ucal.oracles import cohen_kappa
    >>> round(cohen_kappa([True, True, False, False], [True, False, False, False]), 3)
    0.5
    """
    a, b = _yes_no(a, "a"), _yes_no(b, "b")
    if len(a) != len(b):
        raise ValueError(f"a and b must have the same length, got {len(a)} and {len(b)}.")
    n = len(a)
    if n == 0:
        return math.nan
    observed = sum(x == y for x, y in zip(a, b)) / n
    yes_a, yes_b = sum(a) / n, sum(b) / n
    chance = yes_a * yes_b + (1 - yes_a) * (1 - yes_b)
    if chance >= 1.0:
        return math.nan
    return (observed - chance) / (1.0 - chance)


def _yes_no(answers, name):
    """Answers as bools: True/False (or 1/0); anything else is not a yes/no answer."""
    out = []
    for k, x in enumerate(answers):
        if isinstance(x, (bool, np.bool_)):
            out.append(bool(x))
        elif isinstance(x, (int, np.integer)) and x in (0, 1):
            out.append(bool(x))
        else:
            raise ValueError(
                f"{name}[{k}] is {x!r}: answers must be True/False (or 1/0), one per question."
            )
    return out


# The source of an answer asked only because two people disagreed on the pair.
TIEBREAK = "tiebreak"


def _latest_answers(memory, exclude_sources):
    """annotator -> {(i, j): latest definite answer} from the records of ``memory``."""
    latest = {}
    for record in memory:
        if record.annotator is None or record.unsure or record.source in exclude_sources:
            continue
        answers = latest.setdefault(record.annotator, {})
        if record.same is None:  # a retraction takes that person's answer back
            answers.pop((record.i, record.j), None)
        else:
            answers[(record.i, record.j)] = record.same
    return latest


def annotator_agreement(memory, *, exclude_sources=(TIEBREAK, "correction")):
    """How much the annotators of a label memory agree, pair of people by pair.

    Each person's latest definite answer to each pair counts ("not sure"
    answers do not). For every two annotators who answered common pairs:
    the number of common pairs, the share they agree on and Cohen's kappa.
    Per annotator: the same against everyone else pooled; a low kappa there
    singles out the least reliable person. With three people or more who
    share pairs, each person's own error rate is estimated too: two
    people disagree on a pair when exactly one of them errs, so their
    disagreement rate is about the sum of their error rates, and the rates
    that fit every pair of people best (non-negative least squares,
    weighted by shared pairs) separate one person's errors from the
    others'.

    Parameters
    ----------
    memory : LabelMemory or str or path-like
        The memory, or the path of its answers file (which must exist).
    exclude_sources : sequence of str, default=("tiebreak", "correction")
        Answers left out. A third person's answer asked only because two
        disagreed (``source="tiebreak"``, as the teams record it), and a
        reviewer's decision (``source="correction"``), would make everyone
        look less reliable than they are: they are given only where
        someone erred.

    Returns
    -------
    agreement : dict
        ``"pairs"``: a list of ``{"annotators": (a, b), "n_common": int,
        "agreement": float, "kappa": float}``; ``"annotators"``: ``{name:
        {"n_answers": int, "n_common": int, "agreement": float, "kappa":
        float, "error_rate": float}}`` (``error_rate`` NaN with fewer than
        three people sharing pairs); ``"overall"``: ``{"n_common": int, "agreement": float,
        "kappa": float}`` pooled over all pairs of people. Kappa is NaN where
        it is undefined (no common pair, or one answer only).

    Examples
    --------
    >>> from ucal.oracles import LabelMemory, annotator_agreement
    >>> memory = LabelMemory()
    >>> _ = memory.record([[0, 1], [1, 2], [2, 3], [3, 4]], [1, 0, 1, 0], annotator="ann")
    >>> _ = memory.record([[0, 1], [1, 2], [2, 3], [3, 4]], [1, 0, 0, 0], annotator="bob")
    >>> result = annotator_agreement(memory)
    >>> result["pairs"][0]["annotators"], result["pairs"][0]["agreement"]
    (('ann', 'bob'), 0.75)
    """
    memory = existing_memory(memory)
    latest = _latest_answers(memory, tuple(exclude_sources))
    names = sorted(latest)
    pairs = []
    pooled = {name: ([], []) for name in names}
    everyone = ([], [])
    for a, b in itertools.combinations(names, 2):
        common = sorted(set(latest[a]) & set(latest[b]))
        if not common:
            continue
        xa = [latest[a][key] for key in common]
        xb = [latest[b][key] for key in common]
        pairs.append({
            "annotators": (a, b),
            "n_common": len(common),
            "agreement": sum(x == y for x, y in zip(xa, xb)) / len(common),
            "kappa": cohen_kappa(xa, xb),
        })
        for name, mine, theirs in ((a, xa, xb), (b, xb, xa)):
            pooled[name][0].extend(mine)
            pooled[name][1].extend(theirs)
        everyone[0].extend(xa)
        everyone[1].extend(xb)

    def summary(mine, theirs):
        n = len(mine)
        return {
            "n_common": n,
            "agreement": sum(x == y for x, y in zip(mine, theirs)) / n if n else math.nan,
            "kappa": cohen_kappa(mine, theirs),
        }

    errors = _error_rates(names, pairs)
    return {
        "pairs": pairs,
        "annotators": {
            name: {"n_answers": len(latest[name]), **summary(*pooled[name]),
                   "error_rate": errors.get(name, math.nan)}
            for name in names
        },
        "overall": summary(*everyone),
    }


def _error_rates(names, pairs):
    """name -> estimated error rate, from the disagreement rates of every two people.

    Two people with error rates a and b disagree with probability
    a + b - 2ab; the rates are fitted to the observed disagreements by
    non-negative least squares on the linear part (a + b), each pair of
    people weighted by the square root of their shared pairs. Identifiable
    from three people on (a triangle of shared pairs); else empty.
    """
    from scipy.optimize import nnls

    people = sorted({name for p in pairs for name in p["annotators"]})
    if len(people) < 3 or len(pairs) < len(people):
        return {}
    index = {name: k for k, name in enumerate(people)}
    design = np.zeros((len(pairs), len(people)))
    target = np.zeros(len(pairs))
    for row, p in enumerate(pairs):
        weight = math.sqrt(p["n_common"])
        for name in p["annotators"]:
            design[row, index[name]] = weight
        target[row] = weight * (1.0 - p["agreement"])
    if np.linalg.matrix_rank(design) < len(people):
        return {}
    rates, _ = nnls(design, target)
    return {name: float(min(rates[index[name]], 0.5)) for name in people}
