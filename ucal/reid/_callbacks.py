"""The trainer's callback protocol, and the callbacks it is built on.

A callback is told when a fit begins and ends, when each epoch begins and
ends, and after each training batch. History, evaluation, the log line,
progress bars and checkpoints are callbacks; users pass their own with
``UCALReID(callbacks=[...])`` to log elsewhere or to stop early.
"""

import copy
import logging
import math
import time

__all__ = [
    "BestEpoch",
    "Callback",
    "Checkpointer",
    "EpochLogger",
    "Evaluator",
    "PairValidator",
    "ProgressBar",
]

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

    def state_dict(self):
        """What a resumed fit needs to continue this callback (None: nothing).

        Saved in each checkpoint and handed back to :meth:`load_state_dict`
        when the run resumes, before :meth:`on_fit_begin`.

        Returns
        -------
        state : object or None
            Anything ``torch.save`` can write.
        """
        return None

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned.

        Parameters
        ----------
        state : object
            The saved state.
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


class PairValidator(Callback):
    """Verification scores of each epoch's network on the held-out answered pairs.

    Writes ``val_auc`` (ROC AUC of the cosine similarities against the
    answers) and ``val_accuracy`` (best-threshold accuracy) into the
    epoch's record. Only the images of the pairs are embedded.
    """

    def __init__(self, pairs, same):
        self.pairs = pairs
        self.same = same

    def on_epoch_end(self, loop, record):
        record.update(loop.validation_scores(self.pairs, self.same))


