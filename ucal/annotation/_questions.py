"""What every human oracle does with a batch before a person sees it.

A batch is deduplicated and answered from the label memory where it can
be; only the rest goes to a person, each pair shown with a few other
images of its two sides' groups. The web page, the team page and the
notebook share these steps.
"""

import logging

import numpy as np

from ..oracles import check_pairs
from ..oracles._memory import _MAX_UNSURE
from ..oracles._protocol import check_person
from ._controller import ANSWER_CODES, RequestError
from ._server import _file_name

__all__ = [
    "QuestionBatch",
    "answer_unknown",
    "check_context",
    "check_person_options",
    "oracle_state",
    "pair_sides",
    "read_seconds",
    "write_answer",
]

logger = logging.getLogger(__name__)


class QuestionBatch:
    """The pairs of one oracle call put to one person, their answers and the undo stack."""

    def __init__(self, number, first_id, pairs, sides):
        self.number = number
        self.first_id = first_id  # pair ids are unique over the oracle's life
        self.pairs = pairs
        self.sides = sides  # per pair: (left, right) dicts of pair_sides
        self.answers = [None] * len(pairs)
        self.history = []  # (position, previous answer)
        self.outcome = None  # "answered", "timed out", "closed", "interrupted"

    def __len__(self):
        return len(self.pairs)

    @property
    def n_answered(self):
        return sum(answer is not None for answer in self.answers)

    @property
    def complete(self):
        return all(answer is not None for answer in self.answers)

    def codes(self):
        return np.array(
            [-1 if a is None else ANSWER_CODES[a] for a in self.answers], dtype=np.int8
        )


def answer_unknown(pairs, n_samples, memory, ask):
    """Answer ``pairs``, calling ``ask(unknown_pairs) -> codes`` for what ``memory`` cannot.

    One question per unordered pair, in the order the caller gave them;
    pairs the memory knows (directly or by inference), and pairs it holds
    two "not sure" answers (or an unresolved disagreement) for, are not
    asked. Returns int8 codes for every input pair (1, 0, -1).
    """
    pairs = check_pairs(pairs, n_samples=n_samples)
    if np.any(pairs[:, 0] == pairs[:, 1]):
        i = int(pairs[pairs[:, 0] == pairs[:, 1]][0, 0])
        raise ValueError(f"A pair must join two different samples; got ({i}, {i}).")
    if len(pairs) == 0:
        return np.full(0, -1, dtype=np.int8)
    _, first, inverse = np.unique(
        np.sort(pairs, axis=1), axis=0, return_index=True, return_inverse=True
    )
    inverse = inverse.reshape(-1)
    known = np.full(len(first), -1, dtype=np.int8)
    given_up = np.zeros(len(first), dtype=bool)
    if memory is not None:
        known = np.asarray(memory.lookup(pairs[first]), dtype=np.int8)
        settled = getattr(memory, "_not_to_ask", None)
        if callable(settled):
            given_up = (known < 0) & settled(pairs[first])
        else:  # a memory-like object without "not sure" bookkeeping
            counts = getattr(memory, "_unsure_counts", None)
            if callable(counts):
                given_up = (known < 0) & (counts(pairs[first]) >= _MAX_UNSURE)
    ask_now = np.flatnonzero((known < 0) & ~given_up)
    ask_now = ask_now[np.argsort(first[ask_now], kind="stable")]
    if given_up.any():
        logger.info(
            "%d pairs answered \"not sure\" twice, or waiting for a reviewer, are not asked.",
            int(given_up.sum()),
        )
    n_known = len(first) - len(ask_now) - int(given_up.sum())
    if n_known:
        logger.info("%d pairs answered from the label memory.", n_known)
    if len(ask_now):
        known[ask_now] = ask(pairs[first[ask_now]])
    return known[inverse]


def oracle_state(oracle):
    """What every oracle's page state starts with: counts, cost, memory; no batch yet.

    ``oracle`` has ``n_samples``, ``n_queries``, ``n_batches``,
    ``label_memory`` (or None) and the private ``_version`` and ``_closed``.
    """
    from ..metrics import labeling_cost  # lazily: the metrics pull in more modules

    memory, n = oracle.label_memory, oracle.n_samples
    return {
        "mode": "oracle",
        "version": oracle._version,
        "n_samples": n,
        "n_queries": oracle.n_queries,
        "cost": labeling_cost(oracle.n_queries, n) if n >= 2 else None,
        "n_batches": oracle.n_batches,
        "closed": oracle._closed,
        "memory": None if memory is None else {"path": _file_name(memory), "n_answers": len(memory)},
        "batch": None,
        "last_batch": None,
    }


