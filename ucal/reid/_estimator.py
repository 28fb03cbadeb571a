"""UCALReID: the re-id network trained by self-paced clustering plus SNPS/MPPS."""

import logging
import numbers
import os
import time
import warnings

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
    clone,
)
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, column_or_1d

from ucal.metrics import labeling_cost, pairwise_precision_recall_fscore

from ._backbones import BACKBONES, build_backbone
from ._checkpoint import LABEL_MEMORY_NAME, load_checkpoint, save_checkpoint
from ._data import (
    BatchAugmenter,
    PseudoIdentitySampler,
    as_image_source,
    check_image_size,
    iter_batches,
)
from ._device import resolve_device, resolve_precision
from ._memory import FeatureMemory, centroid_contrastive_loss

__all__ = ["UCALReID"]

logger = logging.getLogger(__name__)

# Parameters that define the training run: a resumed fit must use the same values.
_RESUME_PARAMS = (
    "image_size",
    "warmup_epochs",
    "batch_size",
    "num_instances",
    "lr",
    "weight_decay",
    "lr_step",
    "lr_gamma",
    "temperature",
    "memory_momentum",
    "memory_refresh",
    "outliers",
    "centroid_momentum",
    "supervised",
)


def _relabel(labels):
    """Map cluster labels to 0..K-1 (order of first appearance kept sorted); -1 stays."""
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full(labels.shape, -1, dtype=np.int64)
    keep = labels >= 0
    if keep.any():
        _, out[keep] = np.unique(labels[keep], return_inverse=True)
    return out


