"""The unsupervised bases side by side: Baseline and UCAL on each, at the same budget.

Bases (``UCALReID`` parameters; everything else is the default):

- SpCL centroids: ``loss="centroid"``, Eq. 1 on member-mean centroids (the
  paper's base, ucal's until issue 26);
- cluster memory: ``loss="cluster_memory"`` (cluster-contrast, momentum 0.1);
- cluster memory, hard: ``loss="cluster_memory_hard"`` (each cluster's
  hardest batch instance moves its prototype);
- camera proxies: ``loss="camera_proxies"`` (CAP: per-camera proxies, the
  intra- and inter-camera terms, momentum 0.2);
- SpCL centroids + GeM: ``pooling="gem"``;
- cluster memory + GeM.

Two set-ups, 3 seeds each:

- ``--setup ablation``: the ablation's (``bench_ablation.py``: ``ucal demo``'s
  data and schedule, the small CNN pretrained on other synthetic people,
  k1 = 20 fixed, 36 epochs, refinement from epoch 4, no held-out questions,
  the last network kept); UCAL is the default at 0.092 % of all pairs.
  Gap closed uses the Supervised runs saved in ``ablation_answers.json``
  (same seeds and settings).
- ``--setup start``: the start benchmark's (``bench_start.py``: a pretrained
  start on new people, SpCL's clustering scale, 12 epochs); UCAL is the
  default (validation, best epoch, the check against the start) at 0.09 %.

Each run also records the seconds of its training steps per epoch (from the
first to the last step of each epoch, so that clustering, questions and
evaluation are left out); the table divides them by the epoch's steps (their
number follows the clustering, not the base): the bases' step times are
compared within one invocation, all runs two side by side on the same machine.

Usage::

    python benchmarks/bench_bases.py --setup ablation   # about 70 min on 2 cores
    python benchmarks/bench_bases.py --setup start      # about 15 min
    python benchmarks/bench_bases.py --setup start --only "camera proxies" --merge

Saves ``benchmarks/results/bases_{setup}.{json,md}``; runs are saved as they end,
so an interrupted invocation keeps what it measured (``--report`` rebuilds the table).
"""

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from bench_ablation import _json_default, _mean_sd  # the ablation's table helpers

RESULTS = Path(__file__).resolve().parent / "results"

BASES = {
    "SpCL centroids": {},
    "cluster memory": {"loss": "cluster_memory"},
    "cluster memory, hard": {"loss": "cluster_memory_hard"},
    "camera proxies": {"loss": "camera_proxies"},
    "SpCL centroids + GeM": {"pooling": "gem"},
    "cluster memory + GeM": {"loss": "cluster_memory", "pooling": "gem"},
}
KINDS = ("Baseline", "UCAL")


def _step_timer():
    from ucal.reid import Callback

    class StepTimer(Callback):
        """Seconds from the first to the last training step of each epoch, scaled to all steps."""

        def __init__(self):
            self.seconds = []

        def on_epoch_begin(self, loop, epoch):
            self._stamps = []

        def on_batch_end(self, loop, batch, loss):
            self._stamps.append(time.perf_counter())

        def on_epoch_end(self, loop, record):
            n = len(self._stamps)
            if n > 1:
                self.seconds.append((self._stamps[-1] - self._stamps[0]) * n / (n - 1))

    return StepTimer()


# ----------------------------------------------------------------- set-ups
def _prepare(setup, seed, root):
    """The seed's pretrained weights (the stand-in for ImageNet)."""
    from ucal.reid import set_num_threads

    set_num_threads(1)
    if setup == "start":
        import bench_start

        return bench_start.pretrain(seed, root)
    import bench_ablation
    from ucal.cli._demo import _pretrain

    path = os.path.join(root, f"pretrained_{seed}.pt")
    _pretrain(bench_ablation._settings(seed), path)
    return path


