"""A human oracle: the queried pairs are answered on a local web page."""

import logging
import os
import threading
import time
import webbrowser

import numpy as np

from ._memory import LabelMemory
from ._protocol import check_pairs
from ._web_server import AnnotationServer, HTTPError, ImageStore, require_choice, require_int

__all__ = ["WebOracle", "add_annotate_arguments", "annotate_main", "serve_review"]

logger = logging.getLogger(__name__)

_CODES = {"same": 1, "different": 0, "unsure": -1}


def _as_memory(label_memory):
    if label_memory is None or all(
        callable(getattr(label_memory, name, None)) for name in ("record", "lookup")
    ):
        return label_memory
    if isinstance(label_memory, (str, os.PathLike)):
        return LabelMemory(label_memory)
    raise TypeError(
        "label_memory must be a LabelMemory, a path to its file, or None; got "
        f"{type(label_memory).__name__}."
    )


class _Batch:
    """The pairs of one oracle call, their answers and the undo stack."""

    def __init__(self, number, first_id, pairs, sides):
        self.number = number
        self.first_id = first_id  # pair ids are unique over the oracle's life
        self.pairs = pairs
        self.sides = sides  # per pair: (left, right) dicts for the page
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
            [-1 if a is None else _CODES[a] for a in self.answers], dtype=np.int8
        )


