"""Time and peak memory of the clustering step against N.

The clustering step of every UCAL epoch is the k-reciprocal Jaccard distance
plus self-paced DBSCAN (three DBSCAN runs). This script measures it on
realistic clustered features at Market-1501 (N = 12,936), MSMT17 (N = 32,621)
and N = 100,000 sizes, d = 2,048, each measurement in a fresh process so that
its peak resident memory is its own. Where it fits in memory, a dense
SpCL-style reference (N x N float32 matrices, as SpCL builds them) runs in
the same session for comparison.

Usage::

    python benchmarks/bench_clustering.py                # all sizes
    python benchmarks/bench_clustering.py --sizes 12936  # one size
    python benchmarks/bench_clustering.py --quick        # small sizes only

Results are printed as a table and saved to
``benchmarks/results/clustering.{json,md}``.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 0
DIM = 2048


def make_features(n, dim=DIM, seed=SEED):
    """Re-id-like embeddings: identities of 2 to 60 images (mean ~17, as on
    Market-1501), a per-camera shift shared by all identities, and noise, so
    that clusters are neither trivial nor hopeless."""
    rng = np.random.default_rng(seed)
    sizes = np.clip(rng.gamma(2.0, 8.5, size=n // 8).astype(int), 2, 60)
    ids = np.repeat(np.arange(sizes.size), sizes)[:n]
    ids = np.concatenate([ids, rng.integers(0, sizes.size, max(0, n - ids.size))])
    centers = rng.standard_normal((sizes.size, dim), dtype=np.float32)
    cams = rng.integers(0, 6, size=n)
    cam_shift = 0.6 * rng.standard_normal((6, dim), dtype=np.float32)
    X = centers[ids] + cam_shift[cams]
    X += 0.9 * rng.standard_normal((n, dim), dtype=np.float32)
    X = np.maximum(X, 0)  # ReLU-like, as pooled CNN features are
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, ids


def _peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _load_features(n):
    """Features cached on disk so that a measuring process never pays for
    generating them: its peak memory is the features plus the method."""
    cache = Path(tempfile.gettempdir()) / f"ucal_bench_features_{n}_{DIM}_{SEED}.npz"
    if not cache.exists():
        X, ids = make_features(n)
        np.savez(cache, X=X, ids=ids)
    with np.load(cache) as data:
        return data["X"], data["ids"]


def run_ucal(n):
    from ucal import SelfPacedDBSCAN
    from ucal.metrics import pairwise_precision_recall_fscore

    X, ids = _load_features(n)
    base = _peak_mb()
    t0 = time.perf_counter()
    est = SelfPacedDBSCAN(k1_rule="fixed").fit(X)  # SpCL's step, as the reference
    seconds = time.perf_counter() - t0
    p, r, f = pairwise_precision_recall_fscore(ids, est.labels_)
    return {
        "method": "ucal (sparse)",
        "n": n,
        "seconds": seconds,
        "peak_mb": _peak_mb(),
        "features_mb": X.nbytes / 2**20,
        "peak_before_mb": base,  # interpreter + features
        "n_clusters": est.n_clusters_,
        "clustered_fraction": float((est.labels_ >= 0).mean()),
        "pairwise_f": f,
    }


def run_dense(n):
    """SpCL's procedure with dense N x N float32 matrices (rank, V, Jaccard)."""
    from sklearn.cluster import DBSCAN

    X, _ = _load_features(n)
    t0 = time.perf_counter()
    k1, k2 = 30, 6
    sim = X @ X.T
    np.fill_diagonal(sim, np.inf)
    rank = np.argpartition(-sim, k1, axis=1)[:, :k1]
    order = np.argsort(-np.take_along_axis(sim, rank, axis=1), axis=1)
    rank = np.take_along_axis(rank, order, axis=1)
    np.fill_diagonal(sim, 1.0)
    half = int(np.around(k1 / 2)) + 1

    def recip(i, width):
        fwd = rank[i, :width]
        return fwd[np.where(rank[fwd, :width] == i)[0]]

    V = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        r = recip(i, k1)
        exp = r
        for c in r:
            rc = recip(c, half)
            if len(np.intersect1d(rc, r)) > 2 / 3 * len(rc):
                exp = np.append(exp, rc)
        exp = np.unique(exp)
        w = np.exp(-(2 - 2 * sim[i, exp]))
        V[i, exp] = w / w.sum()
    del sim
    V = np.stack([V[rank[i, :k2]].mean(axis=0) for i in range(n)])
    inv = [np.flatnonzero(V[:, k]) for k in range(n)]
    jac = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        tmin = np.zeros(n, dtype=np.float32)
        for k in np.flatnonzero(V[i]):
            tmin[inv[k]] += np.minimum(V[i, k], V[inv[k], k])
        jac[i] = 1 - tmin / (2 - tmin)
    jac[jac < 0] = 0.0  # rounding, as SpCL clips it
    del V
    for eps in (0.58, 0.6, 0.62):
        DBSCAN(eps=eps, min_samples=4, metric="precomputed", n_jobs=-1).fit(jac)
    return {"method": "dense SpCL-style", "n": n, "seconds": time.perf_counter() - t0, "peak_mb": _peak_mb()}


