"""``ucal demo``: Baseline vs UCAL vs Supervised on synthetic persons (CPU).

The same data, seeds and model settings as the README's table: the
settings are :data:`DEMO`, scaled from the paper's to a CPU.
"""

import logging
import os
import shutil
import sys
import time

from ._common import (
    add_threads,
    add_verbosity,
    held_record,
    percent,
    results_table,
    set_threads,
    setup_logging,
    write_json,
)

logger = logging.getLogger(__name__)

# The demo's settings, scaled from the paper's to ~2,000 images of 64x32 on a CPU.
DEMO = {
    "n_identities": 80,
    "n_test_identities": 100,
    "generated_size": (128, 64),
    "image_size": (64, 32),
    # "tiny" trains in float32 about 2.5 times as fast as "small": the demo stays within
    # 10 minutes on two cores without native bf16 (docs/benchmarks.rst).
    "backbone": "tiny",
    "pretrain_epochs": 4,
    "epochs": 36,
    "warmup_epochs": 4,
    "iters_per_epoch": None,
    "lr_step": None,  # no decay: a constant learning rate over the demo's short schedule
    "pad": 3,
    "k1": 20,
    "seed": 0,
    "mixed_precision": "auto",
    "calibrate": False,
}


# ---------------------------------------------------------------------- demo
def _shrink(split, size):
    from ucal.datasets import ReIDSplit, load_images

    return ReIDSplit(load_images(split, size=size), split.pids, split.camids, split.name)


def _demo_data(settings, source=False):
    """The demo's target persons, or (``source=True``) other persons for pretraining."""
    from ucal.datasets import ReIDDataset, make_persons

    size = tuple(settings["image_size"])
    if source:
        # Other people, other cameras: a different seed draws a different world.
        data = make_persons(
            n_identities=settings["n_identities"],
            n_test_identities=0,
            image_size=tuple(settings["generated_size"]),
            random_state=settings["seed"] + 1000,
        )
        return _shrink(data.train, size)
    data = make_persons(
        n_identities=settings["n_identities"],
        n_test_identities=settings["n_test_identities"],
        image_size=tuple(settings["generated_size"]),
        random_state=settings["seed"],
    )
    return ReIDDataset(
        _shrink(data.train, size), _shrink(data.query, size), _shrink(data.gallery, size),
        "persons",
    )


def _demo_model(settings, checkpoint_dir=None, **params):
    from ucal.cluster import SelfPacedDBSCAN
    from ucal.reid import UCALReID

    values = dict(
        backbone=settings["backbone"],
        pretrained=settings.get("weights") or False,
        image_size=tuple(settings["image_size"]),
        epochs=settings["epochs"],
        warmup_epochs=settings["warmup_epochs"],
        iters_per_epoch=settings["iters_per_epoch"],
        lr_step=settings["lr_step"] or settings["epochs"],
        pad=settings["pad"],
        clusterer=SelfPacedDBSCAN(k1=settings["k1"]),
        mixed_precision=settings.get("mixed_precision", "auto"),
        checkpoint_dir=checkpoint_dir,
        random_state=settings["seed"],
    )
    if settings.get("calibrate"):
        from ucal.active import ClusteringCalibrator

        values["calibrator"] = ClusteringCalibrator()
    values.update(params)
    return UCALReID(**values)


def _pretrain(settings, path):
    """Supervised pretraining on the source persons: the demo's stand-in for ImageNet."""
    from ucal.reid import save_weights

    source = _demo_data(settings, source=True)
    model = _demo_model(
        {**settings, "weights": None},
        epochs=settings["pretrain_epochs"],
        supervised=True,
        random_state=settings["seed"] + 1000,
    )
    model.fit(source, source.pids)
    save_weights(model.backbone_, path)
    return len(source), source.n_identities


