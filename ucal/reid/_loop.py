"""The epoch loop of :class:`UCALReID`: cluster, refine, train, tell the callbacks."""

import logging
import warnings

import numpy as np
import torch
from sklearn.base import clone
from sklearn.utils import check_random_state

from ucal.metrics import labeling_cost, pairwise_precision_recall_fscore
from ucal.utils import outliers_as_singletons, relabel

from ._backbones import build_backbone
from ._callbacks import Checkpointer, EpochLogger, Evaluator, ProgressBar
from ._data import (
    BatchAugmenter,
    PseudoIdentitySampler,
    as_image_source,
    check_image_size,
    iter_batches,
)
from ._device import resolve_device, resolve_precision
from ._features import extract_features
from ._memory import FeatureMemory, centroid_contrastive_loss
from ._pseudo_labels import PseudoLabeler, default_refiner, innermost_clusterer
from ._run_dir import RunDirectory, fingerprint
from ._schedules import build_lr_scheduler, resume_cosine

__all__ = ["TrainingLoop"]

logger = logging.getLogger(__name__)


def build_net(est, pretrained_override=False):
    """The ReIDNet for ``est``; on unpickling, named backbones start empty."""
    pretrained = est.pretrained
    if pretrained_override:
        # Weights come from the pickle: no download; a module keeps its own.
        pretrained = isinstance(est.backbone, torch.nn.Module)
    return build_backbone(
        est.backbone, pretrained, check_image_size(est.image_size), verbose=est.verbose
    )


