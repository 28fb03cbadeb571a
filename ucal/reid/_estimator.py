"""UCALReID: the re-id network trained by self-paced clustering plus SNPS/MPPS."""

import numbers
import os
import warnings

import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ucal.oracles import as_label_memory, check_identities, resolve_oracle

from ._backbones import BACKBONES, POOLINGS
from ._data import as_image_source, check_image_size
from ._device import resolve_device, resolve_precision
from ._features import check_eval_set, extract_features, reid_scores
from ._loop import LOSSES, TrainingLoop, build_net
from ._schedules import LR_SCHEDULES

__all__ = ["UCALReID"]


# The hooks of the callback protocol (ucal.reid.Callback).
_HOOKS = ("on_fit_begin", "on_epoch_begin", "on_batch_end", "on_epoch_end", "on_fit_end")


# Parameters newer than the first saved models, with the value that keeps their behaviour.
_PARAMS_ADDED_SINCE_0_1 = {"distributed": "auto", "sync_batchnorm": True, "loss": "centroid",
                           "pooling": "avg", "pair_weight": 0.0, "pair_trim": 0.0}


class UCALReID(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Person re-id network trained by Unsupervised Clustering Active Learning.

    Each epoch, the features of all training images (kept in a memory)
    are clustered by :class:`~ucal.cluster.SelfPacedDBSCAN`; from
    ``warmup_epochs`` on, the clusters are refined by
    :class:`~ucal.active.SNPSSplitter` (split on hard negative pairs)
    then :class:`~ucal.active.MPPSMerger` (merge on hard positive
    pairs), asking an oracle about a few pairs of images through one
    :class:`~ucal.oracles.LabelMemory` kept for the whole fit; the network
    is then trained on the refined pseudo labels with the cluster-centroid
    contrastive loss (Eq. 1). Defaults are the paper's (Sec. 4.2) and
    SpCL's; the model becomes a feature extractor: :meth:`transform`
    returns L2-normalised embeddings.

    Parameters
    ----------
    backbone : {"resnet50", "resnet18", "small"} or torch.nn.Module, default="resnet50"
        The network body. ``"small"`` is a 1.2 M-parameter residual CNN for
        CPU runs. A module must map an image batch (B, 3, H, W) to feature
        maps (B, C, h, w) or vectors (B, C); it is copied, not modified.
        The SpCL neck follows: last stride 1 (ResNets), pooling (see
        ``pooling``), BatchNorm1d, L2 normalisation.
    pretrained : bool or path-like, default=True
        ``True``: torchvision's ImageNet weights for the ResNets (from the
        torch cache, ``$TORCH_HOME``, or downloaded; offline without a
        cached copy is an error); a module keeps the weights it has. A
        path: a state dict saved with ``torch.save`` (of the body, or of a
        whole fitted ``backbone_``). ``False``: random initialisation.
    image_size : tuple of (int, int), default=(256, 128)
        Input (height, width); images are resized to it.
    epochs : int, default=50
        Training epochs (one clustering each).
    warmup_epochs : int, default=15
        Epochs of pure unsupervised training before SNPS/MPPS start.
    iters_per_epoch : int or None, default=None
        Training iterations per epoch; None = one pass over the clustered
        images (``ceil(n_clustered / batch_size)``).
    batch_size : int, default=64
        Images per iteration.
    num_instances : int, default=4
        Images per pseudo identity in a batch (``batch_size //
        num_instances`` identities per batch).
    lr : float, default=3.5e-4
        Adam learning rate.
    weight_decay : float, default=5e-4
        Adam weight decay.
    lr_schedule : {"step", "constant", "cosine"} or callable, default="step"
        How the learning rate changes, once per epoch. ``"step"``: times
        ``lr_gamma`` every ``lr_step`` epochs (the paper's and SpCL's);
        ``"constant"``; ``"cosine"``: cosine annealing to 0 over
        ``epochs``; or a callable ``lr_schedule(optimizer, epochs)``
        returning a ``torch.optim.lr_scheduler`` scheduler (module-level,
        so that the estimator pickles).
    lr_step : int, default=20
        ``lr_schedule="step"``: epochs between decays.
    lr_gamma : float, default=0.1
        ``lr_schedule="step"``: learning-rate decay factor.
    temperature : float, default=0.05
        Temperature ``tau`` of Eq. 1.
    memory_momentum : float, default=0.2
        Momentum of the feature memory: ``m <- 0.2 m + 0.8 f``.
    memory_refresh : {"stale", "all", "none"}, default="stale"
        Which memory slots are re-extracted (eval mode, no augmentation)
        before each clustering. ``"stale"``: the images no training batch
        visited in the previous epoch (with ``outliers="drop"``, the
        outliers, which would otherwise keep their first-epoch features
        forever); ``"all"``: every image (cluster-contrast's choice, one
        extra forward pass over the data per epoch); ``"none"``: SpCL's
        pure momentum memory.
    outliers : {"instances", "drop"}, default="instances"
        What training does with the images the clustering leaves out:
        ``"instances"`` (SpCL): each is a class of its own in Eq. 1, its
        memory feature its centroid, sampled once per visit;
        ``"drop"`` (cluster-contrast): they sit the epoch out.
    loss : {"centroid", "cluster_memory", "cluster_memory_hard", "camera_proxies"}, default="centroid"
        The unsupervised base's loss on the pseudo identities (see
        :doc:`/bases`). ``"centroid"``: Eq. 1, a softmax over centroids
        that are the mean memory features of their members (SpCL, the
        paper's base). ``"cluster_memory"``: cluster-contrast's memory, one
        prototype per cluster set to the member mean each epoch and then
        moved by every batch feature (:class:`~ucal.reid.ClusterMemory`);
        ``"cluster_memory_hard"``: moved by each cluster's hardest instance
        of the batch only. ``"camera_proxies"``: CAP's per-camera proxies
        with an intra-camera and an inter-camera term
        (:class:`~ucal.reid.CameraProxyMemory`); it needs the images'
        camera ids (a split's, or ``camids`` of an image list) and without
        two known cameras trains the cluster memory, with a log line. The
        answers, SNPS, MPPS and the pair term work the same on each.
    pooling : {"gem", "avg"}, default="gem"
        How the neck pools the feature maps: GeM with a learnt exponent
        (:class:`~ucal.reid.GeneralizedMeanPooling`), or global average
        pooling (SpCL's and the paper's; the ``paper`` preset keeps it).
        GeM is the default by measurement (:doc:`/bases`): on the ablation's
        data its Baseline is +4.7 ± 2.7 mAP above average pooling's and UCAL
        on it +7.3 ± 2.0 at the same budget, better on every seed, for 4 %
        more time per step. A backbone that returns vectors is not pooled.
    centroid_momentum : float or None, default=None
        Momentum of the class prototypes. With ``loss="centroid"``: None, a
        centroid of Eq. 1 is the mean memory feature of its members (SpCL);
        a float ``cm``, the centroids are reset to the normalised member
        mean each epoch and then moved by the mean of each batch's members,
        ``c <- cm c + (1 - cm) f``. With the other losses: the prototypes'
        momentum, None the peer's (0.1 for the cluster memory, 0.2 for the
        camera proxies).
    pair_weight : float, default=1.0
        Weight of the pair term (:class:`~ucal.reid.PairSupervision`): every
        answered pair of the training memory (never a held-out validation
        answer) enters the loss of every epoch as a verification term, the
        binary cross-entropy of ``sigmoid(a (f_i . m_j - b))`` against the
        answer, where ``m_j`` is the partner's memory feature and ``a``, ``b``
        the boundary a logistic fit of the answers draws on the epoch's
        features. It is summed over the batch's answered pairs and divided
        by the batch size. 0 trains on the pseudo labels alone (the paper,
        and the ``paper`` preset); see :doc:`/answers` for what it buys.
    pair_trim : float, default=0.0
        Share of the answered pairs the pair term leaves out each epoch:
        those the epoch's features contradict most (the largest binary
        cross-entropy under the boundary fitted on all answers), the
        boundary then fitted again on the rest. For an annotator who makes
        mistakes, about their error rate; the answers stay in the memory
        and are ranked again every epoch. 0 trains on every answer. See
        :doc:`/answers` for what it was measured to buy.
    flip_prob : float, default=0.5
        Probability of a horizontal flip (training augmentation).
    pad : int, default=10
        Zero padding before the random crop back to ``image_size``.
    erasing_prob : float, default=0.5
        Probability of random erasing.
    clusterer : estimator or None, default=None
        The base clustering, with ``fit(features)`` and ``labels_``
        (-1 = outlier). None = ``SelfPacedDBSCAN()`` (eps 0.6,
        min_samples 4, k1 30, k2 6). It is cloned once per fit and refitted
        every epoch, so its state (SpCL's independence threshold, fixed at
        the first clustering) carries over; checkpoints save it.
    refiner : estimator, "passthrough" or None, default=None
        What repairs the base clustering with the oracle from
        ``warmup_epochs`` on: a refiner of :mod:`ucal.active`, composed
        as you would compose it standalone, e.g. ``SNPSSplitter()`` alone
        (Table 2's SNPS row), ``MPPSMerger()`` alone, or your own
        subclass. It is cloned every epoch and fitted on the memory
        features with ``labels=`` the base clustering, the fit's oracle
        and label memory, ``query_limit=`` what is left of ``max_queries``
        and a per-epoch ``seed`` (used where its ``random_state`` is
        None); its own parameters are never changed. A base clusterer at
        the bottom of its chain is not used (``clusterer`` is; a
        ``UserWarning`` says so). In a chain, an outer refiner's
        ``max_queries`` caps the whole chain. None =
        ``MPPSMerger(clusterer=SNPSSplitter(clusterer=AnswerConstraints()))``:
        the answers already given are applied to the new clustering, then
        SNPS, then MPPS (see :doc:`/user_guide`; ``UCALReID.from_preset("paper")``
        runs the paper's SNPS then MPPS literally). ``"passthrough"``: no
        refinement, the unsupervised Baseline.
    max_queries : int or None, default=None
        Total budget of pairs sent to the oracle during the fit; None =
        unlimited. See ``query_pacing`` for how it is spread over epochs.
    query_pacing : {"even", "greedy"}, default="even"
        With ``max_queries``: ``"even"`` gives each refinement epoch at
        most what is left divided by the epochs still to come (features
        improve, so later epochs get questions too); ``"greedy"`` lets each
        epoch spend all that is left. Within an epoch the refiner spends it
        where it buys most: SNPS on the clusters with the best split
        criterion first, MPPS on the most similar centroid pairs first, and
        neither on what the answers already settle.
    memory_inference : bool, default=True
        Whether the label memory the fit opens infers answers transitively
        (``LabelMemory(infer=...)``); False is the paper's exact-pair
        memory. A ``label_memory`` given to :meth:`fit` keeps its own.
    calibrator : ClusteringCalibrator or None, default=None
        Chooses the base clustering's scale from the oracle's answers before
        the first epoch, and again when the validation AUC falls by more
        than 0.02 below its best (see
        :class:`~ucal.active.ClusteringCalibrator`). It is cloned and
        calibrates ``clusterer`` (its own ``clusterer`` is not used); with
        ``param_grid=None`` it tries ``eps`` in 0.35, 0.4, ..., 0.7 and, for
        a ``SelfPacedDBSCAN`` on up to 20,000 images, ``k1`` or half of it.
        Its questions count in the cost and in ``max_queries``. None: no
        calibration. Off by default: on the demo's data it chose a tighter
        scale than SpCL's and UCAL ended 4 mAP lower, while on new data that
        SpCL's scale over-merges it helped (``benchmarks/results/start.md``);
        turn it on when the clustering is degenerate (a
        :class:`~ucal.reid.DegenerateClusteringWarning` says so).
    validation_size : int, default=100
        Pairs asked before training, at random among near neighbours of
        the starting network's features, and held out from every training
        decision, and their images are never trained on (so that the
        figure measures how the network generalises, not how it fits its
        own clusters; at most a tenth of the images: ``validation_size`` is
        lowered to ``N // 20`` pairs on small data, with a warning): each epoch's
        record gets ``val_auc`` and ``val_accuracy`` on them, the starting
        network's as epoch 0. Their
        answers are kept apart from the training answers (in
        ``checkpoint_dir/validation_memory.jsonl``, or beside a
        ``label_memory`` file as ``<name>.validation.jsonl``) and count in
        the cost. 0 turns validation off. Only with an oracle.
    keep_best : bool, default=True
        With validation: at the end of the fit, put back the network of
        the epoch with the best ``val_auc`` (the starting network
        included) and say so in the log (see :class:`~ucal.reid.BestEpoch`).
        Then, when that is a trained network, check it against the
        starting network on retrieval questions about the held-out images'
        nearest training images where the two networks disagree (twice as
        many as the validation set holds pairs, at least 60, at most a
        tenth of ``max_queries``, kept
        back from calibration and refinement; no check below 30; saved in
        ``start_check.jsonl`` or ``<name>.start_check.jsonl``), and put the
        starting network back unless the trained one wins by two standard
        errors (below 20 answered images; one from 20 on) (``start_check_``;
        see :doc:`/answers`).
    supervised : bool, default=False
        Train on the true identities ``y`` instead of pseudo labels (the
        paper's Supervised upper bound: same loss, labeling cost 100 %).
    device : str, default="auto"
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        Re-resolved when a pickled model is loaded. With several processes
        (``torchrun``, see :doc:`/multi_gpu`), each uses its own GPU
        (``LOCAL_RANK``).
    distributed : "auto" or bool, default="auto"
        ``"auto"``: train with every process of an initialised process
        group, or of torchrun's environment (``WORLD_SIZE`` above 1), as
        one fit (see :doc:`/multi_gpu`); a process alone trains alone.
        ``False``: this process trains alone, whatever the environment (a
        fit on rank 0 only, inside a group made for something else).
        ``True``: like ``"auto"``, but a process alone is an error.
    sync_batchnorm : bool, default=True
        With several processes, compute BatchNorm statistics over the whole
        global batch (every rank's share), as one process would: results do
        not depend on the number of processes. ``False`` keeps each rank's
        statistics to its share (less communication). No effect in one
        process.
    mixed_precision : "auto" or bool, default="auto"
        ``"auto"``: bfloat16 autocast plus channels_last on CPUs with native
        bf16, mixed precision on CUDA, float32 otherwise.
    num_workers : int, default=0
        ``DataLoader`` worker processes that decode image files (paths or a
        torch Dataset). In-memory arrays are always read in the main process.
    inference_batch_size : int, default=256
        Batch size of feature extraction (memory initialisation,
        :meth:`transform`, evaluation).
    checkpoint_dir : str or None, default=None
        Where to save a checkpoint after every epoch (model, optimizer,
        scheduler, memory, history, RNG states; atomic) and the label
        memory, written as answers arrive (``label_memory.jsonl``). See
        ``resume`` in :meth:`fit`.
    callbacks : list of Callback or None, default=None
        Objects told when the fit, each epoch and each batch begin or end
        (see :class:`~ucal.reid.Callback`): to log elsewhere (TensorBoard),
        to add to each epoch's record, or to stop early
        (``loop.stop_training = True``). They run after the built-in
        evaluation and before the log line and the checkpoint.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation, sampling, augmentation and refinement;
        an int makes CPU runs repeatable.
    verbose : int, default=0
        ``>= 1``: progress bars for training and feature extraction.

    Attributes
    ----------
    backbone_ : ReIDNet (torch.nn.Module)
        The trained network (body + neck), in eval mode.
    labels_ : ndarray of shape (n_samples,)
        Pseudo labels of the training images used in the last epoch (after
        refinement); -1 = not clustered.
    n_queries_ : int
        Pairs sent to the oracle during the fit (Eq. 7's ``M``).
    cost_ : float
        Labeling cost (Eq. 7), a fraction: ``n_queries_ / (N (N - 1) / 2)``.
    label_memory_ : LabelMemory or None
        The answers gathered (None for the Baseline and Supervised runs).
    history_ : list of dict
        One record per epoch: ``epoch``, ``n_clusters``, ``n_outliers``,
        ``n_clusters_base`` (before refinement), ``snps_queries``,
        ``snps_inferred``, ``mpps_queries``, ``mpps_inferred`` (a stage of
        another name adds ``<stage>_queries``, ``<stage>_inferred`` and
        ``<stage>_changes``), ``n_queries`` (cumulative), ``cost``,
        ``loss``, ``lr``, ``iterations``, ``seconds``, ``n_refreshed``
        (memory slots re-extracted), ``n_splits`` and ``n_merges``; with an
        ``eval_set`` ``mAP``, ``mINP``, ``R1``, ``R5``, ``R10``
        (fractions); with validation ``val_auc`` and ``val_accuracy``, and
        a first record for epoch 0 (the starting network: ``n_queries``,
        ``cost``, ``val_*``, ``calibrated``, and the test scores with an
        ``eval_set``); when ``y`` is given, ``label_precision`` and
        ``label_recall``: pairwise precision and recall of the epoch's
        pseudo labels against ``y`` (diagnostics only; training never
        sees ``y`` except through the oracle).
    n_samples_fit_ : int
        Number of training images.
    device_ : str
        The device the network trained on.
    best_epoch_ : int or None
        With validation and ``keep_best``: the epoch whose network the model
        holds (0 = the starting network). None without validation.
    validation_memory_ : LabelMemory or None
        The held-out answers (None without validation).
    start_check_ : dict or None
        What the end-of-fit check against the starting network found
        (``hits_start``, ``hits_held``, ``mean_diff``, ``diff_se``,
        ``n_anchors``, ``n_pairs``, ``keep``); None when it did not run (no validation,
        ``keep_best=False``, a BestEpoch of your own, a budget share below
        30 questions, or the best-epoch rule already held the starting
        network).
    start_check_memory_ : LabelMemory or None
        The check's answers (held out like the validation answers).
    calibrated_params_ : dict or None
        The clustering parameters chosen by the calibrator before the first
        epoch (None without calibration).
    precision_ : str
        How it ran, e.g. ``"bfloat16 autocast + channels_last on cpu"`` or
        ``"float32 on cpu"`` (see ``mixed_precision``).
    feature_dim_ : int
        Embedding size ``d``.

    See Also
    --------
    ucal.cluster.SelfPacedDBSCAN : The base clustering.
    ucal.active.SNPSSplitter, ucal.active.MPPSMerger : The refinements.
    ucal.oracles.LabelOracle : A simulated annotator from true identities.

    Notes
    -----
    Un-clustered images (outliers) are single-image classes in training,
    as in SpCL (``outliers="instances"``). The memory is updated from the
    training batch features, so training needs no second forward pass. A fitted model
    pickles (``joblib.dump``) without its oracle; the network is stored on
    the CPU and moved to ``device`` on loading, so a GPU-trained model
    loads on a CPU-only machine.

    Examples
    --------
    >>> import numpy as np
    >>> from ucal.reid import UCALReID
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randint(0, 256, size=(24, 32, 16, 3), dtype=np.uint8)
    >>> model = UCALReID(backbone="small", pretrained=False, image_size=(32, 16),
    ...                  epochs=1, batch_size=8, iters_per_epoch=2, random_state=0)
    >>> model.set_params(refiner="passthrough").fit(X).transform(X).shape
    (24, 256)
    """

    _parameter_constraints = {
        "backbone": [StrOptions(set(BACKBONES)), torch.nn.Module],
        "pretrained": ["boolean", str, os.PathLike],
        "image_size": [tuple, list],
        "epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "warmup_epochs": [Interval(numbers.Integral, 0, None, closed="left")],
        "iters_per_epoch": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "batch_size": [Interval(numbers.Integral, 2, None, closed="left")],
        "num_instances": [Interval(numbers.Integral, 1, None, closed="left")],
        "lr": [Interval(numbers.Real, 0, None, closed="neither")],
        "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
        "lr_schedule": [StrOptions(set(LR_SCHEDULES)), callable],
        "lr_step": [Interval(numbers.Integral, 1, None, closed="left")],
        "lr_gamma": [Interval(numbers.Real, 0, 1, closed="right")],
        "temperature": [Interval(numbers.Real, 0, None, closed="neither")],
        "memory_momentum": [Interval(numbers.Real, 0, 1, closed="left")],
        "memory_refresh": [StrOptions({"stale", "all", "none"})],
        "outliers": [StrOptions({"instances", "drop"})],
        "loss": [StrOptions(set(LOSSES))],
        "pooling": [StrOptions(set(POOLINGS))],
        "centroid_momentum": [Interval(numbers.Real, 0, 1, closed="left"), None],
        "pair_weight": [Interval(numbers.Real, 0, None, closed="left")],
        "pair_trim": [Interval(numbers.Real, 0, 0.5, closed="left")],
        "flip_prob": [Interval(numbers.Real, 0, 1, closed="both")],
        "pad": [Interval(numbers.Integral, 0, None, closed="left")],
        "erasing_prob": [Interval(numbers.Real, 0, 1, closed="both")],
        "clusterer": [HasMethods(["fit"]), None],
        "refiner": [HasMethods(["fit"]), StrOptions({"passthrough"}), None],
        "max_queries": [Interval(numbers.Integral, 0, None, closed="left"), None],
        "query_pacing": [StrOptions({"even", "greedy"})],
        "memory_inference": ["boolean"],
        "calibrator": [HasMethods(["fit"]), None],
        "validation_size": [Interval(numbers.Integral, 0, None, closed="left")],
        "keep_best": ["boolean"],
        "supervised": ["boolean"],
        "device": [str, torch.device],
        "mixed_precision": [StrOptions({"auto"}), "boolean"],
        "distributed": [StrOptions({"auto"}), "boolean"],
        "sync_batchnorm": ["boolean"],
        "num_workers": [Interval(numbers.Integral, 0, None, closed="left")],
        "inference_batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "checkpoint_dir": [str, os.PathLike, None],
        "callbacks": [list, tuple, None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        backbone="resnet50",
        pretrained=True,
        image_size=(256, 128),
        epochs=50,
        warmup_epochs=15,
        iters_per_epoch=None,
        batch_size=64,
        num_instances=4,
        lr=3.5e-4,
        weight_decay=5e-4,
        lr_schedule="step",
        lr_step=20,
        lr_gamma=0.1,
        temperature=0.05,
        memory_momentum=0.2,
        memory_refresh="stale",
        outliers="instances",
        loss="centroid",
        pooling="gem",
        centroid_momentum=None,
        pair_weight=1.0,
        pair_trim=0.0,
        flip_prob=0.5,
        pad=10,
        erasing_prob=0.5,
        clusterer=None,
        refiner=None,
        max_queries=None,
        query_pacing="even",
        memory_inference=True,
        calibrator=None,
        validation_size=100,
        keep_best=True,
        supervised=False,
        device="auto",
        distributed="auto",
        sync_batchnorm=True,
        mixed_precision="auto",
        num_workers=0,
        inference_batch_size=256,
        checkpoint_dir=None,
        callbacks=None,
        random_state=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.pretrained = pretrained
        self.image_size = image_size
        self.epochs = epochs
        self.warmup_epochs = warmup_epochs
        self.iters_per_epoch = iters_per_epoch
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        self.lr_step = lr_step
        self.lr_gamma = lr_gamma
        self.temperature = temperature
        self.memory_momentum = memory_momentum
        self.memory_refresh = memory_refresh
        self.outliers = outliers
        self.loss = loss
        self.pooling = pooling
        self.centroid_momentum = centroid_momentum
        self.pair_weight = pair_weight
        self.pair_trim = pair_trim
        self.flip_prob = flip_prob
        self.pad = pad
        self.erasing_prob = erasing_prob
        self.clusterer = clusterer
        self.refiner = refiner
        self.max_queries = max_queries
        self.query_pacing = query_pacing
        self.memory_inference = memory_inference
        self.calibrator = calibrator
        self.validation_size = validation_size
        self.keep_best = keep_best
        self.supervised = supervised
        self.device = device
        self.distributed = distributed
        self.sync_batchnorm = sync_batchnorm
        self.mixed_precision = mixed_precision
        self.num_workers = num_workers
        self.inference_batch_size = inference_batch_size
        self.checkpoint_dir = checkpoint_dir
        self.callbacks = callbacks
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fit
    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None, *, oracle=None, eval_set=None, resume=False, label_memory=None):
        """Train the network on the unlabeled images ``X``.

        Parameters
        ----------
        X : ReIDSplit, list of str, ndarray of shape (n_samples, H, W, 3) or torch Dataset
            Training images: a split (its camera ids guide the sampler;
            its identities are NOT used), image paths, uint8 RGB pixels,
            or a torch Dataset of PIL images / uint8 arrays / (3, H, W)
            tensors (or tuples starting with one).
        y : array-like of shape (n_samples,), default=None
            True identities. Without an ``oracle``, ``LabelOracle(y)``
            answers the pairs (the paper's simulated annotator). Required
            when ``supervised=True``.
        oracle : callable, default=None
            ``oracle(pairs) -> answers`` (see :mod:`ucal.oracles`);
            indices refer to positions in ``X``. Without an oracle and
            without ``y``, the unsupervised Baseline is trained (a warning
            says that no refinement happens). Never stored on the model.
        eval_set : ReIDDataset or (ReIDSplit, ReIDSplit), default=None
            Query and gallery evaluated after every epoch (CMC and mAP in
            ``history_``).
        resume : bool, default=False
            Continue the run saved in ``checkpoint_dir`` from its last
            complete epoch. Oracle answers already in the label memory are
            never asked again.
        label_memory : LabelMemory, path-like or None, default=None
            The memory of answers to use and record into, for example the
            one a :class:`~ucal.oracles.WebOracle` writes to, or answers
            from an earlier session on the same images. None: a memory in
            ``checkpoint_dir/label_memory.jsonl``, or in RAM without a
            ``checkpoint_dir``. Pairs it already knows are never asked and
            not counted in ``n_queries_``.

        Returns
        -------
        self : UCALReID
            The fitted estimator.
        """
        image_size = check_image_size(self.image_size)
        source = as_image_source(X, image_size)
        n_samples = len(source)
        if n_samples < 2:
            raise ValueError(f"X holds {n_samples} image; at least 2 are needed.")
        if y is not None:
            y = check_identities(y, n_samples)
        if self.supervised and y is None:
            raise ValueError("supervised=True trains on the true identities: pass y.")
        if self.num_instances > self.batch_size:
            raise ValueError(
                f"num_instances={self.num_instances} exceeds batch_size={self.batch_size}."
            )
        if resume and self.checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir, where the run was saved.")
        for callback in self.callbacks or ():
            if not all(callable(getattr(callback, hook, None)) for hook in _HOOKS):
                raise TypeError(
                    f"callbacks must hold ucal.reid.Callback objects (with {', '.join(_HOOKS)}); "
                    f"got {type(callback).__name__}."
                )
        eval_splits = check_eval_set(eval_set)

        oracle = resolve_oracle(oracle, y, n_samples=n_samples)
        refine = self.refiner != "passthrough" and not self.supervised
        if refine and oracle is None:
            warnings.warn(
                "No oracle and no y were given: training the unsupervised Baseline; "
                "no SNPS/MPPS refinement happens. Pass y (simulated annotator) or "
                "oracle=..., or set refiner='passthrough' to silence this warning.",
                UserWarning,
                stacklevel=3,
            )
            refine = False
        if label_memory is not None:
            label_memory = as_label_memory(label_memory)
            if not refine:
                raise ValueError(
                    "label_memory is only used to refine clusters with an oracle: pass an "
                    "oracle (or y) and a refiner other than 'passthrough'."
                )
        loop = TrainingLoop(
            self, source, y, oracle if refine else None, label_memory, eval_splits, resume
        )
        loop.run()
        return self

    @classmethod
    def from_preset(cls, name, **params):
        """An estimator with the parameters of a named preset.

        ``"paper"`` reproduces the paper literally, for honest Table 2
        comparisons: SNPS with ``k_max = floor(sqrt(|C| / 2) / 2)``, both
        modules asking their medoid pairs once (no cluster-level use of
        earlier answers, no confirmation, the merge cap applied after
        asking), the exact-pair label memory, answers not carried into later
        clusterings, and SpCL's schedule (50 epochs, 15 of warm-up, 400
        iterations each, learning rate times 0.1 every 20 epochs).
        ``"default"`` is the constructor's defaults. :doc:`/reproducing`
        lists every departure of the defaults from the paper and SpCL.
        ``"neighbors"`` is the default with MPPS asking each image about its
        nearest neighbour in another cluster
        (``MPPSMerger(selection="neighbors")``) and the budget spent as early
        as the questions allow (``query_pacing="greedy"``): for a pretrained
        start on new people, where it gained +7.4 ± 1.1 mAP over the start
        against the default's +2.9 ± 2.6; on the ablation's stronger start
        it does not beat the default (:doc:`/answers`).

        Parameters
        ----------
        name : {"paper", "default", "neighbors"}
            The preset.
        **params : dict
            Parameters that override the preset's.

        Returns
        -------
        estimator : UCALReID
            A new, unfitted estimator.

        Examples
        --------
        >>> from ucal.reid import UCALReID
        >>> paper = UCALReID.from_preset("paper", backbone="small")
        >>> paper.iters_per_epoch, paper.memory_inference, paper.refiner.cluster_inference
        (400, False, False)
        >>> early = UCALReID.from_preset("neighbors")
        >>> early.refiner.selection, early.query_pacing
        ('neighbors', 'greedy')
        """
        from ._presets import preset_params

        return cls(**{**preset_params(name), **params})

    # ----------------------------------------------------------- inference
    def transform(self, X):
        """Embed images with the trained network.

        Parameters
        ----------
        X : ReIDSplit, list of str, ndarray of shape (n_samples, H, W, 3) or torch Dataset
            Images, in any form accepted by :meth:`fit`.

        Returns
        -------
        features : ndarray of shape (n_samples, n_features_out), dtype float32
            L2-normalised embeddings (cosine similarity = dot product).
        """
        check_is_fitted(self, "backbone_")
        source = as_image_source(X, check_image_size(self.image_size))
        device = next(self.backbone_.parameters()).device
        precision = resolve_precision(self.mixed_precision, device)
        features = extract_features(
            self.backbone_,
            source,
            precision,
            self.inference_batch_size,
            self.num_workers,
            self.verbose,
            "Extracting features",
        )
        return features.cpu().numpy()

    def export(self, path, format="onnx"):
        """Write the trained network to a file that runs without ucal.

        The exported model takes uint8 images of shape (batch, height,
        width, 3), RGB, already resized to ``image_size`` (bilinear, as
        :meth:`transform` resizes), and returns the L2-normalised float32
        embeddings: scaling, ImageNet normalisation and the network are
        inside. Beside it, ``path + ".json"`` records the input it expects,
        the embedding size and a fingerprint of the weights (which
        :class:`ucal.search.GalleryIndex` uses to refuse embeddings of
        another model). The export runs in float32 on the CPU: it equals
        :meth:`transform` of a model with ``mixed_precision=False`` to
        about 1e-6 (with bfloat16 autocast, ``transform`` differs from both
        by about 1e-2).

        Parameters
        ----------
        path : str or path-like
            The model file to write (``.onnx`` or ``.pt`` by convention).
        format : {"onnx", "torchscript"}, default="onnx"
            ONNX (needs ``pip install "ucal[export]"``; run it with
            onnxruntime) or TorchScript (``torch.jit.load``).

        Returns
        -------
        info : dict
            The content of ``path + ".json"``.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from ucal.reid import UCALReID
        >>> X = np.random.RandomState(0).randint(0, 256, (16, 32, 16, 3), dtype=np.uint8)
        >>> model = UCALReID(backbone="tiny", pretrained=False, image_size=(32, 16),
        ...                  supervised=True, epochs=1, batch_size=8,
        ...                  mixed_precision=False, random_state=0)
        >>> model = model.fit(X, y=np.arange(16) // 4)
        >>> path = os.path.join(tempfile.mkdtemp(), "model.pt")
        >>> info = model.export(path, format="torchscript")
        >>> info["input"]["height"], info["output"]["dim"]
        (32, 128)
        """
        from ._export import export_network

        check_is_fitted(self, "backbone_")
        import ucal

        return export_network(
            self.backbone_, path, check_image_size(self.image_size), format,
            extra_info={"ucal_version": ucal.__version__, "backbone": str(self.backbone)
                        if isinstance(self.backbone, str) else type(self.backbone).__name__},
        )

    def evaluate(self, eval_set, *, rerank=False):
        """CMC and mAP of the trained network on a query/gallery protocol.

        Parameters
        ----------
        eval_set : ReIDDataset or (ReIDSplit, ReIDSplit)
            The query and gallery splits.
        rerank : bool or dict, default=False
            k-reciprocal re-ranking, see :func:`ucal.metrics.evaluate_features`.
            On a GPU it runs there (unless the dict names a ``search``).

        Returns
        -------
        scores : dict
            ``mAP``, ``mINP``, ``R1``, ``R5``, ``R10`` (fractions), ``cmc``
            (array) and ``n_valid_queries``.
        """
        check_is_fitted(self, "backbone_")
        query, gallery = check_eval_set(eval_set)
        device = getattr(self, "device_", "cpu")
        if (rerank is True or isinstance(rerank, dict)) and not device.startswith("cpu"):
            # Re-rank on the network's accelerator unless the caller chose where.
            from ucal.cluster import ExactSearch

            params = rerank if isinstance(rerank, dict) else {}
            rerank = {"search": ExactSearch("torch", device=device), **params}
        return reid_scores(self.transform(query), self.transform(gallery), query, gallery, rerank)

    # ------------------------------------------------------------ pickling
    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: never alter the live object
        net = state.pop("backbone_", None)
        if net is not None:
            state["_backbone_state"] = {
                k: v.detach().cpu().clone() for k, v in net.state_dict().items()
            }
        return state

    def __setstate__(self, state):
        weights = state.pop("_backbone_state", None)
        # parameters added since the model was saved take their defaults
        for name, default in _PARAMS_ADDED_SINCE_0_1.items():
            state.setdefault(name, default)
        super().__setstate__(state)
        if weights is not None:
            net = build_net(self, pretrained_override=True)
            net.load_state_dict(weights)
            net.eval()
            device = resolve_device(self.device)
            precision = resolve_precision(self.mixed_precision, device)
            self.backbone_ = net.to(device, memory_format=precision.memory_format())

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.non_deterministic = True
        return tags