def _demo_run(task):
    """One training run of the demo (in a worker process or in this one)."""
    import warnings

    kind, settings, data, run_dir, threads, verbose = task
    set_threads(threads)
    if verbose is not None:
        setup_logging(verbose, os.path.join(run_dir, "train.log"))
    start = time.perf_counter()
    train = data.train
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if kind == "supervised":
            model = _demo_model(settings, None, supervised=True)
        elif kind == "ucal":
            model = _demo_model(settings, run_dir)
        else:  # baseline: no oracle, no refinement; y only feeds the pseudo-label diagnostics
            model = _demo_model(settings, run_dir, refiner="passthrough")
        model.fit(train, train.pids, eval_set=data)
    import joblib

    # the trained model, for `ucal export`, `ucal index` and `ucal search` (docs/deploy.rst)
    joblib.dump(model, os.path.join(run_dir, "model.joblib"))
    # the figures of the network the model holds (UCAL keeps its best validated epoch)
    last = held_record(model)
    begin = model.history_[0] if model.history_[0]["epoch"] == 0 else None
    return {
        "kind": kind,
        "history": model.history_,
        "R1": last.get("R1"),
        "R5": last.get("R5"),
        "R10": last.get("R10"),
        "mAP": last.get("mAP"),
        "n_queries": int(model.n_queries_),
        "cost": float(model.cost_),
        "best_epoch": model.best_epoch_,
        "start": begin,
        "precision": model.precision_,
        "seconds": time.perf_counter() - start,
    }


def _run_demo_tasks(tasks, jobs):
    """Run the UCAL, Baseline and Supervised runs, ``jobs`` at a time."""
    if jobs <= 1:
        return {task[0]: _demo_run(task) for task in tasks}
    import concurrent.futures
    import multiprocessing

    results = {}
    context = multiprocessing.get_context("spawn")  # fork is unsafe after torch threads start
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        pending = {pool.submit(_demo_run, task): task[0] for task in tasks}
        for future in concurrent.futures.as_completed(pending):
            kind = pending[future]
            results[kind] = future.result()
            logger.info("%s run finished in %.0f s.", kind, results[kind]["seconds"])
    return results


