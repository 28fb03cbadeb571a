"""Review and correct the answers of a label memory on the annotation page."""

import logging
import threading
import webbrowser

from ..oracles import as_label_memory
from ..oracles._memory import _CORRECTION
from ..oracles._protocol import check_person
from ._controller import (
    ANSWER_CODES,
    AnnotationController,
    RequestError,
    require_choice,
    require_int,
)
from ._server import AnnotationServer, ImageStore, _Closable, _file_name, show_url

__all__ = ["ReviewSession", "serve_review"]

logger = logging.getLogger(__name__)


class _Review(AnnotationController):
    """Controller of the review page: the recorded answers, and corrections."""

    def __init__(self, memory, images, reviewer=None):
        self.memory = memory
        self.images = images
        self.reviewer = reviewer  # recorded as the corrections' annotator
        self._cache = None  # (len(memory), rows, conflicts): the view of an unchanged memory
        self.n_corrections = 0
        self.finished = threading.Event()
        self._lock = threading.Lock()
        top = max((max(r.i, r.j) for r in memory), default=-1)
        if top >= len(images):
            raise ValueError(
                f"The label memory has answers about sample {top}, but the dataset has "
                f"only {len(images)} images: is it the dataset (and split) the answers "
                "were given on?"
            )

    def _view(self):
        """(rows, conflicts) as the page shows them: contradicted pairs first.

        Recomputed only when the memory has new records (a team's reviewer
        page polls it every second); callers must not change what it returns.
        """
        n = len(self.memory)
        if self._cache is None or self._cache[0] != n:
            self._cache = (n, *self._build_view())
        return self._cache[1], self._cache[2]

    def _build_view(self):
        memory = self.memory
        rows = {}
        for record in memory:
            key = (record.i, record.j)
            row = rows.get(key)
            if row is None:
                row = rows[key] = {"i": record.i, "j": record.j, "history": []}
            row["history"].append({"answer": _answer_name(record), "source": record.source,
                                   "time": record.time, "annotator": record.annotator})
        conflicts = [self._conflict(c) for c in memory.conflicts()]
        flagged = {}  # pair -> rank: in the order the contradictions list them
        for c in conflicts:
            for pair in c["pairs"]:
                flagged.setdefault(tuple(pair), len(flagged))
        out = []
        for key, row in rows.items():
            answer = _status_name(memory._status(*key))
            # who gave the answer that counts: its latest record (a "not sure" after a
            # definite answer does not count), or the latest record of an unanswered pair
            deciding = next(
                (h for h in reversed(row["history"]) if h["answer"] == answer),
                row["history"][-1],
            )
            row.update(
                answer=answer,
                source=deciding["source"],
                annotator=deciding["annotator"],
                time=deciding["time"],
                conflict=key in flagged,
                left={"index": row["i"], "camera": self.images.camera(row["i"])},
                right={"index": row["j"], "camera": self.images.camera(row["j"])},
            )
            out.append(row)
        # contradicted pairs first, as listed; then the others in the file's order
        out.sort(key=lambda row: flagged.get((row["i"], row["j"]), len(flagged)))
        return out, conflicts

    @staticmethod
    def _conflict(conflict):
        """A conflict of :meth:`LabelMemory.conflicts` as JSON for the page."""
        i, j = conflict["i"], conflict["j"]
        view = {"kind": conflict["kind"], "i": i, "j": j, "pairs": [[i, j]]}
        if conflict["kind"] == "disagreement":  # a team's answers: who said what
            view["tied"] = conflict["tied"]
            view["votes"] = [
                {"annotator": r.annotator, "answer": _answer_name(r)} for r in conflict["answers"]
            ]
        if conflict["kind"] == "transitive":
            path = [i]
            for r in conflict["chain"]:
                path.append(r.j if r.i == path[-1] else r.i)
            view["pairs"] += [[r.i, r.j] for r in conflict["chain"]]
            view["path"] = path
        return view

    def state(self):
        with self._lock:
            rows, conflicts = self._view()
        return {
            "mode": "review",
            "n_samples": len(self.images),
            "n_corrections": self.n_corrections,
            "finished": self.finished.is_set(),
            "memory": {"path": _file_name(self.memory), "n_answers": len(self.memory)},
            "conflicts": conflicts,
            "records": rows,
        }

    def post(self, action, payload):
        if action == "correct":
            i = require_int(payload, "i")
            j = require_int(payload, "j")
            answer = require_choice(payload, "answer", ("same", "different"))
            key = (min(i, j), max(i, j))
            with self._lock:
                rows, conflicts = self._view()
                row = next((r for r in rows if (r["i"], r["j"]) == key), None)
                if row is None:
                    raise RequestError(404, f"The memory has no answer for pair ({i}, {j}).")
                changed = any(
                    c["kind"] in ("changed", "disagreement") and (c["i"], c["j"]) == key
                    for c in conflicts
                )
                who = {} if self.reviewer is None else {"annotator": self.reviewer}
                if row["answer"] != answer or changed:
                    # A new answer; or the reviewer confirms the current answer of a pair
                    # answered both ways: recorded, it settles the contradiction.
                    self.memory._record(
                        [key], [ANSWER_CODES[answer]], source=_CORRECTION, repeat=True, **who
                    )
                    self.n_corrections += 1
                rows, conflicts = self._view()
                row = next(r for r in rows if (r["i"], r["j"]) == key)
            return {"record": row, "n_corrections": self.n_corrections, "conflicts": conflicts}
        if action == "finish":
            self.finished.set()
            return {"finished": True, "n_corrections": self.n_corrections}
        raise RequestError(404, f"No such endpoint: POST /api/{action}.")


