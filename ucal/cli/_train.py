"""``ucal train``: the paper's experiment on a real dataset."""

import logging
import os
import sys

from ..cluster._search import SEARCH_NAMES
from ._common import (
    add_dataset_arguments,
    add_threads,
    add_verbosity,
    held_record,
    load_data,
    results_table,
    set_threads,
    setup_logging,
    write_json,
)

logger = logging.getLogger(__name__)


def refiner_from_flags(*, no_snps=False, no_mpps=False, oracle="labels", preset="default",
                       selection=None):
    """The ``refiner`` of :class:`~ucal.reid.UCALReID` for ``--no-snps``,
    ``--no-mpps``, ``--oracle``, ``--preset`` and ``--selection``.

    Without a flag, the preset's (None for the default: the answers
    applied, then SNPS, then MPPS); MPPS alone with ``--no-snps``; SNPS
    alone with ``--no-mpps``; ``"passthrough"`` (no refinement, the
    unsupervised Baseline) with both or ``--oracle none``. With ``--preset
    paper`` the modules are the paper's (medoid pairs asked once, ``k_max``
    rounded down, nothing carried over); otherwise the answers are applied
    to each clustering first. ``selection`` (None: the preset's) sets the
    MPPS candidates (:class:`~ucal.active.MPPSMerger`'s ``selection``).
    """
    from ucal.active import AnswerConstraints, MPPSMerger, SNPSSplitter

    if oracle == "none" or (no_snps and no_mpps):
        return "passthrough"
    from ucal.reid._presets import preset_params

    paper = preset == "paper"
    if selection is None:  # the preset's MPPS selection, in every chain the flags build
        selection = getattr(preset_params(preset).get("refiner"), "selection", None)
    mpps = {} if selection is None else {"selection": selection}
    if no_snps:
        if paper:
            return MPPSMerger(cluster_inference=False, confirm_size=None, **mpps)
        return MPPSMerger(clusterer=AnswerConstraints(), **mpps)
    if no_mpps:
        if paper:
            return SNPSSplitter(k_max_rule="floor", cluster_inference=False)
        return SNPSSplitter(clusterer=AnswerConstraints())
    if paper:
        return preset_params("paper")["refiner"].set_params(**mpps)
    if mpps:
        return MPPSMerger(clusterer=SNPSSplitter(clusterer=AnswerConstraints()), **mpps)
    return None


def _open_memory(args):
    """The run's label memory (``--oracle labels`` or ``web``); refuses to mix runs."""
    from ucal.oracles import LabelMemory

    memory_file = args.memory or os.path.join(args.output, "checkpoints", "label_memory.jsonl")
    os.makedirs(os.path.dirname(os.path.abspath(memory_file)), exist_ok=True)
    if (
        args.memory is None
        and not args.resume
        and os.path.isfile(memory_file)
        and os.path.getsize(memory_file) > 0
    ):
        raise FileExistsError(
            f"{args.output!r} already holds a run (answers in {memory_file}); pass --resume "
            "to continue it, or choose another --output."
        )
    # a team's answers are resolved by majority (ties to the third person or the reviewer)
    resolution = "majority" if getattr(args, "annotators", None) else "latest"
    return LabelMemory(memory_file, resolution=resolution)


def _double_fraction(args):
    """``--double-fraction``, defaulting to 0.2 for a team and 0 for one person."""
    if args.double_fraction is not None:
        return args.double_fraction
    return 0.2 if len(args.annotators) > 1 else 0.0


def cmd_train(args):
    """``ucal train``: the paper's experiment on a real dataset.

    An ``--output`` folder this command created is removed again when it
    fails before anything worth keeping is there (a checkpoint, an answer,
    a model): only its log and empty files.
    """
    created = not os.path.exists(args.output)
    try:
        return _train(args)
    except BaseException:
        if created and _rank() == 0:
            _remove_if_unused(args.output)
        raise


def _rank():
    """This process's rank under torchrun (0 without it): rank 0 writes and asks."""
    return int(os.environ.get("RANK", 0))


