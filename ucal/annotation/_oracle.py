"""A human oracle: the queried pairs are answered on a local web page."""

import logging
import threading
import webbrowser

from ..oracles import as_label_memory
from ._controller import (
    ANSWER_CODES,
    AnnotationController,
    RequestError,
    require_choice,
    require_int,
)
from ._questions import (
    QuestionBatch,
    answer_unknown,
    check_context,
    check_person_options,
    oracle_state,
    pair_sides,
    read_seconds,
    write_answer,
)
from ._server import AnnotationServer, ImageStore, _Closable, show_url

__all__ = ["WebOracle"]

logger = logging.getLogger(__name__)


class WebOracle(_Closable, AnnotationController):
    """An oracle answered by a person on a local web page.

    Calling the oracle with a batch of pairs shows them, one at a time and
    side by side, on a page served by a small HTTP server on this machine,
    and returns once every pair of the batch has an answer: "Same person",
    "Different" or "Not sure". Each answer ("Not sure" included) is
    written to ``label_memory`` the moment the page sends it, so a reloaded
    page, a closed browser or a killed process loses nothing.

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
        path opens (or creates) a :class:`~ucal.oracles.LabelMemory` on
        that file. Give the refiner the same memory object, so that it
        never asks again a pair answered before a crash. None keeps answers only until the
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
    annotator : str or None, default=None
        The person answering, recorded with each answer (with the seconds
        each answer took, which the page measures).

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
    ucal.oracles.LabelMemory : Records answers and infers what they imply.
    serve_review : Review and correct the answers of a memory file.
    AnnotationServer : The page's server.

    Notes
    -----
    A "Not sure" answer is returned as ``-1`` and recorded in
    ``label_memory`` as a "not sure" record: it overrides no "same" /
    "different" answer, and a refiner may ask the pair once more in a
    later round, never after a second "not sure". Undo reverts the last
    answer of the current batch; once the last pair of a batch is
    answered, the batch is returned at once, so later corrections go
    through :func:`serve_review` (``ucal annotate``). Pairs that
    ``label_memory`` already knows (directly or by inference) are answered
    from it and not shown, and so are pairs it holds two "not sure"
    answers for (answered ``-1``). One batch is asked at a time. The
    oracle owns a running server: close it (or use it as a context
    manager); it cannot be pickled.

    Examples
    --------
    >>> import numpy as np
    >>> from ucal.annotation import WebOracle
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
        annotator=None,
    ):
        check_person_options(n_context, timeout, annotator)
        self.host = host
        self.port = port
        self.open_browser = open_browser
        self.n_context = int(n_context)
        self.timeout = timeout
        self.verbose = verbose
        self.annotator = annotator
        self.label_memory = as_label_memory(label_memory, optional=True)
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
        self._server = AnnotationServer(self, self._images, host=host, port=port)
        self.url = self._server.url
        if verbose:
            show_url(f"Annotation page for {self.n_samples} images: open", self.url, log=logger)
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
        >>> from ucal.annotation import WebOracle
        >>> with WebOracle(np.zeros((4, 8, 4, 3), np.uint8), verbose=0) as oracle:
        ...     oracle.set_context([0, 0, 1, -1])
        """
        self._context = check_context(labels, self.n_samples)

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
        return answer_unknown(pairs, self.n_samples, self.label_memory, self._ask)

    def _ask(self, pairs):
        # outside the lock: the page keeps polling meanwhile
        sides = pair_sides(pairs, self._images, self._context, self.n_context)
        with self._cond:
            if self._batch is not None:
                raise RuntimeError(
                    "This WebOracle is already waiting for a batch; it asks one batch at a time."
                )
            self._n_started += 1
            batch = QuestionBatch(self._n_started, self._next_pair_id, pairs, sides)
            self._next_pair_id += len(pairs)
            self.n_queries += len(pairs)
            self._batch = batch
            self._changed()
            seen = self._client_seen
        if not seen:
            show_url(f"WebOracle is waiting for {len(pairs)} answers: open in a web browser",
                     self.url, log=logger, level=logging.WARNING)
        elif self.verbose:
            logger.info("Batch %d: %d pairs to answer on the page.", batch.number, len(pairs))
        outcome = "interrupted"
        with self._cond:
            try:
                self._cond.wait_for(lambda: batch.complete or self._closed, timeout=self.timeout)
                if batch.complete:
                    outcome = "answered"
                else:
                    outcome = "closed" if self._closed else "timed out"
            finally:  # the answers read and the batch closed at once: no answer in between
                codes = batch.codes()
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

    # -- the page's API: the AnnotationController (called from the server's threads)

    def _changed(self):
        """Wake the waiting batch and bump the state's version (under ``_cond``)."""
        self._version += 1
        self._cond.notify_all()

    def state(self):
        """The page's view of the oracle (``GET /api/state``).

        Calling it tells the oracle that a page is open: a batch then no
        longer warns that nobody is looking.

        Returns
        -------
        state : dict
            ``mode`` (``"oracle"``), ``version`` (bumped at every change),
            the counts (``n_samples``, ``n_queries``, ``n_batches``),
            ``cost``, ``closed``, ``memory`` (its ``path`` and
            ``n_answers``), ``batch`` (the open batch: its pairs, with the
            two sides and the answers given, and ``undo_pair_id``) and
            ``last_batch`` (how the previous batch ended), or None for
            those two.

        Examples
        --------
        >>> import numpy as np
        >>> from ucal.annotation import WebOracle
        >>> with WebOracle(np.zeros((3, 8, 4, 3), np.uint8), verbose=0) as oracle:
        ...     state = oracle.state()
        >>> state["mode"], state["n_samples"], state["batch"]
        ('oracle', 3, None)
        """
        with self._cond:
            self._client_seen = True
            return self._snapshot()

    def _snapshot(self):
        batch = self._batch
        state = oracle_state(self)
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

    def post(self, action, payload):
        """Record an answer of the page, or undo one (``POST /api/<action>``).

        Parameters
        ----------
        action : {"answer", "undo"}
            ``answer`` takes ``{"pair_id": int, "answer": "same" |
            "different" | "unsure"}`` and records it (a pair may be answered
            again: the latest answer counts); ``undo`` takes ``{"pair_id":
            int}``, the pair of the last answer of the batch, and reverts
            that answer.
        payload : dict
            The request's JSON object.

        Returns
        -------
        state : dict
            The new state, as :meth:`state` gives it.

        Raises
        ------
        RequestError
            If the action is unknown (404), the payload malformed (400), the
            pair not in the open batch (404, or 409 for a batch that is
            over), or there is nothing to undo (409); nothing changed.
        OSError
            If the label memory cannot write the answer; nothing changed.

        Examples
        --------
        >>> import numpy as np
        >>> from ucal.annotation import RequestError, WebOracle
        >>> with WebOracle(np.zeros((3, 8, 4, 3), np.uint8), verbose=0) as oracle:
        ...     try:
        ...         oracle.post("answer", {"pair_id": 0, "answer": "same"})
        ...     except RequestError as error:
        ...         print(error.status, error.message)
        404 No pair 0 in the current batch.
        """
        if action == "answer":
            pair_id = require_int(payload, "pair_id")
            answer = require_choice(payload, "answer", ANSWER_CODES)
            seconds = read_seconds(payload)
            with self._cond:
                batch, position = self._find(pair_id)
                previous = batch.answers[position]
                if previous != answer:
                    # Durable first: a failed write changes nothing here.
                    write_answer(self.label_memory, batch.pairs[position], previous, answer,
                                 source="web", annotator=self.annotator, seconds=seconds)
                    batch.answers[position] = answer
                    batch.history.append((position, previous))
                    self._changed()
                return self._snapshot()
        if action == "undo":
            pair_id = require_int(payload, "pair_id")
            with self._cond:
                batch, position = self._find(pair_id)
                if not batch.history:
                    raise RequestError(409, "Nothing to undo in this batch.")
                last, previous = batch.history[-1]
                if last != position:
                    raise RequestError(
                        409,
                        f"Pair {pair_id} is not the last answer of this batch "
                        f"(that is pair {batch.first_id + last}); reload the page.",
                    )
                write_answer(self.label_memory, batch.pairs[position], batch.answers[position],
                             previous, source="undo", annotator=self.annotator)
                batch.answers[position] = previous
                batch.history.pop()
                self._changed()
                return self._snapshot()
        raise RequestError(404, f"No such endpoint: POST /api/{action}.")

    def _find(self, pair_id):
        batch = self._batch
        if batch is None or not batch.first_id <= pair_id < batch.first_id + len(batch):
            if 0 <= pair_id < self._next_pair_id:
                raise RequestError(409, f"Pair {pair_id} belongs to a batch that is over.")
            raise RequestError(404, f"No pair {pair_id} in the current batch.")
        return batch, pair_id - batch.first_id

    # -- life cycle ------------------------------------------------------

    def close(self):
        """Stop the server; a batch being asked raises ``RuntimeError``.

        Examples
        --------
        >>> import numpy as np
        >>> from ucal.annotation import WebOracle
        >>> oracle = WebOracle(np.zeros((2, 8, 4, 3), np.uint8), verbose=0)
        >>> oracle.close()
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._changed()
        self._server.close()

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
