"""When does a Baseline (no oracle) end below its start, and what can warn of it?

Issue 25 asks that a Baseline with no oracle warn when its clustering and
the start features disagree badly. A Baseline has no answers, so any warning
must come from the features alone. This benchmark makes Baselines that fall
below their start and asks which label-free figures show it:

- Starts: the start network of ``bench_start.py`` (pretrained, supervised,
  on other people), pretrained for 4 epochs (a weak start, as there) or 12
  (a strong one).
- Settings: the Baseline as ``bench_start.py`` runs it (SpCL's clustering,
  k1 = 30, eps = 0.6, lr 3.5e-4), a learning rate 3x or 10x larger (1e-3,
  3.5e-3), and SpCL's clustering with eps = 0.75 (too coarse a scale).
- Columns: the start's test mAP, the end's and the lowest over the 12
  epochs; the epoch whose base clustering the degenerate-clustering warning
  named (``UserWarning``, once per fit; "-": none); and two figures that
  compare the last network with the start network on the training images,
  without labels: the share of each image's 10 nearest neighbours that the
  start network also names ("neighbours kept"), and the start network's
  mean similarity to the last network's 5 nearest neighbours over that to
  its own 5 nearest ("start similarity").

Usage::

    python benchmarks/bench_baseline.py            # 3 seeds, about 10 min on 2 cores
    python benchmarks/bench_baseline.py --seeds 0 --starts 4

Saves ``benchmarks/results/baseline.{json,md}``.
"""

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = {"default": {}, "lr 1e-3": {"lr": 1e-3}, "lr 3.5e-3": {"lr": 3.5e-3},
            "eps 0.75": {"eps": 0.75}}
FALL = 3.0  # a fall below the start worth a warning, in mAP points


def pretrain(seed, pretrain_epochs, root):
    import bench_start
    from ucal.reid import save_weights

    bench_start.SETTINGS["pretrain_epochs"] = pretrain_epochs
    path = os.path.join(root, f"start_{seed}_{pretrain_epochs}.pt")
    save_weights(bench_start._start_network(seed).backbone_, path)
    return path


def _neighbours(features, k):
    sims = features @ features.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k], sims


def label_free_figures(start, last):
    """How the last network's neighbourhoods compare with the start network's."""
    start_near, start_sims = _neighbours(start, 10)
    last_near, _ = _neighbours(last, 10)
    kept = np.mean([len(set(a) & set(b)) for a, b in zip(start_near, last_near)]) / 10
    own = np.take_along_axis(start_sims, start_near[:, :5], axis=1).mean()
    theirs = np.take_along_axis(start_sims, last_near[:, :5], axis=1).mean()
    return {"neighbours_kept": float(kept), "start_similarity": float(theirs / own)}


def earlier_rule_epoch(clusters):
    """The first epoch the rule before issue 25 (no one-cluster rule) would have named."""
    from ucal.reid._pseudo_labels import (
        _MAX_OUTLIER_SHARE, _MAX_TOP3_SHARE, _MIN_CLUSTERS_FOR_TOP3,
    )

    for epoch, c in enumerate(clusters, 1):
        if c["outliers"] > _MAX_OUTLIER_SHARE or (
            c["top3"] > _MAX_TOP3_SHARE and c["n_clusters"] >= _MIN_CLUSTERS_FOR_TOP3
        ):
            return epoch
    return None