class _AskedOnRankZero:
    """The oracle of ranks other than 0 under torchrun: rank 0 asks (its web page)."""

    def __call__(self, pairs):
        raise RuntimeError("only rank 0 asks the oracle; this rank must never call it")


def _remove_if_unused(folder):
    """Remove ``folder`` when it holds nothing but ``train.log`` and empty files."""
    import shutil

    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if name != "train.log" and os.path.getsize(path) > 0:
                logger.error("The output folder %s is kept: it holds %s.", folder, path)
                return
    log = os.path.abspath(os.path.join(folder, "train.log"))
    for handler in list(logging.getLogger().handlers):
        if getattr(handler, "baseFilename", None) == log:  # let go of the log file first
            handler.close()
            logging.getLogger().removeHandler(handler)
    shutil.rmtree(folder, ignore_errors=True)


def _train(args):
    import joblib

    from ucal.cluster import SelfPacedDBSCAN
    from ucal.reid import UCALReID

    if (args.annotators or args.reviewer) and args.oracle != "web":
        raise ValueError("--annotators and --reviewer need --oracle web (a team answers on "
                         "the annotation page).")
    if args.reviewer and not args.annotators:
        raise ValueError("--reviewer needs --annotators: a reviewer settles a team's "
                         "disagreements.")
    main = _rank() == 0
    if main:
        os.makedirs(args.output, exist_ok=True)
        setup_logging(args.verbose, os.path.join(args.output, "train.log"))
    else:  # torchrun's other ranks: warnings only, and no log file of their own
        setup_logging(-1)
    set_threads(args.threads)
    data = load_data(args)
    logger.info("Data: %s", str(data).replace("\n", "; "))
    pretrained = {"imagenet": True, "none": False}.get(args.pretrained, args.pretrained)
    params = dict(
        backbone=args.backbone,
        pretrained=pretrained,
        image_size=tuple(args.image_size),
        epochs=args.epochs,
        warmup_epochs=args.warmup_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        clusterer=SelfPacedDBSCAN(eps=args.eps, k1=args.k1, search=args.search,
                                  self_paced=not args.no_self_paced),
        refiner=refiner_from_flags(
            no_snps=args.no_snps, no_mpps=args.no_mpps, oracle=args.oracle,
            preset=args.preset, selection=args.selection,
        ),
        max_queries=args.max_queries,
        device=args.device,
        num_workers=args.workers,
        checkpoint_dir=os.path.join(args.output, "checkpoints"),
        random_state=args.seed,
        verbose=1 if args.verbose >= 0 else 0,
    )
    if args.iters is not None:  # else the preset's (the paper's: 400)
        params["iters_per_epoch"] = args.iters
    if args.validation_size is not None:
        params["validation_size"] = args.validation_size
    if args.calibrate:
        from ucal.active import ClusteringCalibrator

        params["calibrator"] = ClusteringCalibrator()
    if args.keep_last:
        params["keep_best"] = False
    if args.pair_weight is not None:
        params["pair_weight"] = args.pair_weight
    if args.pair_trim is not None:
        params["pair_trim"] = args.pair_trim
    # the unsupervised base (docs/bases.rst); the preset's where no flag is given
    for flag in ("loss", "pooling", "centroid_momentum", "num_instances", "outliers",
                 "memory_refresh"):
        if getattr(args, flag) is not None:
            params[flag] = getattr(args, flag)
    model = UCALReID.from_preset(args.preset, **params)
    train = data.train
    y = None
    oracle = None
    web = None
    refines = model.refiner != "passthrough"
    memory = None
    if main and refines and args.oracle in ("labels", "web"):
        memory = _open_memory(args)
    if args.oracle == "labels" and refines:
        y = train.pids
    elif args.oracle == "web" and not main:
        oracle = _AskedOnRankZero()  # the page runs on rank 0
    elif args.oracle == "web" and args.annotators:
        from ucal.annotation import TeamOracle

        # Each person gets their own link; every answer is recorded under their name.
        web = TeamOracle(train, args.annotators, reviewer=args.reviewer, label_memory=memory,
                         double_fraction=_double_fraction(args), host=args.host, port=args.port,
                         open_browser=args.open_browser, random_state=args.seed)
        oracle = web
    elif args.oracle == "web":
        from ucal.oracles import WebOracle

        # One memory object: each answer is recorded the moment the page sends it.
        web = WebOracle(train, label_memory=memory, host=args.host, port=args.port,
                        open_browser=args.open_browser)
        oracle = web
    eval_set = data if (len(data.query) and len(data.gallery) and not args.no_eval) else None
    try:
        model.fit(train, y, oracle=oracle, eval_set=eval_set, resume=args.resume,
                  label_memory=memory)
    finally:
        if web is not None:
            web.close()
    if not main:
        return 0  # rank 0 writes the model and the results
    joblib.dump(model, os.path.join(args.output, "model.joblib"))
    write_json(os.path.join(args.output, "history.json"), model.history_)
    summary = {"n_queries": model.n_queries_, "cost": model.cost_, "n_train": len(train)}
    if model.best_epoch_ is not None:
        summary["epoch"] = model.best_epoch_
    if eval_set is not None:
        # the scores of the network the model holds (its best validated epoch by default)
        last = held_record(model)
        summary.update({k: last[k] for k in ("R1", "R5", "R10", "mAP", "mINP")})
        sys.stdout.write(
            results_table([{"method": "UCAL" if y is not None or oracle else "Baseline",
                            **summary}]) + "\n"
        )
    write_json(os.path.join(args.output, "results.json"), summary)
    logger.info("Model saved to %s", os.path.join(args.output, "model.joblib"))
    return 0


