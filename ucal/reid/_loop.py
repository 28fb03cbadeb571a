"""The epoch loop of :class:`UCALReID`: cluster, refine, train, tell the callbacks."""

import logging
import os
import warnings

import numpy as np
import torch
from sklearn.base import clone
from sklearn.utils import check_random_state

from ucal.metrics import labeling_cost, pairwise_precision_recall_fscore
from ucal.utils import outliers_as_singletons, relabel

from ._backbones import build_backbone
from ._callbacks import (
    BestEpoch,
    Checkpointer,
    EpochLogger,
    Evaluator,
    PairValidator,
    ProgressBar,
    format_record,
)
from ._data import (
    BatchAugmenter,
    PseudoIdentitySampler,
    as_image_source,
    check_image_size,
    iter_batches,
)
from ._device import resolve_device, resolve_precision
from ._distributed import (
    DistributedContext,
    sync_batchnorm,
    unsync_batchnorm,
)
from ._features import extract_features
from ._camera_proxies import CameraProxyMemory
from ._cluster_memory import ClusterMemory
from ._memory import FeatureMemory, centroid_contrastive_loss
from ._pair_loss import PairSupervision
from ._pseudo_labels import PseudoLabeler, default_refiner, innermost_clusterer
from ._run_dir import RunDirectory, fingerprint
from ._schedules import build_lr_scheduler, resume_cosine

__all__ = ["TrainingLoop", "default_calibration_grid"]

logger = logging.getLogger(__name__)

# A fall of the validation AUC below its best by more than this recalibrates the clustering.
_DRIFT_AUC = 0.02
# The built-in BestEpoch's min_delta: an AUC on ~100 pairs is that noisy between equal nets.
_BEST_MIN_DELTA = 0.02
# ...and the last network is given up only for a best one that many standard errors better.
_BEST_SIGNIFICANCE = 2.0
# Data sizes up to which the default calibration also tries half of SelfPacedDBSCAN's k1.
_K1_CALIBRATION_MAX_SAMPLES = 20_000


def _fresh_clusterer(est, device=None):
    """An unfitted copy of the estimator's base clusterer (None: SpCL's SelfPacedDBSCAN).

    A clusterer whose neighbour search is ``"auto"`` searches exactly on the
    trainer's ``device`` when that is an accelerator (the features are there
    anyway, and a GPU does the N x N product in seconds).
    """
    from ucal.cluster import ExactSearch, SelfPacedDBSCAN

    clusterer = SelfPacedDBSCAN() if est.clusterer is None else clone(est.clusterer)
    if device is not None and device.type != "cpu" and hasattr(clusterer, "get_params"):
        if clusterer.get_params(deep=False).get("search") == "auto":
            clusterer.set_params(search=ExactSearch("torch", device=str(device)))
    return clusterer


def _recorded_pairs(memory, n_samples):
    """Every pair ``memory`` holds a record of ("not sure" included), inside the data."""
    pairs = {(min(r.i, r.j), max(r.i, r.j)) for r in memory}
    pairs = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
    return pairs[(pairs < n_samples).all(axis=1)]


