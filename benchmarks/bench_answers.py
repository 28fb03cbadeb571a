"""Accuracy per human answer: pair supervision, question selection and budget curves.

The set-up of ``bench_start.py`` (a tiny CNN pretrained on other synthetic
people, then trained without labels on 150 new identities, 12 epochs,
refinement from epoch 4, SpCL's clustering with ucal's k1 rule), run at
several budgets, for these methods (every one but the Baseline capped at
the same number of questions, per seed and budget):

- ``Baseline``: no oracle.
- ``paper``: ``UCALReID.from_preset("paper")``'s refinement (SNPS then MPPS,
  each medoid pair asked once, no votes, no validation answers).
- ``gap``: ucal's refinement with MPPS's gap cut (Eq. 5, 6), the most
  similar centroid pairs first.
- ``nearest``: the control, each cluster's nearest centroid only.
- ``uncertain``: MPPS's ``selection="uncertain"`` (calibrated P(same),
  nearest even odds first, diverse rounds).
- ``+ pairs`` after a name: the same with the pair term in the loss
  (``pair_weight``, ``--pair-weight``); ``gap + pairs`` is ucal's default.
- ``neighbors preset``: ``UCALReID.from_preset("neighbors")`` (MPPS asks
  each image about its nearest neighbour in another cluster, the budget
  spent as early as the questions allow), pair term included.

Figures are test mAP of the network the model holds at the end (the best
validated epoch where the method validates, or the start network where the
end-of-fit check gives it back) and of the last epoch. The per-epoch
``val_auc`` and mAP are saved, and a second table says how well the
validation answers follow retrieval quality (Spearman's rank correlation over
each run's epochs) and what the check against the start network decided.

Usage::

    python benchmarks/bench_answers.py                  # the budget curves, about 25 min
    python benchmarks/bench_answers.py --methods Baseline gap "gap + pairs" \\
        --budgets 0.0009 --pair-weight 3 --stem answers_w3

Saves ``benchmarks/results/STEM.{json,md}`` (and ``STEM.png`` with several budgets).
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

from bench_start import SETTINGS, _data, _model, pretrain

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("Baseline", "paper", "gap", "gap + pairs", "uncertain", "uncertain + pairs",
           "nearest", "nearest + pairs", "neighbors preset")
BUDGETS = (0.0002, 0.0005, 0.001, 0.0015, 0.002)


def _refiner(selection):
    from ucal.reid._pseudo_labels import default_refiner

    return default_refiner().set_params(selection=selection)


def _params(method, pair_weight):
    from ucal.reid._presets import preset_params

    if method == "Baseline":
        return {"refiner": "passthrough"}
    if method == "paper":
        paper = preset_params("paper")
        keep = ("refiner", "memory_inference", "query_pacing", "calibrator",
                "validation_size", "keep_best", "pair_weight")
        return {k: paper[k] for k in keep}
    if method == "neighbors preset":  # UCALReID.from_preset("neighbors"), pair term included
        return {**preset_params("neighbors"), "pair_weight": pair_weight}
    name, _, pairs = method.partition(" + ")
    params = {"refiner": _refiner(name), "pair_weight": pair_weight if pairs else 0.0}
    return params


def run(seed, method, budget, weights, pair_weight, noise):
    from ucal.cli._common import held_record
    from ucal.oracles import LabelOracle, NoisyOracle
    from ucal.reid import set_num_threads

    set_num_threads(1)
    data = _data(seed)
    n = len(data.train)
    params = _params(method, pair_weight)
    if method != "Baseline":
        params["max_queries"] = int(budget * n * (n - 1) / 2)
    oracle = None
    if noise:
        oracle = NoisyOracle(LabelOracle(data.train.pids), noise, random_state=seed)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _model(seed, weights, **params)
        if method == "Baseline":
            model.fit(data.train, eval_set=data)
        else:
            model.fit(data.train, data.train.pids, oracle=oracle, eval_set=data)
    held = held_record(model)
    return {
        "seed": seed, "method": method, "budget": budget, "noise": noise,
        "mAP": held["mAP"], "R1": held["R1"], "held_epoch": held["epoch"],
        "last_mAP": model.history_[-1]["mAP"],
        # epoch 0 (the pretrained start) is recorded by the runs that ask before training
        "start_mAP": model.history_[0]["mAP"] if model.history_[0]["epoch"] == 0 else None,
        "n_queries": int(model.n_queries_), "cost": float(model.cost_),
        "start_check": getattr(model, "start_check_", None),
        "history": [{k: h.get(k) for k in ("epoch", "mAP", "R1", "val_auc", "val_auc_se",
                                            "n_queries", "loss", "label_precision",
                                            "label_recall")} for h in model.history_],
        "seconds": time.perf_counter() - start,
    }


def _mean_sd(values):
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _plot(rows, budgets, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in sorted({r["method"] for r in rows if r["method"] != "Baseline"}):
        points = [(b, [100 * r["mAP"] for r in rows if r["method"] == method and r["budget"] == b])
                  for b in budgets]
        points = [(100 * b, np.mean(v), np.std(v, ddof=1) if len(v) > 1 else 0.0)
                  for b, v in points if v]
        if points:
            x, m, s = map(np.array, zip(*points))
            ax.errorbar(x, m, yerr=s, marker="o", capsize=3, label=method)
    base = [100 * r["mAP"] for r in rows if r["method"] == "Baseline"]
    if base:
        ax.axhline(np.mean(base), color="grey", lw=1, ls="--", label="Baseline")
    start = {r["seed"]: 100 * r["start_mAP"] for r in rows if r["start_mAP"] is not None}
    if start:
        ax.axhline(np.mean(list(start.values())), color="black", lw=1, ls=":", label="Start")
    ax.set_xlabel("labeling cost (% of all pairs)")
    ax.set_ylabel("test mAP (%), mean ± sd over seeds")
    ax.set_title("mAP against questions (bench_answers)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _spearman(a, b):
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)


def tracking_lines(runs):
    """How well ``val_auc`` follows mAP across each run's epochs (Spearman), and the keeper."""
    lines = ["| method | runs | Spearman(val_auc, mAP) over epochs | held - last (mAP) | "
             "held - start (mAP) | start given back by the check |", "|---|---|---|---|---|---|"]
    for method in sorted({r["method"] for r in runs}):
        mine = [r for r in runs if r["method"] == method
                and any(h.get("val_auc") is not None for h in r["history"])]
        if not mine:
            continue
        rho = [_spearman([h["val_auc"] for h in r["history"]], [h["mAP"] for h in r["history"]])
               for r in mine]
        rm, rs = _mean_sd([x for x in rho if x == x] or [float("nan")])
        hl, hls = _mean_sd([100 * (r["mAP"] - r["last_mAP"]) for r in mine])
        hs, hss = _mean_sd([100 * (r["mAP"] - r["start_mAP"]) for r in mine
                            if r["start_mAP"] is not None])
        checks = [r["start_check"] for r in mine if r.get("start_check")]
        back = sum(c["keep"] == "start" for c in checks)
        lines.append(f"| {method} | {len(mine)} | {rm:.2f} ± {rs:.2f} | {hl:+.1f} ± {hls:.1f} | "
                     f"{hs:+.1f} ± {hss:.1f} | {back} of {len(checks)} checks |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--methods", nargs="+", default=["Baseline", "paper", "gap + pairs",
                                                         "uncertain + pairs", "nearest + pairs",
                                                         "neighbors preset"])
    parser.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    parser.add_argument("--pair-weight", type=float, default=1.0)
    parser.add_argument("--noise", type=float, default=0.0, help="annotator error rate")
    parser.add_argument("--stem", default="answers")
    args = parser.parse_args()
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    began = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    runs = []
    jobs = [(seed, method, budget) for seed in args.seeds for budget in args.budgets
            for method in args.methods if method != "Baseline" or budget == args.budgets[0]]
    with tempfile.TemporaryDirectory() as root, concurrent.futures.ProcessPoolExecutor(
        max_workers=args.jobs, mp_context=context
    ) as pool:
        weights = dict(zip(args.seeds, pool.map(pretrain, args.seeds, [root] * len(args.seeds))))
        futures = [pool.submit(run, seed, method, budget, weights[seed], args.pair_weight,
                               args.noise) for seed, method, budget in jobs]
        for future in concurrent.futures.as_completed(futures):
            r = future.result()
            runs.append(r)
            print(f"seed {r['seed']} {r['method']:>18} budget {100 * r['budget']:.3f} %: "
                  f"mAP {100 * r['mAP']:5.1f} (epoch {r['held_epoch']}, last "
                  f"{100 * r['last_mAP']:.1f}), "
                  f"cost {100 * r['cost']:.4f} %, {r['seconds']:.0f} s", flush=True)
    minutes = (time.perf_counter() - began) / 60
    import torch

    lines = [
        "# Accuracy per answer: pair supervision and question selection",
        "",
        f"Mean ± standard deviation over seeds {args.seeds}; {os.cpu_count()} CPUs "
        f"({platform.machine()}), torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{minutes:.0f} min in all. Set-up of `bench_start.py` ({SETTINGS['n_identities']} new "
        f"identities, hard_negative_rate {SETTINGS['hard_negative_rate']}, camera_shift "
        f"{SETTINGS['camera_shift']}, tiny CNN pretrained on other people, "
        f"{SETTINGS['epochs']} epochs, refinement from epoch {SETTINGS['warmup_epochs']}); "
        f"pair_weight {args.pair_weight} in the '+ pairs' rows; annotator error rate "
        f"{args.noise}. mAP of the network each model holds at the end; 'last': the last "
        "epoch's; 'vs start': held minus the pretrained start, per seed.",
        "",
        "| method | budget (%) | mAP | R1 | last mAP | vs start | vs Baseline | cost (%) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    start = {r["seed"]: r["start_mAP"] for r in runs if r["start_mAP"] is not None}
    base = {r["seed"]: r["mAP"] for r in runs if r["method"] == "Baseline"}
    for budget in args.budgets:
        for method in args.methods:
            mine = sorted((r for r in runs if r["method"] == method and
                           (r["budget"] == budget or method == "Baseline")),
                          key=lambda r: r["seed"])
            if not mine or (method == "Baseline" and budget != args.budgets[0]):
                continue
            m, s = _mean_sd([100 * r["mAP"] for r in mine])
            r1, r1s = _mean_sd([100 * r["R1"] for r in mine])
            last, lasts = _mean_sd([100 * r["last_mAP"] for r in mine])
            vs, vss = _mean_sd([100 * (r["mAP"] - start[r["seed"]]) for r in mine])
            if all(r["seed"] in base for r in mine):
                vb, vbs = _mean_sd([100 * (r["mAP"] - base[r["seed"]]) for r in mine])
                versus = f"{vb:+.1f} ± {vbs:.1f}"
            else:  # no Baseline run among the methods
                versus = "—"
            c, cs = _mean_sd([100 * r["cost"] for r in mine])
            shown = "—" if method == "Baseline" else f"{100 * budget:.3f}"
            lines.append(f"| {method} | {shown} | {m:.1f} ± {s:.1f} | {r1:.1f} ± {r1s:.1f} | "
                         f"{last:.1f} ± {lasts:.1f} | {vs:+.1f} ± {vss:.1f} | "
                         f"{versus} | {c:.4f} ± {cs:.4f} |")
    lines += ["", "Per seed (held mAP, %):", ""]
    for seed in args.seeds:
        cells = [f"{r['method']} @ {100 * r['budget']:.3f} %: {100 * r['mAP']:.1f}"
                 for r in sorted(runs, key=lambda r: (r["budget"], r["method"]))
                 if r["seed"] == seed]
        lines.append(f"- seed {seed} (start {100 * start.get(seed, float('nan')):.1f}): "
                     + "; ".join(cells))
    lines += ["", "How the validation answers follow retrieval quality (per run, over its "
              "epochs):", ""] + tracking_lines(runs)
    if len(args.budgets) > 1:
        _plot(runs, args.budgets, RESULTS / f"{args.stem}.png")
        lines[2:2] = ["", f"![mAP against labeling cost]({args.stem}.png)"]
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.stem}.md").write_text(table)
    (RESULTS / f"{args.stem}.json").write_text(json.dumps(
        {"settings": SETTINGS, "args": vars(args), "runs": runs, "minutes": minutes},
        indent=1, default=lambda v: v.item() if isinstance(v, np.generic) else list(v)))


if __name__ == "__main__":
    main()