def run(seed, pretrain_epochs, setting, weights):
    import bench_start
    from ucal.cluster import SelfPacedDBSCAN
    from ucal.reid import Callback, set_num_threads
    from ucal.reid._features import reid_scores

    set_num_threads(1)
    data = bench_start._data(seed)
    features, clusters = {}, []

    class StartAndLast(Callback):
        def on_fit_begin(self, loop):
            features["start"] = loop.embed(data.train)
            features["start_mAP"] = reid_scores(
                loop.embed(data.query), loop.embed(data.gallery), data.query, data.gallery
            )["mAP"]

        def on_epoch_end(self, loop, record):
            labels = np.asarray(loop.labels)
            sizes = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(1)
            sizes = np.sort(sizes)[::-1]
            clusters.append({"n_clusters": int(np.count_nonzero(sizes)),
                             "largest": float(sizes[0] / len(labels)),
                             "top3": float(sizes[:3].sum() / len(labels)),
                             "outliers": float(np.mean(labels < 0))})

        def on_fit_end(self, loop):
            features["last"] = loop.embed(data.train)

    params = dict(SETTINGS[setting])
    if "eps" in params:
        params["clusterer"] = SelfPacedDBSCAN(k1=bench_start.SETTINGS["k1"],
                                              eps=params.pop("eps"))
    began = time.perf_counter()
    model = bench_start._model(seed, weights, refiner="passthrough",
                               callbacks=[StartAndLast()], **params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(data.train, eval_set=data)
    warned = [str(w.message) for w in caught if "degenerate" in str(w.message)]
    maps = [100 * features["start_mAP"]] + [100 * r["mAP"] for r in model.history_]
    return {
        "seed": seed, "start": pretrain_epochs, "setting": setting, "mAP": maps,
        "warned_epoch": int(re.match(r"Epoch (\d+)", warned[0]).group(1)) if warned else None,
        "warning": warned[0] if warned else None,
        "earlier_rule_epoch": earlier_rule_epoch(clusters),
        "clusters": clusters,
        **label_free_figures(features["start"], features["last"]),
        "seconds": time.perf_counter() - began,
    }


def _spearman(a, b):
    from scipy.stats import spearmanr

    return float(spearmanr(a, b)[0])


def report(runs, seeds, minutes):
    lines = [
        "# When a Baseline ends below its start, and what warns of it",
        "",
        f"Seeds {seeds}; 2 CPUs ({platform.machine()}), {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{minutes:.0f} min in all. The new people of `bench_start.py` (150 identities of "
        "about 12 images); its tiny CNN pretrained on other people for 4 (weak start) or 12 "
        "(strong start) epochs; the Baseline (no oracle) for 12 epochs with SpCL's clustering "
        "(k1 = 30, bounded by the default k1_rule; eps = 0.6) and lr 3.5e-4 unless the setting "
        "says otherwise. mAP on the "
        "new people's test split; \"warned\": the epoch named by the degenerate-clustering "
        "warning; \"earlier rule\": the epoch the rule before issue 25 would have named; "
        "\"largest cluster, epoch 1\": its share of the images, of how many clusters. The "
        "last two columns compare the last network with the start network on the training "
        "images without labels (see the script).",
        "",
        "| start | setting | seed | start mAP | last vs start | lowest vs start | warned "
        "| earlier rule | largest cluster, epoch 1 | neighbours kept | start similarity |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: (r["start"], list(SETTINGS).index(r["setting"]),
                                         r["seed"])):
        m = r["mAP"]
        lines.append(
            f"| {r['start']} epochs | {r['setting']} | {r['seed']} | {m[0]:.1f} "
            f"| {m[-1] - m[0]:+.1f} | {min(m[1:]) - m[0]:+.1f} "
            f"| {r['warned_epoch'] if r['warned_epoch'] else '-'} "
            f"| {r['earlier_rule_epoch'] if r['earlier_rule_epoch'] else '-'} "
            f"| {100 * r['clusters'][0]['largest']:.0f} % of {r['clusters'][0]['n_clusters']} "
            f"| {r['neighbours_kept']:.3f} | {r['start_similarity']:.3f} |"
        )
    falls = [r for r in runs if r["mAP"][-1] - r["mAP"][0] < -FALL]
    caught = [r for r in falls if r["warned_epoch"]]
    false = [r for r in runs if r["warned_epoch"] and r["mAP"][-1] - r["mAP"][0] >= -FALL]
    quiet = [r for r in runs if not r["warned_epoch"]]
    earlier = [r for r in falls if r["earlier_rule_epoch"]]
    lines += [
        "",
        f"- Runs that end more than {FALL:.0f} mAP below their start: {len(falls)} of "
        f"{len(runs)}; the degenerate-clustering warning named {len(caught)} of them, and "
        f"{len(false)} {'run' if len(false) == 1 else 'runs'} that did not fall so far. "
        f"The rule before issue 25 (\"earlier rule\": no one-cluster rule) would have named "
        f"{len(earlier)} of the falls, at epochs "
        f"{sorted(r['earlier_rule_epoch'] for r in earlier)}.",
    ]
    quiet_falls = [r for r in quiet if r["mAP"][-1] - r["mAP"][0] < -FALL]
    for key, name in (("neighbours_kept", "neighbours kept"),
                      ("start_similarity", "start similarity")):
        if len(quiet) < 3:
            break
        rho = _spearman([r[key] for r in quiet], [r["mAP"][-1] - r["mAP"][0] for r in quiet])
        text = (f"- {name}, over the {len(quiet)} runs the warning did not name: rank "
                f"correlation with the last network's gain over the start {rho:+.2f}")
        if quiet_falls:
            # the lowest threshold that flags every quiet fall (flagged: figure <= threshold)
            threshold = max(r[key] for r in quiet_falls)
            flagged = [r for r in quiet if r[key] <= threshold]
            wrong = [r for r in flagged if r["mAP"][-1] - r["mAP"][0] >= -FALL]
            text += (f"; a threshold high enough to flag all {len(quiet_falls)} falls "
                     f"(<= {threshold:.3f}) would also flag {len(wrong)} of the "
                     f"{len(quiet) - len(quiet_falls)} runs that did not fall")
        lines.append(text + ".")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--starts", type=int, nargs="+", default=[4, 12],
                        help="pretraining epochs of the start networks")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--stem", default="baseline")
    args = parser.parse_args()
    began = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as root, concurrent.futures.ProcessPoolExecutor(
        max_workers=args.jobs, mp_context=context
    ) as pool:
        starts = [(s, p) for p in args.starts for s in args.seeds]
        paths = dict(zip(starts, pool.map(pretrain, *zip(*starts), [root] * len(starts))))
        tasks = [(s, p, name) for (s, p) in starts for name in SETTINGS]
        futures = [pool.submit(run, s, p, name, paths[s, p]) for s, p, name in tasks]
        runs = [f.result() for f in futures]
    table = report(runs, args.seeds, (time.perf_counter() - began) / 60)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.stem}.json").write_text(json.dumps({"runs": runs}, indent=1))
    (RESULTS / f"{args.stem}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
