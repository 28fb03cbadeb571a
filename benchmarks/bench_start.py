"""Never worse than where you started: a pretrained start, new data, SpCL's clustering scale.

The held-out analogue of issue 12: a network pretrained (supervised) on other
synthetic people, then trained without labels on new people whose set-up
does not fit SpCL's defaults (150 identities of about 12 images, where
SpCL's k1 = 30 reaches past an identity), with SpCL's clustering (k1 = 30,
eps = 0.6). ``--hard`` makes the people harder to tell apart (more
look-alikes, stronger camera shifts). Rows, per seed:

- Start: the pretrained network's own test scores, no training (epoch 0 of
  the default run).
- Baseline: the unsupervised training (no oracle).
- UCAL, paper: ``UCALReID.from_preset("paper")``'s refinement and clustering,
  literally (k1 = 30 whatever the data, no questions before training, the
  last network kept), at this schedule.
- UCAL, default, k1 fixed: ucal's defaults but k1 = 30 whatever the data
  (``k1_rule="fixed"``), as before the rule existed: the rule's control.
- UCAL, default: ucal's defaults (k1 bounded by twice the median cluster
  size, validation on 100 held-out answers, the best validated network kept
  unless the last is within two standard errors).
- UCAL, default + calibration: the same with ``calibrator=ClusteringCalibrator()``
  (eps and k1 chosen from the answers before the first epoch).
- UCAL, default, 5 % noisy and UCAL, default, k1 fixed, 5 % noisy: the
  default and its k1 control answered by an annotator who flips 5 % of the
  answers (``NoisyOracle``), validation answers included.
- UCAL, default, nearest / uncertain / neighbors: the default with MPPS's
  nearest-centroid, uncertainty or image-neighbour selection instead of the
  gap cut: do questions that find more "same" answers (the table counts
  them) help a weak start? "neighbors, greedy" spends the budget as early
  as the questions allow (``query_pacing="greedy"``) instead of evenly;
  its "5 % noisy" row is answered by the annotator who errs. "gap then
  neighbors" asks the gap cut's questions first, then image neighbours with
  what the budget leaves (``selection="gap_then_neighbors"``).
- Supervised: the same network trained on the true identities of the new
  people, at the same schedule: how much any use of labels can add here.

Every UCAL row gets the same budget, 0.09 % of all pairs (Eq. 7). The schedule
is 12 epochs of one pass over the data, SNPS and MPPS from epoch 4, the tiny
CNN at 64x32 on one thread per run (two runs side by side). Figures are the
test scores of the network each model holds at the end.

Usage::

    python benchmarks/bench_start.py              # 3 seeds, about 25 min on 2 cores
    python benchmarks/bench_start.py --seeds 0
    python benchmarks/bench_start.py --rows Supervised --merge   # add rows to the saved ones
    python benchmarks/bench_start.py --neighbours   # questions per image: how often "same"?

Saves ``benchmarks/results/start.{json,md}`` (``start_hard`` with ``--hard``,
``--stem`` to name them otherwise;
``start_neighbours`` with ``--neighbours``).
"""

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"

SETTINGS = {
    "n_identities": 150,
    "n_test_identities": 100,
    "n_images_per_camera": (2, 4),
    "hard_negative_rate": 0.4,
    "camera_shift": 1.0,
    "generated_size": (128, 64),
    "image_size": (64, 32),
    "backbone": "tiny",
    "pretrain_epochs": 4,
    "epochs": 12,
    "warmup_epochs": 4,
    "iters_per_epoch": None,
    "lr_step": None,
    "pad": 3,
    "k1": 30,  # SpCL's default, as a user who keeps the defaults has
    "budget": 0.0009,  # 0.09 % of all pairs
}


def _apply_hard():
    if os.environ.get("UCAL_BENCH_START_HARD") == "1":
        SETTINGS.update(hard_negative_rate=0.6, camera_shift=1.5)


_apply_hard()
ROWS = ("Start", "Baseline", "UCAL, paper", "UCAL, default, k1 fixed", "UCAL, default",
        "UCAL, default + calibration", "UCAL, default, k1 fixed, 5 % noisy",
        "UCAL, default, 5 % noisy", "UCAL, default, nearest", "UCAL, default, uncertain",
        "UCAL, default, neighbors", "UCAL, default, neighbors, greedy",
        "UCAL, default, neighbors, greedy, 5 % noisy", "UCAL, default, gap then neighbors",
        "UCAL, default, gap then neighbors, greedy", "Supervised")


