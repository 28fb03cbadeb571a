"""The trainer's callback protocol, and the callbacks it is built on.

A callback is told when a fit begins and ends, when each epoch begins and
ends, and after each training batch. History, evaluation, the log line,
progress bars and checkpoints are callbacks; users pass their own with
``UCALReID(callbacks=[...])`` to log elsewhere or to stop early.
"""

import logging
import time

__all__ = ["Callback", "Checkpointer", "EpochLogger", "Evaluator", "ProgressBar"]

logger = logging.getLogger(__name__)


class Callback:
    """Base class of the callbacks passed to ``UCALReID(callbacks=[...])``.

    Override the hooks you need; each receives the running
    :class:`~ucal.reid.TrainingLoop`, whose public attributes a callback
    may read (``estimator``, ``net``, ``optimizer``, ``epoch``,
    ``labels``, ``history``, ``n_queries``) and whose ``stop_training``
    it may set to True to end the fit after the current epoch. Hooks run
    in this order: the progress bar (``verbose >= 1``), the built-in
    evaluation (when ``fit`` has an ``eval_set``), the user's callbacks in
    the order given, then the log line and the checkpoint; so a user's
    ``on_epoch_end`` sees the epoch's test scores, and what it writes into
    ``record`` is logged and checkpointed.

    ``fit`` uses the callback objects it is given (so their state is
    readable afterwards); ``sklearn.base.clone`` (and so ``GridSearchCV``)
    deep-copies them like any other parameter. Reset their state in
    :meth:`on_fit_begin` if they are reused across fits. They are pickled
    with the estimator, so keep what cannot be pickled (an open writer) out
    of their ``__getstate__``.

    Examples
    --------
    >>> from ucal.reid import Callback
    >>> class StopWhenMAPDrops(Callback):
    ...     def on_fit_begin(self, loop):
    ...         self.best = 0.0
    ...     def on_epoch_end(self, loop, record):
    ...         if record["mAP"] < self.best:
    ...             loop.stop_training = True
    ...         self.best = max(self.best, record["mAP"])
    >>> StopWhenMAPDrops().on_batch_end(None, 0, None) is None
    True
    """

    def on_fit_begin(self, loop):
        """Called once, after set-up (and after restoring a resumed run).

        Parameters
        ----------
        loop : TrainingLoop
            The running fit.
        """

    def on_epoch_begin(self, loop, epoch):
        """Called before the epoch's clustering.

        Parameters
        ----------
        loop : TrainingLoop
            The running fit.
        epoch : int
            The epoch starting, counted from 1.
        """

    def on_batch_end(self, loop, batch, loss):
        """Called after each training step.

        Parameters
        ----------
        loop : TrainingLoop
            The running fit; ``loop.n_batches`` is the epoch's number of steps.
        batch : int
            The step just done, counted from 0 within the epoch.
        loss : torch.Tensor
            Its loss, detached (``loss.item()`` synchronises with a GPU:
            call it only when needed).
        """

    def on_epoch_end(self, loop, record):
        """Called after the epoch's training; ``record`` is already in ``loop.history``.

        Parameters
        ----------
        loop : TrainingLoop
            The running fit.
        record : dict
            The epoch's record (see ``UCALReID.history_``); callbacks may
            add keys.
        """

    def on_fit_end(self, loop):
        """Called once, after the last epoch (also after an early stop).

        Parameters
        ----------
        loop : TrainingLoop
            The finished fit.
        """


class Evaluator(Callback):
    """Test scores (mAP, mINP, R1, R5, R10) of each epoch's network, into its record."""

    def __init__(self, query, gallery):
        self.query = query
        self.gallery = gallery

    def on_epoch_end(self, loop, record):
        from ._features import reid_scores

        scores = reid_scores(
            loop.embed(self.query), loop.embed(self.gallery), self.query, self.gallery
        )
        record.update({k: scores[k] for k in ("mAP", "mINP", "R1", "R5", "R10")})


class EpochLogger(Callback):
    """Stamps each record with the epoch's ``seconds`` and logs one line for it."""

    def on_epoch_begin(self, loop, epoch):
        self._start = time.perf_counter()

    def on_epoch_end(self, loop, record):
        record["seconds"] = time.perf_counter() - self._start
        logger.info(format_record(record, loop.estimator.epochs))


class ProgressBar(Callback):
    """A tqdm bar over each epoch's training steps (``verbose >= 1``)."""

    def __init__(self):
        self._bar = None

    def on_batch_end(self, loop, batch, loss):
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=loop.n_batches, desc=f"Epoch {loop.epoch}/{loop.estimator.epochs}",
                unit="it", leave=False,
            )
        self._bar.update(1)

    def on_epoch_end(self, loop, record):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class Checkpointer(Callback):
    """Saves the run to its :class:`RunDirectory` after every epoch (atomically)."""

    def __init__(self, run_dir):
        self.run_dir = run_dir

    def on_epoch_end(self, loop, record):
        self.run_dir.save(loop.state_dict())


def format_record(record, n_epochs):
    """One log line per epoch."""
    parts = [
        f"epoch {record['epoch']}/{n_epochs}",
        f"loss {record['loss']:.3f}",
        f"clusters {record['n_clusters']}",
        f"outliers {record['n_outliers']}",
    ]
    if record.get("snps_queries") or record.get("mpps_queries"):
        parts.append(
            f"queries +{record.get('snps_queries', 0)}/+{record.get('mpps_queries', 0)} "
            "(SNPS/MPPS)"
        )
    parts.append(f"cost {100 * record['cost']:.4f}%")
    if "label_precision" in record:
        parts.append(
            f"labels P/R {record['label_precision']:.2f}/{record['label_recall']:.2f}"
        )
    if "mAP" in record:
        parts.append(f"mAP {100 * record['mAP']:.1f} R1 {100 * record['R1']:.1f}")
    parts.append(f"{record.get('seconds', 0.0):.1f}s")
    return ", ".join(parts)
