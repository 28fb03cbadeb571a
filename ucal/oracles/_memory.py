"""The label memory: every answer given, and what the answers imply."""

import collections
import contextlib
import errno
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import warnings
from itertools import pairwise
from typing import NamedTuple

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import breadth_first_order, connected_components

from ..utils import fsync_dir
from ._protocol import (
    MAX_INDEX,
    OracleError,
    _coerce_answers,
    check_pairs,
    check_person,
    check_regular_file,
    query_oracle,
)

__all__ = ["AnswerRecord", "LabelMemory"]

logger = logging.getLogger(__name__)

_SHIFT = np.int64(32)  # pair key = (i << 32) | j, indices below 2**31

# A pair with this many "not sure" answers (and no definite one) is not asked again.
_MAX_UNSURE = 2

# The source of the review page's corrections: such an answer settles a changed pair.
_CORRECTION = "correction"

# How the answers of a pair become the one answer used (LabelMemory's ``resolution``).
RESOLUTIONS = ("latest", "majority")


# Windows opens files in text mode unless told otherwise (CRLF line ends)
_BINARY = getattr(os, "O_BINARY", 0)
# Writing is refused below this much free space: a person's answers must fit.
_MIN_FREE_BYTES = 64 * 1024
# The end of the file read to find its last line (records are about 100 bytes).
_MAX_TAIL = 64 * 1024
_EXAMPLE_LINE = '{"i": 3, "j": 17, "same": true, "source": "web", "time": 1700000000.0}'
_RECORD_START = b'{"i": '


def _encode(record):
    line = {"i": record.i, "j": record.j, "same": record.same}
    if record.unsure:
        line["unsure"] = True
    line.update(source=record.source, time=record.time)
    if record.annotator is not None:
        line["annotator"] = record.annotator
    if record.seconds is not None:
        line["seconds"] = record.seconds
    return json.dumps(line).encode("utf-8") + b"\n"


def _check_seconds(seconds, m):
    """``seconds`` of :meth:`LabelMemory.record` as a list of m floats or Nones."""
    if seconds is None:
        return [None] * m
    values = np.broadcast_to(np.asarray(seconds, dtype=object), (m,)) if np.ndim(seconds) == 0 else (
        np.asarray(seconds, dtype=object)
    )
    if values.shape != (m,):
        raise ValueError(f"seconds must be one number or {m} numbers (one per pair), got shape {values.shape}.")
    out = []
    for value in values.tolist():
        if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
                or not 0 <= value < math.inf):
            raise ValueError(f"seconds must be finite numbers >= 0, got {value!r}.")
        out.append(float(value))
    return out


def _is_torn_record(line):
    """Whether ``line`` is the start of a record this module wrote, cut short."""
    n = min(len(line), len(_RECORD_START))
    if line[:n] != _RECORD_START[:n]:
        return False
    try:
        json.loads(line.decode("utf-8", errors="replace"))
    except (json.JSONDecodeError, RecursionError):
        return True  # not complete JSON: cut short
    return False  # complete JSON that is not a valid record: not torn


def _has_record_keys(line):
    """Whether ``line`` is a JSON object with the keys of a record (maybe bad values)."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(obj, dict) and "i" in obj and "j" in obj


def _show(line, limit=60):
    text = line[:limit].decode("utf-8", errors="replace")
    return repr(text + ("..." if len(line) > limit else ""))


def _read_exactly(fd, n):
    chunks = []
    while n > 0:
        chunk = os.read(fd, n)
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@contextlib.contextmanager
def _file_lock(fd):
    """An exclusive lock on an open file, between processes and between objects (POSIX)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one writer per file
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def existing_memory(memory):
    """``memory`` as a LabelMemory; a path must name an existing answers file.

    For readers (agreement, export): a mistyped path is an error, not an
    empty memory.
    """
    if isinstance(memory, LabelMemory):
        return memory
    path = os.fspath(memory)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No label memory at {path!r}: the answers file does not exist.")
    return LabelMemory(path)


def _check_source(source):
    """``source`` of a record: a non-empty string writable as UTF-8."""
    source = str(source)
    if not source:
        raise ValueError("source must be a non-empty string (what answered: 'web', 'snps'...).")
    try:
        source.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"source {source!r} cannot be written as UTF-8.") from None
    return source


def _content(record):
    """A record's content (times to the microsecond): equal records are told apart by
    their rank among the equal ones (one call of record() stamps one time on all)."""
    return (record.i, record.j, record.same, record.unsure, record.source, record.annotator,
            round(record.time, 6), record.seconds)


def _checked_record(record):
    """``record`` as an :class:`AnswerRecord` a memory file can hold, or ValueError."""
    if not isinstance(record, AnswerRecord):
        raise TypeError(f"expected an AnswerRecord, got {type(record).__name__}")
    line = {"i": record.i, "j": record.j, "same": record.same, "unsure": record.unsure,
            "source": record.source, "time": record.time, "annotator": record.annotator,
            "seconds": record.seconds}
    if not isinstance(record.source, str) or not record.source:
        raise ValueError(f"'source' must be a non-empty string, got {record.source!r}")
    check_person(record.annotator)
    try:
        record.source.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"'source' {record.source!r} cannot be written as UTF-8") from None
    if isinstance(record.time, bool) or not isinstance(record.time, (int, float)) or not (
        math.isfinite(record.time)
    ):
        raise ValueError(f"'time' must be a finite number, got {record.time!r}")
    if record.seconds is not None and (
        isinstance(record.seconds, bool) or not isinstance(record.seconds, (int, float))
        or not 0 <= record.seconds < math.inf
    ):
        raise ValueError(f"'seconds' must be a finite number >= 0, got {record.seconds!r}")
    parsed = LabelMemory._parse(json.dumps(line).encode("utf-8"))
    if not record.i < record.j:
        raise ValueError(f"the pair must be two samples, i < j, got ({record.i}, {record.j})")
    return parsed


