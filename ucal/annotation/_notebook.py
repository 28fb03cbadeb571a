"""A human oracle answered in a Jupyter notebook, with ipywidgets."""

import concurrent.futures
import logging
import threading
import time

from ..oracles import as_label_memory
from ._questions import (
    QuestionBatch,
    answer_unknown,
    check_context,
    check_person_options,
    pair_sides,
    write_answer,
)
from ._server import ImageStore, _Closable

__all__ = ["NotebookOracle"]

logger = logging.getLogger(__name__)

_IMAGE_HEIGHT = "256"  # pixels, the two images of the pair
_THUMB_HEIGHT = "80"  # pixels, the context thumbnails
_KEYS = {"s": "same", "d": "different", "n": "unsure"}
_UNDO_KEY = "u"
_HELP = "Keys: s same, d different, n not sure, u undo."


def _in_kernel():
    """True inside a running IPython kernel (Jupyter), False elsewhere."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class NotebookOracle(_Closable):
    """An oracle answered by a person in a Jupyter notebook.

    Calling the oracle with a batch of pairs shows them, one at a time and
    side by side, in an ipywidgets panel, and returns once every pair of
    the batch has an answer: "Same person", "Different" or "Not sure".
    Each answer ("Not sure" included) is written to ``label_memory`` the
    moment its button is pressed, so a restarted kernel loses nothing.

    The panel's buttons run on the kernel's main thread, so the oracle must
    wait for answers on another one: start the work that asks it with
    :meth:`run` (``oracle.run(refiner.fit, X)``), which returns at once.

    Parameters
    ----------
    images : ReIDSplit, list of path, or ndarray of shape (n_samples, height, width, 3)
        The samples whose indices the pairs refer to (the ``X`` given to
        ``fit`` was computed from them, in the same order): a
        :class:`~ucal.datasets.ReIDSplit` (its images and cameras; its
        identities are never shown), image file paths, or uint8 pixels.
    label_memory : LabelMemory, str, path-like or None, default=None
        Where every answer is recorded as it is given (``source="notebook"``,
        with ``annotator`` and the seconds the answer took). A path opens
        (or creates) a :class:`~ucal.oracles.LabelMemory` on that file.
        Give the refiner the same memory object, so that it never asks
        again a pair answered before a crash. None keeps answers only
        until the batch returns.
    annotator : str or None, default=None
        The person answering, stored with each answer.
    n_context : int, default=4
        Number of other images of each side's group or cluster shown under
        the pair (see :meth:`set_context`); 0 shows none.
    timeout : float or None, default=None
        Seconds to wait for a batch to be answered; then ``TimeoutError``
        is raised (the answers given so far stay recorded). None waits as
        long as it takes.
    verbose : int, default=1
        0 logs only warnings; 1 logs each batch (``logging``, level INFO).

    Attributes
    ----------
    widget : ipywidgets.VBox
        The whole panel; showing the oracle in a cell shows it.
    left_image, right_image : ipywidgets.Image
        The two images of the pair on screen.
    left_caption, right_caption : ipywidgets.Label
        Each image's index, camera and group size.
    left_context, right_context : ipywidgets.HBox
        Thumbnails of other members of each side's group (``tooltip``
        names their index).
    same_button, different_button, unsure_button : ipywidgets.Button
        Answer the pair on screen; the next unanswered pair is shown.
    undo_button : ipywidgets.Button
        Revert the last answer of the batch, and show its pair.
    previous_button, next_button : ipywidgets.Button
        Move through the batch (a pair may be answered again: the latest
        answer counts).
    keys : ipywidgets.Text
        Keyboard box: typing ``s``, ``d`` or ``n`` in it answers, ``u``
        undoes.
    progress : ipywidgets.Label
        "k / m answered in this batch · total asked N".
    message : ipywidgets.Label
        What the oracle is doing, or what went wrong.
    current_pair : tuple of (int, int) or None
        The pair on screen; None when no batch is waiting.
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
    WebOracle : The same oracle on a local web page.
    ucal.oracles.LabelMemory : Records answers and infers what they imply.

    Notes
    -----
    ipywidgets sends no key events to the kernel, so the keyboard works
    through a text box: click into it once, then each typed ``s``, ``d``,
    ``n`` or ``u`` acts (only the last character typed counts) and the box
    is cleared.

    A "Not sure" answer is returned as ``-1`` and recorded in
    ``label_memory`` as a "not sure" record, exactly as
    :class:`WebOracle` does: it overrides no "same" / "different" answer,
    and a refiner may ask the pair once more in a later round, never after
    a second "not sure". Undo reverts the last answer of the current batch
    (a definite answer is retracted, an earlier "not sure" recorded again);
    once the last pair of a batch is answered, the batch is returned at
    once, so later corrections go through :func:`serve_review`. Pairs that
    ``label_memory`` already knows (directly or by inference) are answered
    from it and not shown, and so are pairs it holds two "not sure"
    answers for (answered ``-1``). One batch is asked at a time.

    Calling the oracle on the main thread of a Jupyter kernel raises
    ``RuntimeError``: it would wait for buttons that this very thread must
    run. Outside a kernel (a script, a test) it simply blocks. The oracle
    owns widgets: close it (or use it as a context manager); it cannot be
    pickled. ``ipywidgets`` is an optional dependency
    (``pip install 'ucal[notebook]'``).

    Examples
    --------
    >>> import numpy as np
    >>> from ucal.annotation import NotebookOracle
    >>> images = np.zeros((6, 128, 64, 3), dtype=np.uint8)
    >>> with NotebookOracle(images, annotator="ann", verbose=0) as oracle:
    ...     print(oracle.progress.value)
    No batch waiting · total asked 0

    In a notebook, show the panel and run the refiner in the background:

    >>> oracle = NotebookOracle(images, label_memory="answers.jsonl")  # doctest: +SKIP
    >>> oracle  # doctest: +SKIP
    >>> future = oracle.run(refiner.fit, X)  # doctest: +SKIP
    """

    def __init__(
        self,
        images,
        *,
        label_memory=None,
        annotator=None,
        n_context=4,
        timeout=None,
        verbose=1,
    ):
        try:
            import ipywidgets
        except ImportError as exc:
            raise ImportError(
                "NotebookOracle needs ipywidgets: pip install 'ucal[notebook]'"
            ) from exc
        check_person_options(n_context, timeout, annotator)
        self.annotator = annotator
        self.n_context = int(n_context)
        self.timeout = timeout
        self.verbose = verbose
        self.label_memory = as_label_memory(label_memory, optional=True)
        self._images = ImageStore(images)
        self.n_samples = len(self._images)
        self.n_queries = 0
        self.n_batches = 0
        self._cond = threading.Condition(threading.RLock())
        self._batch = None
        self._position = 0
        self._shown_at = time.monotonic()
        self._n_started = 0
        self._context = None
        self._closed = False
        self._displayed = False
        self._build(ipywidgets)
        with self._cond:
            self._render()

    # -- the panel ---------------------------------------------------------

    def _build(self, w):
        def image():
            return w.Image(value=b"", format="png", height=_IMAGE_HEIGHT)

        def thumbnails():
            return [
                w.Image(value=b"", format="png", height=_THUMB_HEIGHT)
                for _ in range(self.n_context)
            ]

        def button(description, style, tooltip):
            return w.Button(description=description, button_style=style, tooltip=tooltip)

        self.left_image, self.right_image = image(), image()
        self.left_caption, self.right_caption = w.Label(), w.Label()
        self._thumbnails = (thumbnails(), thumbnails())
        self.left_context, self.right_context = w.HBox(), w.HBox()
        self.same_button = button("Same person", "success", "Same person (key s)")
        self.different_button = button("Different", "danger", "Different people (key d)")
        self.unsure_button = button("Not sure", "warning", "Not sure (key n)")
        self.undo_button = button("Undo", "", "Revert the last answer of this batch (key u)")
        self.previous_button = button("Previous", "", "Show the previous pair of this batch")
        self.next_button = button("Next", "", "Show the next pair of this batch")
        self.keys = w.Text(
            value="",
            placeholder="type s, d, n or u here",
            description="Keys:",
            continuous_update=True,
        )
        self.progress = w.Label()
        self.message = w.Label()
        self.same_button.on_click(lambda _: self._answer("same"))
        self.different_button.on_click(lambda _: self._answer("different"))
        self.unsure_button.on_click(lambda _: self._answer("unsure"))
        self.undo_button.on_click(lambda _: self._undo())
        self.previous_button.on_click(lambda _: self._move(-1))
        self.next_button.on_click(lambda _: self._move(+1))
        self.keys.observe(self._on_key, names="value")
        sides = w.HBox(
            [
                w.VBox([self.left_caption, self.left_image, self.left_context]),
                w.VBox([self.right_caption, self.right_image, self.right_context]),
            ]
        )
        self.widget = w.VBox(
            [
                self.progress,
                sides,
                w.HBox([self.same_button, self.different_button, self.unsure_button]),
                w.HBox([self.previous_button, self.next_button, self.undo_button, self.keys]),
                self.message,
            ]
        )

    def _picture(self, index):
        """``(bytes, format)`` of image ``index``; an empty image if it cannot be read."""
        try:
            body, content_type = self._images.encode(index)
        except (OSError, ValueError) as exc:
            logger.warning("Cannot show image %d: %s", index, exc)
            return b"", "png"
        return body, content_type.split("/", 1)[1]

    def _show_side(self, side, image, caption, context, thumbnails):
        if side is None:
            image.value = b""
            caption.value = ""
            context.children = ()
            return
        image.value, image.format = self._picture(side["index"])
        parts = [f"image {side['index']}"]
        if side["camera"] is not None:
            parts.append(f"camera {side['camera']}")
        if side["group_size"] is not None:
            parts.append(f"group of {side['group_size']}")
        caption.value = " · ".join(parts)
        shown = []
        for thumb, index in zip(thumbnails, side["context"]):
            thumb.value, thumb.format = self._picture(index)
            thumb.tooltip = f"image {index}"
            shown.append(thumb)
        context.children = tuple(shown)

    def _render(self, message=None):
        """Show the state on the widgets (under ``_cond``)."""
        batch = self._batch
        answer_buttons = {
            "same": self.same_button,
            "different": self.different_button,
            "unsure": self.unsure_button,
        }
        if batch is None:
            left = right = None
            current = None
            self.progress.value = f"No batch waiting · total asked {self.n_queries}"
        else:
            left, right = batch.sides[self._position]
            current = batch.answers[self._position]
            self.progress.value = (
                f"Pair {self._position + 1} of {len(batch)} · "
                f"{batch.n_answered} / {len(batch)} answered in this batch · "
                f"total asked {self.n_queries}"
            )
        self._show_side(left, self.left_image, self.left_caption, self.left_context,
                        self._thumbnails[0])
        self._show_side(right, self.right_image, self.right_caption, self.right_context,
                        self._thumbnails[1])
        open_ = batch is not None and not self._closed and not batch.complete
        for name, button in answer_buttons.items():
            button.disabled = not open_
            button.icon = "check" if open_ and current == name else ""
        self.undo_button.disabled = not (open_ and batch.history)
        self.previous_button.disabled = not (open_ and self._position > 0)
        self.next_button.disabled = not (open_ and self._position < len(batch) - 1)
        self.keys.disabled = not open_
        if self._closed:
            message = "This NotebookOracle is closed."
        if message is not None:
            self.message.value = message

    def _show(self, position):
        """Put pair ``position`` of the batch on screen (under ``_cond``)."""
        self._position = position
        self._shown_at = time.monotonic()

    @property
    def current_pair(self):
        """The pair on screen, ``(i, j)``; None when no batch is waiting."""
        with self._cond:
            batch = self._batch
            if batch is None:
                return None
            i, j = batch.pairs[self._position].tolist()
            return (i, j)

    def display(self):
        """Show the panel in the notebook (``IPython.display.display``)."""
        from IPython.display import display

        self._displayed = True
        display(self.widget)

    def _repr_mimebundle_(self, **kwargs):
        self._displayed = True
        return self.widget._repr_mimebundle_(**kwargs)

    # -- what the person does (called on the kernel's thread) ------------

    def _answer(self, answer):
        with self._cond:
            batch = self._batch
            if batch is None or self._closed or batch.complete:
                return
            position = self._position
            previous = batch.answers[position]
            if previous != answer:
                seconds = max(time.monotonic() - self._shown_at, 0.0)
                try:
                    # Durable first: a failed write changes nothing here.
                    self._write(batch.pairs[position], previous, answer, source="notebook",
                                seconds=seconds)
                except (OSError, ValueError) as exc:  # no room; or a foreign line in the file
                    logger.error("The answer could not be recorded: %s", exc)
                    self._render(f"The answer was NOT recorded: {exc}")
                    return
                batch.answers[position] = answer
                batch.history.append((position, previous))
                self._cond.notify_all()
            # the next unanswered pair after this one (wrapping round), if any
            n = len(batch)
            following = [(position + k) % n for k in range(1, n + 1)]
            unanswered = [p for p in following if batch.answers[p] is None]
            if unanswered:
                self._show(unanswered[0])
                self._render(f"Batch {batch.number}: {_HELP}")
            else:
                self._render(f"Batch {batch.number} answered.")

    def _undo(self):
        with self._cond:
            batch = self._batch
            if batch is None or self._closed or batch.complete or not batch.history:
                return
            position, previous = batch.history[-1]
            try:
                self._write(batch.pairs[position], batch.answers[position], previous,
                            source="undo")
            except (OSError, ValueError) as exc:
                logger.error("The undo could not be recorded: %s", exc)
                self._render(f"The undo was NOT recorded: {exc}")
                return
            batch.answers[position] = previous
            batch.history.pop()
            self._show(position)
            self._cond.notify_all()
            self._render(f"Batch {batch.number}: undone. {_HELP}")

    def _move(self, step):
        with self._cond:
            batch = self._batch
            if batch is None or self._closed or batch.complete:
                return
            position = min(max(self._position + step, 0), len(batch) - 1)
            if position != self._position:
                self._show(position)
                self._render()

    def _on_key(self, change):
        typed = change["new"]
        if not typed:
            return  # the box was cleared
        key = typed[-1].lower()
        self.keys.value = ""
        if key in _KEYS:
            self._answer(_KEYS[key])
        elif key == _UNDO_KEY:
            self._undo()

    def _write(self, pair, old, new, *, source, seconds=None):
        """Make the memory hold ``new`` for ``pair`` instead of ``old`` (as WebOracle)."""
        write_answer(self.label_memory, pair, old, new, source=source,
                     annotator=self.annotator, seconds=seconds)

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
        >>> from ucal.annotation import NotebookOracle
        >>> with NotebookOracle(np.zeros((4, 8, 4, 3), np.uint8), verbose=0) as oracle:
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
            If the oracle was closed (before or during the batch), another
            batch is being asked, or it is called on the main thread of a
            Jupyter kernel (use :meth:`run`).
        """
        if self._closed:
            raise RuntimeError("This NotebookOracle is closed; create a new one.")
        if threading.current_thread() is threading.main_thread() and _in_kernel():
            raise RuntimeError(
                "A NotebookOracle cannot wait for answers on the notebook's main thread: "
                "its buttons run on that thread, so waiting there would block them forever. "
                "Run the work that asks it in the background: "
                "future = oracle.run(refiner.fit, X)."
            )
        return answer_unknown(pairs, self.n_samples, self.label_memory, self._ask)

    def _ask(self, pairs):
        sides = pair_sides(pairs, self._images, self._context, self.n_context)
        with self._cond:
            if self._closed:
                raise RuntimeError("This NotebookOracle is closed; create a new one.")
            if self._batch is not None:
                raise RuntimeError(
                    "This NotebookOracle is already waiting for a batch; it asks one batch "
                    "at a time."
                )
            self._n_started += 1
            batch = QuestionBatch(self._n_started, 0, pairs, sides)
            self.n_queries += len(pairs)
            self._batch = batch
            self._show(0)
            self._render(f"Batch {batch.number}: {_HELP}")
            displayed = self._displayed
        if not displayed and _in_kernel():
            logger.warning(
                "NotebookOracle is waiting for %d answers: show it in a cell "
                "(oracle.display()).", len(pairs)
            )
        elif self.verbose:
            logger.info("Batch %d: %d pairs to answer in the notebook.", batch.number, len(pairs))
        outcome = "interrupted"
        try:
            with self._cond:
                self._cond.wait_for(lambda: batch.complete or self._closed, timeout=self.timeout)
                codes = batch.codes()
                if batch.complete:
                    outcome = "answered"
                else:
                    outcome = "closed" if self._closed else "timed out"
        finally:
            with self._cond:
                batch.outcome = outcome
                self._batch = None
                if outcome == "answered":
                    self.n_batches += 1
                self._render(self._outcome_message(batch))
        kept = self._kept_message(batch)
        if outcome == "closed":
            raise RuntimeError(
                f"The NotebookOracle was closed during batch {batch.number}; {kept}"
            )
        if outcome == "timed out":
            error = TimeoutError(
                f"The NotebookOracle's timeout ({self.timeout} s) passed with batch "
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

    def _outcome_message(self, batch):
        if batch.outcome == "answered":
            codes = batch.codes()
            return (
                f"Batch {batch.number} answered: {int((codes == 1).sum())} same, "
                f"{int((codes == 0).sum())} different, {int((codes == -1).sum())} not sure. "
                "Waiting for the next batch."
            )
        return (
            f"Batch {batch.number} {batch.outcome} with {batch.n_answered} of its "
            f"{len(batch)} pairs answered."
        )

    def _kept_message(self, batch):
        n = batch.n_answered
        where = "were not recorded (no label_memory)"
        if self.label_memory is not None:
            path = getattr(self.label_memory, "path", None)
            where = "are in the label memory" + (f" {path!r}" if path else "")
        return f"{n} of its {len(batch)} pairs were answered; those answers {where}."

    def run(self, fn, *args, **kwargs):
        """Call ``fn(*args, **kwargs)`` in a background thread.

        The way to use the oracle in a notebook: the cell returns at once,
        the panel's buttons stay responsive, and ``fn`` (say
        ``refiner.fit``) waits for the answers in its own thread. Inside a
        kernel, the panel is shown if it was not yet.

        Parameters
        ----------
        fn : callable
            What to run, e.g. the ``fit`` of a refiner given this oracle.
        *args, **kwargs
            Its arguments.

        Returns
        -------
        future : concurrent.futures.Future
            Its result, or the exception it raised (also logged, level
            ERROR, and shown on the panel).

        Examples
        --------
        >>> import numpy as np
        >>> from ucal.annotation import NotebookOracle
        >>> with NotebookOracle(np.zeros((2, 8, 4, 3), np.uint8), verbose=0) as oracle:
        ...     oracle.run(sum, [1, 2, 3]).result(timeout=10)
        6
        """
        if not callable(fn):
            raise TypeError(f"run() needs a callable, got {type(fn).__name__}.")
        if not self._displayed and _in_kernel():
            self.display()
        future = concurrent.futures.Future()
        name = getattr(fn, "__qualname__", None) or repr(fn)

        def target():
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                logger.exception("NotebookOracle.run: %s failed.", name)
                with self._cond:
                    self.message.value = f"{name} failed: {type(exc).__name__}: {exc}"
                future.set_exception(exc)
            else:
                future.set_result(result)

        threading.Thread(target=target, name=f"NotebookOracle.run({name})", daemon=True).start()
        return future

    # -- life cycle ------------------------------------------------------

    def close(self):
        """Disable the panel; a batch being asked raises ``RuntimeError``.

        Examples
        --------
        >>> import numpy as np
        >>> from ucal.annotation import NotebookOracle
        >>> oracle = NotebookOracle(np.zeros((2, 8, 4, 3), np.uint8), verbose=0)
        >>> oracle.close()
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            self._render()

    def __getstate__(self):
        raise TypeError(
            "A NotebookOracle cannot be pickled: it owns notebook widgets. Pickle "
            "the fitted estimator without its oracle, and the LabelMemory file."
        )

    def __repr__(self):
        return (
            f"NotebookOracle(annotator={self.annotator!r}, n_samples={self.n_samples})"
        )