def run(setup, seed, base, kind, weights):
    """One base, Baseline or UCAL, one seed."""
    from ucal.cli._common import held_record
    from ucal.reid import set_num_threads

    set_num_threads(1)
    timer = _step_timer()
    params = {**BASES[base], "callbacks": [timer]}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if setup == "start":
            import bench_start

            data = bench_start._data(seed)
            n = len(data.train)
            if kind == "Baseline":
                model = bench_start._model(seed, weights, refiner="passthrough", **params)
                model.fit(data.train, eval_set=data)
            else:
                budget = int(bench_start.SETTINGS["budget"] * n * (n - 1) / 2)
                model = bench_start._model(seed, weights, max_queries=budget, **params)
                model.fit(data.train, data.train.pids, eval_set=data)
        else:
            import bench_ablation
            from ucal.cli._demo import _demo_data, _demo_model

            settings = {**bench_ablation._settings(seed), "weights": weights}
            data = _demo_data(settings)
            n = len(data.train)
            extra = {**bench_ablation.PINNED,
                     "clusterer": bench_ablation._pinned_clusterer(settings)}
            if kind == "Baseline":
                model = _demo_model(settings, None, refiner="passthrough", **extra, **params)
                model.fit(data.train, data.train.pids, eval_set=data)
            else:
                budget = int(0.00092 * n * (n - 1) / 2)
                model = _demo_model(settings, None, max_queries=budget, **extra, **params)
                model.fit(data.train, data.train.pids, eval_set=data)
    record = held_record(model)
    return {
        "seed": seed, "base": base, "kind": kind, "mAP": record["mAP"], "R1": record["R1"],
        "held_epoch": record["epoch"], "start_mAP": model.history_[0].get("mAP")
        if setup == "start" and kind == "UCAL" else None,
        "queries": int(getattr(model, "n_queries_", 0)), "cost": float(getattr(model, "cost_", 0.0)),
        "step_seconds": timer.seconds, "seconds": time.perf_counter() - start,
        "history": model.history_,
    }


# ----------------------------------------------------------------- report
def _per_step(run):
    """Seconds per training step of each epoch with more than one step."""
    steps = [h["iterations"] for h in run["history"] if h.get("iterations", 0) > 1]
    return [s / n for s, n in zip(run["step_seconds"], steps)]