def _answer_name(record):
    if record.unsure:
        return "unsure"
    if record.same is None:
        return None  # a retraction
    return "same" if record.same else "different"


def _status_name(status):
    if status is True:
        return "same"
    if status is False:
        return "different"
    return status  # "unsure" or None


class ReviewSession(_Closable):
    """A review page of a label memory, served in the background.

    The page lists every answered pair with its two images, its current
    answer ("Same person", "Different" or "Not sure") and who gave it;
    "Same" / "Different" records a correction (``source="correction"``;
    the latest answer of a pair wins), and "Finish" ends the review. The
    contradictions of the memory (:meth:`LabelMemory.conflicts
    <ucal.oracles.LabelMemory.conflicts>`) come first, each with the pairs
    involved, so that one click corrects the wrong answer; pressing the
    current answer of a pair answered both ways confirms it, which settles
    that contradiction. :func:`serve_review` runs one and waits for it; a
    session lets the caller do something else meanwhile.

    Parameters
    ----------
    memory : LabelMemory, str or path-like
        The memory to review, or the path of its file.
    images : ReIDSplit, list of path, or ndarray of shape (n_samples, height, width, 3)
        What its answers' indices refer to, in that order: the training
        split they were given on.
    host : str, default="127.0.0.1"
        The address to listen on; another than loopback warns.
    port : int, default=0
        The port to listen on, or 0 for any free one.
    reviewer : str or None, default=None
        The reviewer's name, recorded with each correction (``annotator``).

    Attributes
    ----------
    url : str
        The page's address, including the secret token.
    memory : LabelMemory
        The memory being reviewed.

    Raises
    ------
    ValueError
        If the memory has answers about an image beyond ``images``: it
        was recorded on another dataset or split.

    See Also
    --------
    serve_review : Serve the page and wait until the review is finished.

    Examples
    --------
    What the page does when a person corrects an answer, then presses
    "Finish":

    >>> import json, urllib.request
    >>> import numpy as np
    >>> from ucal.annotation import ReviewSession
    >>> from ucal.oracles import LabelMemory
    >>> def press(session, action, payload):
    ...     request = urllib.request.Request(
    ...         session.url.replace("/?", f"/api/{action}?"), json.dumps(payload).encode(),
    ...         headers={"Content-Type": "application/json"})
    ...     with urllib.request.urlopen(request) as reply:
    ...         return json.loads(reply.read())
    >>> memory = LabelMemory()
    >>> _ = memory.record([[0, 1]], [True], source="web")
    >>> with ReviewSession(memory, np.zeros((2, 8, 4, 3), np.uint8)) as session:
    ...     record = press(session, "correct", {"i": 0, "j": 1, "answer": "different"})
    ...     _ = press(session, "finish", {})
    ...     session.wait(timeout=5)
    True
    >>> record["record"]["answer"], record["n_corrections"], memory.lookup([[0, 1]]).tolist()
    ('different', 1, [0])

    A contradiction comes first in the page's state:

    >>> _ = memory.record([[2, 3], [3, 4], [2, 4]], [True, True, False], source="web")
    >>> with ReviewSession(memory, np.zeros((5, 8, 4, 3), np.uint8)) as session:
    ...     state = session.review.state()
    >>> state["conflicts"]
    [{'kind': 'transitive', 'i': 2, 'j': 4, 'pairs': [[2, 4], [2, 3], [3, 4]], 'path': [2, 3, 4]}]
    >>> [(r["i"], r["j"], r["conflict"]) for r in state["records"]]
    [(2, 4, True), (2, 3, True), (3, 4, True), (0, 1, False)]
    """

    def __init__(self, memory, images, *, host="127.0.0.1", port=0, reviewer=None):
        if memory is None:
            raise TypeError("memory is required: a LabelMemory or the path of its file.")
        check_person(reviewer, "reviewer")
        self.images = ImageStore(images)
        self.review = _Review(as_label_memory(memory), self.images, reviewer=reviewer)
        self.memory = self.review.memory
        self.server = AnnotationServer(self.review, self.images, host=host, port=port)
        self.url = self.server.url

    @property
    def n_corrections(self):
        """int: Number of corrections (and confirmations) recorded so far."""
        return self.review.n_corrections

    def wait(self, timeout=None):
        """Wait until the page's "Finish" button is pressed.

        Parameters
        ----------
        timeout : float or None, default=None
            Seconds to wait at most; None waits as long as it takes.

        Returns
        -------
        finished : bool
            Whether the review was finished (False when ``timeout`` passed).

        Examples
        --------
        >>> import numpy as np
        >>> from ucal.annotation import ReviewSession
        >>> from ucal.oracles import LabelMemory
        >>> with ReviewSession(LabelMemory(), np.zeros((2, 8, 4, 3), np.uint8)) as session:
        ...     session.wait(timeout=0.01)
        False
        """
        return self.review.finished.wait(timeout)

    def close(self):
        """Stop the page's server (idempotent).

        Examples
        --------
        >>> import numpy as np
        >>> from ucal.annotation import ReviewSession
        >>> from ucal.oracles import LabelMemory
        >>> session = ReviewSession(LabelMemory(), np.zeros((2, 8, 4, 3), np.uint8))
        >>> session.close()
        """
        self.server.close()

    def __repr__(self):
        # Never the URL: it holds the token, and reprs end up in logs.
        return f"ReviewSession(port={self.server.port}, n_corrections={self.n_corrections})"