def _check_eval_set(eval_set):
    """``eval_set`` -> (query, gallery) splits, or None."""
    if eval_set is None:
        return None
    from ucal.datasets import ReIDDataset, ReIDSplit

    if isinstance(eval_set, ReIDDataset):
        return eval_set.query, eval_set.gallery
    if (
        isinstance(eval_set, (tuple, list))
        and len(eval_set) == 2
        and all(isinstance(s, ReIDSplit) for s in eval_set)
    ):
        return tuple(eval_set)
    raise TypeError(
        "eval_set must be a ReIDDataset or a pair (query, gallery) of ReIDSplit, got "
        f"{type(eval_set).__name__}."
    )


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
        The SpCL neck follows: last stride 1 (ResNets), global average
        pooling, BatchNorm1d, L2 normalisation.
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
    lr_step : int, default=20
        The learning rate is multiplied by ``lr_gamma`` every ``lr_step`` epochs.
    lr_gamma : float, default=0.1
        Learning-rate decay factor.
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
    centroid_momentum : float or None, default=None
        None: a centroid of Eq. 1 is the mean memory feature of its members
        (SpCL). A float ``cm``: cluster-contrast's centroid memory, reset
        to the normalised member mean each epoch and then moved by every
        batch, ``c <- cm c + (1 - cm) f``.
    flip_prob : float, default=0.5
        Probability of a horizontal flip (training augmentation).
    pad : int, default=10
        Zero padding before the random crop back to ``image_size``.
    erasing_prob : float, default=0.5
        Probability of random erasing.
    clusterer : estimator or None, default=None
        The clustering estimator, with ``fit(features)`` and ``labels_``
        (-1 = outlier). None = ``SelfPacedDBSCAN()`` (eps 0.6,
        min_samples 4, k1 30, k2 6). It is cloned once per fit and refitted
        every epoch, so its state (SpCL's independence threshold, fixed at
        the first clustering) carries over; checkpoints save it.
    splitter : estimator or None, default=None
        SNPS; None = ``SNPSSplitter()``. Cloned every epoch.
    merger : estimator or None, default=None
        MPPS; None = ``MPPSMerger()`` (delta 0.3, at most 20 % of the
        clusters merged per epoch). Cloned every epoch.
    snps : bool, default=True
        Whether to split with SNPS (Table 2's ablation).
    mpps : bool, default=True
        Whether to merge with MPPS. ``snps=False, mpps=False`` is the
        unsupervised Baseline.
    max_queries : int or None, default=None
        Total budget of pairs sent to the oracle during the fit; None =
        unlimited. What is left is passed to SNPS and MPPS each epoch.
    supervised : bool, default=False
        Train on the true identities ``y`` instead of pseudo labels (the
        paper's Supervised upper bound: same loss, labeling cost 100 %).
    device : str, default="auto"
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        Re-resolved when a pickled model is loaded.
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
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation, sampling and augmentation; an int makes
        CPU runs repeatable.
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
        ``snps_queries``, ``snps_inferred``, ``mpps_queries``,
        ``mpps_inferred``, ``n_queries`` (cumulative), ``cost``, ``loss``,
        ``lr``, ``iterations``, ``seconds``, ``n_refreshed`` (memory
        slots re-extracted), ``n_splits`` and ``n_merges``; with an
        ``eval_set`` ``mAP``, ``mINP``, ``R1``, ``R5``, ``R10``
        (fractions); when ``y`` is given, ``label_precision`` and
        ``label_recall``: pairwise precision and recall of the epoch's
        pseudo labels against ``y`` (diagnostics only; training never
        sees ``y`` except through the oracle).
    n_samples_fit_ : int
        Number of training images.
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
    >>> model.set_params(snps=False, mpps=False).fit(X).transform(X).shape
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
        "lr_step": [Interval(numbers.Integral, 1, None, closed="left")],
        "lr_gamma": [Interval(numbers.Real, 0, 1, closed="right")],
        "temperature": [Interval(numbers.Real, 0, None, closed="neither")],
        "memory_momentum": [Interval(numbers.Real, 0, 1, closed="left")],
        "memory_refresh": [StrOptions({"stale", "all", "none"})],
        "outliers": [StrOptions({"instances", "drop"})],
        "centroid_momentum": [Interval(numbers.Real, 0, 1, closed="left"), None],
        "flip_prob": [Interval(numbers.Real, 0, 1, closed="both")],
        "pad": [Interval(numbers.Integral, 0, None, closed="left")],
        "erasing_prob": [Interval(numbers.Real, 0, 1, closed="both")],
        "clusterer": [HasMethods(["fit"]), None],
        "splitter": [HasMethods(["fit"]), None],
        "merger": [HasMethods(["fit"]), None],
        "snps": ["boolean"],
        "mpps": ["boolean"],
        "max_queries": [Interval(numbers.Integral, 0, None, closed="left"), None],
        "supervised": ["boolean"],
        "device": [str, torch.device],
        "mixed_precision": [StrOptions({"auto"}), "boolean"],
        "num_workers": [Interval(numbers.Integral, 0, None, closed="left")],
        "inference_batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "checkpoint_dir": [str, os.PathLike, None],
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
        lr_step=20,
        lr_gamma=0.1,
        temperature=0.05,
        memory_momentum=0.2,
        memory_refresh="stale",
        outliers="instances",
        centroid_momentum=None,
        flip_prob=0.5,
        pad=10,
        erasing_prob=0.5,
        clusterer=None,
        splitter=None,
        merger=None,
        snps=True,
        mpps=True,
        max_queries=None,
        supervised=False,
        device="auto",
        mixed_precision="auto",
        num_workers=0,
        inference_batch_size=256,
        checkpoint_dir=None,
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
        self.lr_step = lr_step
        self.lr_gamma = lr_gamma
        self.temperature = temperature
        self.memory_momentum = memory_momentum
        self.memory_refresh = memory_refresh
        self.outliers = outliers
        self.centroid_momentum = centroid_momentum
        self.flip_prob = flip_prob
        self.pad = pad
        self.erasing_prob = erasing_prob
        self.clusterer = clusterer
        self.splitter = splitter
        self.merger = merger
        self.snps = snps
        self.mpps = mpps
        self.max_queries = max_queries
        self.supervised = supervised
        self.device = device
        self.mixed_precision = mixed_precision
        self.num_workers = num_workers
        self.inference_batch_size = inference_batch_size
        self.checkpoint_dir = checkpoint_dir
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
            y = column_or_1d(np.asarray(y), warn=True)
            if y.shape[0] != n_samples:
                raise ValueError(
                    f"y has {y.shape[0]} labels but X has {n_samples} images."
                )
        if self.supervised and y is None:
            raise ValueError("supervised=True trains on the true identities: pass y.")
        if oracle is not None and not callable(oracle):
            raise TypeError(
                f"oracle must be a callable oracle(pairs) -> answers, got "
                f"{type(oracle).__name__}."
            )
        if self.num_instances > self.batch_size:
            raise ValueError(
                f"num_instances={self.num_instances} exceeds batch_size={self.batch_size}."
            )
        if resume and self.checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir, where the run was saved.")
        eval_splits = _check_eval_set(eval_set)

        refine = (self.snps or self.mpps) and not self.supervised
        if refine and oracle is None:
            if y is not None:
                from ucal.oracles import LabelOracle

                oracle = LabelOracle(y)
            else:
                warnings.warn(
                    "No oracle and no y were given: training the unsupervised Baseline; "
                    "no SNPS/MPPS refinement happens. Pass y (simulated annotator) or "
                    "oracle=..., or set snps=False, mpps=False to silence this warning.",
                    UserWarning,
                    stacklevel=3,
                )
                refine = False
        if label_memory is not None:
            from ucal.oracles import LabelMemory

            if not isinstance(label_memory, (LabelMemory, str, os.PathLike)):
                raise TypeError(
                    "label_memory must be a LabelMemory or a file path, got "
                    f"{type(label_memory).__name__}."
                )
            if not refine:
                raise ValueError(
                    "label_memory is only used to refine clusters with an oracle: pass an "
                    "oracle (or y) and keep snps or mpps on."
                )
        trainer = _Trainer(
            self, source, y, oracle if refine else None, eval_splits, resume, label_memory
        )
        trainer.run()
        return self

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
        features = _extract(
            self.backbone_,
            source,
            precision,
            self.inference_batch_size,
            self.num_workers,
            self.verbose,
            "Extracting features",
        )
        return features.cpu().numpy()

    def evaluate(self, eval_set, *, rerank=False):
        """CMC and mAP of the trained network on a query/gallery protocol.

        Parameters
        ----------
        eval_set : ReIDDataset or (ReIDSplit, ReIDSplit)
            The query and gallery splits.
        rerank : bool or dict, default=False
            k-reciprocal re-ranking, see :func:`ucal.metrics.evaluate_features`.

        Returns
        -------
        scores : dict
            ``mAP``, ``mINP``, ``R1``, ``R5``, ``R10`` (fractions), ``cmc``
            (array) and ``n_valid_queries``.
        """
        check_is_fitted(self, "backbone_")
        query, gallery = _check_eval_set(eval_set)
        return _scores(self.transform(query), self.transform(gallery), query, gallery, rerank)

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
        super().__setstate__(state)
        if weights is not None:
            net = _build_net(self, pretrained_override=True)
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


def _build_net(est, pretrained_override=False):
    """The ReIDNet for ``est``; on unpickling, named backbones start empty."""
    pretrained = est.pretrained
    if pretrained_override:
        # Weights come from the pickle: no download; a module keeps its own.
        pretrained = isinstance(est.backbone, torch.nn.Module)
    return build_backbone(
        est.backbone, pretrained, check_image_size(est.image_size), verbose=est.verbose
    )


@torch.no_grad()
def _extract(net, source, precision, batch_size, num_workers, verbose, desc):
    """Eval-mode L2-normalised features of every image in ``source``."""
    was_training = net.training
    net.eval()
    augment = BatchAugmenter()
    device = precision.device
    n = len(source)
    batches = [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    out = []
    iterator = iter_batches(source, batches, num_workers)
    if verbose:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(batches), desc=desc, unit="batch", leave=False)
    for _, images in iterator:
        x = augment(images.to(device, non_blocking=True), train=False)
        x = x.contiguous(memory_format=precision.memory_format())
        with precision.autocast():
            out.append(net(x).float())
    net.train(was_training)
    return torch.cat(out)


def _scores(qf, gf, query, gallery, rerank=False):
    from ucal.metrics import evaluate_features

    # Without camera ids (all -1) the protocol must not remove same-camera
    # matches: every true match would look "same camera".
    has_cams = bool(np.any(np.asarray(query.camids) >= 0) or np.any(np.asarray(gallery.camids) >= 0))
    q_cams = query.camids if has_cams else None
    g_cams = gallery.camids if has_cams else None
    result = evaluate_features(qf, gf, query.pids, gallery.pids, q_cams, g_cams, rerank=rerank)
    cmc = np.asarray(result["cmc"])
    return {
        "mAP": float(result["mAP"]),
        "mINP": float(result["mINP"]),
        "R1": float(cmc[0]),
        "R5": float(cmc[min(4, cmc.size - 1)]),
        "R10": float(cmc[min(9, cmc.size - 1)]),
        "cmc": cmc,
        "n_valid_queries": int(result["n_valid_queries"]),
    }


class _Trainer:
    """One fit of a UCALReID: state, epoch loop, checkpoints."""

    def __init__(self, est, source, y, oracle, eval_splits, resume, label_memory=None):
        self.est = est
        self.given_memory = label_memory
        self.source = source
        self.y = y
        self.oracle = oracle
        self.eval_splits = eval_splits
        self.resume = resume
        self.n_samples = len(source)

    # -------------------------------------------------------------- setup
    def _setup(self):
        est = self.est
        self.device = resolve_device(est.device)
        self.precision = resolve_precision(est.mixed_precision, self.device)
        rng = check_random_state(est.random_state)
        seeds = rng.randint(np.iinfo(np.int32).max, size=4)
        self.refine_seed = int(seeds[3])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seeds[0]))
            net = _build_net(est)
        self.net = net.to(self.device, memory_format=self.precision.memory_format())
        params = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=est.lr, weight_decay=est.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=est.lr_step, gamma=est.lr_gamma
        )
        self.scaler = self.precision.grad_scaler()
        self.sampler_rng = np.random.RandomState(int(seeds[1]))
        self.generator = torch.Generator().manual_seed(int(seeds[2]))
        self.augment = BatchAugmenter(est.flip_prob, est.pad, est.erasing_prob, self.generator)
        self.history = []
        self.n_queries = 0
        self._budget_warned = False
        self.start_epoch = 0
        self.memory = None
        self.labels = None
        self.clusterer = None
        if not est.supervised:
            if est.clusterer is None:
                from ucal.cluster import SelfPacedDBSCAN

                self.clusterer = SelfPacedDBSCAN()
            else:
                self.clusterer = clone(est.clusterer)

        self.ckpt_dir = None if est.checkpoint_dir is None else os.fspath(est.checkpoint_dir)
        default_memory = self.given_memory is None
        if self.ckpt_dir is not None and not default_memory:
            # A memory given on the run's own memory file counts as the run's memory.
            given = getattr(self.given_memory, "path", self.given_memory)
            own = os.path.join(self.ckpt_dir, LABEL_MEMORY_NAME)
            default_memory = given is not None and os.path.abspath(given) == os.path.abspath(own)
        checkpoint = None
        if self.ckpt_dir is not None:
            memory_path = os.path.join(self.ckpt_dir, LABEL_MEMORY_NAME)
            checkpoint = load_checkpoint(self.ckpt_dir) if os.path.isdir(self.ckpt_dir) else None
            if not self.resume and (
                checkpoint is not None
                or (
                    default_memory
                    and os.path.isfile(memory_path)
                    and os.path.getsize(memory_path) > 0
                )
            ):
                raise FileExistsError(
                    f"checkpoint_dir {self.ckpt_dir!r} already holds a run (a checkpoint or "
                    "oracle answers). Pass resume=True to continue it, or choose another "
                    "directory; nothing there is overwritten."
                )
            os.makedirs(self.ckpt_dir, exist_ok=True)
        self.label_memory = None
        if self.oracle is not None:
            from ucal.oracles import LabelMemory

            if isinstance(self.given_memory, LabelMemory):
                self.label_memory = self.given_memory
            elif self.given_memory is not None:
                self.label_memory = LabelMemory(self.given_memory)
            elif self.ckpt_dir is not None:
                self.label_memory = LabelMemory(os.path.join(self.ckpt_dir, LABEL_MEMORY_NAME))
            else:
                self.label_memory = LabelMemory()
        if checkpoint is not None:
            self._restore(checkpoint)
        elif self.resume:
            logger.info("No checkpoint in %s yet: starting from epoch 1.", self.ckpt_dir)
            if default_memory and self.label_memory is not None and len(self.label_memory):
                # Answers given before the first checkpoint of this run: human work, counted.
                self.n_queries = len(self.label_memory)
        if self.memory is None:
            features = _extract(
                self.net,
                self.source,
                self.precision,
                est.inference_batch_size,
                est.num_workers,
                est.verbose,
                "Initialising the memory",
            )
            self.memory = FeatureMemory(
                features, est.memory_momentum, centroid_momentum=est.centroid_momentum
            )

    def _fingerprint(self):
        est = self.est
        params = {k: getattr(est, k) for k in _RESUME_PARAMS}
        params["image_size"] = list(check_image_size(est.image_size))
        params["backbone"] = est.backbone if isinstance(est.backbone, str) else "module"
        params["n_samples"] = self.n_samples
        return params

    def _restore(self, ckpt):
        saved = ckpt["fingerprint"]
        current = self._fingerprint()
        diff = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
        if diff:
            details = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(
                f"Cannot resume the run in {self.ckpt_dir!r}: it was trained with other "
                f"settings or data ({details})."
            )
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.memory = FeatureMemory(
            ckpt["memory"].to(self.device),
            self.est.memory_momentum,
            centroid_momentum=self.est.centroid_momentum,
            normalize=False,
        )
        self.memory.fresh.copy_(ckpt["memory_fresh"].to(self.device))
        self.history = list(ckpt["history"])
        self.start_epoch = int(ckpt["epoch"])
        self.sampler_rng.set_state(ckpt["sampler_rng"])
        self.generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        if ckpt.get("clusterer") is not None:
            self.clusterer = ckpt["clusterer"]
        self.n_queries = int(ckpt["n_queries"])
        if self.label_memory is not None:
            # Answers recorded after the checkpoint (the interrupted epoch) were
            # real questions to the oracle: count them once.
            self.n_queries += max(0, len(self.label_memory) - int(ckpt["n_memory_records"]))
        logger.info(
            "Resuming from %s after epoch %d (%d oracle queries so far).",
            self.ckpt_dir,
            self.start_epoch,
            self.n_queries,
        )

    def _save(self, epoch):
        state = {
            "fingerprint": self._fingerprint(),
            "epoch": epoch,
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
            "clusterer": self.clusterer,
            "n_queries": self.n_queries,
            "n_memory_records": 0 if self.label_memory is None else len(self.label_memory),
        }
        save_checkpoint(state, self.ckpt_dir)

    # --------------------------------------------------------------- loop
    def run(self):
        est = self.est
        self._setup()
        y_codes = None
        if est.supervised:
            y_codes = np.unique(self.y, return_inverse=True)[1]
        for epoch in range(self.start_epoch, est.epochs):
            start = time.perf_counter()
            record = {"epoch": epoch + 1}
            if est.supervised:
                labels = y_codes
            else:
                labels = self._cluster(epoch, record)
            labels = _relabel(labels)
            self.labels = labels
            record["n_clusters"] = int(labels.max() + 1) if (labels >= 0).any() else 0
            record["n_outliers"] = int((labels < 0).sum())
            if self.y is not None and not est.supervised:
                # Simulation with known identities: how good the pseudo labels are.
                precision, recall, _ = pairwise_precision_recall_fscore(self.y, labels)
                record["label_precision"] = precision
                record["label_recall"] = recall
            record["lr"] = float(self.optimizer.param_groups[0]["lr"])
            loss, iters = self._train_epoch(labels, epoch)
            self.scheduler.step()
            record["loss"] = loss
            record["iterations"] = iters
            record["n_queries"] = self.n_queries
            record["cost"] = self._cost()
            if self.eval_splits is not None:
                query, gallery = self.eval_splits
                qf = self._embed(query)
                gf = self._embed(gallery)
                scores = _scores(qf, gf, query, gallery)
                record.update({k: scores[k] for k in ("mAP", "mINP", "R1", "R5", "R10")})
            record["seconds"] = time.perf_counter() - start
            self.history.append(record)
            logger.info(_format_record(record, est.epochs))
            if self.ckpt_dir is not None:
                self._save(epoch + 1)
        self._finish()

    def _cost(self):
        if self.est.supervised:
            return 1.0
        return labeling_cost(self.n_queries, self.n_samples)

    def _embed(self, split):
        source = as_image_source(split, check_image_size(self.est.image_size))
        return _extract(
            self.net,
            source,
            self.precision,
            self.est.inference_batch_size,
            self.est.num_workers,
            self.est.verbose,
            "Evaluating",
        ).cpu().numpy()

    def _refresh_memory(self, epoch):
        """Re-extract the memory slots chosen by ``memory_refresh`` before clustering."""
        mode = self.est.memory_refresh
        if mode == "none" or epoch == 0:
            return 0
        if mode == "all":
            indices = np.arange(self.n_samples)
        else:
            indices = self.memory.stale()
        if len(indices):
            features = _extract(
                self.net,
                self.source.subset(indices),
                self.precision,
                self.est.inference_batch_size,
                self.est.num_workers,
                self.est.verbose,
                "Refreshing the memory",
            )
            self.memory.refresh(indices, features)
        else:
            self.memory.refresh(indices, None)
        return len(indices)

    def _cluster(self, epoch, record):
        est = self.est
        record["n_refreshed"] = self._refresh_memory(epoch)
        features = self.memory.features.cpu().numpy()
        self.clusterer.fit(features)
        labels = np.asarray(self.clusterer.labels_)
        record["n_clusters_base"] = int(np.unique(labels[labels >= 0]).size)
        for key in (
            "snps_queries", "snps_inferred", "n_splits", "mpps_queries", "mpps_inferred",
            "n_merges",
        ):
            record[key] = 0
        if self.oracle is None or epoch < est.warmup_epochs:
            return labels
        steps = []
        if est.snps:
            steps.append(("snps", est.splitter, "SNPSSplitter"))
        if est.mpps:
            steps.append(("mpps", est.merger, "MPPSMerger"))
        for key, template, default in steps:
            if template is None:
                import ucal.active

                refiner = getattr(ucal.active, default)()
            else:
                refiner = clone(template)
            params = refiner.get_params(deep=False)
            overrides = {}
            if est.max_queries is not None:
                left = est.max_queries - self.n_queries
                own = params.get("max_queries")
                overrides["max_queries"] = max(0, left if own is None else min(own, left))
            if "random_state" in params and params["random_state"] is None:
                overrides["random_state"] = (self.refine_seed + 7919 * epoch) % (2**31 - 1)
            refiner.set_params(**overrides)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    refiner.fit(
                        features,
                        labels=labels,
                        oracle=self.oracle,
                        label_memory=self.label_memory,
                    )
                finally:
                    # Pairs a failing refinement sent were asked too: count them.
                    self.n_queries += int(getattr(refiner, "n_queries_", 0) or 0)
            self._rewarn(caught)
            labels = np.asarray(refiner.labels_)
            record[f"{key}_queries"] = int(refiner.n_queries_)
            record[f"{key}_inferred"] = int(refiner.n_inferred_)
            changes = "n_splits_" if key == "snps" else "n_merges_"
            record["n_splits" if key == "snps" else "n_merges"] = int(
                getattr(refiner, changes, 0) or 0
            )
        return labels

    def _rewarn(self, caught):
        """Re-issue a refiner's warnings; the spent-budget one only once per fit."""
        from ucal.oracles import BudgetExhaustedWarning

        for w in caught:
            if issubclass(w.category, BudgetExhaustedWarning):
                if self._budget_warned:
                    continue
                self._budget_warned = True
                warnings.warn(
                    f"The query budget max_queries={self.est.max_queries} is spent; "
                    "later epochs refine the clusters with the label memory alone.",
                    BudgetExhaustedWarning,
                    stacklevel=2,
                )
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    def _train_epoch(self, labels, epoch):
        est = self.est
        if est.outliers == "instances" and not est.supervised:
            # SpCL: every un-clustered image is a class of its own, its memory
            # feature its centroid; it is trained on and its slot stays current.
            labels = labels.copy()
            outliers = labels < 0
            labels[outliers] = labels.max(initial=-1) + 1 + np.arange(outliers.sum())
        self.memory.set_labels(labels)
        if not (labels >= 0).any():
            logger.warning("Epoch %d: every image is an outlier; nothing to train on.", epoch + 1)
            return float("nan"), 0
        sampler = PseudoIdentitySampler(
            labels, self.source.camids, est.batch_size, est.num_instances, self.sampler_rng
        )
        n_iters = est.iters_per_epoch or sampler.default_n_batches()
        batches = sampler.batches(n_iters)
        targets = torch.as_tensor(labels, device=self.device)
        net = self.net
        net.train()
        total = torch.zeros((), device=self.device)
        iterator = iter_batches(self.source, batches, est.num_workers)
        if est.verbose:
            from tqdm.auto import tqdm

            iterator = tqdm(
                iterator, total=len(batches), desc=f"Epoch {epoch + 1}/{est.epochs}",
                unit="it", leave=False,
            )
        memory_format = self.precision.memory_format()
        for indices, images in iterator:
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
        return float(total.item()) / max(1, len(batches)), len(batches)

    def _finish(self):
        est = self.est
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


def _format_record(record, n_epochs):
    """One log line per epoch."""
    parts = [
        f"epoch {record['epoch']}/{n_epochs}",
        f"loss {record['loss']:.3f}",
        f"clusters {record['n_clusters']}",
        f"outliers {record['n_outliers']}",
    ]
    if record.get("snps_queries") or record.get("mpps_queries"):
        parts.append(f"queries +{record['snps_queries']}/+{record['mpps_queries']} (SNPS/MPPS)")
    parts.append(f"cost {100 * record['cost']:.4f}%")
    if "label_precision" in record:
        parts.append(
            f"labels P/R {record['label_precision']:.2f}/{record['label_recall']:.2f}"
        )
    if "mAP" in record:
        parts.append(f"mAP {100 * record['mAP']:.1f} R1 {100 * record['R1']:.1f}")
    parts.append(f"{record['seconds']:.1f}s")
    return ", ".join(parts)
