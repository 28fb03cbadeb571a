"""The clustering step at scale: neighbour-search backends, exact against approximate.

Three measurements, each in a fresh process so that its peak resident memory
is its own (features are generated once, block by block, into ``.npy`` files
in the temporary folder and memory-mapped):

* ``--part floor`` -- Market-1501 size (N = 12,936, d = 2,048): the whole
  step (``SelfPacedDBSCAN``, SpCL's fixed k1, exact NumPy search) against one
  full similarity product ``X @ X.T`` timed in the same process, with the
  split (search, Jaccard, DBSCAN). On the clustering benchmark's features and
  on "wide" features (hub images that every member of a large group has
  among its nearest, about 1,000 stored Jaccard entries per row).
* ``--part compare`` -- N = 100,000: exact search against faiss's inverted
  file (``IVFSearch``, fast-scan codes) at several ``n_probe``: recall at k1 of the neighbour lists, recall of the
  k-reciprocal pairs (the ones the Jaccard distance is built from), pairwise
  F and ARI of the final labels against the exact labels, and the speed-up.
  On two kinds of features: ``structured`` (identities in a 64-dimensional
  latent space mapped to 2,048 dimensions, as the embeddings of a trained
  network have a low intrinsic dimension) and ``isotropic`` (the clustering
  benchmark's features: identity centres and noise in all 2,048 dimensions).
* ``--part backends`` -- every engine side by side on the same features, one
  process per row, compared with exact NumPy search as in ``compare``: faiss
  flat (exact), faiss HNSW, faiss's inverted file (``IVFSearch``) at 32, 96
  and 256 probes with flat, 8-bit, PQ and fast-scan codes. ``--n`` sets the
  size (12,936: Market-1501; 100,000); results ``search_backends_<n>``.
  (ucal's own NumPy inverted file was measured here too, and removed: the
  ``search_backends_*`` results before 2026-12-08 have its rows.)
* ``--part million`` -- N = 1,000,000 at d = 2,048 (8 GB of float32
  features), ``search="auto"`` (faiss's inverted file where faiss is
  installed, else exact search) or the searches
  named by ``--searches``: time, split (with the search's own phases) and
  peak memory above the features.

Usage::

    python benchmarks/bench_search.py --part floor
    python benchmarks/bench_search.py --part compare
    python benchmarks/bench_search.py --part backends --n 12936   # 2 min
    python benchmarks/bench_search.py --part backends              # about 25 min
    python benchmarks/bench_search.py --part million      # about 20 min, 14 GB

Results: ``benchmarks/results/search_{floor,compare,million}.{json,md}``.
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

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DIM = 2048
K1 = 30


def _reset_peak():
    """Start the peak resident memory afresh: a child created by fork inherits
    its parent's peak (Linux keeps it across exec)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _identities(n, rng):
    """Identity of each sample: groups of 2 to 60 images (mean about 17, as Market-1501)."""
    sizes = np.clip(rng.gamma(2.0, 8.5, size=max(1, n // 8)).astype(int), 2, 60)
    ids = np.repeat(np.arange(sizes.size), sizes)[:n]
    return np.concatenate([ids, rng.integers(0, sizes.size, max(0, n - ids.size))])


def structured_features(n, out, seed=0, latent=64, block=65536):
    """Identities in a ``latent``-dimensional space, six camera shifts, per-image
    noise, mapped to DIM dimensions by a random ReLU layer plus a little noise
    in every dimension. Written block by block into ``out`` (a .npy path)."""
    rng = np.random.default_rng(seed)
    ids = _identities(n, rng)
    z = rng.standard_normal((ids.max() + 1, latent), dtype=np.float32)
    cams = rng.integers(0, 6, size=n)
    cam = 0.5 * rng.standard_normal((6, latent), dtype=np.float32)
    W = rng.standard_normal((latent, DIM), dtype=np.float32) / np.sqrt(latent)
    X = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(n, DIM))
    for a in range(0, n, block):
        b = min(a + block, n)
        h = z[ids[a:b]] + cam[cams[a:b]] + 0.45 * rng.standard_normal((b - a, latent), dtype=np.float32)
        x = np.maximum(h @ W, 0) + 0.05 * rng.standard_normal((b - a, DIM), dtype=np.float32)
        X[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    X.flush()
    return ids


def isotropic_features(n, out, seed=0):
    """The clustering benchmark's features (bench_clustering.make_features)."""
    sys.path.insert(0, str(HERE))
    from bench_clustering import make_features

    X, ids = make_features(n, DIM, seed)
    np.save(out, X)
    return ids


def wide_features(n, out, seed=0, group=1000, hubs=40):
    """Groups of ``group`` images around a centre; ``hubs`` of them per group are
    much nearer to it (sharper images), so every member's nearest are the hubs
    and each row stores about ``group`` Jaccard entries."""
    rng = np.random.default_rng(seed)
    g = np.arange(n) % max(1, n // group)
    centres = rng.standard_normal((g.max() + 1, DIM), dtype=np.float32)
    scale = np.where(rng.random(n) < hubs / group, 0.3, 1.0).astype(np.float32)
    X = centres[g] + scale[:, None] * rng.standard_normal((n, DIM), dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    np.save(out, X)
    return g


# --part backends: every engine side by side (issue 27).
BACKENDS = ["faiss", "hnsw", "fivf32", "fivf96", "fivf256", "fivf256-r2", "fivf96-sq8", "fivf96-pq-r2",
            "fivf256-fastscan-r1.5"]

GENERATORS = {"structured": structured_features, "isotropic": isotropic_features, "wide": wide_features}


def features(kind, n):
    """Path of the cached features and their identities (generated once)."""
    base = Path(tempfile.gettempdir()) / f"ucal_search_{kind}_{n}_{DIM}"
    path, ids_path = Path(f"{base}.npy"), Path(f"{base}_ids.npy")
    if not (path.exists() and ids_path.exists()):
        if os.environ.get("UCAL_BENCH_CHILD"):
            ids = GENERATORS[kind](n, str(path))
            np.save(ids_path, ids)
        else:  # in a process of its own: the measuring parent stays small
            _child("gen", kind, n)
    return path, ids_path


def _search(spec):
    """A search from its short name: ``numpy`` / ``faiss`` (exact), ``hnsw``,
    ``fivf96`` (faiss's inverted file, 96 probes, flat codes, no extra
    candidates rescored), ``fivf96-sq8-r2`` (faiss's, 8-bit codes, 2 candidates per
    neighbour rescored), ``fivf256-fastscan-r1.5-s50000`` (4-bit fast-scan
    codes, lists trained on 50,000 rows; ``-i3``: 3 k-means iterations), ``auto``."""
    from ucal.cluster import HNSWSearch, IVFSearch

    if spec.startswith("fivf"):
        probe, *rest = spec[4:].split("-")
        sizes = [r for r in rest if r[0] == "s" and r[1:].isdigit()]  # not "sq8"
        iters = [r for r in rest if r[0] == "i" and r[1:].isdigit()]
        refines = [r for r in rest if r[0] == "r"]
        kw = {"encoding": next((r for r in rest if r not in sizes + iters + refines), "flat"),
              "refine": 1.0}
        kw.update({"refine": float(r[1:]) for r in refines})
        kw.update({"sample_size": int(r[1:]) for r in sizes})
        kw.update({"n_iter": int(r[1:]) for r in iters})
        return IVFSearch(n_probe=int(probe), random_state=0, **kw)
    if spec == "hnsw":
        return HNSWSearch()
    return spec


# --------------------------------------------------------------------------- children


def child_fit(kind, n, spec, save):
    """Fit SelfPacedDBSCAN once; report time, split and peak memory."""
    from ucal import SelfPacedDBSCAN
    from ucal.cluster._search import resolve_search

    _reset_peak()
    path, _ = features(kind, n)
    X = np.load(path, mmap_mode="r")
    before = _peak_mb()
    search = resolve_search(_search(spec), n)
    # Keep the neighbour lists the step searched (one search, not a second
    # one), only where they are saved: the copy would count in the peak.
    found = {}
    search_rows = search._search_rows

    def recording(rows, k):
        indices, sims = search_rows(rows, k)
        found["knn"] = indices[:, :K1].copy()
        return indices, sims

    if save:
        search._search_rows = recording
    phases = _log_phases()
    _peaks_after_phases(phases)
    est = SelfPacedDBSCAN(k1_rule="fixed", search=search).fit(X)
    out = {
        "phases": phases,
        "kind": kind, "n": n, "search": spec, "resolved": " ".join(repr(est.search_).split()),
        "timings": est.timings_, "seconds": est.timings_["total"],
        "peak_mb": _peak_mb(), "peak_before_mb": before,
        "features_mb": X.nbytes / 2**20, "n_clusters": est.n_clusters_,
        "clustered_fraction": float((est.labels_ >= 0).mean()),
    }
    if save:
        np.save(f"{save}_labels.npy", est.labels_)
        np.save(f"{save}_knn.npy", found["knn"])
    return out


def _peaks_after_phases(phases):
    """Note the peak resident memory after each phase of the step (the peak
    only grows, so the first phase that raises it is the one to shrink)."""
    from ucal.cluster import _jaccard, _search, _self_paced

    def watched(module, name):
        inner = getattr(module, name)

        def call(*args, **kwargs):
            started = time.perf_counter()
            out = inner(*args, **kwargs)
            phases.append(f"{name}: {time.perf_counter() - started:.1f} s, peak so far {_peak_mb():.0f} MB")
            return out

        setattr(module, name, call)

    for module, name in ((_search, "search_index"), (_search, "rescore"),
                         (_jaccard, "_expanded_sets"), (_jaccard, "_edge_distances"),
                         (_jaccard, "_upper_distances"), (_jaccard, "_symmetric_csr"),
                         (_self_paced, "sparse_dbscan"), (_self_paced, "cluster_centers")):
        watched(module, name)


def _log_phases():
    """Log the step's phases to stderr as they end (a long run shows where it
    is) and collect the IVF search's phase lines for the results."""
    import logging

    phases = []

    class Collect(logging.Handler):
        def emit(self, record):
            if record.name.endswith("_ivf") or record.getMessage().startswith("faiss IVF"):
                # the peak so far tells which phase set it
                phases.append(f"{record.getMessage()} (peak so far {_peak_mb():.0f} MB)")

    log = logging.getLogger("ucal.cluster")
    log.setLevel(logging.INFO)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    log.addHandler(stream)
    log.addHandler(Collect())
    return phases


def child_floor(kind, n, repeats):
    """The whole step against one X @ X.T, in the same process."""
    from ucal import SelfPacedDBSCAN

    _reset_peak()
    path, _ = features(kind, n)
    X = np.ascontiguousarray(np.load(path))
    rows = []
    for _ in range(repeats):
        t = time.perf_counter()
        S = X @ X.T
        product = time.perf_counter() - t
        del S
        est = SelfPacedDBSCAN(k1_rule="fixed", search="numpy").fit(X)
        rows.append({"product": product, **est.timings_})
    from ucal.cluster import jaccard_distance

    D = jaccard_distance(X, K1, 6, max_distance=0.62, search="numpy")
    return {"kind": kind, "n": n, "runs": rows, "entries_per_row": D.nnz / n}


def _child(*args):
    """Run a measurement in a fresh process; its log goes to a file (``tail -f`` it)."""
    env = {**os.environ, "UCAL_BENCH_CHILD": "1"}
    log = Path(tempfile.gettempdir()) / f"ucal_bench_search_{args[0]}.log"
    print(f"[{time.strftime('%H:%M:%S')}] {' '.join(map(str, args))}: log in {log}",
          file=sys.stderr, flush=True)
    with open(log, "w") as err:
        out = subprocess.run(
            [sys.executable, __file__, "--child", *map(str, args)], stdout=subprocess.PIPE,
            stderr=err, text=True, check=False, env=env,
        )
    if out.returncode != 0:
        return {"error": log.read_text().strip().splitlines()[-3:], "args": list(map(str, args))}
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- parts


def _recip_pairs(knn):
    n = knn.shape[0]
    r = np.repeat(np.arange(n, dtype=np.int64), knn.shape[1])
    c = knn.ravel().astype(np.int64)
    key = r * n + c
    mutual = np.isin(key, c * n + r) & (r < c)
    return np.unique(key[mutual])


def _recall(approx, exact):
    hits = 0
    for a in range(0, exact.shape[0], 10000):
        A, E = np.sort(approx[a:a + 10000], 1), np.sort(exact[a:a + 10000], 1)
        hits += sum(np.intersect1d(x, y, assume_unique=True).size for x, y in zip(A, E))
    return hits / exact.size


def part_compare(args):
    from sklearn.metrics import adjusted_rand_score

    from ucal.metrics import pairwise_precision_recall_fscore as prf
    from ucal.utils import outliers_as_singletons

    rows = []
    tmp = Path(tempfile.gettempdir())
    for kind in args.kinds:
        n = args.n
        _, ids_path = features(kind, n)
        ids = np.load(ids_path)
        cached = tmp / f"ucal_cmp_{kind}_{n}_exact.json"
        if args.reuse_exact and cached.exists():
            exact = json.loads(cached.read_text())  # an earlier run's exact path, same features
            exact["reused"] = True
        else:
            exact = _child("fit", kind, n, "numpy", tmp / f"ucal_cmp_{kind}_{n}_exact")
            if "error" not in exact:
                cached.write_text(json.dumps(exact))
        if "error" in exact:
            rows.append(exact)
            continue
        e_labels = outliers_as_singletons(np.load(tmp / f"ucal_cmp_{kind}_{n}_exact_labels.npy"))
        e_knn = np.load(tmp / f"ucal_cmp_{kind}_{n}_exact_knn.npy")
        e_pairs = _recip_pairs(e_knn)
        exact["pairwise_f_truth"] = prf(ids, e_labels)[2]
        rows.append(exact)
        print(json.dumps(exact), flush=True)
        for spec in args.searches or [f"fivf{p}-fastscan-r1.5" for p in args.probes]:
            r = _child("fit", kind, n, spec, tmp / f"ucal_cmp_{kind}_{n}_ivf")
            if "error" not in r:
                labels = outliers_as_singletons(np.load(tmp / f"ucal_cmp_{kind}_{n}_ivf_labels.npy"))
                knn = np.load(tmp / f"ucal_cmp_{kind}_{n}_ivf_knn.npy")
                r["recall_at_k1"] = _recall(knn, e_knn)
                r["reciprocal_recall"] = np.intersect1d(_recip_pairs(knn), e_pairs).size / e_pairs.size
                r["pairwise_f_vs_exact"] = prf(e_labels, labels)[2]
                r["ari_vs_exact"] = adjusted_rand_score(e_labels, labels)
                r["pairwise_f_truth"] = prf(ids, labels)[2]
                r["speedup_total"] = exact["seconds"] / r["seconds"]
                r["speedup_search"] = exact["timings"]["search"] / r["timings"]["search"]
            rows.append(r)
            print(json.dumps(r), flush=True)
    lines = [
        "| features | search | total s | search s | Jaccard s | DBSCAN s | speed-up (total / search) "
        "| recall@k1 | k-reciprocal recall | F vs exact | ARI vs exact | F vs truth | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['args']} | failed: {r['error']} |||||||||||")
            continue
        t = r["timings"]
        lines.append(
            f"| {r['kind']} | {r['search']} | {t['total']:.1f} | {t['search']:.1f} | {t['jaccard']:.1f} | "
            f"{t['dbscan']:.1f} | "
            + (f"{r['speedup_total']:.1f}x / {r['speedup_search']:.1f}x" if "speedup_total" in r else "1")
            + f" | {r.get('recall_at_k1', 1.0):.3f} | {r.get('reciprocal_recall', 1.0):.3f} | "
            f"{r.get('pairwise_f_vs_exact', 1.0):.3f} | {r.get('ari_vs_exact', 1.0):.3f} | "
            f"{r['pairwise_f_truth']:.3f} | {r['peak_mb']:.0f} |"
        )
    _save(args.name or "search_compare", rows, lines, (
        f"N = {args.n}, d = {DIM}, k1 = {K1} (SpCL's fixed k1), one run per row. "
        "Recall@k1: share of each exact k1-neighbour list found. k-reciprocal recall: "
        "share of the exact mutual k1-neighbour pairs (what the Jaccard distance is built "
        "from) that are mutual in the approximate lists. F and ARI vs exact: pairwise F "
        "and adjusted Rand index of the labels against the exact path's labels (outliers "
        "as singletons). Targets: recall@k1 >= 0.95, F within 0.01 of exact."
    ))


def part_million(args):
    rows = []
    for kind in args.kinds:
        for spec in args.searches or ["auto"]:
            path, _ = features(kind, args.n)
            r = _child("fit", kind, args.n, spec, "")
            if "error" not in r:
                r["extra_mb"] = r["peak_mb"] - r["features_mb"]
            rows.append(r)
            print(json.dumps(r), flush=True)
    lines = [
        "| features | N | search | total s | search s | Jaccard s | DBSCAN s | features MB | peak MB | peak above features MB | clusters |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['args']} | failed: {r['error']} ||||||||||")
            continue
        t = r["timings"]
        lines.append(
            f"| {r['kind']} | {r['n']} | {r['resolved']} | {t['total']:.0f} | {t['search']:.0f} | "
            f"{t['jaccard']:.0f} | {t['dbscan']:.0f} | {r['features_mb']:.0f} | {r['peak_mb']:.0f} | "
            f"{r['extra_mb']:.0f} | {r['n_clusters']} |"
        )
    phases = [f"- {p}" for r in rows for p in r.get("phases", [])]
    _save(args.name or "search_million", rows, lines + ["", "The search's phases:", ""] + phases, (
        "Structured features memory-mapped from a float32 .npy file (their pages count in "
        "the peak resident memory once read); the search column names the engine each "
        "row used (search=\"auto\" resolves by what is installed). Targets: the whole "
        "step within 8 min, peak within 1.5 times the features."
    ))


def part_floor(args):
    rows = []
    for kind, n in (("isotropic", 12936), ("wide", 12936)):
        r = _child("floor", kind, n, args.repeats)
        if "error" not in r:
            runs = r["runs"]
            med = {key: float(np.median([x[key] for x in runs])) for key in runs[0]}
            r["median"] = med
            r["ratio"] = float(np.median([x["total"] / x["product"] for x in runs]))
        rows.append(r)
        print(json.dumps(r), flush=True)
    lines = [
        "| features | N | Jaccard entries / row | X Xᵀ s | whole step s | search s | Jaccard s | DBSCAN s | step / X Xᵀ (median of runs) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['args']} | failed: {r['error']} ||||||||")
            continue
        m = r["median"]
        lines.append(
            f"| {r['kind']} | {r['n']} | {r['entries_per_row']:.0f} | {m['product']:.2f} | {m['total']:.2f} | "
            f"{m['search']:.2f} | {m['jaccard']:.2f} | {m['dbscan']:.2f} | {r['ratio']:.2f} |"
        )
    _save(args.name or "search_floor", rows, lines, (
        f"Exact NumPy search, SpCL's fixed k1 = {K1}; each run times one full float32 "
        "X @ X.T and then the whole step in the same process; medians of "
        f"{args.repeats} runs. Target: step / X Xᵀ <= 1.5."
    ))


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.uname().processor


def _compiled():
    """numba's version where the clustering step's compiled loops run, else None."""
    from ucal.cluster._compiled import compiled_min_sums

    if compiled_min_sums(10**12) is None:  # at the sizes benchmarked here
        return None
    import numba

    return numba.__version__


def _environment():
    import scipy
    import sklearn

    return {
        "machine": platform.machine(), "processor": platform.processor() or _cpu_model(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
        "scipy": scipy.__version__, "scikit-learn": sklearn.__version__, "dim": DIM,
        "numba": _compiled(), "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def _save(name, rows, lines, note):
    env = _environment()
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
    header = (
        f"# {name.replace('_', ': ')}\n\n{env['cpus']} CPUs ({env['processor']}), numpy {env['numpy']}, "
        f"scipy {env['scipy']}, scikit-learn {env['scikit-learn']}, "
        + (f"numba {env['numba']} (compiled top-k merges, min-sums and DBSCAN)" if env["numba"]
           else "no numba loops (NumPy top-k merges, min-sums and DBSCAN)")
        + f", {env['date']}.\n{note}\n\n"
    )
    (RESULTS / f"{name}.md").write_text(header + table + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["floor", "compare", "backends", "million"], default="floor")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--kinds", nargs="*", default=None)
    parser.add_argument("--probes", type=int, nargs="*", default=[96, 256])
    parser.add_argument("--searches", nargs="*", default=None,
                        help="searches compared with exact NumPy (names: see _search); "
                        "--part backends has its own list")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default=None,
                        help="save the results under this name instead of the part's own")
    parser.add_argument("--reuse-exact", action="store_true",
                        help="reuse the exact path's result of an earlier --part compare run")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, rest = args.child[0], args.child[1:]
        if what == "gen":
            result = {"features": str(features(rest[0], int(rest[1]))[0])}
        elif what == "fit":
            result = child_fit(rest[0], int(rest[1]), rest[2], rest[3] if len(rest) > 3 else "")
        else:
            result = child_floor(rest[0], int(rest[1]), int(rest[2]))
        print(json.dumps(result))
        return
    if args.part == "backends":
        args.n = args.n or 100_000
        args.kinds = args.kinds or ["structured"]
        args.searches = args.searches or BACKENDS
        args.name = args.name or f"search_backends_{args.n}"
        part_compare(args)
    elif args.part == "compare":
        args.n = args.n or 100_000
        args.kinds = args.kinds or ["structured", "isotropic"]
        part_compare(args)
    elif args.part == "million":
        args.n = args.n or 1_000_000
        args.kinds = args.kinds or ["structured"]
        part_million(args)
    else:
        part_floor(args)


if __name__ == "__main__":
    main()