def _plot(results, path, settings):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plot (pip install matplotlib).")
        return None
    ucal_hist = results["ucal"]["history"]
    base_hist = results["baseline"]["history"]
    sup_hist = results["supervised"]["history"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(
        [r["epoch"] for r in ucal_hist], [percent(r["mAP"]) for r in ucal_hist], "o-",
        color="C3", label="UCAL", ms=3,
    )
    ax1.plot(
        [r["epoch"] for r in base_hist], [percent(r["mAP"]) for r in base_hist], "s-",
        color="C0", label="Baseline (clustering only)", ms=3,
    )
    ax1.plot(
        [r["epoch"] for r in sup_hist], [percent(r["mAP"]) for r in sup_hist], "--",
        color="0.5", label="Supervised (true ids)",
    )
    ax1.axvline(settings["warmup_epochs"] + 0.5, color="0.8", lw=1)
    step = max(1, (len(ucal_hist) - settings["warmup_epochs"]) // 5)
    for r in ucal_hist[settings["warmup_epochs"] + 1 :: step]:
        ax1.annotate(
            f"({percent(r['cost']):.3f}%)", (r["epoch"], percent(r["mAP"])),
            textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7, color="C3",
        )
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("test mAP (%)")
    ax1.set_title("mAP by epoch (UCAL's labeling cost in brackets)", fontsize=10)
    ax1.legend(fontsize=8)
    ax2.plot(
        [percent(r["cost"]) for r in ucal_hist], [percent(r["mAP"]) for r in ucal_hist],
        "o-", color="C3", ms=3, label="UCAL, one point per epoch",
    )
    ax2.axhline(percent(results["baseline"]["mAP"]), color="C0", ls=":", label="Baseline, final")
    ax2.set_xlabel("labeling cost (% of all pairs, Eq. 7)")
    ax2.set_ylabel("test mAP (%)")
    ax2.set_title("UCAL: mAP against labeling cost", fontsize=10)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def cmd_demo(args):
    """``ucal demo``: Baseline vs UCAL vs Supervised on synthetic persons."""
    settings = dict(DEMO)
    for key in ("epochs", "warmup_epochs", "pretrain_epochs", "backbone", "seed", "k1",
                "image_size"):
        value = getattr(args, key)
        if value is not None:
            settings[key] = tuple(value) if key == "image_size" else value
    if args.precision is not None:
        settings["mixed_precision"] = {"auto": "auto", "fp32": False, "bf16": True}[
            args.precision
        ]
    if args.calibrate:
        settings["calibrate"] = True
    if args.quick:
        settings.update(
            n_identities=16, n_test_identities=8, image_size=(32, 16), generated_size=(64, 32),
            pretrain_epochs=1, epochs=3, warmup_epochs=1, iters_per_epoch=3, k1=10,
        )
    if settings["warmup_epochs"] >= settings["epochs"]:
        raise ValueError("--warmup-epochs must be smaller than --epochs.")
    out = os.path.abspath(args.output)
    runs = os.path.join(out, "runs")
    if os.path.exists(runs):
        shutil.rmtree(runs)  # the demo's own scratch runs, rebuilt each time
    os.makedirs(runs)
    setup_logging(args.verbose, os.path.join(out, "demo.log"))
    start = time.perf_counter()
    jobs = max(1, args.jobs)
    cpus = os.cpu_count() or 1
    threads = args.threads or max(1, cpus // jobs)

    # 1. The stand-in for ImageNet weights. One thread per process throughout: a small CNN
    #    gains little from more, and OpenMP threads spin badly on a CPU shared with others.
    set_threads(threads)
    weights = os.path.join(runs, "pretrained.pt")
    n_source, n_source_ids = _pretrain(settings, weights)
    settings["weights"] = weights
    pretrain_seconds = time.perf_counter() - start
    data = _demo_data(settings)
    logger.info("Data: %s", str(data).replace("\n", "; "))
    logger.info(
        "Scaled from the paper's settings: the paper starts from ImageNet ResNet-50 weights; "
        "offline, the demo pretrains a %s CNN for %d epochs on %d images of %d other synthetic "
        "people (%.0f s), then trains at %dx%d for %d epochs: k1=%d (paper 30; ~%d images per "
        "identity here), %d warm-up epochs (paper 15 of 50), pad %d (paper 10 at 256x128), "
        "%s.",
        settings["backbone"], settings["pretrain_epochs"], n_source, n_source_ids,
        pretrain_seconds, *settings["image_size"], settings["epochs"], settings["k1"],
        len(data.train) // max(1, data.train.n_identities), settings["warmup_epochs"],
        settings["pad"],
        f"lr x0.1 after epoch {settings['lr_step']}" if settings["lr_step"]
        else "a constant learning rate (paper: x0.1 every 20 of 50 epochs)",
    )

    # 2. UCAL, Baseline and Supervised, in parallel processes.
    worker_verbose = None if jobs <= 1 else args.verbose
    tasks = []
    for kind in ("ucal", "baseline", "supervised"):
        run_dir = os.path.join(runs, kind)
        os.makedirs(run_dir)
        tasks.append((kind, settings, data, run_dir, threads, worker_verbose))
    if jobs <= 1:
        set_threads(threads)
    results = _run_demo_tasks(tasks, jobs)
    elapsed = time.perf_counter() - start

    rows = []
    begin = results["ucal"]["start"]
    if begin is not None and "mAP" in begin:
        rows.append({"method": "Start (pretrained, no training)",
                     **{k: begin[k] for k in ("R1", "R5", "R10", "mAP")},
                     "n_queries": 0, "cost": 0.0})
    for kind, label in (("baseline", "Baseline"), ("ucal", "UCAL"), ("supervised", "Supervised")):
        r = results[kind]
        rows.append(
            {"method": label, **{k: r[k] for k in ("R1", "R5", "R10", "mAP", "n_queries", "cost")}}
        )
    table = results_table(rows)
    summary = {
        "settings": settings,
        "n_train": len(data.train),
        "n_query": len(data.query),
        "n_gallery": len(data.gallery),
        "n_pretrain_images": n_source,
        "results": rows,
        "wall_seconds": elapsed,
        "pretrain_seconds": pretrain_seconds,
        "jobs": jobs,
        "threads_per_job": threads,
        "precision": results["ucal"]["precision"],
    }
    write_json(os.path.join(out, "results.json"), summary)
    # the test people as image files, to index and search (docs/deploy.rst)
    from ucal.datasets import ReIDDataset, ReIDSplit, save_market1501

    empty = ReIDSplit(data.query.images[:0], [], [], "train")
    save_market1501(ReIDDataset(empty, data.query, data.gallery, "persons"),
                    os.path.join(out, "images"), image_format="png")
    write_json(
        os.path.join(out, "history.json"),
        {kind: results[kind]["history"] for kind in ("baseline", "ucal", "supervised")},
    )
    plot = _plot(results, os.path.join(out, "map_vs_cost.png"), settings)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n")
    base_row, ucal_row = (next(r for r in rows if r["method"] == m) for m in ("Baseline", "UCAL"))
    gain_map = percent(ucal_row["mAP"] - base_row["mAP"])
    gain_r1 = percent(ucal_row["R1"] - base_row["R1"])
    best = results["ucal"]["best_epoch"]
    kept = (
        f"UCAL keeps the network of epoch {best}, its best on the held-out answers."
        if best is not None and best != settings["epochs"] else None
    )
    lines = [
        "",
        f"ucal demo: {len(data.train)} training images ({data.train.n_identities} identities, "
        f"{data.train.n_cameras} cameras), {len(data.query)} queries, {len(data.gallery)} gallery "
        f"images; {settings['backbone']} CNN at {settings['image_size'][0]}x"
        f"{settings['image_size'][1]}, pretrained on {n_source} images of other people, "
        f"{settings['epochs']} epochs ({settings['warmup_epochs']} before SNPS/MPPS).",
        "",
        table,
        "",
        f"UCAL vs Baseline: {gain_map:+.1f} mAP, {gain_r1:+.1f} Rank-1 at "
        f"{percent(ucal_row['cost']):.4f} % labeling cost ({ucal_row['n_queries']} pairs).",
        *([kept] if kept else []),
        f"Wall time {elapsed:.0f} s ({jobs} parallel runs x {threads} threads; the network "
        f"ran in {results['ucal']['precision']}).",
        f"Wrote {os.path.join(out, 'results.md')}, results.json, history.json"
        + (f", {os.path.basename(plot)}" if plot else "")
        + f" in {out}.",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0




def add_parser(commands):
    """Add ``demo`` to the sub-parsers ``commands`` of ``ucal``."""
    demo = commands.add_parser(
        "demo",
        help="Baseline vs UCAL vs Supervised on synthetic persons (CPU, about 5 min)",
        description="Train the unsupervised Baseline, UCAL with a simulated annotator and the "
        "Supervised upper bound on embedded synthetic data; print their R1/R5/R10/mAP and "
        "labeling cost, and plot mAP against labeling cost.",
    )
    demo.add_argument("--output", default="demo_output", metavar="DIR",
                      help="where results, history and the plot go (default: demo_output)")
    demo.add_argument("--epochs", type=int, default=None, help=f"default {DEMO['epochs']}")
    demo.add_argument("--warmup-epochs", type=int, default=None,
                      help=f"epochs before SNPS/MPPS start (default {DEMO['warmup_epochs']})")
    demo.add_argument("--pretrain-epochs", type=int, default=None,
                      help=f"epochs of pretraining on other people (default "
                      f"{DEMO['pretrain_epochs']})")
    demo.add_argument("--backbone", choices=("tiny", "small", "resnet18", "resnet50"), default=None,
                      help=f"default {DEMO['backbone']}")
    demo.add_argument("--k1", type=int, default=None, help=f"Jaccard k1 (default {DEMO['k1']})")
    demo.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                      help="training image size (default %d %d)" % DEMO["image_size"])
    demo.add_argument("--seed", type=int, default=None, help="data and training seed (default 0)")
    demo.add_argument("--jobs", type=int, default=3,
                      help="runs trained in parallel processes (default 3: UCAL, Baseline and "
                      "Supervised side by side)")
    demo.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                      help="how the network runs: auto (bf16 where the CPU runs it natively, "
                      "else float32; default), or force fp32 or bf16")
    demo.add_argument("--calibrate", action="store_true",
                      help="UCAL chooses the clustering's eps and k1 from its answers "
                      "(ClusteringCalibrator) before the first epoch")
    demo.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds)")
    add_verbosity(demo)
    add_threads(demo)
    demo.set_defaults(func=cmd_demo)
    return demo