def report(setup, saved):
    runs = saved["runs"]
    seeds = sorted({r["seed"] for r in runs})
    by = {(r["base"], r["kind"], r["seed"]): r for r in runs}
    supervised = {}
    if setup == "ablation":
        path = RESULTS / "ablation_answers.json"
        if path.exists():
            supervised = {r["seed"]: r["mAP"] for r in json.loads(path.read_text())["runs"]
                          if r["method"] == "Supervised"}
    # each base's own start: GeM pools the same pretrained weights otherwise
    start = {(r["base"], r["seed"]): r["start_mAP"] for r in runs
             if r.get("start_mAP") is not None}
    # the cost of a step: each run's median over epochs of seconds per training step, then
    # the median over its runs (an epoch's step count follows its clustering, not the base)
    speed = {}
    for base in BASES:
        medians = [float(np.median(_per_step(r))) for r in runs
                   if r["base"] == base and r["step_seconds"]]
        if medians:
            speed[base] = float(np.median(medians))
    ref_speed = speed.get("SpCL centroids")
    lines = [
        "| base | Baseline mAP | UCAL mAP | UCAL - Baseline | "
        + ("gap closed by UCAL (%) | " if setup == "ablation" else "UCAL - start | ")
        + "UCAL cost (%) | ms per step | vs SpCL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for base in BASES:
        cells = {}
        for kind in KINDS:
            values = [100 * by[(base, kind, s)]["mAP"] for s in seeds if (base, kind, s) in by]
            cells[kind] = _mean_sd(values) if values else None
        paired = [s for s in seeds if (base, "Baseline", s) in by and (base, "UCAL", s) in by]
        if not (cells["Baseline"] or cells["UCAL"]):
            continue
        gain = _mean_sd([100 * (by[(base, "UCAL", s)]["mAP"] - by[(base, "Baseline", s)]["mAP"])
                         for s in paired]) if paired else None
        if setup == "ablation":
            gaps = [100 * (by[(base, "UCAL", s)]["mAP"] - by[(base, "Baseline", s)]["mAP"])
                    / (supervised[s] - by[(base, "Baseline", s)]["mAP"])
                    for s in paired if s in supervised]
            extra = _mean_sd(gaps) if gaps else None
        else:
            ups = [100 * (by[(base, "UCAL", s)]["mAP"] - start[(base, s)]) for s in seeds
                   if (base, "UCAL", s) in by and (base, s) in start]
            extra = _mean_sd(ups) if ups else None
        costs = [100 * by[(base, "UCAL", s)]["cost"] for s in seeds if (base, "UCAL", s) in by]

        def fmt(pair, sign=""):
            return "" if pair is None else f"{pair[0]:{sign}.1f} ± {pair[1]:.1f}"

        ratio = speed.get(base, float("nan")) / ref_speed if ref_speed else float("nan")
        lines.append(
            f"| {base} | {fmt(cells['Baseline'])} | {fmt(cells['UCAL'])} | {fmt(gain, '+')} | "
            f"{fmt(extra, '+' if setup == 'start' else '')} | "
            f"{np.mean(costs) if costs else float('nan'):.4f} | "
            f"{1000 * speed.get(base, float('nan')):.0f} | {ratio:.2f} |"
        )
        rows.append({"base": base, "baseline": cells["Baseline"], "ucal": cells["UCAL"],
                     "gain": gain, "gap_or_start": extra, "step_seconds": speed.get(base),
                     "speed_ratio": ratio})
    lines += ["", "Per seed (mAP, %, Baseline / UCAL):", ""]
    for seed in seeds:
        cells = []
        for base in BASES:
            b, u = by.get((base, "Baseline", seed)), by.get((base, "UCAL", seed))
            if b or u:
                cells.append(f"{base} {100 * b['mAP'] if b else float('nan'):.1f} / "
                             f"{100 * u['mAP'] if u else float('nan'):.1f}")
        suffix = ""
        if setup == "ablation" and seed in supervised:
            suffix = f"; Supervised {100 * supervised[seed]:.1f}"
        if setup == "start":
            starts = sorted({round(100 * v, 1) for (b, s), v in start.items() if s == seed})
            suffix = f"; start {' / '.join(f'{v:.1f}' for v in starts)} (average / GeM pooling)"
        lines.append(f"- seed {seed}: " + ", ".join(cells) + suffix)
    env = saved["environment"]
    what = (
        "the ablation's set-up (`ucal demo`'s data, small CNN pretrained on other synthetic "
        "people, k1 = 20 fixed, 36 epochs, refinement from epoch 4, no held-out questions, "
        "the last network kept; UCAL at 0.092 % of all pairs; gap closed against the "
        "Supervised runs of `ablation_answers.json`)"
        if setup == "ablation" else
        "the start benchmark's set-up (tiny CNN pretrained on other people, 150 new "
        "identities, SpCL's k1 = 30, 12 epochs, refinement from epoch 4; UCAL the default "
        "with validation, best epoch and the check against the start, at 0.09 %)"
    )
    header = (
        "# The unsupervised bases, Baseline and UCAL on each\n\n"
        f"Mean ± standard deviation over seeds {seeds}; {env['cpus']} CPUs ({env['machine']}), "
        f"torch {env['torch']}, {env['date']}, {env['wall_seconds'] / 60:.0f} min in all, "
        f"two runs side by side on one thread each. {what[0].upper() + what[1:]}. Step time: "
        "milliseconds per training step (forward, loss, backward, memory updates; clustering, "
        "questions and evaluation left out), the median over epochs and runs of a base; an "
        "epoch is this times its steps, which its clustering sets; 'vs SpCL' the ratio to "
        "SpCL centroids'. Data: `make_persons`, not Market-1501 or MSMT17.\n\n"
    )
    return header + "\n".join(lines) + "\n", rows


def _save(setup, runs, env):
    path = RESULTS / f"bases_{setup}.json"
    saved = {"environment": env, "rows": [], "runs": runs}
    text, rows = report(setup, saved)
    saved["rows"] = rows
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(saved, default=_json_default, indent=1))
    (RESULTS / f"bases_{setup}.md").write_text(text)
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setup", choices=("ablation", "start"), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", nargs="+", default=None, metavar="BASE",
                        help="run only these bases")
    parser.add_argument("--merge", action="store_true",
                        help="add the runs to the saved results (same seed, base and kind replaced)")
    parser.add_argument("--report", action="store_true", help="rebuild the table from the JSON")
    args = parser.parse_args()
    path = RESULTS / f"bases_{args.setup}.json"
    if args.report:
        saved = json.loads(path.read_text())
        print(_save(args.setup, saved["runs"], saved["environment"]))
        return
    import torch

    began = time.perf_counter()
    runs, spent = [], 0.0
    if args.merge and path.exists():
        saved = json.loads(path.read_text())
        runs, spent = saved["runs"], saved["environment"]["wall_seconds"]
    bases = [b for b in BASES if args.only is None or b in args.only]
    env = {
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "setup": args.setup,
    }
    root = tempfile.mkdtemp(prefix="ucal_bases_")
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        weights = dict(zip(args.seeds, pool.map(_prepare, [args.setup] * len(args.seeds),
                                                args.seeds, [root] * len(args.seeds))))
        futures = [pool.submit(run, args.setup, seed, base, kind, weights[seed])
                   for base in bases for seed in args.seeds for kind in KINDS]
        for future in concurrent.futures.as_completed(futures):
            row = future.result()
            runs = [r for r in runs if (r["seed"], r["base"], r["kind"])
                    != (row["seed"], row["base"], row["kind"])] + [row]
            env.update(wall_seconds=spent + time.perf_counter() - began,
                       date=time.strftime("%Y-%m-%d %H:%M"))
            _save(args.setup, runs, env)
            print(f"seed {row['seed']} {row['base']} {row['kind']}: mAP {100 * row['mAP']:.1f} "
                  f"(epoch {row['held_epoch']}), cost {100 * row['cost']:.4f} %, "
                  f"step {np.median(row['step_seconds']) if row['step_seconds'] else 0:.2f} s, "
                  f"{row['seconds']:.0f} s", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    print(_save(args.setup, runs, env))


if __name__ == "__main__":
    main()
