"""The ``ucal`` command: ``demo``, ``train``, ``evaluate`` and ``annotate``.

torch is reached only through ``ucal.reid``, imported inside the commands
that train or embed, so that ``import ucal.cli`` stays light.
"""

import argparse
import json
import logging
import os
import shutil
import sys
import time

import numpy as np

__all__ = ["main"]

logger = logging.getLogger("ucal.cli")

_DATASETS = ("market1501", "dukemtmc", "msmt17", "folder")

# The demo's settings, scaled from the paper's to ~2,000 images of 64x32 on a CPU.
DEMO = {
    "n_identities": 80,
    "n_test_identities": 100,
    "generated_size": (128, 64),
    "image_size": (64, 32),
    "backbone": "small",
    "pretrain_epochs": 4,
    "epochs": 36,
    "warmup_epochs": 4,
    "iters_per_epoch": None,
    "lr_step": None,  # no decay: a constant learning rate over the demo's short schedule
    "pad": 3,
    "k1": 20,
    "seed": 0,
}


# --------------------------------------------------------------------- utils
def _setup_logging(verbose, log_file=None):
    level = logging.INFO if verbose >= 0 else logging.WARNING
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=level, format="%(asctime)s %(message)s", handlers=handlers, force=True
    )
    # The per-step chatter of the clustering and refinement modules stays at DEBUG.
    for name in ("ucal.cluster", "ucal.active", "ucal.oracles"):
        logging.getLogger(name).setLevel(logging.WARNING if verbose < 1 else logging.INFO)


def _set_threads(threads):
    from ucal.reid._device import set_num_threads

    set_num_threads(threads)


def _load_dataset(name, root, pattern=None):
    from ucal import datasets

    if name == "folder":
        return datasets.load_image_folder(root, pattern)
    loader = {
        "market1501": datasets.load_market1501,
        "dukemtmc": datasets.load_dukemtmc,
        "msmt17": datasets.load_msmt17,
    }[name]
    return loader(root)


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _write_json(path, obj):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
    os.replace(tmp, path)


def _percent(x):
    return 100.0 * float(x)


def _results_table(rows):
    """Markdown table of Method / R1 / R5 / R10 / mAP / queries / cost."""
    lines = [
        "| Method | R1 | R5 | R10 | mAP | Queries | Labeling cost |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cost = "100 %" if r["cost"] >= 1 else f"{_percent(r['cost']):.4f} %"
        lines.append(
            f"| {r['method']} | {_percent(r['R1']):.1f} | {_percent(r['R5']):.1f} | "
            f"{_percent(r['R10']):.1f} | {_percent(r['mAP']):.1f} | {r['n_queries']} | {cost} |"
        )
    return "\n".join(lines)


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
        checkpoint_dir=checkpoint_dir,
        random_state=settings["seed"],
    )
    values.update(params)
    return UCALReID(**values)


def _pretrain(settings, path):
    """Supervised pretraining on the source persons: the demo's stand-in for ImageNet."""
    from ucal.reid._checkpoint import save_weights

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
    _set_threads(threads)
    if verbose is not None:
        _setup_logging(verbose, os.path.join(run_dir, "train.log"))
    start = time.perf_counter()
    train = data.train
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if kind == "warmup":
            model = _demo_model(settings, run_dir, epochs=settings["warmup_epochs"])
            model.fit(train, train.pids, eval_set=data)
        elif kind == "supervised":
            model = _demo_model(settings, None, supervised=True)
            model.fit(train, train.pids, eval_set=data)
        elif kind == "ucal":
            model = _demo_model(settings, run_dir)
            model.fit(train, train.pids, eval_set=data, resume=True)
        else:  # baseline: refinement off; y only feeds the pseudo-label diagnostics
            model = _demo_model(settings, run_dir, snps=False, mpps=False)
            model.fit(train, train.pids, eval_set=data, resume=True)
    last = model.history_[-1]
    return {
        "kind": kind,
        "history": model.history_,
        "R1": last.get("R1"),
        "R5": last.get("R5"),
        "R10": last.get("R10"),
        "mAP": last.get("mAP"),
        "n_queries": int(model.n_queries_),
        "cost": float(model.cost_),
        "seconds": time.perf_counter() - start,
    }