def _data(seed, source=False):
    from ucal.cli._demo import _shrink
    from ucal.datasets import ReIDDataset, make_persons

    s = SETTINGS
    data = make_persons(
        n_identities=s["n_identities"],
        n_test_identities=0 if source else s["n_test_identities"],
        n_images_per_camera=s["n_images_per_camera"],
        hard_negative_rate=s["hard_negative_rate"],
        camera_shift=s["camera_shift"],
        image_size=s["generated_size"],
        random_state=seed + (1000 if source else 0),
    )
    size = s["image_size"]
    if source:
        return _shrink(data.train, size)
    return ReIDDataset(
        _shrink(data.train, size), _shrink(data.query, size), _shrink(data.gallery, size),
        "new-people",
    )


def _model(seed, weights, **params):
    from ucal.cli._demo import _demo_model

    settings = {**SETTINGS, "seed": seed, "weights": weights}
    return _demo_model(settings, None, **params)


def _fixed_k1():
    from ucal.cluster import SelfPacedDBSCAN

    return SelfPacedDBSCAN(k1=SETTINGS["k1"], k1_rule="fixed")


def _selection(selection):
    """The default refiner with another MPPS selection."""
    from ucal.reid._pseudo_labels import default_refiner

    return default_refiner().set_params(selection=selection, random_state=0)