class AnswerRecord(NamedTuple):
    """One recorded answer, as iterating over a :class:`LabelMemory` yields.

    Parameters
    ----------
    i : int
        The smaller sample index of the pair.
    j : int
        The larger sample index of the pair.
    same : bool or None
        The answer: True when the two samples show the same identity,
        False when they do not; None for a "not sure" answer (``unsure``
        is True) or a retraction (an answer taken back, e.g. by an undo).
    source : str
        Who answered (``"oracle"``, a refiner stage such as ``"snps"``,
        ``"web"``...).
    time : float
        When it was recorded (seconds since the epoch).
    unsure : bool, default=False
        True for a "not sure" answer (``same`` is then None).
    annotator : str or None, default=None
        The person who answered, when the answers come from a team (files
        written before annotators were recorded have None).
    seconds : float or None, default=None
        How long the answer took, when known.

    Examples
    --------
    >>> from ucal.oracles import LabelMemory
    >>> memory = LabelMemory()
    >>> memory.record([[5, 2], [0, 1]], [True, -1], source="web")
    2
    >>> first, second = memory
    >>> first.i, first.j, first.same, first.source, first.unsure
    (2, 5, True, 'web', False)
    >>> second.same, second.unsure
    (None, True)
    """

    i: int
    j: int
    same: bool | None
    source: str
    time: float
    unsure: bool = False
    annotator: str | None = None
    seconds: float | None = None