def _run_demo_tasks(tasks_first, make_second, jobs):
    """Run the warm-up and Supervised runs, then UCAL and Baseline from the warm-up."""
    results = {}
    if jobs <= 1:
        for task in tasks_first:
            results[task[0]] = _demo_run(task)
        for task in make_second():
            results[task[0]] = _demo_run(task)
        return results
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # fork is unsafe after torch threads start
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        pending = {pool.submit(_demo_run, task): task[0] for task in tasks_first}
        while pending:
            done, _ = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in done:
                kind = pending.pop(future)
                results[kind] = future.result()
                logger.info("%s run finished in %.0f s.", kind, results[kind]["seconds"])
                if kind == "warmup":
                    for task in make_second():
                        pending[pool.submit(_demo_run, task)] = task[0]
    return results


def _full_history(results, kind):
    """A branch's history from epoch 1 (its warm-up epochs come from the shared run)."""
    history = results[kind]["history"]
    if kind in ("ucal", "baseline"):
        warm = results["warmup"]["history"]
        history = warm + history[len(warm) :]
    return history


def _plot(results, path, settings):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plot (pip install matplotlib).")
        return None
    ucal_hist = _full_history(results, "ucal")
    base_hist = _full_history(results, "baseline")
    sup_hist = _full_history(results, "supervised")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(
        [r["epoch"] for r in ucal_hist], [_percent(r["mAP"]) for r in ucal_hist], "o-",
        color="C3", label="UCAL", ms=3,
    )
    ax1.plot(
        [r["epoch"] for r in base_hist], [_percent(r["mAP"]) for r in base_hist], "s-",
        color="C0", label="Baseline (clustering only)", ms=3,
    )
    ax1.plot(
        [r["epoch"] for r in sup_hist], [_percent(r["mAP"]) for r in sup_hist], "--",
        color="0.5", label="Supervised (true ids)",
    )
    ax1.axvline(settings["warmup_epochs"] + 0.5, color="0.8", lw=1)
    step = max(1, (len(ucal_hist) - settings["warmup_epochs"]) // 5)
    for r in ucal_hist[settings["warmup_epochs"] :: step]:
        ax1.annotate(
            f"({_percent(r['cost']):.3f}%)", (r["epoch"], _percent(r["mAP"])),
            textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7, color="C3",
        )
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("test mAP (%)")
    ax1.set_title("mAP by epoch (UCAL's labeling cost in brackets)", fontsize=10)
    ax1.legend(fontsize=8)
    ax2.plot(
        [_percent(r["cost"]) for r in ucal_hist], [_percent(r["mAP"]) for r in ucal_hist],
        "o-", color="C3", ms=3, label="UCAL, one point per epoch",
    )
    ax2.axhline(_percent(results["baseline"]["mAP"]), color="C0", ls=":", label="Baseline, final")
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
    if args.quick:
        settings.update(
            n_identities=16, n_test_identities=8, image_size=(32, 16), generated_size=(64, 32),
            pretrain_epochs=1, epochs=3, warmup_epochs=1, iters_per_epoch=3, k1=10,
        )
    if settings["warmup_epochs"] >= settings["epochs"]:
        raise SystemExit("ucal demo: --warmup-epochs must be smaller than --epochs.")
    out = os.path.abspath(args.output)
    runs = os.path.join(out, "runs")
    if os.path.exists(runs):
        shutil.rmtree(runs)  # the demo's own scratch runs, rebuilt each time
    os.makedirs(runs)
    _setup_logging(args.verbose, os.path.join(out, "demo.log"))
    start = time.perf_counter()
    jobs = max(1, args.jobs)
    cpus = os.cpu_count() or 1
    threads = args.threads or max(1, cpus // jobs)

    # 1. The stand-in for ImageNet weights. One thread per process throughout: a small CNN
    #    gains little from more, and OpenMP threads spin badly on a CPU shared with others.
    _set_threads(threads)
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

    # 2. Warm-up and Supervised in parallel; 3. UCAL and Baseline branch from the warm-up.
    worker_verbose = None if jobs <= 1 else args.verbose
    warm_dir = os.path.join(runs, "warmup")
    sup_dir = os.path.join(runs, "supervised")
    os.makedirs(warm_dir)
    os.makedirs(sup_dir)
    first = [
        ("warmup", settings, data, warm_dir, threads, worker_verbose),
        ("supervised", settings, data, sup_dir, threads, worker_verbose),
    ]

    def second():
        # Baseline and UCAL are the same run until the warm-up ends: branch from its checkpoint.
        tasks = []
        for kind in ("ucal", "baseline"):
            run_dir = os.path.join(runs, kind)
            shutil.copytree(warm_dir, run_dir)
            tasks.append((kind, settings, data, run_dir, threads, worker_verbose))
        return tasks

    if jobs <= 1:
        _set_threads(threads)
    results = _run_demo_tasks(first, second, jobs)
    elapsed = time.perf_counter() - start

    rows = []
    for kind, label in (("baseline", "Baseline"), ("ucal", "UCAL"), ("supervised", "Supervised")):
        r = results[kind]
        rows.append(
            {"method": label, **{k: r[k] for k in ("R1", "R5", "R10", "mAP", "n_queries", "cost")}}
        )
    table = _results_table(rows)
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
    }
    _write_json(os.path.join(out, "results.json"), summary)
    _write_json(
        os.path.join(out, "history.json"),
        {kind: _full_history(results, kind) for kind in ("baseline", "ucal", "supervised")}
        | {"warmup": results["warmup"]["history"]},
    )
    plot = _plot(results, os.path.join(out, "map_vs_cost.png"), settings)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n")
    gain_map = _percent(rows[1]["mAP"] - rows[0]["mAP"])
    gain_r1 = _percent(rows[1]["R1"] - rows[0]["R1"])
    lines = [
        "",
        f"ucal demo: {len(data.train)} training images ({data.train.n_identities} identities, "
        f"{data.train.n_cameras} cameras), {len(data.query)} queries, {len(data.gallery)} gallery "
        f"images; {settings['backbone']} CNN at {settings['image_size'][0]}x"
        f"{settings['image_size'][1]}, pretrained on {n_source} images of other people, "
        f"{settings['epochs']} epochs ({settings['warmup_epochs']} shared warm-up).",
        "",
        table,
        "",
        f"UCAL vs Baseline: {gain_map:+.1f} mAP, {gain_r1:+.1f} Rank-1 at "
        f"{_percent(rows[1]['cost']):.4f} % labeling cost ({rows[1]['n_queries']} pairs).",
        f"Wall time {elapsed:.0f} s ({jobs} parallel runs x {threads} threads).",
        f"Wrote {os.path.join(out, 'results.md')}, results.json, history.json"
        + (f", {os.path.basename(plot)}" if plot else "")
        + f" in {out}.",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


# --------------------------------------------------------------------- train
def cmd_train(args):
    """``ucal train``: the paper's experiment on a real dataset."""
    import joblib

    from ucal.cluster import SelfPacedDBSCAN
    from ucal.reid import UCALReID

    os.makedirs(args.output, exist_ok=True)
    _setup_logging(args.verbose, os.path.join(args.output, "train.log"))
    _set_threads(args.threads)
    data = _load_dataset(args.dataset, args.root, args.pattern)
    logger.info("Data: %s", str(data).replace("\n", "; "))
    pretrained = {"imagenet": True, "none": False}.get(args.pretrained, args.pretrained)
    model = UCALReID(
        backbone=args.backbone,
        pretrained=pretrained,
        image_size=tuple(args.image_size),
        epochs=args.epochs,
        warmup_epochs=args.warmup_epochs,
        iters_per_epoch=args.iters,
        batch_size=args.batch_size,
        lr=args.lr,
        clusterer=SelfPacedDBSCAN(eps=args.eps, k1=args.k1),
        snps=not args.no_snps,
        mpps=not args.no_mpps,
        max_queries=args.max_queries,
        device=args.device,
        num_workers=args.workers,
        checkpoint_dir=os.path.join(args.output, "checkpoints"),
        random_state=args.seed,
        verbose=1 if args.verbose >= 0 else 0,
    )
    train = data.train
    y = None
    oracle = None
    web = None
    memory = None
    if args.oracle in ("labels", "web"):
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
        memory = LabelMemory(memory_file)
    if args.oracle == "labels":
        y = train.pids
    elif args.oracle == "web":
        from ucal.oracles import WebOracle

        # One memory object: each answer is recorded the moment the page sends it.
        web = WebOracle(train, label_memory=memory, host=args.host, port=args.port,
                        open_browser=args.open_browser)
        oracle = web
        logger.info("Answer the pairs at %s", web.url)
    else:  # --oracle none: the unsupervised Baseline
        model.set_params(snps=False, mpps=False)
    eval_set = data if (len(data.query) and len(data.gallery) and not args.no_eval) else None
    try:
        model.fit(train, y, oracle=oracle, eval_set=eval_set, resume=args.resume,
                  label_memory=memory)
    finally:
        if web is not None:
            web.close()
    joblib.dump(model, os.path.join(args.output, "model.joblib"))
    _write_json(os.path.join(args.output, "history.json"), model.history_)
    summary = {"n_queries": model.n_queries_, "cost": model.cost_, "n_train": len(train)}
    if eval_set is not None:
        last = model.history_[-1]
        summary.update({k: last[k] for k in ("R1", "R5", "R10", "mAP", "mINP")})
        sys.stdout.write(
            _results_table([{"method": "UCAL" if y is not None or oracle else "Baseline",
                             **summary}]) + "\n"
        )
    _write_json(os.path.join(args.output, "results.json"), summary)
    logger.info("Model saved to %s", os.path.join(args.output, "model.joblib"))
    return 0


# ------------------------------------------------------------------ evaluate
def cmd_evaluate(args):
    """``ucal evaluate``: CMC and mAP of a saved model."""
    import joblib

    _setup_logging(args.verbose)
    _set_threads(args.threads)
    model = joblib.load(args.model)
    if args.device is not None:
        import pickle

        # Unpickling moves the network to the model's device parameter.
        model = pickle.loads(pickle.dumps(model.set_params(device=args.device)))
    data = _load_dataset(args.dataset, args.root, args.pattern)
    if not len(data.query) or not len(data.gallery):
        raise SystemExit(f"ucal evaluate: {args.root!r} has no query/gallery split to evaluate on.")
    scores = model.evaluate(data, rerank=args.rerank)
    row = {
        "method": os.path.basename(args.model),
        "n_queries": int(getattr(model, "n_queries_", 0)),
        "cost": float(getattr(model, "cost_", 0.0)),
        **scores,
    }
    sys.stdout.write(_results_table([row]) + "\n")
    if args.output:
        _write_json(args.output, {k: v for k, v in scores.items()})
    return 0


# ------------------------------------------------------------------ annotate
def cmd_annotate(args):
    """``ucal annotate``: review a label memory in the browser (ucal.oracles._web)."""
    from ucal.oracles._web import annotate_main

    _setup_logging(0)
    return annotate_main(list(args))


# -------------------------------------------------------------------- parser
def _add_common(p):
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more log output (-v: clustering and refinement details)")
    p.add_argument("-q", "--quiet", action="store_const", const=-1, dest="verbose",
                   help="warnings only, no progress bars")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice)")


def _add_dataset(p):
    p.add_argument("--dataset", required=True, choices=_DATASETS,
                   help="dataset layout (folder: your own images, see load_image_folder)")
    p.add_argument("--root", required=True, metavar="DIR", help="dataset folder (or CSV file)")
    p.add_argument("--pattern", default=None,
                   help="--dataset folder: regular expression with groups pid and camid")


def build_parser():
    """The argument parser of the ``ucal`` command."""
    parser = argparse.ArgumentParser(
        prog="ucal",
        description="Unsupervised Clustering Active Learning for person re-identification.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="Baseline vs UCAL vs Supervised on synthetic persons (CPU, ~10 min)",
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
    demo.add_argument("--backbone", choices=("small", "resnet18", "resnet50"), default=None,
                      help=f"default {DEMO['backbone']}")
    demo.add_argument("--k1", type=int, default=None, help=f"Jaccard k1 (default {DEMO['k1']})")
    demo.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                      help="training image size (default %d %d)" % DEMO["image_size"])
    demo.add_argument("--seed", type=int, default=None, help="data and training seed (default 0)")
    demo.add_argument("--jobs", type=int, default=3,
                      help="runs trained in parallel processes (default 3: the warm-up, then "
                      "UCAL and Baseline, beside Supervised)")
    demo.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds)")
    _add_common(demo)
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser(
        "train", help="train UCAL on Market-1501, DukeMTMC-reID, MSMT17 or your own images",
        description="The paper's experiment: UCALReID on a real dataset, a checkpoint every "
        "epoch (--resume continues), the model saved as model.joblib.",
    )
    _add_dataset(train)
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
                       help="iterations per epoch (default: one pass over the clustered images)")
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=3.5e-4)
    train.add_argument("--backbone", choices=("resnet50", "resnet18", "small"), default="resnet50")
    train.add_argument("--pretrained", default="imagenet",
                       help="imagenet (torchvision weights), none, or a state-dict file")
    train.add_argument("--image-size", type=int, nargs=2, default=(256, 128),
                       metavar=("H", "W"))
    train.add_argument("--k1", type=int, default=30)
    train.add_argument("--eps", type=float, default=0.6)
    train.add_argument("--max-queries", type=int, default=None, help="total query budget")
    train.add_argument("--no-snps", action="store_true", help="ablation: no splitting")
    train.add_argument("--no-mpps", action="store_true", help="ablation: no merging")
    train.add_argument("--no-eval", action="store_true", help="skip per-epoch evaluation")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    train.add_argument("--workers", type=int, default=4, help="image decoding processes")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--host", default="127.0.0.1", help="--oracle web: address")
    train.add_argument("--port", type=int, default=0, help="--oracle web: port (0: any free)")
    train.add_argument("--open-browser", action="store_true", help="--oracle web: open the page")
    _add_common(train)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="CMC and mAP of a saved model",
                              description="Evaluate a model saved by ucal train (model.joblib).")
    evaluate.add_argument("--model", required=True, metavar="PATH", help="model.joblib")
    _add_dataset(evaluate)
    evaluate.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    evaluate.add_argument("--device", default=None, help="override the model's device")
    evaluate.add_argument("--output", default=None, metavar="FILE", help="write scores as JSON")
    _add_common(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    annotate = sub.add_parser(
        "annotate", add_help=False,
        help="review and correct a label memory file in the browser",
        description="See `ucal annotate --help`.",
    )
    # Its options belong to ucal.oracles._web: main() hands them over unparsed.
    annotate.add_argument("annotate_args", nargs=argparse.REMAINDER)
    return parser


def main(argv=None):
    """Entry point of the ``ucal`` console script.

    Parameters
    ----------
    argv : list of str, default=None
        Command-line arguments; None reads ``sys.argv[1:]``.

    Returns
    -------
    exit_code : int
        0 on success.

    Examples
    --------
    >>> from ucal.cli import build_parser
    >>> build_parser().parse_args(["demo", "--quick"]).quick
    True
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "annotate":
        return cmd_annotate(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError, OSError) as exc:
        logger.error("%s", exc)
        sys.stderr.write(f"ucal {args.command}: error: {exc}\n")
        return 1
