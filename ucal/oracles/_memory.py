"""The label memory: every answer given, and what the answers imply."""

import json
import logging
import os
import threading
import time
import warnings
from typing import NamedTuple, Optional

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from ..utils import fsync_dir
from ._protocol import OracleError, _coerce_answers, check_pairs, query_oracle

__all__ = ["AnswerRecord", "LabelMemory"]

logger = logging.getLogger(__name__)

_SHIFT = np.int64(32)  # pair key = (i << 32) | j, indices below 2**31


class AnswerRecord(NamedTuple):
    """One recorded answer, as iterating over a :class:`LabelMemory` yields.

    Parameters
    ----------
    i : int
        The smaller sample index of the pair.
    j : int
        The larger sample index of the pair.
    same : bool or None
        The answer: True when the two samples show the same identity;
        None for a retraction (an answer taken back, e.g. by an undo).
    source : str
        Who answered (``"oracle"``, a refiner stage such as ``"snps"``,
        ``"web"``...).
    time : float
        When it was recorded (seconds since the epoch).

    Examples
    --------
    >>> from ucal.oracles import LabelMemory
    >>> memory = LabelMemory()
    >>> memory.record([[5, 2]], [True], source="web")
    1
    >>> record = next(iter(memory))
    >>> record.i, record.j, record.same, record.source
    (2, 5, True, 'web')
    """

    i: int
    j: int
    same: Optional[bool]
    source: str
    time: float


class _AskResult(NamedTuple):
    answers: np.ndarray  # int8 per input pair: 1, 0, -1 (unknown or not sure)
    sent_pairs: np.ndarray  # (s, 2) pairs sent to the oracle, i < j
    sent_answers: np.ndarray  # int8 (s,): 1, 0, -1 = not sure
    n_inferred: int  # unique pairs answered by the memory
    n_transitive: int  # ... of which only by transitive inference
    n_unsent: int  # unknown pairs not sent (budget or no oracle)


def _canonical(pairs):
    pairs = np.sort(pairs, axis=1)
    return pairs, (pairs[:, 0] << _SHIFT) | pairs[:, 1]