def serve_review(memory, images, *, host="127.0.0.1", port=0, open_browser=False,
                 timeout=None, reviewer=None):
    """Serve a page to review and correct the answers of a label memory.

    The page lists every answered pair with its two images, its current
    answer and who gave it, the contradictions of the memory first;
    "Same" / "Different" records a correction (``source="correction"``;
    the latest answer of a pair wins). Blocks
    until the page's "Finish" button, ``timeout`` or Ctrl+C. The page's
    address is logged (``logging``, level WARNING).

    Parameters
    ----------
    memory : LabelMemory, str or path-like
        The memory, or its file.
    images : ReIDSplit, list of path, or ndarray of shape (n_samples, height, width, 3)
        The images the answers' indices refer to (the training split the
        answers were given on, in the same order).
    host : str, default="127.0.0.1"
        Address to listen on (anything but loopback warns).
    port : int, default=0
        Port; 0 picks a free one.
    open_browser : bool, default=False
        Open the page in the default web browser.
    timeout : float or None, default=None
        Stop after this many seconds.
    reviewer : str or None, default=None
        The reviewer's name, recorded with each correction.

    Returns
    -------
    n_corrections : int
        Number of corrections (and confirmations) recorded.

    Raises
    ------
    ValueError
        If the memory has answers about an image beyond ``images``.

    See Also
    --------
    ReviewSession : The same page, without waiting.
    WebOracle : Answer the questions of a refiner on the same kind of page.

    Examples
    --------
    >>> import numpy as np
    >>> from ucal.annotation import serve_review
    >>> from ucal.oracles import LabelMemory
    >>> memory = LabelMemory()
    >>> _ = memory.record([[0, 1]], [True])
    >>> serve_review(memory, np.zeros((2, 8, 4, 3), np.uint8), timeout=0.1)
    0
    """
    session = ReviewSession(memory, images, host=host, port=port, reviewer=reviewer)
    show_url("Review page: open", session.url, log=logger, level=logging.WARNING)
    logger.info("Finish on the page, or Ctrl+C, to stop.")
    if open_browser:
        webbrowser.open(session.url)
    try:
        session.wait(timeout)
    except KeyboardInterrupt:
        logger.info("Review stopped (Ctrl+C).")
    finally:
        session.close()
    return session.n_corrections
