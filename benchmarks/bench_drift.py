"""Refinement across drifting rounds with one label memory, clean and noisy annotators.

What a training run does to the answers: every epoch the model's embedding
drifts a little, the base clustering is redone from scratch, and the
refiner asks about the new clusters through the memory kept for the whole
run. This benchmark replays that without a network:

* embeddings: ``N`` re-id-like samples (identities of 5 to 40 images,
  look-alike identity pairs, camera shifts that fragment identities), ``d``
  dimensions; from round to round the per-sample noise drifts (AR(1)) and
  the camera shifts shrink, as features improve with training;
* each round: ``SelfPacedDBSCAN`` clusters the round's embedding (the base
  clustering, realistic errors), then each method refines it with its own
  oracle and its own memory, kept across rounds;
* annotators: clean (``LabelOracle``) and 5 % of answers flipped
  (``NoisyOracle``);
* reported per method and annotator: mean pairwise F over rounds (and its
  gain over the base clustering), the worst round's gain, questions sent
  to the oracle, and pairs settled by the memory; each over several seeds.

Usage::

    python benchmarks/bench_drift.py                 # 6,300 samples, 8 rounds, 3 seeds
    python benchmarks/bench_drift.py --quick         # smoke run, not saved
    python benchmarks/bench_drift.py --methods paper default

Results are printed and saved to ``benchmarks/results/drift.{json,md}``.
"""

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ucal.cluster import SelfPacedDBSCAN  # noqa: E402
from ucal.metrics import pairwise_precision_recall_fscore  # noqa: E402
from ucal.oracles import BudgetExhaustedWarning, LabelMemory, LabelOracle, NoisyOracle  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def make_rounds(n, n_ids, dim, n_rounds, seed, persistence=0.9):
    """Embeddings of ``n_rounds`` rounds of one drifting model, and the identities.

    ``persistence`` is the AR(1) coefficient of each sample's noise from one
    round to the next (1: no drift).
    """
    rng = np.random.default_rng(seed)
    sizes = np.clip(rng.gamma(4.0, 4.0, size=n_ids).astype(int), 5, 40)
    ids = np.repeat(np.arange(n_ids), sizes)
    keep = np.sort(rng.permutation(ids.size)[:n]) if ids.size > n else np.arange(ids.size)
    ids = ids[keep]
    centres = rng.standard_normal((n_ids, dim))
    perm = rng.permutation(n_ids)
    look_alikes = perm[: 2 * (n_ids // 6)].reshape(-1, 2)
    a, b = look_alikes[:, 0], look_alikes[:, 1]
    centres[b] = 0.8 * centres[a] + 0.6 * centres[b]  # cos(a, b) ~ 0.8
    n_cams = 6
    cams = rng.integers(0, n_cams, size=ids.size)
    cam_shift = 0.5 * rng.standard_normal((n_cams, dim))
    id_cam_shift = 1.0 * rng.standard_normal((n_ids, n_cams, dim))
    noise = rng.standard_normal((ids.size, dim))
    rounds = []
    for r in range(n_rounds):
        progress = r / max(1, n_rounds - 1)
        if r:
            fresh = np.sqrt(1.0 - persistence**2)  # AR(1) with unit variance
            noise = persistence * noise + fresh * rng.standard_normal(noise.shape)
        shift = (1.0 - 0.4 * progress) * (cam_shift[cams] + id_cam_shift[ids, cams])
        X = centres[ids] + shift + (1.2 - 0.3 * progress) * noise
        rounds.append(X.astype(np.float32))
    return rounds, ids


CACHE = Path(__file__).resolve().parent / ".cache"


def trained_rounds(n_identities, n_rounds, seed):
    """Real drift: the training-set embeddings of a network after each of its epochs.

    The demo's setting scaled up: a small CNN pretrained on other synthetic
    people (the stand-in for ImageNet weights), then trained without labels
    (the Baseline) on ``make_persons(n_identities)``; after every epoch a
    callback embeds all training images. Cached in ``benchmarks/.cache``.
    """
    path = CACHE / f"drift_rounds_{n_identities}ids_{n_rounds}r_seed{seed}.npz"
    if path.exists():
        data = np.load(path)
        return [data[f"round{r}"].astype(np.float32) for r in range(n_rounds)], data["y"]
    from ucal.cli._demo import DEMO, _demo_data, _demo_model, _pretrain
    from ucal.reid import Callback, set_num_threads

    set_num_threads(1)
    CACHE.mkdir(exist_ok=True)
    # drift_trained.md was measured with the demo's earlier backbone, the "small" CNN
    settings = {**DEMO, "backbone": "small", "seed": seed}
    weights = str(CACHE / f"pretrained_seed{seed}.pt")
    _pretrain(settings, weights)  # the demo's source persons (80 identities)
    settings.update(weights=weights, n_identities=n_identities, n_test_identities=0)
    train = _demo_data(settings).train
    rounds = []

    class EmbedEachEpoch(Callback):
        def on_epoch_end(self, loop, record):
            rounds.append(loop.embed(train))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = _demo_model(settings, epochs=n_rounds, refiner="passthrough",
                            callbacks=[EmbedEachEpoch()])
        model.fit(train)
    np.savez_compressed(
        path, y=train.pids, **{f"round{r}": X.astype(np.float16) for r, X in enumerate(rounds)}
    )
    return rounds, train.pids


def f_score(y, labels):
    return pairwise_precision_recall_fscore(y, labels)[2]


def _methods():
    """name -> (make_refiner(), make_memory(), budget) for every method measured.

    ``budget`` names the method whose questions, round by round, cap this
    one's (the controls are compared at equal budget), or is None.
    """
    from ucal.active import AnswerConstraints, MPPSMerger, SNPSSplitter

    def paper_chain():
        return MPPSMerger(
            clusterer=SNPSSplitter(random_state=0, k_max_rule="floor", cluster_inference=False),
            cluster_inference=False,
        )

    def default_chain(constraints=True, k_max_rule="ceil", confirm_size=8, **mpps):
        return MPPSMerger(
            clusterer=SNPSSplitter(
                clusterer=AnswerConstraints(confirm_size=confirm_size) if constraints else None,
                random_state=0, k_max_rule=k_max_rule, confirm_size=confirm_size,
            ),
            confirm_size=confirm_size,
            **mpps,
        )

    return {
        # the paper as written: exact-pair memory, medoid pairs only, no persistence
        "paper": (paper_chain, lambda: LabelMemory(infer=False), None),
        # ucal 0.1 (before answers persisted): the paper plus transitive inference
        "today": (paper_chain, LabelMemory, None),
        "default": (default_chain, LabelMemory, None),
        # what each part of the default brings
        "default, answers not applied": (
            lambda: default_chain(constraints=False), LabelMemory, None
        ),
        "default, k_max rounded down": (
            lambda: default_chain(k_max_rule="floor"), LabelMemory, None
        ),
        "default, no confirmation": (
            lambda: default_chain(confirm_size=None), LabelMemory, None
        ),
        # controls at the default's budget: which pairs MPPS asks about
        "nearest pairs": (lambda: default_chain(selection="nearest"), LabelMemory, "default"),
        "random pairs": (
            lambda: default_chain(selection="random", random_state=0), LabelMemory, "default"
        ),
    }


def run(rounds, y, methods, error_rate, seed, clusterer_params):
    """One seed: base clustering per round, then each method with its own memory."""
    base_labels = [SelfPacedDBSCAN(**clusterer_params).fit(X).labels_ for X in rounds]
    base_f = [f_score(y, labels) for labels in base_labels]
    out = {"base_f": base_f}
    for name, (make_refiner, make_memory, budget) in methods.items():
        memory = make_memory()
        oracle = LabelOracle(y)
        if error_rate:
            oracle = NoisyOracle(oracle, error_rate, random_state=seed)
        fs, asked, settled, seconds = [], [], [], []
        limits = out[budget]["asked"] if budget else [None] * len(rounds)
        for X, labels, limit in zip(rounds, base_labels, limits):
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", BudgetExhaustedWarning)
                refiner = make_refiner().fit(
                    X, labels=labels, oracle=oracle, label_memory=memory, query_limit=limit
                )
            seconds.append(time.perf_counter() - start)
            fs.append(f_score(y, refiner.labels_))
            asked.append(int(refiner.n_queries_))
            settled.append(int(refiner.n_inferred_))
        out[name] = {"f": fs, "asked": asked, "settled": settled, "seconds": seconds}
    return out


def summarise(runs, names):
    """Per method: mean F gain over rounds (mean and spread over seeds), questions."""
    rows = []
    for name in ["base"] + names:
        gains, worst, means, asked, settled = [], [], [], [], []
        for result in runs:
            base = np.asarray(result["base_f"])
            f = base if name == "base" else np.asarray(result[name]["f"])
            means.append(f.mean())
            gains.append((f - base).mean())
            worst.append((f - base).min())
            asked.append(0 if name == "base" else sum(result[name]["asked"]))
            settled.append(0 if name == "base" else sum(result[name]["settled"]))
        rows.append({
            "method": name,
            "mean_f": float(np.mean(means)),
            "gain": float(np.mean(gains)),
            "gain_sd": float(np.std(gains, ddof=1)) if len(gains) > 1 else 0.0,
            "worst_round_gain": float(np.min(worst)),
            "asked": float(np.mean(asked)),
            "settled": float(np.mean(settled)),
        })
    return rows


def _table(rows, error_rate):
    lines = [
        f"**Annotator: {'clean' if not error_rate else f'{100 * error_rate:.0f} % of answers flipped'}**",
        "",
        "| method | mean F | gain over base (mean ± sd over seeds) | worst round | questions | settled by memory |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['mean_f']:.3f} | {r['gain']:+.4f} ± {r['gain_sd']:.4f} | "
            f"{r['worst_round_gain']:+.4f} | {r['asked']:.0f} | {r['settled']:.0f} |"
        )
    return "\n".join(lines)


def _environment(args):
    import sklearn

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "processor": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "n_samples": args.n,
        "n_identities": args.ids,
        "dim": args.dim,
        "rounds": args.rounds,
        "seeds": args.seeds,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("synthetic", "trained"), default="synthetic",
                        help="synthetic: Gaussian identities that drift (base F about 0.8, as "
                        "in the issue); trained: embeddings of a network after each of its "
                        "training epochs (real drift, poor clusters; computed once, cached)")
    parser.add_argument("--n", type=int, default=6300)
    parser.add_argument("--ids", type=int, default=None,
                        help="identities (default: 240 trained, 420 synthetic)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.05])
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--quick", action="store_true", help="2,000 samples, 3 rounds, 1 seed")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.source, args.n, args.ids, args.rounds, args.seeds, args.no_save = (
            "synthetic", 2000, 140, 3, [0], True
        )
    if args.ids is None:
        args.ids = 240 if args.source == "trained" else 420
    methods = _methods()
    if args.methods:
        methods = {k: methods[k] for k in args.methods}
    clusterer_params = {"k1": 20, "k2": 6, "k1_rule": "fixed"}  # as measured before k1_rule
    report = {"environment": _environment(args), "clusterer": clusterer_params, "results": {}}
    tables = []
    for error_rate in args.noise:
        runs = []
        for seed in args.seeds:
            if args.source == "trained":
                rounds, y = trained_rounds(args.ids, args.rounds, seed)
            else:
                rounds, y = make_rounds(args.n, args.ids, args.dim, args.rounds, seed)
            runs.append(run(rounds, y, methods, error_rate, seed, clusterer_params))
        rows = summarise(runs, list(methods))
        report["results"][str(error_rate)] = {"runs": runs, "summary": rows}
        table = _table(rows, error_rate)
        tables.append(table)
        print(table + "\n", flush=True)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        stem = "drift" if args.source == "synthetic" else "drift_trained"
        (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=1))
        env = report["environment"]
        data = (
            f"synthetic embeddings, N = {args.n} ({args.ids} identities), d = {args.dim}"
            if args.source == "synthetic" else
            f"the training-set embeddings of a small CNN after each of its first {args.rounds} "
            f"epochs of unsupervised training on make_persons ({args.ids} identities)"
        )
        header = (
            "# Refinement across drifting rounds\n\n"
            f"Data: {data}; {args.rounds} rounds, seeds {args.seeds}; base clustering "
            "SelfPacedDBSCAN(k1=20, k2=6) per round; one memory per method for all rounds. "
            "`paper`: the paper's SNPS+MPPS with its exact-pair memory; `today`: ucal 0.1 "
            "(the same with transitive inference); `default`: answers applied every round "
            "(AnswerConstraints), votes, confirmations, SNPS k_max rounded up; controls: the "
            "default with MPPS asking random cluster pairs or each cluster's nearest centroid "
            "only, capped round by round at the default's questions. Gain: mean over rounds of "
            f"(refined F - base F). {env['processor']}, {env['date']}.\n\n"
        )
        (RESULTS / f"{stem}.md").write_text(header + "\n\n".join(tables) + "\n")


if __name__ == "__main__":
    main()