def check_person_options(n_context, timeout, annotator=None):
    """The options every human oracle shares, checked: ``n_context`` as an int."""
    if isinstance(n_context, bool) or not isinstance(n_context, (int, np.integer)) or (
        n_context < 0
    ):
        raise ValueError(f"n_context must be an int >= 0, got {n_context!r}.")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
    ):
        raise ValueError(f"timeout must be a number > 0 or None, got {timeout!r}.")
    check_person(annotator)
    return int(n_context)


def check_context(labels, n_samples):
    """``labels`` of ``set_context`` as an int64 copy (or None), checked."""
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n_samples:
        raise ValueError(
            f"set_context needs one label per sample, shape ({n_samples},); "
            f"got shape {labels.shape}."
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"set_context needs integer labels, got dtype {labels.dtype}.")
    return labels.astype(np.int64, copy=True)


def pair_sides(pairs, images, labels, n_context):
    """What a person is shown of each side of each pair.

    Returns one ``(left, right)`` per pair; a side is a dict with the
    image ``index``, its ``camera``, its group's size (``group_size``, None
    without context) and up to ``n_context`` other members (``context``),
    spread over the group rather than its first few (often one camera).
    """
    sides = []
    for i, j in np.asarray(pairs).tolist():
        left = _side(i, j, images, labels, n_context)
        # Both in one group: show the right side other members when there are some.
        right = _side(j, i, images, labels, n_context, avoid=left["context"])
        sides.append((left, right))
    return sides


def _side(index, other, images, labels, n_context, avoid=()):
    side = {"index": index, "camera": images.camera(index), "group_size": None, "context": []}
    if labels is None or labels[index] < 0:
        return side
    members = np.flatnonzero(labels == labels[index])
    side["group_size"] = len(members)
    members = members[(members != index) & (members != other)]
    fresh = members[~np.isin(members, avoid)]
    if len(fresh) >= min(n_context, len(members)):
        members = fresh
    if n_context and len(members):
        take = np.unique(np.linspace(0, len(members) - 1, n_context).round().astype(int))
        side["context"] = members[take].tolist()
    return side


# The longest an answer can plausibly take; a page that sends more is refused.
_MAX_SECONDS = 24 * 3600.0


def read_seconds(payload):
    """The optional ``seconds`` of an answer (how long the person looked), checked."""
    seconds = payload.get("seconds")
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
        0 <= seconds <= _MAX_SECONDS
    ):
        raise RequestError(
            400, f"Field 'seconds' must be a number in [0, {_MAX_SECONDS:.0f}], got {seconds!r}."
        )
    return float(seconds)


def write_answer(memory, pair, old, new, *, source, annotator=None, seconds=None):
    """Make ``memory`` hold ``new`` for ``pair`` instead of ``old`` (answer names or None).

    ``new`` is ``"same"``, ``"different"``, ``"unsure"``, or None (an
    undo back to no answer); ``old`` likewise. A definite answer is
    recorded; withdrawing one retracts it (a "not sure" would not override
    it), and an undone "not sure" is retracted too.
    """
    if memory is None:
        return
    pair = np.asarray(pair).reshape(1, 2)
    # only what is known: a memory-like object may take no annotator or seconds
    who = {"annotator": annotator} if annotator is not None else {}
    took = {"seconds": seconds} if seconds is not None else {}
    if new in ("same", "different"):  # overrides an earlier "not sure" too
        memory.record(pair, [ANSWER_CODES[new]], source=source, **who, **took)
        return
    if old in ("same", "different") or (old == "unsure" and new is None):
        retract = getattr(memory, "retract", None)
        if callable(retract):
            retract(pair, source=source, **who)
        else:
            logger.warning(
                "The label memory cannot retract answers: its %r answer for pair "
                "(%d, %d) stays until the pair is answered again.",
                old, pair[0, 0], pair[0, 1],
            )
    if new == "unsure":
        memory.record(pair, [ANSWER_CODES[new]], source=source, **who, **took)