class _AskResult(NamedTuple):
    answers: np.ndarray  # int8 per input pair: 1, 0, -1 (unknown or not sure)
    sent_pairs: np.ndarray  # (s, 2) pairs sent to the oracle, i < j
    sent_answers: np.ndarray  # int8 (s,): 1, 0, -1 = not sure
    n_inferred: int  # unique pairs answered by the memory
    n_transitive: int  # ... of which only by transitive inference
    n_unsent: int  # unknown pairs not sent (budget or no oracle)
    n_unsure_skipped: int  # unknown pairs not sent: "not sure" twice already


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

    A "not sure" answer (``-1``) is recorded too, as a record of its own:
    it never overrides a definite ("same" / "different") answer of the
    pair, and a later definite answer overrides it. A pair with one "not
    sure" answer and no definite one may be asked once more; after two,
    :meth:`ask` no longer sends it (it stays unknown, ``-1``).

    Contradictions (a noisy human) are kept and resolved by a fixed rule,
    which makes the state depend only on the latest definite answer of
    each pair; :meth:`conflicts` lists them for a person to settle:

    1. The latest definite answer for an exact pair wins; an answer that
       differs from the pair's earlier one is counted in
       ``n_contradictions_``.
    2. Components are rebuilt from the current "same" answers first; a
       "different" answer between two samples of one component is a
       transitive conflict, counted in ``n_conflicts_`` and not used to
       separate anything.
    3. A direct answer for a pair always overrides what is inferred.

    Parameters
    ----------
    path : str or path-like, default=None
        A JSON-lines file. Every batch of new answers is appended to it,
        one line per answer ("not sure" answers and retractions
        included), flushed and fsync'ed before the in-memory state
        changes; a memory opened on an existing file replays it. A
        truncated last line (a process killed mid-write) is skipped with a
        warning and removed at the next append; a corrupt line elsewhere
        raises ``ValueError``.
    infer : bool, default=True
        Infer answers transitively. ``False`` remembers exact pairs only,
        as in the paper (used to measure what inference saves).
    resolution : {"latest", "majority"}, default="latest"
        How the answers of one pair become the answer used (rule 1 below).
        ``"latest"``: the latest definite answer wins, whoever gave it.
        ``"majority"``, for a team: each annotator's latest definite answer
        is one vote (answers recorded without an annotator are one voter
        together); more "same" than "different" votes answer "same", and
        the reverse "different"; a tie leaves the pair unanswered, listed
        by :meth:`conflicts` as a tied ``"disagreement"`` and never sent by
        :meth:`ask`, until a reviewer (an answer with
        ``source="correction"``, as the review page records) or one more
        vote breaks it. A reviewer's latest answer overrides the votes.
        The rule is not stored in the file: open a team's file with the
        same ``resolution`` every time.

    Attributes
    ----------
    n_queries : int
        Pairs sent to an oracle by :meth:`ask` since this object was made.
    n_inferred : int
        Pairs :meth:`ask` answered from memory (exact or inferred).
    n_transitive : int
        Of ``n_inferred``, the pairs answered only by transitive inference.
    n_abstentions : int
        "Not sure" answers :meth:`ask` received since this object was made
        (recorded, like every answer).
    n_contradictions_ : int
        Answers that changed an exact pair's earlier definite answer (a
        running count, from the file's start).
    n_conflicts_ : int
        Current "different" answers between samples joined by "same"
        answers: the ``"transitive"`` entries of :meth:`conflicts`.
    n_unsure_ : int
        Pairs whose only current answers are "not sure".

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

    def __init__(self, path=None, *, infer=True, resolution="latest"):
        if resolution not in RESOLUTIONS:
            raise ValueError(
                f"resolution must be one of {RESOLUTIONS}, got {resolution!r}."
            )
        self.path = None if path is None else os.fspath(path)
        self.infer = bool(infer)
        self.resolution = resolution
        self._lock = threading.RLock()
        self._records = []
        self._exact = {}  # (i, j) with i < j -> bool, latest definite answer
        self._unsure = {}  # (i, j) without a definite answer -> its "not sure" answers (> 0)
        self._by_annotator = {}  # (i, j, annotator) -> that person's latest definite answer
        self._annotators = set()  # every name in _by_annotator
        # resolution="majority": (i, j) -> {annotator or None: latest definite answer}, the
        # reviewer's latest answer per pair, and the pairs whose votes are tied
        self._votes = {}
        self._reviewed = {}
        self._tied = set()
        self._dirty = True
        self.n_queries = 0
        self.n_inferred = 0
        self.n_transitive = 0
        self.n_abstentions = 0
        self.n_contradictions_ = 0
        self._held_out = np.empty(0, dtype=np.int64)  # sorted keys never sent by ask()
        if self.path is not None and os.path.exists(self.path):
            check_regular_file(self.path, "a label memory's answers file")
            self._replay()

    # -- persistence ---------------------------------------------------------

    def _replay(self):
        with open(self.path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            is_last = number == len(lines)  # no newline after it
            try:
                records.append(self._parse(line))
            except ValueError as exc:
                if is_last and _is_torn_record(line):
                    warnings.warn(
                        f"Label memory {self.path!r}: skipped a truncated last line "
                        f"({len(line)} bytes, a write that did not finish); it "
                        "will be removed at the next append.",
                        UserWarning,
                        stacklevel=3,
                    )
                    break
                if not records and not _has_record_keys(line):
                    raise ValueError(
                        f"{self.path!r} is not a label memory (an answers file of JSON "
                        f"lines such as {_EXAMPLE_LINE}): line {number} is {_show(line)} "
                        f"({exc}). The file was not changed."
                    ) from None
                raise ValueError(
                    f"Label memory {self.path!r}: line {number} is not a valid "
                    f"answer record ({exc}); only a truncated last line is "
                    "skipped. Fix or remove that line."
                ) from None
        for record in records:
            self._apply(record)
        logger.info("Label memory %r: replayed %d answers.", self.path, len(records))

    @staticmethod
    def _parse(line):
        try:
            obj = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(str(exc)) from None
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        i, j, same = obj.get("i"), obj.get("j"), obj.get("same")
        unsure = obj.get("unsure", False)  # absent in files written before "not sure" was kept
        for name, value in (("i", i), ("j", j)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name!r} must be a non-negative int, got {value!r}")
            if value >= MAX_INDEX:
                raise ValueError(f"{name!r} must be below 2**31, got {value}")
        if same is not None and not isinstance(same, bool):
            raise ValueError(f"'same' must be true, false or null, got {same!r}")
        if not isinstance(unsure, bool):
            raise ValueError(f"'unsure' must be true or false, got {unsure!r}")
        if unsure and same is not None:
            raise ValueError(f"a 'not sure' record must have 'same': null, got {same!r}")
        if i == j and same is not True:
            raise ValueError("a sample cannot differ from itself")
        i, j = min(i, j), max(i, j)
        source = obj.get("source", "file")
        stamp = obj.get("time", 0.0)
        annotator = obj.get("annotator")
        if annotator is not None and not isinstance(annotator, str):
            raise ValueError(f"'annotator' must be a string, got {annotator!r}")
        seconds = obj.get("seconds")
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0
        ):
            raise ValueError(f"'seconds' must be a number >= 0, got {seconds!r}")
        if seconds is not None and not math.isfinite(seconds):
            seconds = None  # written as Infinity by an older version: the answer stands
        known = isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and math.isfinite(stamp)
        return AnswerRecord(
            i, j, same, str(source), float(stamp) if known else 0.0,
            unsure, annotator, None if seconds is None else float(seconds),
        )

    def check_writable(self):
        """Raise ``OSError`` (naming the file) when the answers file cannot take answers.

        Called before any question is asked, so that no one answers into a
        file that cannot keep the answers: a missing folder, a read-only
        file or file system, an immutable file, a full disk (less than
        64 KiB free), or a file that is not an answers file. Nothing is
        written; a file that did not exist is not left behind. A memory
        without ``path`` is always writable.

        Raises
        ------
        OSError
            The answers file cannot be appended to; the message names it
            and the reason.
        ValueError
            The file's last line is neither an answer record nor a torn
            one: it is not an answers file.
        """
        if self.path is None:
            return
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            if os.path.exists(self.path):
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | _BINARY)
                try:
                    self._tail_fix(fd, os.fstat(fd).st_size, repair=False)
                finally:
                    os.close(fd)
            else:
                # Never create the answers file here (another writer may be about to):
                # a scratch file shows whether the folder takes new files.
                fd, scratch = tempfile.mkstemp(prefix=".ucal-check-", dir=folder)
                os.close(fd)
                os.unlink(scratch)
        except OSError as exc:
            raise self._write_error(exc, "cannot be written") from exc
        if shutil.disk_usage(folder).free < _MIN_FREE_BYTES:
            raise self._write_error(
                OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
                f"is on a disk with less than {_MIN_FREE_BYTES // 1024} KiB free",
            )

    def _write_error(self, exc, what):
        """An OSError of ``exc``'s kind whose message names the answers file."""
        reason = exc.strerror or str(exc)
        return OSError(exc.errno, f"the label memory's answers file {what} ({reason})", self.path)

    def _tail_fix(self, fd, size, *, repair):
        """Bytes to write before new records so that they start on a line of their own.

        A complete last record whose newline was lost needs one; a torn last
        record (a writer died mid-line: it was never acknowledged) is cut
        off when ``repair``. Anything else is not an answers file: refused,
        untouched. Runs under the file lock, so the end it looks at is the
        end as every writer left it.
        """
        if size == 0:
            return b""
        start = max(0, size - _MAX_TAIL)
        os.lseek(fd, start, os.SEEK_SET)  # (appends still go to the end: O_APPEND)
        tail = _read_exactly(fd, size - start)
        if tail.endswith(b"\n"):
            return b""
        cut = tail.rfind(b"\n")
        while cut < 0 and start > 0:  # a last line longer than the window: read further back
            step = min(start, _MAX_TAIL)
            start -= step
            os.lseek(fd, start, os.SEEK_SET)
            tail = _read_exactly(fd, step) + tail
            cut = tail.rfind(b"\n")
        line = tail[cut + 1:]
        try:
            self._parse(line)
            return b"\n"
        except ValueError:
            pass
        if line and _is_torn_record(line):
            if repair:
                os.ftruncate(fd, size - len(line))
            return b""
        raise ValueError(
            f"{self.path!r} is not a label memory: its last line is {_show(line or tail)}, "
            f"not an answer record such as {_EXAMPLE_LINE}. The file was not changed."
        )

    def _append(self, records):
        payload = b"".join(_encode(r) for r in records)
        created = not os.path.exists(self.path)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _BINARY, 0o644)
        except OSError as exc:
            raise self._write_error(exc, "cannot be opened for appending") from exc
        try:
            with _file_lock(fd):
                # Look at the end of the file now, under the lock: another writer
                # may have appended since this memory was opened.
                prefix = self._tail_fix(fd, os.fstat(fd).st_size, repair=True)
                size = os.fstat(fd).st_size
                try:
                    _write_all(fd, prefix + payload)
                    os.fsync(fd)
                except OSError as exc:
                    # Leave the file as it was: no torn line for the next append.
                    try:
                        os.ftruncate(fd, size)
                        os.fsync(fd)
                    except OSError:
                        pass
                    raise self._write_error(
                        exc, f"could not take {len(records)} new answers; it was left as before"
                    ) from exc
        finally:
            os.close(fd)
        if created:
            fsync_dir(os.path.dirname(os.path.abspath(self.path)))

    # -- state ---------------------------------------------------------------

    def _apply(self, record):
        key = (record.i, record.j)
        self._records.append(record)
        if record.unsure:  # never overrides a definite answer
            if key not in self._exact:
                self._unsure[key] = self._unsure.get(key, 0) + 1
            return
        if record.same is None:  # a retraction: takes back the pair's latest answer
            if self.resolution == "majority" and record.source == _CORRECTION:
                retracted = self._reviewed.pop(key, None) is not None  # the review is undone
                if retracted:
                    self._resolve(key)
                    self._dirty = True
            elif self.resolution == "majority":
                retracted = self._retract_vote(key, record.annotator)
                # that person's answer is gone: the same answer again is new
                self._by_annotator.pop((*key, record.annotator), None)
            else:
                retracted = key in self._exact
                if retracted:  # its definite answer: the pair has no answer again
                    del self._exact[key]
                    self._dirty = True
                    for name in self._annotators:  # so any answer again is new
                        self._by_annotator.pop((*key, name), None)
            if not retracted and key in self._unsure:  # else its latest "not sure"
                self._unsure[key] -= 1
                if not self._unsure[key]:
                    del self._unsure[key]
            return
        if record.annotator is not None:
            self._by_annotator[(record.i, record.j, record.annotator)] = record.same
            self._annotators.add(record.annotator)
        previous = self._exact.get(key)
        if previous is not None and previous != record.same:
            self.n_contradictions_ += 1
        if self.resolution == "majority":
            if record.source == _CORRECTION:  # a reviewer decides the pair
                self._reviewed[key] = record.same
            else:  # one vote per person: their latest definite answer
                self._votes.setdefault(key, {})[record.annotator] = record.same
            self._resolve(key)
        else:
            self._exact[key] = record.same
        self._unsure.pop(key, None)  # a definite answer overrides "not sure"
        self._dirty = True

    def _retract_vote(self, key, annotator):
        """resolution="majority": take back ``annotator``'s vote on ``key`` (True if there was one)."""
        votes = self._votes.get(key, {})
        if annotator not in votes:
            return False
        del votes[annotator]
        if not votes:
            del self._votes[key]
        self._resolve(key)
        self._dirty = True
        return True

    def _resolve(self, key):
        """resolution="majority": the pair's answer from its reviewer, else its votes."""
        votes = self._votes.get(key, {})
        n_same = sum(votes.values())
        n_different = len(votes) - n_same
        self._tied.discard(key)
        if key in self._reviewed:
            self._exact[key] = self._reviewed[key]
        elif n_same != n_different:
            self._exact[key] = n_same > n_different
        else:  # no vote left, or a tie: no answer until someone breaks it
            self._exact.pop(key, None)
            if votes:
                self._tied.add(key)

    def _not_to_ask(self, pairs):
        """Pairs (any order) -> bool array: answered "not sure" twice, or tied (for a reviewer)."""
        return (self._unsure_counts(pairs) >= _MAX_UNSURE) | self._tied_mask(pairs)

    def _tied_mask(self, pairs):
        """Pairs (any order) -> bool array: tied votes (resolution="majority")."""
        pairs = np.sort(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), axis=1)
        with self._lock:
            tied = self._tied
            return np.fromiter(
                ((i, j) in tied for i, j in pairs.tolist()), dtype=bool, count=len(pairs)
            )

    def _unsure_counts(self, pairs):
        """Pairs (any order) -> int array of their current "not sure" answers."""
        pairs = np.sort(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), axis=1)
        with self._lock:
            if not self._unsure:
                return np.zeros(len(pairs), dtype=np.int64)
            get = self._unsure.get
            return np.fromiter(
                (get((i, j), 0) for i, j in pairs.tolist()), dtype=np.int64, count=len(pairs)
            )

    def _status(self, i, j):
        """The current answer of one pair: True, False, "unsure" or None."""
        key = (min(i, j), max(i, j))
        with self._lock:
            if key in self._exact:
                return self._exact[key]
            return "unsure" if key in self._unsure else None

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
        # Only the samples answered about are nodes: memory follows the answers,
        # not the largest index.
        self._nodes, local = np.unique(pairs, return_inverse=True)
        local = local.reshape(pairs.shape)
        n_nodes = len(self._nodes)
        # "same" answers first: components of the graph of same-identity edges
        s = local[same]
        graph = sparse.coo_matrix(
            (np.ones(len(s), dtype=np.int8), (s[:, 0], s[:, 1])), shape=(n_nodes, n_nodes)
        )
        _, self._comp = connected_components(graph, directed=False)
        # then "different" answers between components
        d = self._comp[local[~same]]
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
            nodes = self._nodes
            at = np.searchsorted(nodes, pairs).clip(max=max(len(nodes) - 1, 0))
            # both samples were answered about
            seen = (nodes[at] == pairs).all(axis=1) if len(nodes) else np.zeros(len(pairs), bool)
            a = self._comp[at[seen, 0]]
            b = self._comp[at[seen, 1]]
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
            1 same identity, 0 different, -1 unknown (a pair with only
            "not sure" answers included). With ``infer=True`` this
            includes what earlier answers imply.

        Examples
        --------
        >>> from ucal.oracles import LabelMemory
        >>> memory = LabelMemory()
        >>> memory.record([[0, 1], [1, 2], [2, 5]], [True, False, -1])
        3
        >>> memory.lookup([[0, 2], [2, 5]])
        array([ 0, -1], dtype=int8)
        """
        pairs, _ = _canonical(check_pairs(pairs))
        with self._lock:
            return self._lookup(pairs)[0]

    def record(self, pairs, answers, *, source="oracle", annotator=None, seconds=None):
        """Record answers (appended to ``path`` first, when there is one).

        Re-recording the definite answer a pair already has is a no-op, so
        several writers (say a web page and a refiner) may record the same
        answer. With ``annotator``, it is a no-op only when that person
        already gave that answer: a second person's agreeing answer is
        evidence (see :func:`~ucal.oracles.annotator_agreement`) and is kept. A different answer for an answered pair is kept and counted
        in ``n_contradictions_``; the latest definite answer wins.

        A "not sure" answer (``-1``) is an answer a person gave: it is
        always appended as a record of its own (``same`` None, ``unsure``
        True), even for a pair that already has one. It never overrides a
        definite answer of the pair, and a later definite answer overrides
        it; :meth:`ask` asks a pair with one "not sure" answer (and no
        definite one) once more, and never after two.

        Parameters
        ----------
        pairs : array-like of shape (m, 2)
            Sample indices.
        answers : array-like of shape (m,)
            Bool (``True`` = same identity) or ints in ``{-1, 0, 1}``
            (``-1`` = not sure).
        source : str, default="oracle"
            What answered (the page, a refiner stage...), stored with each record.
        annotator : str, default=None
            The person who answered, stored with each record.
        seconds : float or array-like of shape (m,), default=None
            How long each answer took, stored with each record.

        Returns
        -------
        n_recorded : int
            Number of new records, "not sure" answers included (no-ops
            excluded).

        Examples
        --------
        >>> from ucal.oracles import LabelMemory
        >>> memory = LabelMemory()
        >>> memory.record([[3, 1], [1, 3], [0, 2]], [1, 1, -1])
        2
        >>> [(r.i, r.j, r.same, r.unsure) for r in memory]
        [(1, 3, True, False), (0, 2, None, True)]
        >>> memory.lookup([[0, 2]]), memory.n_unsure_
        (array([-1], dtype=int8), 1)
        """
        return self._record(pairs, answers, source=source, annotator=annotator, seconds=seconds)

    def _record(self, pairs, answers, *, source="oracle", repeat=False, annotator=None, seconds=None):
        """:meth:`record`; ``repeat=True`` also appends a definite answer the
        pair already has (a reviewer confirming it)."""
        pairs = check_pairs(pairs)
        codes, problem = _coerce_answers(answers, len(pairs))
        if problem is not None:
            raise ValueError(
                f"record() got {problem}; answers must be bool or ints in {{-1, 0, 1}}."
            )
        check_person(annotator)
        _check_source(source)
        took = _check_seconds(seconds, len(pairs))
        pairs, _ = _canonical(pairs)
        if np.any((pairs[:, 0] == pairs[:, 1]) & (codes == 0)):
            raise ValueError("record() got a 'different' answer for a sample paired with itself.")
        now = time.time()
        source = str(source)
        with self._lock:
            pending = {}
            new = []
            for (i, j), code, spent in zip(pairs.tolist(), codes.tolist(), took):
                if i == j:
                    continue  # a sample is the same as itself: nothing to learn
                if code < 0:  # "not sure": always kept, it is a question answered
                    new.append(AnswerRecord(i, j, None, source, now, True, annotator, spent))
                    continue
                same = bool(code)
                if annotator is None and self.resolution == "majority":
                    # the unnamed voter's own answer, not the pair's resolved one
                    key = (i, j)
                    current = pending.get(key, self._votes.get(key, {}).get(None))
                elif annotator is None:
                    key, current = (i, j), pending.get((i, j), self._exact.get((i, j)))
                else:  # one person's answer: a no-op only when they gave it already
                    key = (i, j, annotator)
                    current = pending.get(key, self._by_annotator.get(key))
                if not repeat and current is not None and current == same:
                    continue  # the pair already has this answer
                pending[key] = same
                new.append(AnswerRecord(i, j, same, source, now, False, annotator, spent))
            if not new:
                return 0
            if self.path is not None:
                self._append(new)  # durable before it is used
            for r in new:
                self._apply(r)
            return len(new)

    def retract(self, pairs, *, source="undo", annotator=None):
        """Take back the answers of exact pairs (an undo).

        A retraction is itself a record (``same`` is None, ``unsure``
        False), appended to ``path`` first like any answer, so the file
        keeps the full history. It takes back the pair's definite answer:
        afterwards the pair is unknown again, except for what the other
        answers imply. A pair with only "not sure" answers loses its latest
        one.

        Parameters
        ----------
        pairs : array-like of shape (m, 2)
            Sample indices; pairs without an answer are ignored.
        source : str, default="undo"
            Who took the answer back, stored with each record.
        annotator : str, default=None
            The person taking their answer back. With
            ``resolution="majority"`` only that person's vote is removed
            (None: the vote of answers recorded without an annotator).

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
        check_person(annotator)
        _check_source(source)
        now = time.time()
        with self._lock:
            new = []
            seen = set()
            for i, j in pairs.tolist():
                if self.resolution == "majority" and source == _CORRECTION:
                    answered = (i, j) in self._reviewed
                elif self.resolution == "majority":
                    answered = annotator in self._votes.get((i, j), {})
                else:
                    answered = (i, j) in self._exact
                answered = answered or (i, j) in self._unsure
                if answered and (i, j) not in seen:
                    seen.add((i, j))
                    new.append(AnswerRecord(i, j, None, str(source), now, False, annotator))
            if not new:
                return 0
            if self.path is not None:
                self._append(new)
            for r in new:
                self._apply(r)
            return len(new)

    def merge(self, records):
        """Add records of another memory's history, as they are (an import).

        Each :class:`AnswerRecord` keeps its answer, source, annotator, time
        and seconds; retractions and "not sure" answers are records like
        the others. The whole list is checked first: a bad record raises
        and nothing is added. Records are matched by content (pair,
        answer, source, annotator, time to the microsecond and seconds)
        and count: the k-th record of a content is added only when the
        memory holds fewer than k of them, so merging the same history
        twice changes nothing while repeated answers (a "not sure" given
        twice in one call) all survive. The new records are appended to ``path`` in one
        durable write, then applied in the order given, after the records
        the memory holds.

        Parameters
        ----------
        records : iterable of AnswerRecord

        Returns
        -------
        n_added : int
            Records added.

        Raises
        ------
        ValueError
            A record is not a valid answer (its position in ``records`` is
            named).

        Examples
        --------
        >>> from ucal.oracles import LabelMemory
        >>> memory = LabelMemory()
        >>> _ = memory.record([[0, 1]], [True], annotator="ann")
        >>> _ = memory.retract([[0, 1]], annotator="ann")
        >>> copy = LabelMemory()
        >>> copy.merge(memory), copy.merge(memory)
        (2, 0)
        >>> copy.lookup([[0, 1]])
        array([-1], dtype=int8)
        """
        checked = []
        for number, record in enumerate(records):
            try:
                checked.append(_checked_record(record))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"record {number}: {exc}") from None
        with self._lock:
            # the k-th record of a content is new only if the memory holds fewer than k
            held = collections.Counter(_content(r) for r in self._records)
            incoming = collections.Counter()
            new = []
            for record in checked:
                key = _content(record)
                incoming[key] += 1
                if incoming[key] > held[key]:
                    new.append(record)
            if not new:
                return 0
            if self.path is not None:
                self._append(new)
            for record in new:
                self._apply(record)
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
            n_marks = len(self._records)
        unknown = np.flatnonzero(known < 0)
        # "not sure" twice already, tied (for a reviewer), or held out for validation:
        # not asked (order kept)
        given_up = self._not_to_ask(uniq[unknown])
        n_unsure_skipped = int(given_up.sum())
        if len(self._held_out):
            given_up |= np.isin(keys[first[order]][unknown], self._held_out)
        unknown = unknown[~given_up]
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
            self.check_writable()  # no one answers into a file that cannot keep it
            codes, problem, exc = query_oracle(oracle, send, context)
            self.n_queries += n_send
            n_kept = 0
            if codes is not None:
                valid = codes >= -1
                unsure = codes == -1
                # An oracle that records into this memory itself (a WebOracle or a team
                # given it as label_memory) already wrote what people answered: its
                # reply is their resolved answer, not one more answer to count.
                with self._lock:
                    new = self._records[n_marks:]
                by_oracle = np.zeros(len(send), dtype=bool)
                if new:
                    written = {(r.i, r.j) for r in new}
                    by_oracle = np.array([tuple(p) in written for p in send.tolist()])
                    unsure_written = {(r.i, r.j) for r in new if r.unsure}
                    unsure = (unsure & ~by_oracle) | np.array(
                        [tuple(p) in unsure_written for p in send.tolist()])
                    valid &= ~by_oracle
                try:
                    n_kept = self.record(send[valid], codes[valid], source=source)
                except (OSError, ValueError) as error:  # no room; or a foreign line appeared
                    raise OracleError(
                        f"The oracle answered {int(valid.sum())} pairs, but they could not "
                        f"be saved: {error}. They are in this error's unsaved_pairs and "
                        "unsaved_answers: record them again (LabelMemory.record) once the "
                        "file can be written. The label memory holds the "
                        f"{len(self)} answers saved before.",
                        memory=self,
                        unsaved_pairs=send[valid],
                        unsaved_answers=codes[valid],
                    ) from error
                self.n_abstentions += int(unsure.sum())
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
            n_unsure_skipped=n_unsure_skipped,
        )

    def ask(self, pairs, oracle, *, context=None):
        """Answer pairs from memory, asking the oracle only what is unknown.

        Pairs are deduplicated (``(i, j)`` and ``(j, i)`` are one pair);
        the pairs the memory cannot answer go to the oracle in one batch,
        its reply is validated and recorded ("not sure" answers included),
        and answers for all pairs are returned. A pair answered "not sure"
        twice (and never "same" or "different") is not sent again: it is
        answered ``-1``.

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
            1 same, 0 different, -1 where the oracle was not sure (now or
            twice before), or no oracle was given and the memory does not
            know.

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

        A pair answered "not sure" is asked once more, then no longer:

        >>> def unsure(pairs):
        ...     return [-1] * len(pairs)
        >>> [memory.ask([[3, 4]], unsure).tolist() for _ in range(3)]
        [[-1], [-1], [-1]]
        >>> memory.n_queries, memory.n_unsure_
        (4, 1)
        """
        return self._ask(pairs, oracle, context=context).answers

    def hold_out(self, pairs):
        """Pairs that :meth:`ask` must never send to the oracle.

        ``UCALReID`` holds out its validation pairs in the training
        memory during a fit, so that a pair answered for validation is
        neither asked twice nor answered from that memory's own records; a
        pair :meth:`lookup` can infer from other answers is still answered.
        Not saved in the file, and released at the end of the fit.

        Parameters
        ----------
        pairs : array-like of shape (m, 2) or None
            Sample pairs (either order) to add; None releases every pair
            held out so far.

        Examples
        --------
        >>> from ucal.oracles import LabelMemory, LabelOracle
        >>> memory = LabelMemory()
        >>> memory.hold_out([[1, 0]])
        >>> memory.ask([[0, 1], [0, 2]], LabelOracle([0, 0, 1])).tolist()
        [-1, 0]
        """
        if pairs is None:
            with self._lock:
                self._held_out = np.empty(0, dtype=np.int64)
            return
        pairs = check_pairs(np.asarray(pairs, dtype=np.int64).reshape(-1, 2))
        _, keys = _canonical(pairs)
        with self._lock:
            self._held_out = np.union1d(self._held_out, keys)

    def held_out(self):
        """The pairs :meth:`hold_out` was given, ``i < j``, sorted.

        Returns
        -------
        pairs : ndarray of shape (k, 2), dtype int64
        """
        keys = self._held_out
        return np.stack([keys >> _SHIFT, keys & 0xFFFFFFFF], axis=1).astype(np.int64)

    def to_arrays(self):
        """The current answer of every answered pair.

        Returns
        -------
        pairs : ndarray of shape (k, 2), dtype int64
            Pairs with a definite answer, ``i < j``, sorted ("not sure"
            answers are not included).
        same : ndarray of shape (k,), dtype bool
            Their latest definite answers.

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

    def conflicts(self):
        """The answers that contradict each other now, for a person to settle.

        Two kinds are listed, ``"changed"`` ones first, each kind sorted by
        pair:

        - ``"changed"``: an exact pair whose definite answers since its
          last retraction disagree ("same" once, "different" another time).
          The latest one is used (see the class's rule 1). A pair whose
          latest answer is a correction from the review page
          (``source="correction"``) is settled and no longer listed.
        - ``"transitive"``: a current "different" answer between two
          samples that current "same" answers join into one component (rule
          2: it separates nothing). ``chain`` is a shortest path of "same"
          answers joining them: one of these answers, or the "different"
          one, is wrong. There are ``n_conflicts_`` of them.

        A "not sure" answer contradicts nothing.

        Returns
        -------
        conflicts : list of dict
            One dict per conflict, with the keys:

            - ``"kind"``: ``"changed"`` or ``"transitive"``;
            - ``"i"``, ``"j"``: the pair (``i < j``): the changed pair, or
              the pair answered "different";
            - ``"answers"``: list of :class:`AnswerRecord`, oldest first:
              for ``"changed"``, the pair's definite answers since its last
              retraction (with their sources and times); for
              ``"transitive"``, the current "different" answer;
            - ``"chain"``: list of :class:`AnswerRecord`: for
              ``"transitive"``, the current "same" answers of the path from
              ``i`` to ``j``, in path order (each record's own pair has its
              smaller index first); empty for ``"changed"``.

        Examples
        --------
        >>> from ucal.oracles import LabelMemory
        >>> memory = LabelMemory()
        >>> memory.record([[0, 1], [1, 2], [2, 0]], [True, True, False], source="web")
        3
        >>> memory.record([[3, 4]], [True], source="web")
        1
        >>> memory.record([[3, 4]], [False], source="snps")
        1
        >>> for c in memory.conflicts():
        ...     answers = [(r.same, r.source) for r in c["answers"]]
        ...     chain = [(r.i, r.j) for r in c["chain"]]
        ...     print(c["kind"], (c["i"], c["j"]), answers, chain)
        changed (3, 4) [(True, 'web'), (False, 'snps')] []
        transitive (0, 2) [(False, 'web')] [(0, 1), (1, 2)]
        >>> memory.n_conflicts_
        1
        """
        with self._lock:
            self._rebuild()
            records = list(self._records)
            comp, nodes = self._comp, self._nodes
            exact = dict(self._exact)
            if self.resolution == "majority":
                disputed = {
                    key: key in self._tied for key, votes in self._votes.items()
                    if len(set(votes.values())) > 1 and key not in self._reviewed
                }
        # the definite answers of each pair since its last retraction, oldest first; with
        # resolution="majority", each voter's (and the reviewer's) since their own
        history = {}
        for r in records:
            if r.unsure:
                continue
            key = (r.i, r.j)
            if self.resolution == "majority":
                voter = _CORRECTION if r.source == _CORRECTION else r.annotator
                if r.same is None:
                    history.get(key, {}).pop(voter, None)
                else:
                    votes = history.setdefault(key, {})
                    votes.pop(voter, None)  # re-inserted last: the dict stays in time order
                    votes[voter] = r
            elif r.same is None:
                history.pop(key, None)
            else:
                history.setdefault(key, []).append(r)
        if self.resolution == "majority":
            history = {key: list(votes.values()) for key, votes in history.items() if votes}
        changed = []
        if self.resolution == "majority":
            changed = self._disagreements(records, disputed)
        for key in sorted(history) if self.resolution == "latest" else ():
            answers = history[key]
            if len({r.same for r in answers}) > 1 and answers[-1].source != _CORRECTION:
                changed.append(
                    {"kind": "changed", "i": key[0], "j": key[1], "answers": answers, "chain": []}
                )
        # the latest record giving each pair's current answer (tied pairs have none)
        current = {
            key: next((r for r in reversed(answers) if r.same == exact[key]), None)
            for key, answers in history.items() if key in exact
        }
        current = {key: r for key, r in current.items() if r is not None}

        def node(i):  # the memory's graph numbers only the samples answered about
            return int(np.searchsorted(nodes, i))

        inside = sorted(
            key for key, r in current.items()
            if not r.same and comp[node(key[0])] == comp[node(key[1])]
        )
        transitive = []
        if inside:
            same = np.array([key for key, r in current.items() if r.same], dtype=np.int64)
            same = np.searchsorted(nodes, same)
            n = len(comp)
            graph = sparse.coo_matrix(
                (np.ones(len(same), dtype=np.int8), (same[:, 0], same[:, 1])), shape=(n, n)
            ).tocsr()
            predecessors = {}
            for i, j in inside:
                if i not in predecessors:
                    _, predecessors[i] = breadth_first_order(
                        graph, node(i), directed=False, return_predecessors=True
                    )
                path = [node(j)]
                while path[-1] != node(i):
                    path.append(int(predecessors[i][path[-1]]))
                path = [int(nodes[k]) for k in reversed(path)]
                chain = [current[(min(a, b), max(a, b))] for a, b in pairwise(path)]
                transitive.append(
                    {"kind": "transitive", "i": i, "j": j, "answers": [current[(i, j)]],
                     "chain": chain}
                )
        return changed + transitive

    @staticmethod
    def _disagreements(records, disputed):
        """resolution="majority": the ``"disagreement"`` conflicts, tied pairs first."""
        latest = {}  # (i, j) -> {annotator: their latest definite record}
        for r in records:
            if r.unsure or (r.i, r.j) not in disputed or r.source == _CORRECTION:
                continue
            votes = latest.setdefault((r.i, r.j), {})
            if r.same is None:
                votes.pop(r.annotator, None)
            else:
                votes[r.annotator] = r
        order = sorted(disputed, key=lambda key: (not disputed[key], key))
        return [
            {"kind": "disagreement", "i": key[0], "j": key[1], "tied": disputed[key],
             "answers": sorted(latest[key].values(), key=lambda r: r.time), "chain": []}
            for key in order
        ]

    @property
    def n_conflicts_(self):
        """int: Current transitive conflicts (see :meth:`conflicts`)."""
        with self._lock:
            self._rebuild()
            return self._n_conflicts

    @property
    def n_unsure_(self):
        """int: Pairs whose only current answers are "not sure"."""
        with self._lock:
            return len(self._unsure)

    def __len__(self):
        """Number of records: answers ("not sure" ones included) and retractions.

        Every "not sure" answer is a question a person was asked, so this
        counts the questions answered so far (plus any retractions).
        """
        return len(self._records)

    def __iter__(self):
        return iter(list(self._records))

    def __repr__(self):
        where = "" if self.path is None else f"path={self.path!r}, "
        rule = "" if self.resolution == "latest" else f", resolution={self.resolution!r}"
        return f"LabelMemory({where}infer={self.infer}{rule}, n_answers={len(self)})"

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"]  # locks do not pickle
        return state

    def __setstate__(self, state):
        state.setdefault("_unsure", {})  # pickled before "not sure" answers were kept
        state.setdefault("_by_annotator", {})  # ... before annotators were recorded
        state.setdefault("_held_out", np.empty(0, dtype=np.int64))  # ... before hold_out
        for name, empty in (("resolution", "latest"), ("_votes", {}), ("_reviewed", {}),
                            ("_tied", set()), ("_annotators", set())):  # ... before team answers were resolved
            state.setdefault(name, empty)
        self.__dict__.update(state)
        self._lock = threading.RLock()