class BestEpoch(Callback):
    """Keep the network of the best epoch; optionally stop when it stops improving.

    Watches a key of the epoch records (by default ``val_auc``, the
    verification AUC on the held-out answers that ``UCALReID`` records
    when ``validation_size > 0``), the starting network (epoch 0) included
    when its record has the key. At the end of the fit the best network is
    put back (``restore=True``) and the log says so; the estimator's
    ``best_epoch_`` tells which epoch it is. Pseudo labels, memory and
    history stay those of the last epoch.

    ``UCALReID`` adds ``BestEpoch(min_delta=0.02, significance=2.0)`` when
    it validates and ``keep_best=True``: an AUC on 100 pairs has a standard
    error of about 0.05, so the last network is given up only for one whose
    AUC is clearly better. Pass your own in ``callbacks`` to change them (for
    example ``BestEpoch(patience=5)`` to stop after five epochs without
    improvement), and it replaces the built-in one.

    Parameters
    ----------
    monitor : str, default="val_auc"
        The record key to watch. Epochs whose record lacks it, or holds NaN,
        are skipped.
    mode : {"max", "min"}, default="max"
        Whether larger or smaller is better.
    min_delta : float, default=0.0
        Smallest change that counts as an improvement. At the end, a last
        epoch within ``min_delta`` of the best is kept (it is the most
        trained), so that noise in the monitored value does not send the
        model back.
    patience : int or None, default=None
        Stop training after this many epochs without improvement; None
        never stops.
    restore : bool, default=True
        Put the best network back at the end of the fit. The best weights
        are kept on the CPU and in each checkpoint (one more copy of the
        network).
    significance : float or None, default=None
        At the end, the last epoch is also kept when the best one beats it
        by no more than ``significance`` standard errors of the monitored
        value, read from the records' ``<monitor>_se`` key (``UCALReID``
        records ``val_auc_se``), the larger of the two epochs'. AUCs of two
        networks on the same pairs are positively correlated: at a
        correlation of 0.5 the standard error of their difference equals
        that of one AUC, and 2 is then a one-sided test at about 2.5 %.
        None: ``min_delta`` alone.

    Attributes
    ----------
    best_epoch : int or None
        The best epoch so far (0 = the starting network).
    best_value : float or None
        Its monitored value.

    Examples
    --------
    >>> from ucal.reid import BestEpoch
    >>> cb = BestEpoch(monitor="mAP", patience=3)
    >>> cb.best_epoch is None
    True
    """

    def __init__(self, monitor="val_auc", mode="max", min_delta=0.0, patience=None,
                 restore=True, significance=None):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}.")
        if patience is not None and (not isinstance(patience, int) or patience < 1):
            raise ValueError(f"patience must be an int >= 1 or None, got {patience!r}.")
        self.monitor = monitor
        self.mode = mode
        self.min_delta = float(min_delta)
        if significance is not None and not significance >= 0:
            raise ValueError(f"significance must be >= 0 or None, got {significance!r}.")
        self.significance = significance
        self.patience = patience
        self.restore = restore
        self.best_epoch = None
        self.best_value = None
        self._weights = None
        self._loaded = False

    def state_dict(self):
        """The best epoch, its value and its network's weights, for a resumed fit.

        Returns
        -------
        state : dict
            ``best_epoch``, ``best_value`` and ``weights`` (CPU tensors).
        """
        return {"monitor": self.monitor, "mode": self.mode, "best_epoch": self.best_epoch,
                "best_value": self.best_value, "weights": self._weights}

    def load_state_dict(self, state):
        """Continue from what :meth:`state_dict` returned.

        Parameters
        ----------
        state : dict
            A saved state.
        """
        if (state.get("monitor"), state.get("mode")) != (self.monitor, self.mode) or (
            self.restore and state.get("weights") is None and state.get("best_epoch") is not None
        ):
            logger.warning(
                "BestEpoch: the saved state watched %r (%s) without the weights needed now; "
                "it is not used, and the best epoch is tracked from here on.",
                state.get("monitor"), state.get("mode"),
            )
            return
        self.best_epoch = state["best_epoch"]
        self.best_value = state["best_value"]
        self._weights = state["weights"]
        self._loaded = True

    def _better(self, value):
        if self.best_value is None:
            return True
        if self.mode == "max":
            return value > self.best_value + self.min_delta
        return value < self.best_value - self.min_delta

    def _consider(self, loop, record):
        value = record.get(self.monitor)
        if value is None or math.isnan(float(value)):
            return
        if self._better(float(value)):
            self.best_epoch = int(record["epoch"])
            self.best_value = float(value)
            if self.restore:
                self._weights = {
                    k: v.detach().to("cpu", copy=True) for k, v in loop.net.state_dict().items()
                }

    def on_fit_begin(self, loop):
        """Start afresh, the starting network (epoch 0) being the first candidate.

        Parameters
        ----------
        loop : TrainingLoop
            The running fit.
        """
        if self._loaded:  # a resumed run: the state came from the checkpoint
            self._loaded = False
            return
        self.best_epoch = self.best_value = self._weights = None
        if getattr(loop, "start_epoch", 0) == 0:
            # a fresh fit: the network now is the starting one, a candidate itself
            for record in loop.history:
                if record.get("epoch") == 0:
                    self._consider(loop, record)

    def on_epoch_end(self, loop, record):
        """Keep the epoch's network if it is the best so far; stop after ``patience``.

        Parameters
        ----------
        loop : TrainingLoop
            The running fit.
        record : dict
            The epoch's record.
        """
        self._consider(loop, record)
        if (
            self.patience is not None
            and self.best_epoch is not None
            and loop.epoch - self.best_epoch >= self.patience
        ):
            logger.info(
                "%s has not improved for %d epochs (best %.4f at epoch %d): stopping.",
                self.monitor, loop.epoch - self.best_epoch, self.best_value, self.best_epoch,
            )
            loop.stop_training = True

    def _tolerance(self, loop, last):
        """How far below the best the last epoch may be and still be kept."""
        if self.significance is None:
            return self.min_delta
        best = next((r for r in loop.history if r.get("epoch") == self.best_epoch), {})
        errors = [r.get(f"{self.monitor}_se") for r in (best, last)]
        errors = [float(e) for e in errors if e is not None and e == e]
        if not errors:
            return self.min_delta
        return max(self.min_delta, self.significance * max(errors))

    def on_fit_end(self, loop):
        """Put the best network back (``restore=True``) and say so in the log.

        Parameters
        ----------
        loop : TrainingLoop
            The finished fit.
        """
        if self.best_epoch is None:
            logger.info("BestEpoch: no epoch recorded %r; the last network is kept.",
                        self.monitor)
            return
        last = loop.history[-1] if loop.history else {}
        value = last.get(self.monitor)
        within = False
        tolerance = self._tolerance(loop, last)
        if value is not None and value == value and self.best_value is not None:
            gap = self.best_value - value if self.mode == "max" else value - self.best_value
            within = gap <= tolerance
        if within and self.best_epoch != last.get("epoch"):
            # the last network is as good as the best, within min_delta: keep the most trained
            if (value >= self.best_value) == (self.mode == "max"):
                logger.info("Best %s %.4f at the last epoch (%d).", self.monitor, value,
                            last["epoch"])
            else:
                logger.info(
                    "%s %.4f at the last epoch is within %.4f of the best (%.4f at "
                    "epoch %d; min_delta=%g, significance=%s): the last network is kept.",
                    self.monitor, value, tolerance, self.best_value, self.best_epoch,
                    self.min_delta, self.significance,
                )
            self.best_epoch, self.best_value = int(last["epoch"]), float(value)
            return
        if not self.restore or self.best_epoch == last.get("epoch"):
            logger.info(
                "Best %s %.4f at epoch %d%s.", self.monitor, self.best_value, self.best_epoch,
                "" if self.restore else " (restore=False: the last network is kept)",
            )
            return
        if self._weights is None:
            logger.info("BestEpoch: no saved weights for epoch %d; the last network is kept.",
                        self.best_epoch)
            return
        loop.net.load_state_dict(copy.deepcopy(self._weights))
        logger.info(
            "Restored the network of epoch %d%s: best %s %.4f, against %s at the last "
            "epoch (%d).",
            self.best_epoch, " (the starting network)" if self.best_epoch == 0 else "",
            self.monitor, self.best_value,
            f"{last.get(self.monitor):.4f}" if last.get(self.monitor) is not None else "none",
            last.get("epoch", 0),
        )
        loop.restored_epoch = self.best_epoch


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
    if record["epoch"] == 0:
        return format_start_record(record)
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
    if "val_auc" in record:
        parts.append(f"val AUC {record['val_auc']:.3f}")
    parts.append(f"{record.get('seconds', 0.0):.1f}s")
    return ", ".join(parts)


def format_start_record(record):
    """The log line of epoch 0: the starting network, validation and calibration."""
    parts = ["epoch 0 (start)"]
    if "calibrated" in record:
        parts.append(f"clustering calibrated to {record['calibrated'] or 'its own parameters'}")
    parts.append(f"cost {100 * record['cost']:.4f}%")
    if "mAP" in record:
        parts.append(f"mAP {100 * record['mAP']:.1f} R1 {100 * record['R1']:.1f}")
    if "val_auc" in record:
        parts.append(
            f"val AUC {record['val_auc']:.3f} on {record['val_pairs']} held-out pairs"
        )
    return ", ".join(parts)