class TrainingLoop:
    """One fit of a :class:`~ucal.reid.UCALReID`: its state and its epochs.

    Built by ``UCALReID.fit`` and handed to every :class:`~ucal.reid.Callback`
    hook. Attributes a callback may read: ``estimator`` (the UCALReID being
    fitted), ``net`` (the network, a ``ReIDNet``), ``optimizer``,
    ``scheduler``, ``epoch`` (the current epoch, from 1), ``n_batches``
    (the current epoch's training steps), ``labels`` (the current pseudo
    labels, ``-1`` = not clustered), ``history`` (the list of epoch
    records), ``n_queries`` (pairs sent to the oracle so far) and
    ``label_memory``. Setting ``stop_training = True`` ends the fit after
    the current epoch.

    Parameters
    ----------
    estimator : UCALReID
        The estimator being fitted (its parameters are read, never changed;
        its fitted attributes are set at the end).
    source : ImageSource
        The training images.
    y : ndarray or None
        True identities: the Supervised run's labels and the pseudo-label
        diagnostics (never seen by training otherwise).
    oracle : callable or None
        Who answers pairs; None trains without refinement.
    label_memory : LabelMemory, path-like or None
        The memory given to ``fit``.
    eval_splits : tuple of (ReIDSplit, ReIDSplit) or None
        Query and gallery evaluated after every epoch.
    resume : bool
        Continue the run in ``checkpoint_dir``.

    Examples
    --------
    A callback sees the loop at every hook:

    >>> import numpy as np
    >>> from ucal.reid import Callback, UCALReID
    >>> class Watch(Callback):
    ...     def on_epoch_end(self, loop, record):
    ...         print(type(loop).__name__, loop.epoch, loop.n_batches, len(loop.history))
    >>> X = np.random.RandomState(0).randint(0, 256, size=(24, 32, 16, 3), dtype=np.uint8)
    >>> model = UCALReID(backbone="small", pretrained=False, image_size=(32, 16), epochs=2,
    ...                  batch_size=8, iters_per_epoch=2, refiner="passthrough",
    ...                  callbacks=[Watch()], random_state=0).fit(X)
    TrainingLoop 1 2 1
    TrainingLoop 2 2 2
    """

    def __init__(self, estimator, source, y, oracle, label_memory, eval_splits, resume):
        self.estimator = estimator
        self.source = source
        self.y = y
        self.oracle = oracle
        self.given_memory = label_memory
        self.eval_splits = eval_splits
        self.resume = resume
        self.n_samples = len(source)
        self.stop_training = False
        self.epoch = 0
        self.n_batches = 0
        self.labels = None

    # -------------------------------------------------------------- setup
    def _setup(self):
        est = self.estimator
        self.device = resolve_device(est.device)
        self.precision = resolve_precision(est.mixed_precision, self.device)
        seeds = check_random_state(est.random_state).randint(np.iinfo(np.int32).max, size=4)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seeds[0]))
            net = build_net(est)
        self.net = net.to(self.device, memory_format=self.precision.memory_format())
        params = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=est.lr, weight_decay=est.weight_decay)
        self.scheduler = build_lr_scheduler(est.lr_schedule, self.optimizer, est)
        self.scaler = self.precision.grad_scaler()
        self.sampler_rng = np.random.RandomState(int(seeds[1]))
        self.generator = torch.Generator().manual_seed(int(seeds[2]))
        self.augment = BatchAugmenter(est.flip_prob, est.pad, est.erasing_prob, self.generator)
        self.history = []
        self.start_epoch = 0
        self.memory = None

        self.run_dir = None
        checkpoint = None
        if est.checkpoint_dir is not None:
            self.run_dir = RunDirectory(est.checkpoint_dir, self.resume, self.given_memory)
            checkpoint = self.run_dir.load()
        self.label_memory = None
        if self.oracle is not None:
            from ucal.oracles import as_label_memory

            own = None if self.run_dir is None else self.run_dir.memory_path
            self.label_memory = as_label_memory(
                self.given_memory, path=own, infer=est.memory_inference
            )
        self.pseudo_labeler = None
        if not est.supervised:
            refiner = default_refiner() if est.refiner is None else est.refiner
            unused = None if refiner == "passthrough" else innermost_clusterer(refiner)
            if refiner == "passthrough":
                refiner = None
            elif unused is not None:
                warnings.warn(
                    f"The refiner's own base clusterer {unused!r} is "
                    "not used: UCALReID clusters with its clusterer parameter and hands "
                    "the labels to the refiner.",
                    UserWarning,
                    stacklevel=4,
                )
            if est.clusterer is None:
                from ucal.cluster import SelfPacedDBSCAN

                clusterer = SelfPacedDBSCAN()
            else:
                clusterer = clone(est.clusterer)
            self.pseudo_labeler = PseudoLabeler(
                clusterer, refiner, self.oracle, self.label_memory,
                warmup_epochs=est.warmup_epochs, max_queries=est.max_queries,
                seed=int(seeds[3]), epochs=est.epochs, pacing=est.query_pacing,
            )
        if checkpoint is not None:
            self.load_state_dict(checkpoint)
        elif self.resume and self.run_dir is not None and self.run_dir.owns_memory:
            if self.label_memory is not None and len(self.label_memory):
                # Answers given before the first checkpoint of this run: human work, counted.
                self.pseudo_labeler.n_queries = len(self.label_memory)
        if self.memory is None:
            features = self._extract(self.source, "Initialising the memory")
            self.memory = FeatureMemory(
                features, est.memory_momentum, centroid_momentum=est.centroid_momentum
            )
        self.callbacks = self._callbacks()

    def _callbacks(self):
        est = self.estimator
        # the training bar closes before evaluation starts its own bars
        callbacks = [ProgressBar()] if est.verbose else []
        if self.eval_splits is not None:
            callbacks.append(Evaluator(*self.eval_splits))
        callbacks.extend(est.callbacks or ())
        callbacks.append(EpochLogger())
        if self.run_dir is not None:
            callbacks.append(Checkpointer(self.run_dir))
        return callbacks

    def _notify(self, hook, *args):
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    # -------------------------------------------------------- checkpoints
    @property
    def n_queries(self):
        """Pairs sent to the oracle so far in this run."""
        return 0 if self.pseudo_labeler is None else self.pseudo_labeler.n_queries

    def state_dict(self):
        """Everything a resumed fit needs, as saved in ``checkpoint.pt``.

        Returns
        -------
        state : dict
            Network, optimizer, scheduler, feature memory, history, random
            states, the base clusterer and the query count.
        """
        return {
            "fingerprint": fingerprint(self.estimator, self.n_samples),
            "epoch": self.epoch,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.precision.scale_grads else None,
            "memory": self.memory.features.cpu(),
            "memory_fresh": self.memory.fresh.cpu(),
            "history": self.history,
            "sampler_rng": self.sampler_rng.get_state(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "clusterer": None if self.pseudo_labeler is None else self.pseudo_labeler.clusterer,
            "n_queries": self.n_queries,
            "n_memory_records": 0 if self.label_memory is None else len(self.label_memory),
        }

    def load_state_dict(self, ckpt):
        """Continue from a checkpoint of the same run (refused when the run differs).

        Parameters
        ----------
        ckpt : dict
            A :meth:`state_dict` read back from ``checkpoint.pt``.
        """
        est = self.estimator
        self.run_dir.check_fingerprint(ckpt["fingerprint"], fingerprint(est, self.n_samples))
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if est.lr_schedule == "cosine":
            # the annealing spans this fit's epochs, also when a resume trains longer
            resume_cosine(self.scheduler, est.epochs)
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.memory = FeatureMemory(
            ckpt["memory"].to(self.device),
            est.memory_momentum,
            centroid_momentum=est.centroid_momentum,
            normalize=False,
        )
        self.memory.fresh.copy_(ckpt["memory_fresh"].to(self.device))
        self.history = list(ckpt["history"])
        self.start_epoch = self.epoch = int(ckpt["epoch"])
        self.sampler_rng.set_state(ckpt["sampler_rng"])
        self.generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        if self.pseudo_labeler is not None:
            if ckpt.get("clusterer") is not None:
                self.pseudo_labeler.clusterer = ckpt["clusterer"]
            n_queries = int(ckpt["n_queries"])
            if self.label_memory is not None:
                # Answers recorded after the checkpoint (the interrupted epoch) were
                # real questions to the oracle: count them once.
                n_queries += max(0, len(self.label_memory) - int(ckpt["n_memory_records"]))
            self.pseudo_labeler.n_queries = n_queries
        logger.info(
            "Resuming from %s after epoch %d (%d oracle queries so far).",
            self.run_dir.path, self.start_epoch, self.n_queries,
        )

    # --------------------------------------------------------------- loop
    def run(self):
        """Train from the first (or the resumed) epoch to the last, or to an early stop.

        Sets the estimator's fitted attributes at the end.
        """
        est = self.estimator
        self._setup()
        y_codes = np.unique(self.y, return_inverse=True)[1] if est.supervised else None
        self._notify("on_fit_begin")
        for epoch in range(self.start_epoch, est.epochs):
            self.epoch = epoch + 1
            self._notify("on_epoch_begin", self.epoch)
            record = {"epoch": self.epoch}
            if est.supervised:
                labels = y_codes
            else:
                record["n_refreshed"] = self._refresh_memory(epoch)
                features = self.memory.features.cpu().numpy()
                labels = self.pseudo_labeler(features, epoch, record)
            labels = relabel(labels)
            self.labels = labels
            record["n_clusters"] = int(labels.max() + 1) if (labels >= 0).any() else 0
            record["n_outliers"] = int((labels < 0).sum())
            if self.y is not None and not est.supervised:
                # Simulation with known identities: how good the pseudo labels are.
                precision, recall, _ = pairwise_precision_recall_fscore(self.y, labels)
                record["label_precision"] = precision
                record["label_recall"] = recall
            record["lr"] = float(self.optimizer.param_groups[0]["lr"])
            loss, iters = self._train_epoch(labels)
            self.scheduler.step()
            record["loss"] = loss
            record["iterations"] = iters
            record["n_queries"] = self.n_queries
            record["cost"] = self._cost()
            self.history.append(record)
            self._notify("on_epoch_end", record)
            if self.stop_training:
                logger.info("A callback stopped training after epoch %d.", self.epoch)
                break
        self._finish()
        self._notify("on_fit_end")

    def _cost(self):
        if self.estimator.supervised:
            return 1.0
        return labeling_cost(self.n_queries, self.n_samples)

    def _extract(self, source, desc):
        est = self.estimator
        return extract_features(
            self.net, source, self.precision, est.inference_batch_size, est.num_workers,
            est.verbose, desc,
        )

    def embed(self, split):
        """Features of a split's images with the current network (eval mode).

        Parameters
        ----------
        split : ReIDSplit or any image input of ``UCALReID.fit``
            The images.

        Returns
        -------
        features : ndarray of shape (n_images, feature_dim), dtype float32
            L2-normalised embeddings.
        """
        source = as_image_source(split, check_image_size(self.estimator.image_size))
        return self._extract(source, "Evaluating").cpu().numpy()

    def _refresh_memory(self, epoch):
        """Re-extract the memory slots chosen by ``memory_refresh`` before clustering."""
        mode = self.estimator.memory_refresh
        if mode == "none" or epoch == 0:
            return 0
        if mode == "all":
            indices = np.arange(self.n_samples)
        else:
            indices = self.memory.stale()
        if len(indices):
            features = self._extract(self.source.subset(indices), "Refreshing the memory")
            self.memory.refresh(indices, features)
        else:
            self.memory.refresh(indices, None)
        return len(indices)

    def _train_epoch(self, labels):
        est = self.estimator
        if est.outliers == "instances" and not est.supervised:
            # SpCL: every un-clustered image is a class of its own, its memory
            # feature its centroid; it is trained on and its slot stays current.
            labels = outliers_as_singletons(labels)
        self.memory.set_labels(labels)
        if not (labels >= 0).any():
            logger.warning("Epoch %d: every image is an outlier; nothing to train on.", self.epoch)
            self.n_batches = 0
            return float("nan"), 0
        sampler = PseudoIdentitySampler(
            labels, self.source.camids, est.batch_size, est.num_instances, self.sampler_rng
        )
        batches = sampler.batches(est.iters_per_epoch or sampler.default_n_batches())
        self.n_batches = len(batches)
        targets = torch.as_tensor(labels, device=self.device)
        net = self.net
        net.train()
        total = torch.zeros((), device=self.device)
        memory_format = self.precision.memory_format()
        for batch, (indices, images) in enumerate(
            iter_batches(self.source, batches, est.num_workers)
        ):
            x = self.augment(images.to(self.device, non_blocking=True), train=True)
            x = x.contiguous(memory_format=memory_format)
            with self.precision.autocast():
                features = net(x)
            batch_targets = targets[torch.as_tensor(indices, device=self.device)]
            loss = centroid_contrastive_loss(
                features, batch_targets, self.memory.centroids(), est.temperature
            )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.memory.update(indices, features)
            total += loss.detach()
            self._notify("on_batch_end", batch, loss.detach())
        return float(total.item()) / max(1, len(batches)), len(batches)

    def _finish(self):
        est = self.estimator
        self.net.eval()
        est.backbone_ = self.net
        est.feature_dim_ = self.net.feature_dim
        est._n_features_out = self.net.feature_dim
        est.labels_ = self.labels if self.labels is not None else np.full(self.n_samples, -1)
        est.n_samples_fit_ = self.n_samples
        if est.supervised:
            est.n_queries_ = self.n_samples * (self.n_samples - 1) // 2
        else:
            est.n_queries_ = int(self.n_queries)
        est.cost_ = self._cost()
        est.label_memory_ = self.label_memory
        est.history_ = self.history
        est.device_ = str(self.device)
        est.precision_ = self.precision.describe()