def _start_network(seed):
    """The network every row of a seed starts from: trained on other people."""
    from ucal.reid import set_num_threads

    set_num_threads(1)
    source = _data(seed, source=True)
    model = _model(seed + 1000, None, epochs=SETTINGS["pretrain_epochs"], supervised=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.fit(source, source.pids)
    return model


def pretrain(seed, root):
    from ucal.reid import save_weights

    path = os.path.join(root, f"pretrained_{seed}.pt")
    save_weights(_start_network(seed).backbone_, path)
    return path


def run(seed, name, weights):
    from ucal.cli._common import held_record
    from ucal.reid import set_num_threads
    from ucal.reid._presets import preset_params

    set_num_threads(1)
    data = _data(seed)
    n = len(data.train)
    budget = int(SETTINGS["budget"] * n * (n - 1) / 2)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if name == "Baseline":
            model = _model(seed, weights, refiner="passthrough")
            model.fit(data.train, eval_set=data)
        elif name == "Supervised":  # the upper bound: every training identity known
            model = _model(seed, weights, supervised=True)
            model.fit(data.train, data.train.pids, eval_set=data)
        elif name == "UCAL, paper":
            paper = preset_params("paper")
            keep = ("refiner", "memory_inference", "query_pacing", "calibrator",
                    "validation_size", "keep_best", "pair_weight")
            model = _model(seed, weights, max_queries=budget, **{k: paper[k] for k in keep},
                           clusterer=_fixed_k1())
            model.fit(data.train, data.train.pids, eval_set=data)
        elif name == "UCAL, default, k1 fixed":
            model = _model(seed, weights, max_queries=budget, clusterer=_fixed_k1())
            model.fit(data.train, data.train.pids, eval_set=data)
        elif name.endswith("5 % noisy"):
            from ucal.oracles import LabelOracle, NoisyOracle

            oracle = NoisyOracle(LabelOracle(data.train.pids), 0.05, random_state=seed)
            extra = {"clusterer": _fixed_k1()} if "k1 fixed" in name else {}
            if "neighbors" in name:
                extra.update(refiner=_selection("neighbors"), query_pacing="greedy")
            model = _model(seed, weights, max_queries=budget, **extra)
            # y feeds the pseudo-label diagnostics only; the noisy oracle answers
            model.fit(data.train, data.train.pids, oracle=oracle, eval_set=data)
        elif name in ("UCAL, default, nearest", "UCAL, default, uncertain",
                      "UCAL, default, neighbors", "UCAL, default, neighbors, greedy",
                      "UCAL, default, gap then neighbors",
                      "UCAL, default, gap then neighbors, greedy"):
            # MPPS's other selections: do questions that find more "same" answers help?
            pacing = {"query_pacing": "greedy"} if name.endswith("greedy") else {}
            selection = name.split(", ")[2].replace(" ", "_")
            model = _model(seed, weights, max_queries=budget,
                           refiner=_selection(selection), **pacing)
            model.fit(data.train, data.train.pids, eval_set=data)
        elif name == "UCAL, default + calibration":
            from ucal.active import ClusteringCalibrator

            model = _model(seed, weights, max_queries=budget, calibrator=ClusteringCalibrator())
            model.fit(data.train, data.train.pids, eval_set=data)
        else:
            model = _model(seed, weights, max_queries=budget)
            model.fit(data.train, data.train.pids, eval_set=data)
    record = held_record(model)
    held = record["epoch"]
    memory = getattr(model, "label_memory_", None)
    degenerate = any("degenerate" in str(w.message) for w in caught)
    out = {
        "seed": seed, "method": name, "mAP": record["mAP"], "R1": record["R1"],
        "held_epoch": held, "n_queries": int(model.n_queries_), "cost": float(model.cost_),
        "history": model.history_, "seconds": time.perf_counter() - start,
        "degenerate_warning": degenerate, "calibrated": model.calibrated_params_,
        "n_train": n,
    }
    if memory is not None:  # the training answers (a model without an oracle has none)
        answers = memory.to_arrays()[1]
        out.update(n_same=int(np.sum(answers)), n_answers=int(len(answers)))
    rows = [out]
    if name == "UCAL, default":
        first = model.history_[0]
        rows.append({"seed": seed, "method": "Start", "mAP": first["mAP"], "R1": first["R1"],
                     "held_epoch": 0, "n_queries": 0, "cost": 0.0, "history": [first],
                     "seconds": 0.0, "degenerate_warning": False, "calibrated": None,
                     "n_train": n})
    return rows


def neighbour_rates(seed):
    """How often a question chosen per image would be answered "same": the
    start network's own neighbours on the new people's training images."""
    train = _data(seed).train
    X = _start_network(seed).transform(train)
    pids, cams = np.asarray(train.pids), np.asarray(train.camids)
    n = len(X)
    sims = X @ X.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :50]
    same = pids[order] == pids[:, None]
    cross = cams[order] != cams[:, None]
    top = order[:, 0]
    mutual = top[top] == np.arange(n)
    first_cross = np.argmax(cross, axis=1)
    return {
        "seed": seed, "n_train": n,
        "random pair": float(((pids[:, None] == pids[None]).sum() - n) / (n * (n - 1))),
        "nearest neighbour": float(same[:, 0].mean()),
        "5 nearest neighbours": float(same[:, :5].mean()),
        "nearest across cameras": float(same[np.arange(n), first_cross].mean()),
        "mutual nearest neighbours": float(same[mutual, 0].mean()),
        "mutual pairs": int(mutual.sum() // 2),
    }


def part_neighbours(seeds, jobs):
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        rows = sorted(pool.map(neighbour_rates, seeds), key=lambda r: r["seed"])
    kinds = ["random pair", "nearest neighbour", "5 nearest neighbours", "nearest across cameras",
             "mutual nearest neighbours"]
    lines = [
        "# Questions per image: how often the start network's neighbours are the same person",
        "",
        f"Seeds {seeds}; the start network of `bench_start.py` (pretrained on other people) "
        "on the new people's training images, cosine similarity of its embeddings. Each "
        "cell: the share of such pairs that are the same identity. Compare with the share of "
        "\"same\" answers among the questions the cluster-based rules ask (`start.md`).",
        "",
        "| pair | " + " | ".join(f"seed {r['seed']}" for r in rows) + " | mean |",
        "|---|" + "---|" * (len(rows) + 1),
    ]
    for kind in kinds:
        cells = [100 * r[kind] for r in rows]
        lines.append(f"| {kind} (%) | " + " | ".join(f"{c:.1f}" for c in cells)
                     + f" | {np.mean(cells):.1f} |")
    lines.append("| mutual pairs | " + " | ".join(str(r["mutual pairs"]) for r in rows) + " | |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "start_neighbours.json").write_text(json.dumps({"runs": rows}, indent=1))
    table = "\n".join(lines) + "\n"
    (RESULTS / "start_neighbours.md").write_text(table)
    print(table)


def _mean_sd(values):
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(type(value).__name__)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--stem", default=None,
                        help="name of the results files (default: start, or start_hard)")
    parser.add_argument("--hard", action="store_true",
                        help="hard_negative_rate 0.6 and camera_shift 1.5 (results: start_hard)")
    parser.add_argument("--rows", nargs="+", default=None, choices=ROWS[1:], metavar="ROW",
                        help="run only these rows (Start comes with 'UCAL, default')")
    parser.add_argument("--merge", action="store_true",
                        help="keep the saved runs of other rows and seeds (same seed and row "
                             "replaced)")
    parser.add_argument("--neighbours", action="store_true",
                        help="only measure how often the start network's neighbours are the "
                             "same person (results: start_neighbours)")
    args = parser.parse_args()
    if args.neighbours:
        part_neighbours(args.seeds, args.jobs)
        return
    wanted = ROWS[1:] if args.rows is None else args.rows
    stem = "start"
    if args.hard:
        os.environ["UCAL_BENCH_START_HARD"] = "1"  # read again by the spawned workers
        _apply_hard()
        stem = "start_hard"
    stem = args.stem or stem
    began = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    runs = []
    with tempfile.TemporaryDirectory() as root, concurrent.futures.ProcessPoolExecutor(
        max_workers=args.jobs, mp_context=context
    ) as pool:
        weights = dict(zip(args.seeds, pool.map(pretrain, args.seeds, [root] * len(args.seeds))))
        futures = [
            pool.submit(run, seed, name, weights[seed])
            for seed in args.seeds for name in wanted
        ]
        for future in concurrent.futures.as_completed(futures):
            for row in future.result():
                runs.append(row)
                print(f"seed {row['seed']} {row['method']:>14}: mAP {100 * row['mAP']:5.1f} "
                      f"(epoch {row['held_epoch']}), cost {100 * row['cost']:.4f} %, "
                      f"{row['seconds']:.0f} s", flush=True)
    minutes = (time.perf_counter() - began) / 60
    if args.merge and (RESULTS / f"{stem}.json").exists():
        fresh = {(r["seed"], r["method"]) for r in runs}
        saved = json.loads((RESULTS / f"{stem}.json").read_text())["runs"]
        runs = [r for r in saved if (r["seed"], r["method"]) not in fresh] + runs
    seeds = sorted({r["seed"] for r in runs})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(
        json.dumps({"settings": SETTINGS, "runs": runs}, indent=1, default=_json_default)
    )
    import torch

    lines = [
        "# Never worse than the start: a pretrained network on new"
        + (", harder people (`--hard`)" if args.hard else " people"),
        "",
        f"Mean ± standard deviation over seeds {seeds}; {os.cpu_count()} CPUs "
        f"({platform.machine()}), torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {minutes:.0f} min "
        f"{'for the rows run last (--merge)' if args.merge else 'in all'}. "
        f"`make_persons` with {SETTINGS['n_identities']} identities of about 12 images, "
        f"hard_negative_rate {SETTINGS['hard_negative_rate']}, camera_shift "
        f"{SETTINGS['camera_shift']}; tiny CNN pretrained on other people; SpCL's "
        "clustering (k1 = 30, eps = 0.6), k1 bounded by the default k1_rule except where "
        f"the row says 'k1 fixed'; {SETTINGS['epochs']} epochs, refinement from "
        f"epoch {SETTINGS['warmup_epochs']}; every UCAL row capped at "
        f"{100 * SETTINGS['budget']:.2f} % of all pairs. Scores of the network each model "
        "holds at the end (`best_epoch_` for the default).",
        "",
        "| method | mAP | R1 | vs start (mAP) | cost (%) | \"same\" answers | held epoch | degenerate warning |",
        "|---|---|---|---|---|---|---|---|",
    ]
    start = {r["seed"]: r["mAP"] for r in runs if r["method"] == "Start"}
    for name in ROWS:
        rows = sorted((r for r in runs if r["method"] == name), key=lambda r: r["seed"])
        if not rows:
            continue
        m, s = _mean_sd([100 * r["mAP"] for r in rows])
        r1, r1s = _mean_sd([100 * r["R1"] for r in rows])
        # a seed whose Start row was not run (--rows without 'UCAL, default') has no difference
        diffs = [100 * (r["mAP"] - start[r["seed"]]) for r in rows if r["seed"] in start]
        d, ds = _mean_sd(diffs) if diffs else (float("nan"), float("nan"))
        c, cs = _mean_sd([100 * r["cost"] for r in rows])
        held = ", ".join(str(r["held_epoch"]) for r in rows)
        warned = sum(r["degenerate_warning"] for r in rows)
        # runs saved before the count was kept have none
        same = [f"{r['n_same']} of {r['n_answers']}" for r in rows if "n_same" in r]
        lines.append(
            f"| {name} | {m:.1f} ± {s:.1f} | {r1:.1f} ± {r1s:.1f} | {d:+.1f} ± {ds:.1f} | "
            f"{c:.4f} ± {cs:.4f} | {', '.join(same) or '-'} | {held} | {warned} of {len(rows)} |"
        )
    lines += ["", "Per seed (mAP, %):", ""]
    for seed in seeds:
        cells = []
        for name in ROWS:
            row = next((r for r in runs if r["method"] == name and r["seed"] == seed), None)
            if row is not None:
                cells.append(f"{name} {100 * row['mAP']:.1f}")
        calibrated = next((r["calibrated"] for r in runs
                           if r["method"] == "UCAL, default + calibration"
                           and r["seed"] == seed), None)
        lines.append(f"- seed {seed}: " + ", ".join(cells) + f"; calibrated to {calibrated}")
    table = "\n".join(lines) + "\n"
    print(table)
    (RESULTS / f"{stem}.md").write_text(table)


if __name__ == "__main__":
    main()