def add_parser(commands):
    """Add ``train`` to the sub-parsers ``commands`` of ``ucal``."""
    train = commands.add_parser(
        "train", help="train UCAL on Market-1501, DukeMTMC-reID, MSMT17 or your own images",
        description="The paper's experiment: UCALReID on a real dataset, a checkpoint every "
        "epoch (--resume continues), the model saved as model.joblib.",
    )
    add_dataset_arguments(train, purpose="dataset to train on")
    train.add_argument("--output", default="ucal_run", metavar="DIR",
                       help="checkpoints, model.joblib, history.json, results.json, train.log "
                       "(default: ucal_run)")
    train.add_argument("--memory", default=None, metavar="FILE",
                       help="label memory file (JSON lines) for the answers (default: "
                       "OUTPUT/checkpoints/label_memory.jsonl); answers in it are never asked "
                       "again")
    train.add_argument("--oracle", choices=("labels", "web", "none"), default="labels",
                       help="labels: simulated annotator from the dataset's identities (paper); "
                       "web: answer pairs in the browser; none: the unsupervised Baseline")
    train.add_argument("--resume", action="store_true", help="continue the run in --output")
    train.add_argument("--epochs", type=int, default=50)
    train.add_argument("--warmup-epochs", type=int, default=15)
    train.add_argument("--iters", type=int, default=None,
                       help="iterations per epoch (default: one pass over the clustered "
                       "images; 400 with --preset paper)")
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--num-instances", type=int, default=None, metavar="K",
                       help="images per pseudo identity in a batch (default 4)")
    train.add_argument("--loss", default=None,
                       choices=("centroid", "cluster_memory", "cluster_memory_hard",
                                "camera_proxies"),
                       help="the unsupervised base's loss (default: the preset's, centroid: "
                       "SpCL's Eq. 1; see docs/bases.rst)")
    train.add_argument("--pooling", choices=("avg", "gem"), default=None,
                       help="the neck's pooling (default: the preset's: gem; --preset paper: avg)")
    train.add_argument("--centroid-momentum", type=float, default=None, metavar="M",
                       help="momentum of the class prototypes (default: the base's own)")
    train.add_argument("--outliers", choices=("instances", "drop"), default=None,
                       help="un-clustered images: single-image classes (SpCL, the default) "
                       "or left out of the epoch (cluster-contrast)")
    train.add_argument("--memory-refresh", choices=("stale", "all", "none"), default=None,
                       help="memory slots re-extracted before each clustering (default stale)")
    train.add_argument("--no-self-paced", action="store_true",
                       help="plain DBSCAN on the Jaccard distance, without SpCL's "
                       "reliability criterion (cluster-contrast's clustering)")
    train.add_argument("--lr", type=float, default=3.5e-4)
    train.add_argument("--backbone", choices=("resnet50", "resnet18", "small", "tiny"), default="resnet50")
    train.add_argument("--pretrained", default="imagenet",
                       help="imagenet (torchvision weights), none, or a state-dict file")
    train.add_argument("--image-size", type=int, nargs=2, default=(256, 128),
                       metavar=("H", "W"))
    train.add_argument("--k1", type=int, default=30)
    train.add_argument("--eps", type=float, default=0.6)
    train.add_argument("--search", choices=list(SEARCH_NAMES), default="auto",
                       help="neighbour search of the clustering: exact (numpy, faiss, torch) or "
                       "approximate (faiss-ivf, hnsw: need faiss); auto: exact up to 100,000 "
                       "images (on the training GPU if any), faiss-ivf above where faiss is "
                       "installed, else exact (see docs/large_scale.rst)")
    train.add_argument("--max-queries", type=int, default=None, help="total query budget")
    train.add_argument("--validation-size", type=int, default=None, metavar="N",
                       help="pairs held out to validate every epoch (default 100; 0: off)")
    train.add_argument("--calibrate", action="store_true",
                       help="choose the clustering's eps and k1 from the oracle's answers "
                       "(ClusteringCalibrator) before the first epoch")
    train.add_argument("--keep-last", action="store_true",
                       help="keep the last epoch's network, not the best validated one")
    train.add_argument("--preset", choices=("default", "paper", "neighbors"), default="default",
                       help="paper: the paper's method literally (UCALReID.from_preset), for "
                       "Table 2 comparisons; neighbors: questions about each image's nearest "
                       "neighbour, asked early (for a pretrained start on new people); "
                       "default: ucal's defaults")
    train.add_argument("--pair-weight", type=float, default=None, metavar="W",
                       help="weight of the answered pairs' term in the loss (pair_weight; "
                       "default: the preset's)")
    train.add_argument("--pair-trim", type=float, default=None, metavar="SHARE",
                       help="share of the answers the pair term leaves out each epoch, those "
                       "the features contradict most (pair_trim; for an annotator who errs, "
                       "about their error rate; default 0)")
    train.add_argument("--selection",
                       choices=("gap", "uncertain", "nearest", "neighbors", "gap_then_neighbors"),
                       default=None, help="which pairs MPPS asks about: centroid pairs, "
                       "'neighbors', each image's nearest in another cluster, or "
                       "'gap_then_neighbors', the gap rule's centroid pairs, then the "
                       "neighbours' image pairs (default: the preset's)")
    train.add_argument("--no-snps", action="store_true", help="ablation: no splitting")
    train.add_argument("--no-mpps", action="store_true", help="ablation: no merging")
    train.add_argument("--no-eval", action="store_true", help="skip per-epoch evaluation")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    train.add_argument("--workers", type=int, default=4, help="image decoding processes")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--host", default="127.0.0.1", help="--oracle web: address")
    train.add_argument("--port", type=int, default=0, help="--oracle web: port (0: any free)")
    train.add_argument("--open-browser", action="store_true", help="--oracle web: open the page")
    train.add_argument("--annotators", nargs="+", default=None, metavar="NAME",
                       help="--oracle web: a team, each person on their own link (answers "
                       "resolved by majority)")
    train.add_argument("--reviewer", default=None, metavar="NAME",
                       help="--annotators: the person who settles disagreements")
    train.add_argument("--double-fraction", type=float, default=None, metavar="F",
                       help="--annotators: share of pairs answered by two people (default 0.2; "
                       "0 for one person)")
    add_verbosity(train)
    add_threads(train)
    train.set_defaults(func=cmd_train)
    return train