class WebOracle:
    """An oracle answered by a person on a local web page.

    Calling the oracle with a batch of pairs shows them, one at a time and
    side by side, on a page served by a small HTTP server on this machine,
    and returns once every pair of the batch has an answer: "Same person",
    "Different" or "Not sure". Each answer is written to ``label_memory``
    the moment the page sends it, so a reloaded page, a closed browser or
    a killed process loses nothing.

    Parameters
    ----------
    images : ReIDSplit, list of path, or ndarray of shape (n_samples, height, width, 3)
        The samples whose indices the pairs refer to (the ``X`` given to
        ``fit`` was computed from them, in the same order): a
        :class:`~ucal.datasets.ReIDSplit` (its images and cameras; its
        identities are never shown), image file paths, or uint8 pixels.
        The page gets an image only by its index.
    label_memory : LabelMemory, str, path-like or None, default=None
        Where every answer is recorded as it arrives (``source="web"``). A
        path opens (or creates) a :class:`LabelMemory` on that file. Give
        the refiner the same memory object, so that it never asks again a
        pair answered before a crash. None keeps answers only until the
        batch returns.
    host : str, default="127.0.0.1"
        Address to listen on. Anything other than a loopback address warns
        (``UserWarning``): anyone who can reach it and knows the token can
        answer.
    port : int, default=0
        Port to listen on; 0 picks a free one (see ``url``).
    open_browser : bool, default=False
        Open ``url`` in the default web browser once the server runs.
    n_context : int, default=4
        Number of other images of each side's group or cluster shown next
        to the pair (see :meth:`set_context`); 0 shows none.
    timeout : float or None, default=None
        Seconds to wait for a batch to be answered; then ``TimeoutError``
        is raised (the answers given so far stay recorded). None waits as
        long as it takes.
    verbose : int, default=1
        0 logs only warnings; 1 logs the URL and each batch (``logging``,
        level INFO).

    Attributes
    ----------
    url : str
        The page's address, including the secret token. Open it in a
        browser on this machine.
    n_samples : int
        Number of images (the ``N`` of the labeling cost).
    n_queries : int
        Pairs shown to the person so far, all batches together ("Not
        sure" answers included, pairs already known to the memory not).
    n_batches : int
        Batches returned so far.
    label_memory : LabelMemory or None
        The memory answers are recorded in.

    See Also
    --------
    LabelMemory : Records answers and infers what they imply.
    serve_review : Review and correct the answers of a memory file.

    Notes
    -----
    A "Not sure" answer is returned as ``-1``: nothing is recorded for
    that pair, and a refiner may ask it again in a later round. Undo
    reverts the last answer of the current batch; once the last pair of a
    batch is answered, the batch is returned at once, so later
    corrections go through :func:`serve_review` (``ucal annotate``).
    Pairs that ``label_memory`` already knows (directly or by inference)
    are answered from it and not shown. One batch is asked at a time. The
    oracle owns a running server: close it (or use it as a context
    manager); it cannot be pickled.

    Examples
    --------
    >>> import numpy as np
    >>> from ucal.oracles import WebOracle
    >>> images = np.zeros((6, 128, 64, 3), dtype=np.uint8)
    >>> with WebOracle(images, verbose=0) as oracle:
    ...     oracle.url.startswith("http://127.0.0.1:")
    True
    """

    def __init__(
        self,
        images,
        *,
        label_memory=None,
        host="127.0.0.1",
        port=0,
        open_browser=False,
        n_context=4,
        timeout=None,
        verbose=1,
    ):
        if not isinstance(host, str) or not host:
            raise TypeError(f"host must be a non-empty str, got {host!r}.")
        if isinstance(port, bool) or not isinstance(port, (int, np.integer)) or not (
            0 <= port <= 65535
        ):
            raise ValueError(f"port must be an int in [0, 65535], got {port!r}.")
        if isinstance(n_context, bool) or not isinstance(n_context, (int, np.integer)) or (
            n_context < 0
        ):
            raise ValueError(f"n_context must be an int >= 0, got {n_context!r}.")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            raise ValueError(f"timeout must be a number > 0 or None, got {timeout!r}.")
        self.host = host
        self.port = port
        self.open_browser = open_browser
        self.n_context = int(n_context)
        self.timeout = timeout
        self.verbose = verbose
        self.label_memory = _as_memory(label_memory)
        self._images = ImageStore(images)
        self.n_samples = len(self._images)
        self.n_queries = 0
        self.n_batches = 0
        self._cond = threading.Condition()
        self._batch = None
        self._last_batch = None
        self._next_pair_id = 0
        self._n_started = 0
        self._context = None
        self._client_seen = False
        self._version = 0
        self._closed = False
        self._server = AnnotationServer(self, self._images, host=host, port=int(port))
        self.url = self._server.url
        if verbose:
            logger.info("Annotation page for %d images: open %s", self.n_samples, self.url)
        if open_browser:
            webbrowser.open(self.url)

    # -- the oracle protocol ---------------------------------------------

    def set_context(self, labels):
        """Set the groups shown as context beside the next batches.

        Parameters
        ----------
        labels : array-like of int of shape (n_samples,) or None
            For each queried sample, the other samples with the same
            value form its group or cluster; ``-1`` means none. Kept until
            replaced; None removes the context.

        Examples
        --------
        >>> import numpy as np
        >>> from ucal.oracles import WebOracle
        >>> with WebOracle(np.zeros((4, 8, 4, 3), np.uint8), verbose=0) as oracle:
        ...     oracle.set_context([0, 0, 1, -1])
        """
        if labels is None:
            self._context = None
            return
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.shape[0] != self.n_samples:
            raise ValueError(
                f"set_context needs one label per sample, shape ({self.n_samples},); "
                f"got shape {labels.shape}."
            )
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"set_context needs integer labels, got dtype {labels.dtype}.")
        self._context = labels.astype(np.int64, copy=True)

    def __call__(self, pairs):
        """Ask the person about a batch of pairs; block until all are answered.

        Parameters
        ----------
        pairs : array-like of shape (m, 2)
            Sample indices into ``images``.

        Returns
        -------
        answers : ndarray of shape (m,), dtype int8
            1 same person, 0 different, -1 not sure.

        Raises
        ------
        TimeoutError
            If ``timeout`` passed first. Its ``answers`` attribute holds
            what was answered (``-1`` elsewhere); those answers are also
            in the label memory.
        RuntimeError
            If the oracle was closed, or another batch is being asked.
        """
        if self._closed:
            raise RuntimeError("This WebOracle is closed; create a new one.")
        pairs = check_pairs(pairs, n_samples=self.n_samples)
        if np.any(pairs[:, 0] == pairs[:, 1]):
            i = int(pairs[pairs[:, 0] == pairs[:, 1]][0, 0])
            raise ValueError(f"A pair must join two different samples; got ({i}, {i}).")
        answers = np.full(len(pairs), -1, dtype=np.int8)
        if len(pairs) == 0:
            return answers
        # One question per unordered pair, in the order the caller gave them.
        _, first, inverse = np.unique(
            np.sort(pairs, axis=1), axis=0, return_index=True, return_inverse=True
        )
        inverse = inverse.reshape(-1)
        known = np.full(len(first), -1, dtype=np.int8)
        if self.label_memory is not None:
            known = np.asarray(self.label_memory.lookup(pairs[first]), dtype=np.int8)
        ask = np.flatnonzero(known < 0)
        ask = ask[np.argsort(first[ask], kind="stable")]
        if len(ask) < len(first):
            logger.info("%d pairs answered from the label memory.", len(first) - len(ask))
        if len(ask):
            known[ask] = self._ask(pairs[first[ask]])
        return known[inverse]

    def _ask(self, pairs):
        sides = self._sides(pairs)  # outside the lock: the page keeps polling meanwhile
        with self._cond:
            if self._batch is not None:
                raise RuntimeError(
                    "This WebOracle is already waiting for a batch; it asks one batch at a time."
                )
            self._n_started += 1
            batch = _Batch(self._n_started, self._next_pair_id, pairs, sides)
            self._next_pair_id += len(pairs)
            self.n_queries += len(pairs)
            self._batch = batch
            self._changed()
            seen = self._client_seen
        if not seen:
            logger.warning(
                "WebOracle is waiting for %d answers: open %s in a web browser.",
                len(pairs),
                self.url,
            )
        elif self.verbose:
            logger.info("Batch %d: %d pairs to answer on the page.", batch.number, len(pairs))
        start = time.monotonic()
        outcome = "interrupted"
        try:
            with self._cond:
                while not batch.complete and not self._closed:
                    wait = None
                    if self.timeout is not None:
                        wait = self.timeout - (time.monotonic() - start)
                        if wait <= 0:
                            break
                    self._cond.wait(timeout=wait)
                codes = batch.codes()
                if batch.complete:
                    outcome = "answered"
                else:
                    outcome = "closed" if self._closed else "timed out"
        finally:
            with self._cond:
                batch.outcome = outcome
                self._batch = None
                self._last_batch = batch
                if outcome == "answered":
                    self.n_batches += 1
                self._changed()
        kept = self._kept_message(batch)
        if outcome == "closed":
            raise RuntimeError(f"The WebOracle was closed during batch {batch.number}; {kept}")
        if outcome == "timed out":
            error = TimeoutError(
                f"The WebOracle's timeout ({self.timeout} s) passed with batch "
                f"{batch.number} unanswered; {kept}"
            )
            error.answers = codes
            raise error
        if self.verbose:
            logger.info(
                "Batch %d answered: %d same, %d different, %d not sure.",
                batch.number,
                int((codes == 1).sum()),
                int((codes == 0).sum()),
                int((codes == -1).sum()),
            )
        return codes

    def _kept_message(self, batch):
        n = batch.n_answered
        where = "were not recorded (no label_memory)"
        if self.label_memory is not None:
            path = getattr(self.label_memory, "path", None)
            where = "are in the label memory" + (f" {path!r}" if path else "")
        return f"{n} of its {len(batch)} pairs were answered; those answers {where}."

    # -- context images --------------------------------------------------

    def _sides(self, pairs):
        """What the page shows of each side of each pair."""
        labels = self._context
        sides = []
        for i, j in pairs.tolist():
            left = self._side(i, j, labels)
            # Both in one group: show the right side other members when there are some.
            right = self._side(j, i, labels, avoid=left["context"])
            sides.append((left, right))
        return sides

    def _side(self, index, other, labels, avoid=()):
        side = {"index": index, "camera": self._images.camera(index), "group_size": None,
                "context": []}
        if labels is None or labels[index] < 0:
            return side
        members = np.flatnonzero(labels == labels[index])
        side["group_size"] = int(len(members))
        members = members[(members != index) & (members != other)]
        fresh = members[~np.isin(members, avoid)]
        if len(fresh) >= min(self.n_context, len(members)):
            members = fresh
        if self.n_context and len(members):
            # Spread over the group rather than its first few (often one camera).
            take = np.unique(np.linspace(0, len(members) - 1, self.n_context).round().astype(int))
            side["context"] = members[take].tolist()
        return side

    # -- the page's API (called from the server's threads) ----------------

    def _changed(self):
        self._version += 1
        self._cond.notify_all()

    def _api_state(self):
        """The page's view of the oracle (``GET /api/state``)."""
        with self._cond:
            self._client_seen = True
            return self._snapshot()

    def _snapshot(self):
        from ..metrics import labeling_cost  # lazily: the metrics pull in more modules

        batch = self._batch
        memory = self.label_memory
        state = {
            "mode": "oracle",
            "version": self._version,
            "n_samples": self.n_samples,
            "n_queries": self.n_queries,
            "cost": labeling_cost(self.n_queries, self.n_samples) if self.n_samples >= 2 else None,
            "n_batches": self.n_batches,
            "closed": self._closed,
            "memory": None
            if memory is None
            else {"path": getattr(memory, "path", None), "n_answers": len(memory)},
            "batch": None,
            "last_batch": None,
        }
        if self._last_batch is not None:
            last = self._last_batch
            state["last_batch"] = {
                "number": last.number,
                "n_pairs": len(last),
                "n_answered": last.n_answered,
                "outcome": last.outcome,
            }
        if batch is not None:
            undo = batch.first_id + batch.history[-1][0] if batch.history else None
            state["batch"] = {
                "number": batch.number,
                "n_pairs": len(batch),
                "n_answered": batch.n_answered,
                "undo_pair_id": undo,
                "pairs": [
                    {
                        "id": batch.first_id + k,
                        "left": left,
                        "right": right,
                        "answer": batch.answers[k],
                    }
                    for k, (left, right) in enumerate(batch.sides)
                ],
            }
        return state

    def _api_post(self, name, payload):
        """Handle ``POST /api/<name>``: ``answer`` or ``undo``."""
        if name == "answer":
            pair_id = require_int(payload, "pair_id")
            answer = require_choice(payload, "answer", _CODES)
            with self._cond:
                batch, position = self._find(pair_id)
                previous = batch.answers[position]
                if previous != answer:
                    # Durable first: a failed write changes nothing here.
                    self._write(batch.pairs[position], previous, answer, source="web")
                    batch.answers[position] = answer
                    batch.history.append((position, previous))
                    self._changed()
                return self._snapshot()
        if name == "undo":
            pair_id = require_int(payload, "pair_id")
            with self._cond:
                batch, position = self._find(pair_id)
                if not batch.history:
                    raise HTTPError(409, "Nothing to undo in this batch.")
                last, previous = batch.history[-1]
                if last != position:
                    raise HTTPError(
                        409,
                        f"Pair {pair_id} is not the last answer of this batch "
                        f"(that is pair {batch.first_id + last}); reload the page.",
                    )
                self._write(batch.pairs[position], batch.answers[position], previous,
                            source="undo")
                batch.answers[position] = previous
                batch.history.pop()
                self._changed()
                return self._snapshot()
        raise HTTPError(404, f"No such endpoint: POST /api/{name}.")

    def _find(self, pair_id):
        batch = self._batch
        if batch is None or not batch.first_id <= pair_id < batch.first_id + len(batch):
            if 0 <= pair_id < self._next_pair_id:
                raise HTTPError(409, f"Pair {pair_id} belongs to a batch that is over.")
            raise HTTPError(404, f"No pair {pair_id} in the current batch.")
        return batch, pair_id - batch.first_id

    def _write(self, pair, old, new, *, source):
        """Make the memory hold ``new`` for ``pair`` instead of ``old``."""
        memory = self.label_memory
        if memory is None:
            return
        if new in ("same", "different"):
            memory.record(pair.reshape(1, 2), [_CODES[new]], source=source)
        elif old in ("same", "different"):
            # The person withdrew a recorded answer (undo, or changed to "not sure").
            retract = getattr(memory, "retract", None)
            if callable(retract):
                retract(pair.reshape(1, 2), source=source)
            else:
                logger.warning(
                    "The label memory cannot retract answers: its %r answer for pair "
                    "(%d, %d) stays until the pair is answered again.",
                    old,
                    pair[0],
                    pair[1],
                )

    # -- life cycle ------------------------------------------------------

    def close(self):
        """Stop the server; a batch being asked raises ``RuntimeError``.

        Examples
        --------
        >>> import numpy as np
        >>> from ucal.oracles import WebOracle
        >>> oracle = WebOracle(np.zeros((2, 8, 4, 3), np.uint8), verbose=0)
        >>> oracle.close()
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._changed()
        self._server.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __getstate__(self):
        raise TypeError(
            "A WebOracle cannot be pickled: it owns a running web server. Pickle "
            "the fitted estimator without its oracle, and the LabelMemory file."
        )

    def __repr__(self):
        # Never the URL: it holds the token, and reprs end up in logs.
        return (
            f"WebOracle(host={self.host!r}, port={self._server.port}, "
            f"n_samples={self.n_samples})"
        )


# -- reviewing a memory file ----------------------------------------------


class _Review:
    """Controller of the review page: the recorded answers, and corrections."""

    def __init__(self, memory, images):
        self.memory = memory
        self.images = images
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

    def _rows(self):
        rows = {}
        for record in self.memory:
            key = (record.i, record.j)
            row = rows.get(key)
            if row is None:
                row = rows[key] = {"i": record.i, "j": record.j, "history": []}
            answer = None if record.same is None else ("same" if record.same else "different")
            row["history"].append({"answer": answer, "source": record.source,
                                   "time": record.time})
        out = []
        for row in rows.values():
            latest = row["history"][-1]
            row.update(
                answer=latest["answer"],
                source=latest["source"],
                time=latest["time"],
                left={"index": row["i"], "camera": self.images.camera(row["i"])},
                right={"index": row["j"], "camera": self.images.camera(row["j"])},
            )
            out.append(row)
        return out

    def _api_state(self):
        with self._lock:
            rows = self._rows()
        return {
            "mode": "review",
            "n_samples": len(self.images),
            "n_corrections": self.n_corrections,
            "finished": self.finished.is_set(),
            "memory": {"path": getattr(self.memory, "path", None), "n_answers": len(self.memory)},
            "records": rows,
        }

    def _api_post(self, name, payload):
        if name == "correct":
            i = require_int(payload, "i")
            j = require_int(payload, "j")
            answer = require_choice(payload, "answer", ("same", "different"))
            with self._lock:
                rows = {(r["i"], r["j"]): r for r in self._rows()}
                row = rows.get((min(i, j), max(i, j)))
                if row is None:
                    raise HTTPError(404, f"The memory has no answer for pair ({i}, {j}).")
                if row["answer"] != answer:
                    self.memory.record([[i, j]], [_CODES[answer]], source="correction")
                    self.n_corrections += 1
                row = {(r["i"], r["j"]): r for r in self._rows()}[(row["i"], row["j"])]
            return {"record": row, "n_corrections": self.n_corrections}
        if name == "finish":
            self.finished.set()
            return {"finished": True, "n_corrections": self.n_corrections}
        raise HTTPError(404, f"No such endpoint: POST /api/{name}.")


class _ReviewSession:
    """A running review page (used by :func:`serve_review` and the tests)."""

    def __init__(self, memory, images, *, host="127.0.0.1", port=0):
        self.images = ImageStore(images)
        self.review = _Review(_as_memory(memory), self.images)
        self.server = AnnotationServer(self.review, self.images, host=host, port=port)
        self.url = self.server.url

    def wait(self, timeout=None):
        return self.review.finished.wait(timeout)

    def close(self):
        self.server.close()


def serve_review(memory, images, *, host="127.0.0.1", port=0, open_browser=False,
                 timeout=None):
    """Serve a page to review and correct the answers of a label memory.

    The page lists every answered pair with its two images, its latest
    answer and who gave it; "Same" / "Different" records a correction
    (``source="correction"``; the latest answer of a pair wins). Blocks
    until the page's "Finish" button, ``timeout`` or Ctrl+C.

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

    Returns
    -------
    n_corrections : int
        Number of corrections recorded.

    Examples
    --------
    >>> import numpy as np
    >>> from ucal.oracles import LabelMemory
    >>> from ucal.oracles._web import serve_review
    >>> memory = LabelMemory()
    >>> _ = memory.record([[0, 1]], [True])
    >>> serve_review(memory, np.zeros((2, 8, 4, 3), np.uint8), timeout=0.1)
    0
    """
    session = _ReviewSession(memory, images, host=host, port=port)
    logger.warning("Review page: open %s (Finish on the page or Ctrl+C to stop).", session.url)
    if open_browser:
        webbrowser.open(session.url)
    try:
        session.wait(timeout)
    except KeyboardInterrupt:
        logger.info("Review stopped (Ctrl+C).")
    finally:
        session.close()
    return session.review.n_corrections


_DATASETS = ("market1501", "dukemtmc", "msmt17", "folder", "synthetic")


def add_annotate_arguments(parser):
    """Add the options of ``ucal annotate`` to an ``argparse`` parser.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        Typically the ``annotate`` sub-parser of the ``ucal`` command.

    Returns
    -------
    parser : argparse.ArgumentParser
        The same parser.

    Examples
    --------
    >>> import argparse
    >>> from ucal.oracles._web import add_annotate_arguments
    >>> parser = add_annotate_arguments(argparse.ArgumentParser(prog="ucal annotate"))
    >>> args = parser.parse_args(["--memory", "answers.jsonl", "--dataset", "synthetic"])
    >>> args.host, args.port
    ('127.0.0.1', 0)
    """
    parser.add_argument("--memory", required=True, metavar="FILE",
                        help="label memory file (JSON lines) to review")
    parser.add_argument("--dataset", required=True, choices=_DATASETS,
                        help="dataset the answers were given on (its training split)")
    parser.add_argument("--root", metavar="DIR",
                        help="dataset folder (or CSV file for --dataset folder)")
    parser.add_argument("--pattern", default=None,
                        help="--dataset folder: regular expression with groups pid/camid")
    parser.add_argument("--random-state", type=int, default=0,
                        help="--dataset synthetic: seed the answers were given with")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; others warn)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--open-browser", action="store_true",
                        help="open the page in the default web browser")
    return parser


def _training_split(args):
    from .. import datasets

    if args.dataset == "synthetic":
        return datasets.make_persons(random_state=args.random_state).train
    if not args.root:
        raise ValueError(f"--dataset {args.dataset} needs --root DIR.")
    if args.dataset == "folder":
        return datasets.load_image_folder(args.root, args.pattern).train
    loader = {
        "market1501": datasets.load_market1501,
        "dukemtmc": datasets.load_dukemtmc,
        "msmt17": datasets.load_msmt17,
    }[args.dataset]
    return loader(args.root).train


def annotate_main(args=None, *, split=None):
    """Run ``ucal annotate``: review and correct a memory file in a browser.

    Parameters
    ----------
    args : list of str, argparse.Namespace or None, default=None
        Command-line arguments (see :func:`add_annotate_arguments`), or a
        namespace already parsed with them; None reads ``sys.argv``.
    split : ReIDSplit, default=None
        The training split the answers refer to. None loads it from
        ``--dataset`` / ``--root`` (for ``synthetic``: ``make_persons``
        with its defaults and ``--random-state``).

    Returns
    -------
    exit_code : int
        0.

    Examples
    --------
    >>> from ucal.oracles._web import annotate_main
    >>> annotate_main  # doctest: +ELLIPSIS
    <function annotate_main at ...>
    """
    import argparse

    if not isinstance(args, argparse.Namespace):
        parser = add_annotate_arguments(argparse.ArgumentParser(
            prog="ucal annotate",
            description="Review and correct the answers of a label memory file in a browser.",
        ))
        args = parser.parse_args(args)
    if not os.path.exists(args.memory):
        raise FileNotFoundError(f"No label memory file {args.memory!r}.")
    memory = LabelMemory(args.memory)
    if split is None:
        split = _training_split(args)
    n_corrections = serve_review(
        memory, split, host=args.host, port=args.port, open_browser=args.open_browser
    )
    logger.info("%d corrections recorded in %s.", n_corrections, args.memory)
    return 0