def default_calibration_grid(clusterer, n_samples):
    """The candidates of a calibrator without ``param_grid``, for ``clusterer`` on ``n_samples``.

    ``eps`` from 0.35 to 0.7; for a SelfPacedDBSCAN on small data, also
    half of its ``k1``: k-reciprocal neighbourhoods of ``k1`` images suit
    identities with about ``k1 / 2`` images or more, and small, new data
    sets often have fewer. Empty (no calibration) for a clusterer without ``eps``.
    """
    from ucal.active._calibration import DEFAULT_EPS_GRID
    from ucal.cluster import SelfPacedDBSCAN

    params = clusterer.get_params() if hasattr(clusterer, "get_params") else {}
    if "eps" not in params:
        return {}  # not a density clusterer: nothing this grid knows how to scale
    grid = {"eps": list(DEFAULT_EPS_GRID)}
    if isinstance(clusterer, SelfPacedDBSCAN) and n_samples <= _K1_CALIBRATION_MAX_SAMPLES:
        k1 = int(clusterer.k1)
        half = max(int(clusterer.k2) + 1, k1 // 2)
        grid["k1"] = sorted({k1, half})
    return grid


# The unsupervised bases' class-level losses (``UCALReID(loss=...)``).
LOSSES = ("centroid", "cluster_memory", "cluster_memory_hard", "camera_proxies")
# The peers' prototype momentum where ``centroid_momentum`` is None.
_PEER_MOMENTUM = {"cluster_memory": 0.1, "cluster_memory_hard": 0.1, "camera_proxies": 0.2}


def has_cameras(camids):
    """Whether at least two cameras are known (None or -1 = unknown)."""
    if camids is None:
        return False
    camids = np.asarray(camids)
    return len(np.unique(camids[camids >= 0])) >= 2


def build_objective(est, labels, features, camids):
    """The epoch's class-level loss for ``est.loss``, its prototypes started from ``features``.

    None for ``"centroid"``: Eq. 1 on the feature memory's member-mean
    centroids. ``"camera_proxies"`` without two known cameras is the cluster
    memory (the caller logs it).
    """
    if est.loss == "centroid":
        return None
    momentum = est.centroid_momentum
    if momentum is None:
        momentum = _PEER_MOMENTUM[est.loss]
    if est.loss == "camera_proxies" and has_cameras(camids):
        return CameraProxyMemory(labels, camids, features, est.temperature, momentum=momentum)
    update = "hard" if est.loss == "cluster_memory_hard" else "average"
    return ClusterMemory(labels, features, est.temperature, momentum=momentum, update=update)


def _memory_centroid_momentum(est):
    """The feature memory's own centroid momentum: only Eq. 1's centroids use it."""
    return est.centroid_momentum if est.loss == "centroid" else None


def build_net(est, pretrained_override=False):
    """The ReIDNet for ``est``; on unpickling, named backbones start empty."""
    pretrained = est.pretrained
    if pretrained_override:
        # Weights come from the pickle: no download; a module keeps its own.
        pretrained = isinstance(est.backbone, torch.nn.Module)
    return build_backbone(
        est.backbone, pretrained, check_image_size(est.image_size), pooling=est.pooling,
        verbose=est.verbose,
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
        self.restored_epoch = None
        self.dist = DistributedContext()  # set by run(): one process, or several
        self.pairs = None  # the epoch's PairSupervision (pair_weight > 0 with answers)
        self.objective = None  # the epoch's cluster memory or proxies (loss != "centroid")

    # -------------------------------------------------------------- setup
    def _setup(self):
        est = self.estimator
        dist = self.dist
        if est.loss == "camera_proxies" and not has_cameras(self.source.camids):
            logger.info("loss='camera_proxies' needs camera ids of at least two cameras; "
                        "the images have none, so the cluster memory is trained instead.")
        self.device = dist.device(resolve_device(est.device))
        self.precision = resolve_precision(est.mixed_precision, self.device)
        seeds = check_random_state(est.random_state).randint(np.iinfo(np.int32).max, size=5)
        # random_state=None draws from each process's own generator: rank 0's seeds for all
        seeds = dist.broadcast(seeds)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seeds[0]))
            net = build_net(est)
        self.net = net.to(self.device, memory_format=self.precision.memory_format())
        self.train_net = self.net
        if dist.enabled:
            if est.batch_size // est.num_instances < dist.world_size:
                raise ValueError(
                    f"batch_size={est.batch_size} holds {est.batch_size // est.num_instances} "
                    f"pseudo identities of num_instances={est.num_instances}: fewer than the "
                    f"{dist.world_size} processes that share each batch by identities."
                )
            if est.sync_batchnorm:
                sync_batchnorm(self.net)
            self.train_net = torch.nn.parallel.DistributedDataParallel(
                self.net,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )
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
            # rank 0 reads (and guards) the run directory; the others get its checkpoint
            checkpoint = dist.run_on_main(self.run_dir.load)
        self.label_memory = None
        self.validation_memory = None
        self.check_memory = None
        if self.oracle is not None:
            # rank 0 alone reads and writes the answers; its failure ends every rank
            dist.run_on_main(self._open_memories, share=False)
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
            self.pseudo_labeler = PseudoLabeler(
                _fresh_clusterer(est, self.device), refiner, self.oracle, self.label_memory,
                warmup_epochs=est.warmup_epochs, max_queries=est.max_queries,
                seed=int(seeds[3]), epochs=est.epochs, pacing=est.query_pacing,
            )
        self.calibrated_params = None
        self._seed = int(seeds[4])
        self._net_seed = int(seeds[0])
        if checkpoint is not None:
            self.load_state_dict(checkpoint)
        elif self.resume and self.run_dir is not None and self.pseudo_labeler is not None:
            # Answers given before the first checkpoint of this run: human work, counted.
            # The held-out answers are always the run's own; the training ones when the
            # run owns its memory file.
            n_answers = sum(len(m) for m in (self.validation_memory, self.check_memory)
                            if m is not None)
            if self.run_dir.owns_memory and self.label_memory is not None:
                n_answers += len(self.label_memory)
            self.pseudo_labeler.n_queries = n_answers
        if self.pseudo_labeler is not None:
            self.pseudo_labeler.n_queries = dist.broadcast(self.pseudo_labeler.n_queries)
        if self.memory is None:
            features = self._extract(self.source, "Initialising the memory")
            self.memory = FeatureMemory(
                features, est.memory_momentum, centroid_momentum=_memory_centroid_momentum(est)
            )
        # the check's share of the budget is kept back before any question is asked
        self.check_size = self._planned_check_size()
        self._check_done = False
        start = None
        if checkpoint is None and self.oracle is not None:
            # questions are asked by rank 0 alone
            start, n_queries = dist.run_on_main(
                lambda: (self._ask_before_training(), self.n_queries)
            )
            if not dist.is_main:
                self.calibrated_params = start.get("calibrated")
                if self.pseudo_labeler is not None:
                    self.pseudo_labeler.n_queries = n_queries
        self.validation = dist.run_on_main(self._validation_set)
        if self.validation is None and self.check_size:
            self._release_check()  # nothing held out to check with: its share goes back
        self.callbacks = self._callbacks()
        if checkpoint is not None:
            self._load_callback_states(checkpoint.get("callbacks") or [])
        elif start:
            self._start_record(start)

    # ------------------------------------------ answers before training
    def _open_memories(self):
        """The training answers' memory and the held-out answers' one (rank 0)."""
        from ucal.oracles import as_label_memory

        own = None if self.run_dir is None else self.run_dir.memory_path
        self.label_memory = as_label_memory(
            self.given_memory, path=own, infer=self.estimator.memory_inference,
            n_samples=self.n_samples,
        )
        self.validation_memory = self._open_held_out_memory("validation")
        if self.validation_memory is not None:
            self.check_memory = self._open_held_out_memory("start_check")

    def _open_held_out_memory(self, kind):
        """A memory of held-out answers (None when the fit does not validate, and off rank 0).

        ``kind`` is ``"validation"`` (asked before training) or ``"start_check"``
        (asked at the end, see :mod:`ucal.reid._start_check`).
        """
        est = self.estimator
        if self.oracle is None or est.validation_size == 0 or not self.dist.is_main:
            return None
        from ucal.oracles import LabelMemory

        path = None
        if self.run_dir is not None:
            path = self.run_dir.validation_path if kind == "validation" else self.run_dir.check_path
        elif getattr(self.label_memory, "path", None):
            # beside the user's answers file, so that no answer is lost with the process
            stem = os.path.splitext(self.label_memory.path)[0]
            path = f"{stem}.{kind}.jsonl"
        return LabelMemory(path, infer=False)

    def _held_out_pairs(self):
        """Every pair of the held-out memories: never asked in training, never trained on."""
        pairs = [_recorded_pairs(m, self.n_samples)
                 for m in (self.validation_memory, self.check_memory) if m is not None]
        return np.concatenate(pairs) if pairs else np.empty((0, 2), dtype=np.int64)

    def _budget_left(self):
        """Questions ``max_queries`` still allows, less the end-of-fit check's share."""
        max_queries = self.estimator.max_queries
        if max_queries is None:
            return None
        reserved = 0 if self._check_done else self.check_size
        return max(0, max_queries - self.n_queries - reserved)

    def _ask_before_training(self):
        """Validation pairs, then calibration: the questions asked before epoch 1."""
        est = self.estimator
        features = self.memory.features.cpu().numpy()
        start = {}
        if self.validation_memory is not None:
            from ucal.active import near_neighbour_pairs

            held = _recorded_pairs(self.validation_memory, self.n_samples)
            # At most a tenth of the images sit out training (two per pair at most).
            size = min(est.validation_size, self.n_samples // 20)
            if size < est.validation_size:
                logger.warning(
                    "validation_size=%d would keep too many of the %d images out of "
                    "training: %d pairs are held out instead.",
                    est.validation_size, self.n_samples, size,
                )
            want = size - len(held)
            if self._budget_left() is not None:
                want = min(want, self._budget_left())
            if want > 0:
                trained, _ = self.label_memory.to_arrays()
                exclude = [tuple(p) for p in self._held_out_pairs().tolist()]
                exclude += [tuple(p) for p in trained.tolist()]
                pairs = near_neighbour_pairs(
                    features, want, n_neighbors=10, exclude=exclude,
                    random_state=self._seed,
                )
                self._ask_held_out(pairs, self.validation_memory)
            # never asked again, never used to train: held out of the training memory
            # ("not sure" answers included: they may not be asked there either)
            self.label_memory.hold_out(self._held_out_pairs())
            start["validation_queries"] = int(self.validation_memory.n_queries)
        if est.calibrator is not None:
            start.update(self._calibrate(features))
        return start

    def _ask_held_out(self, pairs, memory):
        """Ask ``pairs`` into a held-out ``memory`` (rank 0); count what the oracle was sent."""
        sent = memory.n_queries
        # An oracle that records answers itself (the web page) records these in
        # the held-out memory, never in the training one.
        records = getattr(self.oracle, "label_memory", None) is self.label_memory
        if records:
            self.oracle.label_memory = memory
        try:
            return memory.ask(pairs, self.oracle)
        finally:
            if records:
                self.oracle.label_memory = self.label_memory
            self.pseudo_labeler.n_queries += memory.n_queries - sent

    def _calibrate(self, features):
        """Choose the base clusterer's scale by agreement with the answered pairs."""
        est = self.estimator
        labeler = self.pseudo_labeler
        # Always from the user's clusterer: a recalibration does not compound the last one.
        original = _fresh_clusterer(est, self.device)
        calibrator = clone(est.calibrator)
        if calibrator.clusterer is not None:
            warnings.warn(
                "The calibrator's own clusterer is not used: UCALReID calibrates "
                "its clusterer parameter.", UserWarning, stacklevel=5,
            )
        if calibrator.param_grid is None:
            grid = default_calibration_grid(original, self.n_samples)
            if not grid:
                logger.warning(
                    "%s has no eps: give the calibrator a param_grid; no calibration.",
                    type(original).__name__,
                )
                return {}
            calibrator.set_params(param_grid=grid)
        params = {"clusterer": original}
        if calibrator.random_state is None:
            params["random_state"] = self._seed
        calibrator.set_params(**params)
        try:
            calibrator.fit(
                features, oracle=self.oracle, label_memory=self.label_memory,
                query_limit=self._budget_left(),
            )
        finally:
            labeler.n_queries += int(getattr(calibrator, "n_queries_", 0))
        labeler.clusterer = calibrator.best_estimator_
        self.calibrated_params = dict(calibrator.best_params_)
        return {"calibrated": dict(calibrator.best_params_),
                "calibration_queries": int(calibrator.n_queries_)}

    def _validation_set(self):
        """The held-out (pairs, answers) inside this data, or None."""
        if self.validation_memory is None:
            return None
        pairs, same = self.validation_memory.to_arrays()
        inside = (pairs < self.n_samples).all(axis=1) if len(pairs) else np.zeros(0, bool)
        pairs, same = pairs[inside], same[inside]
        if self.label_memory is not None:
            self.label_memory.hold_out(self._held_out_pairs())
        if len(pairs) == 0:
            return None
        if same.all() or not same.any():
            logger.warning(
                "The %d held-out validation answers are all %r: the validation AUC is "
                "undefined (NaN) and no best epoch can be chosen.",
                len(same), "same" if same.all() else "different",
            )
        return pairs, same

    def _planned_check_size(self):
        """Questions the end-of-fit check against the start network may ask (0: no check).

        The check belongs to the built-in best-epoch rule (an oracle, validation
        answers, ``keep_best``, no BestEpoch of the user's): twice as many questions
        as the validation set will hold pairs, at least ``MIN_QUESTIONS``, at most a
        tenth of ``max_queries``, which refinement and calibration leave to it.
        A share too small to show anything (``MIN_CHECK``) means no check.
        """
        from ._start_check import MIN_CHECK, MIN_QUESTIONS

        est = self.estimator
        user_keeper = any(isinstance(c, BestEpoch) for c in est.callbacks or ())
        if (self.oracle is None or est.validation_size == 0 or not est.keep_best
                or user_keeper or est.supervised or self.pseudo_labeler is None):
            return 0
        n = max(2 * min(est.validation_size, self.n_samples // 20), MIN_QUESTIONS)
        if est.max_queries is not None:
            n = min(n, est.max_queries // 10)
            if n < MIN_CHECK:
                logger.info(
                    "max_queries=%d leaves too few questions to check the trained network "
                    "against the start (%d, fewer than %d): no check.",
                    est.max_queries, n, MIN_CHECK,
                )
                return 0
            self.pseudo_labeler.reserve = n
        return n

    def _release_check(self):
        """No check after all: its share of the budget goes back to refinement."""
        self.check_size = 0
        if self.pseudo_labeler is not None:
            self.pseudo_labeler.reserve = 0

    def _check_against_start(self):
        """Keep the start network unless the held one retrieves better on fair questions.

        See :mod:`ucal.reid._start_check`: held-out images are paired with the
        nearest training images one network names and the other does not, the
        pairs nobody answered yet are asked (rank 0; a resumed fit answers them
        from its memory), and the start network is put back unless the held
        one's candidates are "the same" more often, by ``significance(n)``
        standard errors (two below 20 anchors, else one).
        """
        from ._start_check import draw_questions, duel, significance

        self._check_done = True  # from here on the check spends its own share
        held = self._extract(self.source, "Checking against the start").cpu().numpy()
        start_net = self._start_net()
        start = self._extract(self.source, "Scoring the start", net=start_net).cpu().numpy()

        def on_main():
            anchors = np.unique(self.validation[0])
            candidates = np.setdiff1d(np.arange(self.n_samples), anchors)
            memories = (self.label_memory, self.validation_memory, self.check_memory)
            known_pairs = [_recorded_pairs(m, self.n_samples) for m in memories]
            recorded = {tuple(p) for pairs in known_pairs for p in pairs.tolist()}
            # the check's earlier questions (a resumed fit) count against its share
            budget = max(0, self.check_size - len(known_pairs[-1]))
            if self._budget_left() is not None:
                budget = min(budget, self._budget_left())
            pairs, held_side = draw_questions(start, held, anchors, candidates, budget,
                                              recorded, self._seed + 1)
            keys = [(min(i, j), max(i, j)) for i, j in pairs.tolist()]
            answers = np.full(len(pairs), -1, dtype=np.int8)
            # a pair any memory holds ("not sure" included) is read, never asked again
            old = np.array([key in recorded for key in keys], dtype=bool)
            for memory in memories:
                unknown = old & (answers < 0)
                if unknown.any():
                    answers[unknown] = memory.lookup(pairs[unknown])
            if (~old).any():
                answers[~old] = self._ask_held_out(pairs[~old], self.check_memory)
            return pairs, held_side, answers, self.n_queries

        pairs, held_side, answers, n_queries = self.dist.run_on_main(on_main)
        if not self.dist.is_main:
            self.pseudo_labeler.n_queries = n_queries
        ok = answers >= 0
        result = duel(pairs[ok, 0], held_side[ok], answers[ok] == 1)
        message = ("on %d images' nearest candidates where the networks disagree, the trained "
                   "network names %d of the same person and the start network %d (%.2f per "
                   "image, standard error %.2f; it must win by %g standard errors)")
        args = (result["n_anchors"], result["hits_held"], result["hits_start"],
                result["mean_diff"], result["diff_se"], significance(result["n_anchors"]))
        if result["keep"] == "start":
            self.net.load_state_dict(start_net.state_dict())
            logger.info("The start network is kept: " + message + ".", *args)
        else:
            logger.info("The trained network beats the start network: " + message + ".", *args)
        return result

    def _start_net(self):
        """The network the fit started from, built again as ``_setup`` built it."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._net_seed)
            net = build_net(self.estimator)
        net = net.to(self.device, memory_format=self.precision.memory_format())
        net.eval()
        return net

    def _start_record(self, start):
        """Epoch 0 in the history: the starting network, before any training."""
        record = {"epoch": 0, **start, "n_queries": self.n_queries, "cost": self._cost()}
        if self.validation is not None:
            record.update(self.validation_scores(*self.validation))
            record["val_pairs"] = int(len(self.validation[1]))
        if self.eval_splits is not None:
            Evaluator(*self.eval_splits).on_epoch_end(self, record)
        self.history.append(record)
        logger.info(format_record(record, self.estimator.epochs))

    def validation_scores(self, pairs, same):
        """``val_auc``, ``val_auc_se`` and ``val_accuracy`` of the current network on answered pairs.

        Parameters
        ----------
        pairs : ndarray of shape (m, 2)
            Indices of training images.
        same : ndarray of shape (m,), dtype bool
            Their answers.

        Returns
        -------
        scores : dict
            ``val_auc``, its standard error ``val_auc_se`` and
            ``val_accuracy`` (see :func:`ucal.metrics.pair_verification_scores`).
        """
        from ucal.metrics import pair_verification_scores

        images, inverse = np.unique(pairs, return_inverse=True)
        features = self._extract(self.source.subset(images), "Validating").cpu().numpy()
        scores = pair_verification_scores(features, inverse.reshape(-1, 2), same)
        return {"val_auc": scores["auc"], "val_auc_se": scores["auc_se"],
                "val_accuracy": scores["accuracy"]}

    # ------------------------------------------------------------ callbacks
    def _callbacks(self):
        est = self.estimator
        main = self.dist.is_main  # one log, one bar, one writer of checkpoints
        # the training bar closes before evaluation starts its own bars
        callbacks = [ProgressBar()] if est.verbose and main else []
        if self.eval_splits is not None:
            callbacks.append(Evaluator(*self.eval_splits))
        if self.validation is not None:
            callbacks.append(PairValidator(*self.validation))
        user = list(est.callbacks or ())
        callbacks.extend(user)
        if (
            self.validation is not None
            and est.keep_best
            and not any(isinstance(c, BestEpoch) for c in user)
        ):
            callbacks.append(BestEpoch(min_delta=_BEST_MIN_DELTA, significance=_BEST_SIGNIFICANCE))
        if main:
            callbacks.append(EpochLogger())
        if self.run_dir is not None and main:
            callbacks.append(Checkpointer(self.run_dir))
        return callbacks

    def _load_callback_states(self, states):
        """Give each callback its saved state, matched by class name and rank among its kind."""

        def keyed(names):
            seen = {}
            keys = []
            for name in names:
                seen[name] = seen.get(name, 0) + 1
                keys.append((name, seen[name]))
            return keys

        saved = dict(zip(keyed(name for name, _ in states), (state for _, state in states)))
        for key, callback in zip(keyed(type(c).__name__ for c in self.callbacks), self.callbacks):
            state = saved.get(key)
            if state is not None:
                callback.load_state_dict(state)

    def _notify(self, hook, *args):
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    # -------------------------------------------------------- checkpoints
    @property
    def n_queries(self):
        """Pairs sent to the oracle so far in this run."""
        return 0 if self.pseudo_labeler is None else self.pseudo_labeler.n_queries

    def _data_digest(self):
        """The training images' content digest (computed once per fit)."""
        if getattr(self, "_digest", None) is None:
            self._digest = self.source.fingerprint()
        return self._digest

    def state_dict(self):
        """Everything a resumed fit needs, as saved in ``checkpoint.pt``.

        Returns
        -------
        state : dict
            Network, optimizer, scheduler, feature memory, history, random
            states, the base clusterer and the query count.
        """
        return {
            "fingerprint": fingerprint(self.estimator, self.n_samples, self._data_digest()),
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
            "n_memory_records": sum(
                len(m) for m in (self.label_memory, self.validation_memory, self.check_memory)
                if m is not None
            ),
            "callbacks": [(type(c).__name__, c.state_dict()) for c in self.callbacks],
            "calibrated_params": self.calibrated_params,
        }

    def load_state_dict(self, ckpt):
        """Continue from a checkpoint of the same run (refused when the run differs).

        Parameters
        ----------
        ckpt : dict
            A :meth:`state_dict` read back from ``checkpoint.pt``.
        """
        est = self.estimator
        self.run_dir.check_fingerprint(
            ckpt["fingerprint"], fingerprint(est, self.n_samples, self._data_digest())
        )
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
            centroid_momentum=_memory_centroid_momentum(est),
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
                n_records = sum(
                    len(m) for m in (self.label_memory, self.validation_memory, self.check_memory)
                    if m is not None
                )
                n_queries += max(0, n_records - int(ckpt["n_memory_records"]))
            self.pseudo_labeler.n_queries = n_queries
        self.calibrated_params = ckpt.get("calibrated_params")
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
        self.dist = DistributedContext()
        mode = est.distributed if isinstance(est.distributed, str) else bool(est.distributed)
        if mode is not False:
            self.dist = DistributedContext.detect(est.device)
            if mode is True and not self.dist.enabled:
                raise ValueError(
                    "distributed=True, but this process is alone: launch with torchrun "
                    "or initialise torch.distributed with more than one process first."
                )
        quiet = None
        if not self.dist.is_main:
            # rank 0 logs for everyone
            quiet = logging.getLogger("ucal")
            level = quiet.level
            quiet.setLevel(logging.WARNING)
        finished = False
        try:
            if self.dist.enabled:
                self.dist.check_same(self._facts())
            self._run()
            finished = True
        finally:
            if quiet is not None:
                quiet.setLevel(level)
            self.dist.close(synchronise=finished)

    def _facts(self):
        """What every rank's fit must share: data, kinds of arguments, parameters."""
        est = self.estimator
        try:
            images = self._data_digest()
        except Exception as exc:  # unreadable here: every rank hears of it
            images = f"unreadable ({type(exc).__name__}: {exc})"
        params = {k: repr(v) for k, v in est.get_params(deep=False).items()
                  if k not in ("callbacks", "verbose")}
        return {
            "n_samples": self.n_samples, "images": images,
            "oracle given": self.oracle is not None, "y given": self.y is not None,
            "eval_set given": self.eval_splits is not None, "resume": self.resume,
            **{f"parameter {k}": v for k, v in sorted(params.items())},
        }

    def _run(self):
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
                labels = self._pseudo_labels(features, epoch, record)
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
            if self.pairs is not None:
                record["pair_answers"] = len(self.pairs)  # answered pairs the loss saw
                if self.pairs.n_trimmed:
                    record["pair_trimmed"] = self.pairs.n_trimmed
            record["loss"] = loss
            record["iterations"] = iters
            record["n_queries"] = self.n_queries
            record["cost"] = self._cost()
            self.history.append(record)
            error = None
            try:
                self._notify("on_epoch_end", record)
            except BaseException as exc:  # a checkpoint rank 0 cannot write...: every rank stops
                error = exc
            # rank 0's decision to stop holds for all
            self.stop_training = self.dist.settle(error, self.stop_training)
            if self.stop_training:
                logger.info("A callback stopped training after epoch %d.", self.epoch)
                break
        self._finish()
        keeper = next(
            (c for c in self.callbacks if isinstance(c, BestEpoch) and c.restore), None
        )
        if keeper is not None:
            keeper.on_fit_end(self)  # the best network is back before anyone else sees it
            # the epoch whose network the model now holds
            est.best_epoch_ = keeper.best_epoch
            if self.check_size and keeper.best_epoch != 0:
                est.start_check_ = self._check_against_start()
                if est.start_check_["keep"] == "start":
                    est.best_epoch_ = 0
                est.n_queries_ = int(self.n_queries)
                est.cost_ = self._cost()
        for callback in self.callbacks:
            if callback is not keeper:
                callback.on_fit_end(self)

    def _pseudo_labels(self, features, epoch, record):
        """The epoch's labels: recalibration, clustering and refinement, on rank 0."""

        def on_main():
            updates = {}
            if self._drifted():
                recalibrated = self._calibrate(features).get("calibrated")
                if recalibrated is not None:
                    updates["recalibrated"] = recalibrated
                    logger.info("Validation fell: clustering recalibrated to %s.", recalibrated)
            labels = self.pseudo_labeler(features, epoch, updates)
            return labels, updates, self.n_queries, self.calibrated_params

        labels, updates, n_queries, calibrated = self.dist.run_on_main(on_main)
        record.update(updates)
        if not self.dist.is_main:
            self.pseudo_labeler.n_queries = n_queries
            self.calibrated_params = calibrated
        return labels

    def _drifted(self):
        """Whether the last epoch's validation AUC fell, to below its best minus 0.02.

        Read from the history, so that a resumed run decides the same way.
        """
        est = self.estimator
        if self.validation is None or self.oracle is None or est.calibrator is None:
            return False
        aucs = [r["val_auc"] for r in self.history if r.get("val_auc") == r.get("val_auc")
                and "val_auc" in r]
        if len(aucs) < 2:
            return False
        return aucs[-1] < aucs[-2] and aucs[-1] < max(aucs) - _DRIFT_AUC

    def _cost(self):
        if self.estimator.supervised:
            return 1.0
        return labeling_cost(self.n_queries, self.n_samples)

    def _extract(self, source, desc, net=None):
        """Features of ``source``; with several processes each extracts a block, all get all.

        ``net`` defaults to the network being trained.
        """
        est = self.estimator
        dist = self.dist
        if dist.enabled:
            source = source.subset(dist.shard(len(source)))
        error = features = None
        try:
            features = extract_features(
                self.net if net is None else net, source, self.precision,
                est.inference_batch_size, est.num_workers, est.verbose and dist.is_main, desc,
            )
        except BaseException as exc:  # an image only this rank reads: every rank stops
            error = exc
        if dist.enabled:
            dist.settle(error)
        elif error is not None:
            raise error
        return dist.gather_rows(features)

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

    def _pair_supervision(self):
        """The training memory's answered pairs for this epoch's pair term (None: off).

        Read on rank 0 (which alone holds the answers) and shared with every
        rank; the held-out validation images and their pairs stay out.
        """
        est = self.estimator
        if not est.pair_weight or est.supervised or self.oracle is None:
            return None

        def on_main():
            if self.label_memory is None:
                return np.empty((0, 2), dtype=np.int64), np.empty(0, dtype=bool)
            return self.label_memory.to_arrays()

        pairs, same = self.dist.run_on_main(on_main)
        if len(pairs) == 0:
            return None
        exclude = None if self.validation is None else np.unique(self.validation[0])
        supervision = PairSupervision(
            pairs, same, self.n_samples, self.memory.features.cpu().numpy(),
            temperature=est.temperature, exclude=exclude, trim=est.pair_trim,
        )
        return supervision if supervision.active else None

    def _train_epoch(self, labels):
        est = self.estimator
        if est.outliers == "instances" and not est.supervised:
            # SpCL: every un-clustered image is a class of its own, its memory
            # feature its centroid; it is trained on and its slot stays current.
            labels = outliers_as_singletons(labels)
        if self.validation is not None:
            # The validation images are never trained on: their pairs measure how the
            # network generalises, not how well it fits its own clusters.
            labels = labels.copy()
            labels[np.unique(self.validation[0])] = -1
            labels = relabel(labels)
        self.objective = build_objective(est, labels, self.memory.features, self.source.camids)
        if self.objective is None:  # only Eq. 1 reads the memory's own centroids
            self.memory.set_labels(labels)
        self.pairs = self._pair_supervision()
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
        if self.dist.enabled:
            return self._train_epoch_shared(batches, sampler.group_sizes, targets)
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
            loss = self._class_loss(features, indices, targets)
            if self.pairs is not None:
                pair_sum, _ = self.pairs.loss(features, indices, self.memory)
                loss = loss + est.pair_weight * pair_sum / len(indices)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.memory.update(indices, features)
            if self.objective is not None:
                self.objective.update(indices, features)
            total += loss.detach()
            self._notify("on_batch_end", batch, loss.detach())
        return float(total.item()) / max(1, len(batches)), len(batches)

    def _class_loss(self, features, indices, targets, reduction="mean"):
        """The base's loss of the batch: Eq. 1, or the cluster memory's or the proxies'."""
        if self.objective is not None:
            return self.objective.loss(features, indices, reduction=reduction)
        batch_targets = targets[torch.as_tensor(indices, device=self.device)]
        return centroid_contrastive_loss(
            features, batch_targets, self.memory.centroids(), self.estimator.temperature,
            reduction=reduction,
        )

    def _train_epoch_shared(self, batches, group_sizes, targets):
        """The epoch's steps with several processes: each trains on its identities of a batch.

        Every rank draws the same global batches; rank ``r`` keeps its share
        of the pseudo identities, augments its rows with the global batch's
        random draws, and scales its summed loss so that the gradients
        ``DistributedDataParallel`` averages are those of the global batch's
        mean. The batch features of all ranks are gathered, in batch order,
        before the memory update.
        """
        est, dist = self.estimator, self.dist
        shares = [dist.batch_shares(groups) for groups in group_sizes]
        local = [b[share[dist.rank]] for b, share in zip(batches, shares)]
        self.train_net.train()
        total = torch.zeros((), device=self.device)
        memory_format = self.precision.memory_format()
        for batch, (indices, images) in enumerate(
            iter_batches(self.source, local, est.num_workers)
        ):
            rows = shares[batch][dist.rank]
            n_global = len(batches[batch])
            x = self.augment(images.to(self.device, non_blocking=True), train=True,
                             rows=rows, n_total=n_global)
            x = x.contiguous(memory_format=memory_format)
            with self.precision.autocast():
                features = self.train_net(x)
            per_sample = self._class_loss(features, indices, targets, reduction="none")
            loss_sum = per_sample.sum()
            if self.pairs is not None:
                # the pair term of this rank's rows; over the global batch, as one process has it
                pair_sum, _ = self.pairs.loss(features, indices, self.memory)
                loss_sum = loss_sum + est.pair_weight * pair_sum
            loss = loss_sum * (dist.world_size / n_global)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            # every rank updates its memory with the whole batch, in batch order
            gathered = dist.gather_rows(features.detach().float(),
                                        sizes=[len(share) for share in shares[batch]])
            order = np.concatenate(shares[batch])
            batch_features = torch.empty_like(gathered)
            batch_features[torch.as_tensor(order, device=gathered.device)] = gathered
            self.memory.update(batches[batch], batch_features)
            if self.objective is not None:
                self.objective.update(batches[batch], batch_features)
            mean_loss = dist.all_reduce_sum(loss_sum.detach()) / n_global
            total += mean_loss
            self._notify("on_batch_end", batch, mean_loss)
        return float(total.item()) / max(1, len(batches)), len(batches)

    def _finish(self):
        est = self.estimator
        if self.dist.enabled:
            unsync_batchnorm(self.net)  # the fitted model runs in one process
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
        est.best_epoch_ = None
        if self.label_memory is not None:
            self.label_memory.hold_out(None)  # the memory goes back to the user unrestricted
        est.validation_memory_ = self.validation_memory
        est.start_check_memory_ = self.check_memory
        est.start_check_ = None
        est.calibrated_params_ = self.calibrated_params