class LabelMemory:
    """Every answer given by an oracle, and what the answers imply.

    The paper's label memory (Sec. 3.3) remembers which pairs a human has
    labelled so that no pair is asked twice. This one also infers
    (``infer=True``): "same" answers join samples into components
    (union-find), and a "different" answer separates two components, so a
    pair inside one component, or across two separated components, is
    never sent to the oracle either.

    Contradictions (a noisy human) are kept and resolved by a fixed rule,
    which makes the state depend only on the latest answer of each pair:

    1. The latest answer for an exact pair wins; an answer that differs
       from the pair's earlier one is counted in ``n_contradictions_``.
    2. Components are rebuilt from the current "same" answers first; a
       "different" answer between two samples of one component is a
       transitive conflict, counted in ``n_conflicts_`` and not used to
       separate anything.
    3. A direct answer for a pair always overrides what is inferred.

    Parameters
    ----------
    path : str or path-like, default=None
        A JSON-lines file. Every batch of new answers is appended to it,
        one line per answer, flushed and fsync'ed before the in-memory
        state changes; a memory opened on an existing file replays it. A
        truncated last line (a process killed mid-write) is skipped with a
        warning and removed at the next append; a corrupt line elsewhere
        raises ``ValueError``.
    infer : bool, default=True
        Infer answers transitively. ``False`` remembers exact pairs only,
        as in the paper (used to measure what inference saves).

    Attributes
    ----------
    n_queries : int
        Pairs sent to an oracle by :meth:`ask` since this object was made.
    n_inferred : int
        Pairs :meth:`ask` answered from memory (exact or inferred).
    n_transitive : int
        Of ``n_inferred``, the pairs answered only by transitive inference.
    n_abstentions : int
        "Not sure" answers received by :meth:`ask` (not recorded).
    n_contradictions_ : int
        Answers that changed an exact pair's earlier answer.
    n_conflicts_ : int
        Current "different" answers between samples joined by "same"
        answers.

    See Also
    --------
    ucal.SNPSSplitter, ucal.MPPSMerger : Refiners that ask through a memory.

    Examples
    --------
    >>> from ucal.oracles import LabelMemory, LabelOracle
    >>> memory = LabelMemory()
    >>> oracle = LabelOracle([0, 0, 0, 1])
    >>> memory.ask([[0, 1], [1, 2], [2, 3]], oracle)
    array([1, 1, 0], dtype=int8)
    >>> memory.lookup([[0, 2], [0, 3], [1, 0]])  # inferred, inferred, exact
    array([1, 0, 1], dtype=int8)
    >>> memory.n_queries, len(memory)
    (3, 3)
    """

    def __init__(self, path=None, *, infer=True):
        self.path = None if path is None else os.fspath(path)
        self.infer = bool(infer)
        self._lock = threading.RLock()
        self._records = []
        self._exact = {}  # (i, j) with i < j -> bool, latest answer
        self._dirty = True
        self._tail = None  # None, "newline" or a byte offset to truncate to
        self.n_queries = 0
        self.n_inferred = 0
        self.n_transitive = 0
        self.n_abstentions = 0
        self.n_contradictions_ = 0
        if self.path is not None and os.path.exists(self.path):
            self._replay()

    # -- persistence ---------------------------------------------------------

    def _replay(self):
        with open(self.path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        offset = 0
        records = []
        for number, line in enumerate(lines, start=1):
            start, offset = offset, offset + len(line) + 1
            if not line.strip():
                continue
            is_last = number == len(lines)  # no newline after it
            try:
                records.append(self._parse(line))
            except ValueError as exc:
                if is_last:
                    warnings.warn(
                        f"Label memory {self.path!r}: skipped a truncated last line "
                        f"({len(line)} bytes, a write that did not finish); it "
                        "will be removed at the next append.",
                        UserWarning,
                        stacklevel=3,
                    )
                    self._tail = start
                    break
                raise ValueError(
                    f"Label memory {self.path!r}: line {number} is not a valid "
                    f"answer record ({exc}); only a truncated last line is "
                    "skipped. Fix or remove that line."
                ) from None
            else:
                if is_last:
                    self._tail = "newline"  # complete record, newline lost
        for record in records:
            self._apply(record)
        logger.info("Label memory %r: replayed %d answers.", self.path, len(records))

    @staticmethod
    def _parse(line):
        try:
            obj = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(str(exc)) from None
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        i, j, same = obj.get("i"), obj.get("j"), obj.get("same")
        for name, value in (("i", i), ("j", j)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name!r} must be a non-negative int, got {value!r}")
        if same is not None and not isinstance(same, bool):
            raise ValueError(f"'same' must be true, false or null, got {same!r}")
        if i == j and same is not True:
            raise ValueError("a sample cannot differ from itself")
        i, j = min(i, j), max(i, j)
        source = obj.get("source", "file")
        stamp = obj.get("time", 0.0)
        return AnswerRecord(
            i, j, same, str(source), float(stamp) if isinstance(stamp, (int, float)) else 0.0
        )

    def _append(self, records):
        created = not os.path.exists(self.path)
        with open(self.path, "ab") as f:
            if isinstance(self._tail, int):  # drop the partial last line
                f.truncate(self._tail)
            elif self._tail == "newline":
                f.write(b"\n")
            self._tail = None
            for r in records:
                line = {"i": r.i, "j": r.j, "same": r.same, "source": r.source, "time": r.time}
                f.write(json.dumps(line).encode("utf-8") + b"\n")
            f.flush()
            os.fsync(f.fileno())
        if created:
            fsync_dir(os.path.dirname(os.path.abspath(self.path)))

    # -- state ---------------------------------------------------------------

    def _apply(self, record):
        key = (record.i, record.j)
        self._records.append(record)
        self._dirty = True
        if record.same is None:  # a retraction: the pair has no answer again
            self._exact.pop(key, None)
            return
        previous = self._exact.get(key)
        if previous is not None and previous != record.same:
            self.n_contradictions_ += 1
        self._exact[key] = record.same

    def _rebuild(self):
        if not self._dirty:
            return
        if self._exact:
            pairs = np.array(list(self._exact), dtype=np.int64)
            same = np.fromiter(self._exact.values(), dtype=bool, count=len(pairs))
        else:
            pairs = np.empty((0, 2), dtype=np.int64)
            same = np.empty(0, dtype=bool)
        keys = (pairs[:, 0] << _SHIFT) | pairs[:, 1]
        order = np.argsort(keys)
        self._keys, self._values = keys[order], same[order].astype(np.int8)
        n_nodes = int(pairs.max()) + 1 if len(pairs) else 0
        # "same" answers first: components of the graph of same-identity edges
        s = pairs[same]
        graph = sparse.coo_matrix(
            (np.ones(len(s), dtype=np.int8), (s[:, 0], s[:, 1])), shape=(n_nodes, n_nodes)
        )
        _, self._comp = connected_components(graph, directed=False)
        # then "different" answers between components
        d = self._comp[pairs[~same]]
        inside = d[:, 0] == d[:, 1]
        self._n_conflicts = int(inside.sum())
        d = np.sort(d[~inside], axis=1)
        self._diff_keys = np.unique((d[:, 0] << _SHIFT) | d[:, 1])
        self._dirty = False

    def _lookup(self, pairs):
        """Canonical pairs -> (codes, exact mask)."""
        self._rebuild()
        keys = (pairs[:, 0] << _SHIFT) | pairs[:, 1]
        codes = np.full(len(pairs), -1, dtype=np.int8)
        pos = np.searchsorted(self._keys, keys)
        pos[pos == len(self._keys)] = 0
        exact = (self._keys[pos] == keys) if len(self._keys) else np.zeros(len(keys), bool)
        codes[pairs[:, 0] == pairs[:, 1]] = 1
        if self.infer:
            n_nodes = len(self._comp)
            seen = pairs[:, 1] < n_nodes  # i < j: both indices were answered about
            a = self._comp[pairs[seen, 0]]
            b = self._comp[pairs[seen, 1]]
            inferred = np.where(a == b, 1, -1).astype(np.int8)
            across = (a != b) & np.isin((np.minimum(a, b) << _SHIFT) | np.maximum(a, b), self._diff_keys)
            inferred[across] = 0
            codes[seen] = np.maximum(codes[seen], inferred)
        # direct answers override inferences
        codes[exact] = self._values[pos[exact]]
        return codes, exact

    # -- public API ------------------------------------------------------------

    def lookup(self, pairs):
        """What the memory knows about pairs, without asking anyone.

        Parameters
        ----------
        pairs : array-like of shape (m, 2)
            Sample indices; ``(i, j)`` and ``(j, i)`` are the same pair.

        Returns
        -------
        answers : ndarray of shape (m,), dtype int8
            1 same identity, 0 different, -1 unknown. With ``infer=True``
            this includes what earlier answers imply.

        Examples
        --------
        >>> from ucal.oracles import LabelMemory
        >>> memory = LabelMemory()
        >>> memory.record([[0, 1], [1, 2]], [True, False])
        2
        >>> memory.lookup([[0, 2], [2, 5]])
        array([ 0, -1], dtype=int8)
        """
        pairs, _ = _canonical(check_pairs(pairs))
        with self._lock:
            return self._lookup(pairs)[0]

    def record(self, pairs, answers, *, source="oracle"):
        """Record answers (appended to ``path`` first, when there is one).

        Re-recording the answer a pair already has is a no-op, so several
        writers (say a web page and a refiner) may record the same answer.
        A different answer for an answered pair is kept and counted in
        ``n_contradictions_``; the latest answer wins. "Not sure" answers
        (``-1``) are not recorded.

        Parameters
        ----------
        pairs : array-like of shape (m, 2)
            Sample indices.
        answers : array-like of shape (m,)
            Bool (``True`` = same identity) or ints in ``{-1, 0, 1}``.
        source : str, default="oracle"
            Who answered, stored with each record.

        Returns
        -------
        n_recorded : int
            Number of new records (no-ops and "not sure" excluded).

        Examples
        --------
        >>> from ucal.oracles import LabelMemory
        >>> memory = LabelMemory()
        >>> memory.record([[3, 1], [1, 3]], [1, 1])
        1
        >>> list(memory)[0][:3]
        (1, 3, True)
        """
        pairs = check_pairs(pairs)
        codes, problem = _coerce_answers(answers, len(pairs))
        if problem is not None:
            raise ValueError(
                f"record() got {problem}; answers must be bool or ints in {{-1, 0, 1}}."
            )
        keep = codes >= 0
        pairs, _ = _canonical(pairs[keep])
        codes = codes[keep]
        if np.any((pairs[:, 0] == pairs[:, 1]) & (codes == 0)):
            raise ValueError("record() got a 'different' answer for a sample paired with itself.")
        now = time.time()
        with self._lock:
            pending = {}
            new = []
            for (i, j), code in zip(pairs.tolist(), codes.tolist()):
                if i == j:
                    continue
                same = bool(code)
                current = pending.get((i, j), self._exact.get((i, j)))
                if current is not None and current == same:
                    continue  # the pair already has this answer
                pending[(i, j)] = same
                new.append(AnswerRecord(i, j, same, str(source), now))
            if not new:
                return 0
            if self.path is not None:
                self._append(new)  # durable before it is used
            for r in new:
                self._apply(r)
            return len(new)

    def retract(self, pairs, *, source="undo"):
        """Take back the answers of exact pairs (an undo).

        A retraction is itself a record (``same`` is None), appended to
        ``path`` first like any answer, so the file keeps the full history;
        afterwards the pair is unknown again, except for what the other
        answers imply.

        Parameters
        ----------
        pairs : array-like of shape (m, 2)
            Sample indices; pairs without an answer are ignored.
        source : str, default="undo"
            Who took the answer back, stored with each record.

        Returns
        -------
        n_retracted : int
            Number of answers taken back.

        Examples
        --------
        >>> from ucal.oracles import LabelMemory
        >>> memory = LabelMemory()
        >>> memory.record([[0, 1]], [True])
        1
        >>> memory.retract([[1, 0], [4, 5]])
        1
        >>> memory.lookup([[0, 1]])
        array([-1], dtype=int8)
        """
        pairs, _ = _canonical(check_pairs(pairs))
        now = time.time()
        with self._lock:
            new = []
            seen = set()
            for i, j in pairs.tolist():
                if (i, j) in self._exact and (i, j) not in seen:
                    seen.add((i, j))
                    new.append(AnswerRecord(i, j, None, str(source), now))
            if not new:
                return 0
            if self.path is not None:
                self._append(new)
            for r in new:
                self._apply(r)
            return len(new)

    def _ask(self, pairs, oracle, *, max_queries=None, context=None, source="oracle"):
        pairs = check_pairs(pairs)
        canon, keys = _canonical(pairs)
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        # unique pairs in order of first appearance: the caller's priority
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        uniq = canon[first[order]]
        with self._lock:
            known, exact = self._lookup(uniq)
        unknown = np.flatnonzero(known < 0)
        n_send = 0 if oracle is None else len(unknown)
        if max_queries is not None:
            n_send = min(n_send, max(int(max_queries), 0))
        send = uniq[unknown[:n_send]]
        n_inferred = int((known >= 0).sum())
        n_transitive = int(((known >= 0) & ~exact).sum())
        self.n_inferred += n_inferred
        self.n_transitive += n_transitive
        answers = known.copy()
        sent_codes = np.empty(0, dtype=np.int8)
        if n_send:
            codes, problem, exc = query_oracle(oracle, send, context)
            self.n_queries += n_send
            n_kept = 0
            if codes is not None:
                valid = codes >= -1
                n_kept = self.record(send[valid], codes[valid], source=source)
                self.n_abstentions += int((codes == -1).sum())
            if problem is not None:
                raise OracleError(
                    f"{problem}. {n_kept} valid answers of this batch were kept; "
                    f"the label memory holds {len(self)} answers in total"
                    + (f" (also in {self.path!r})." if self.path else "."),
                    memory=self,
                ) from exc
            sent_codes = codes
            answers[unknown[:n_send]] = codes
        return _AskResult(
            answers=answers[rank[inverse]],
            sent_pairs=send,
            sent_answers=sent_codes,
            n_inferred=n_inferred,
            n_transitive=n_transitive,
            n_unsent=len(unknown) - n_send,
        )

    def ask(self, pairs, oracle, *, context=None):
        """Answer pairs from memory, asking the oracle only what is unknown.

        Pairs are deduplicated (``(i, j)`` and ``(j, i)`` are one pair);
        the pairs the memory cannot answer go to the oracle in one batch,
        its reply is validated and recorded, and answers for all pairs
        are returned.

        Parameters
        ----------
        pairs : array-like of shape (m, 2)
            Sample indices.
        oracle : callable or None
            ``oracle(pairs) -> answers``, see :mod:`ucal.oracles`. With
            None, only the memory answers.
        context : array-like of shape (n_samples,), default=None
            Passed to ``oracle.set_context`` (when the oracle has one)
            right before the batch is sent.

        Returns
        -------
        answers : ndarray of shape (m,), dtype int8
            1 same, 0 different, -1 where the oracle was not sure (or no
            oracle was given and the memory does not know).

        Raises
        ------
        OracleError
            If the oracle raised or answered in the wrong form; valid
            answers already received are recorded first.

        Examples
        --------
        >>> from ucal.oracles import LabelMemory, LabelOracle
        >>> memory = LabelMemory()
        >>> memory.ask([[0, 1], [1, 0], [1, 2]], LabelOracle([5, 5, 6]))
        array([1, 1, 0], dtype=int8)
        >>> memory.n_queries
        2
        """
        return self._ask(pairs, oracle, context=context).answers

    def to_arrays(self):
        """The current answer of every answered pair.

        Returns
        -------
        pairs : ndarray of shape (k, 2), dtype int64
            Answered pairs, ``i < j``, sorted.
        same : ndarray of shape (k,), dtype bool
            Their latest answers.

        Examples
        --------
        >>> from ucal.oracles import LabelMemory
        >>> memory = LabelMemory()
        >>> memory.record([[2, 0]], [False])
        1
        >>> memory.to_arrays()
        (array([[0, 2]]), array([False]))
        """
        with self._lock:
            self._rebuild()
            pairs = np.stack([self._keys >> _SHIFT, self._keys & 0xFFFFFFFF], axis=1)
            return pairs, self._values.astype(bool)

    @property
    def n_conflicts_(self):
        with self._lock:
            self._rebuild()
            return self._n_conflicts

    def __len__(self):
        """Number of records (answers, and retractions if any)."""
        return len(self._records)

    def __iter__(self):
        return iter(list(self._records))

    def __repr__(self):
        where = "" if self.path is None else f"path={self.path!r}, "
        return f"LabelMemory({where}infer={self.infer}, n_answers={len(self)})"

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"]  # locks do not pickle
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()