def _child(kind, n):
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(n)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        method = "ucal (sparse)" if kind == "ucal" else "dense SpCL-style"
        return {"method": method, "n": n, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _environment():
    import scipy
    import sklearn

    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.uname().processor,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "seed": SEED,
        "dim": DIM,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


TARGETS = {12936: (5.0, 1024.0), 32621: (20.0, 1536.0), 100000: (180.0, 6144.0)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[12936, 32621, 100000])
    parser.add_argument("--dense-max", type=int, default=12936, help="largest N for the dense reference")
    parser.add_argument("--repeats", type=int, default=3, help="runs per size (median reported)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, n = args.child[0], int(args.child[1])
        result = run_ucal(n) if kind == "ucal" else run_dense(n)
        print(json.dumps(result))
        return
    sizes = [2000, 5000] if args.quick else args.sizes
    rows = []
    for n in sizes:
        _load_features(n)  # generate once, outside the measurements
        repeats = args.repeats if n < 100000 else 1
        runs = [_child("ucal", n) for _ in range(repeats)]
        ok = [r for r in runs if "error" not in r]
        if not ok:
            rows.append(runs[0])
            continue
        row = dict(ok[0])
        row["seconds_all"] = [r["seconds"] for r in ok]
        row["seconds"] = float(np.median(row["seconds_all"]))
        row["peak_mb"] = float(np.median([r["peak_mb"] for r in ok]))
        if n in TARGETS:
            row["target_seconds"], row["target_peak_mb"] = TARGETS[n]
        rows.append(row)
        if n <= args.dense_max:
            dense = _child("dense", n)
            rows.append(dense)
            if "error" not in dense:
                row["speedup_vs_dense"] = dense["seconds"] / row["seconds"]
                row["memory_ratio_vs_dense"] = dense["peak_mb"] / row["peak_mb"]
        print(json.dumps(rows[-1] if n > args.dense_max else row), flush=True)
    env = _environment()
    # Keep the rows of sizes not measured in this run (a partial re-run).
    saved = RESULTS / "clustering.json"
    if saved.exists():
        measured = {(r["method"], r["n"]) for r in rows}
        old = json.loads(saved.read_text()).get("rows", [])
        rows = [r for r in old if (r["method"], r["n"]) not in measured] + rows
        rows.sort(key=lambda r: (r["n"], r["method"] != "ucal (sparse)"))
    lines = [
        "| method | N | seconds (median) | peak MB | target | clusters | clustered | pairwise F | vs dense |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['n']} | failed: {r['error']} | | | | | | |")
            continue
        target = f"{r['target_seconds']:.0f} s / {r['target_peak_mb']:.0f} MB" if "target_seconds" in r else ""
        vs = (
            f"{r['speedup_vs_dense']:.1f}x faster, {r['memory_ratio_vs_dense']:.1f}x less memory"
            if "speedup_vs_dense" in r
            else ""
        )
        lines.append(
            f"| {r['method']} | {r['n']} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | {target} | "
            f"{r.get('n_clusters', '')} | {r.get('clustered_fraction', float('nan')):.2f} | "
            f"{r.get('pairwise_f', float('nan')):.3f} | {vs} |"
        )
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "clustering.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
    header = (
        "# Clustering step: Jaccard distance + self-paced DBSCAN\n\n"
        f"d = {DIM}, seed {SEED}, {env['cpus']} CPUs ({env['processor']}), numpy {env['numpy']}, "
        f"scipy {env['scipy']}, scikit-learn {env['scikit-learn']}, {env['date']}.\n"
        "Peak MB is the peak resident memory of the whole measuring process "
        "(features included). Each ucal size is the median of the runs listed in the JSON.\n\n"
    )
    (RESULTS / "clustering.md").write_text(header + table + "\n")


if __name__ == "__main__":
    main()
