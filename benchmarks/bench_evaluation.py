"""Time and peak memory of re-id evaluation and re-ranking.

Compares ``ucal.metrics.evaluate_reid`` / ``evaluate_features`` (blocks of
queries, ranks of the true matches only) with two per-query loops:

* "numpy loop": a plain per-query loop, one stable argsort per query row and
  vectorised AP / INP per query;
* "torchreid loop": torchreid's ``eval_market1501`` in pure Python (argsort
  of the rows up front, the per-query precision list comprehension), with a
  stable argsort so that ties order like ours, plus fast-reid's mINP.

Sizes: Market-1501 test (3,368 queries x 15,913 gallery, a float32 distance
matrix given) and MSMT17 test (11,659 x 82,161, from 256-d float32 features
through ``evaluate_features``; its 3.8 GB distance matrix is never built).
Loops too slow for the full size run on the first queries and are
extrapolated linearly in the number of queries (marked as such); at MSMT17
size they are timed on a precomputed distance block of those queries (the
distance computation, which ``evaluate_features`` includes, is not counted
for them). Each measurement runs in a fresh process: timings are the median
of the repeats, memory is the tracemalloc peak of one extra call (NumPy
reports its buffers to tracemalloc) and the process's maximum RSS.

Re-ranking: ``evaluate_features(..., rerank=True)`` at Market-1501 size, and
``rerank`` against a dense torchreid-style ``re_ranking`` where the dense one
is affordable.

Usage::

    python benchmarks/bench_evaluation.py           # everything (~4 min)
    python benchmarks/bench_evaluation.py --quick   # smaller sizes, a smoke run

Results are printed as a table and saved to
``benchmarks/results/evaluation.{json,md}``.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SEED = 0

SIZES = {
    # name: (n_query, n_gallery, n_ids, n_cams, dim)
    "market": (3368, 15913, 750, 6, 256),
    "msmt": (11659, 82161, 3060, 15, 256),
    "rerank-small": (400, 2000, 150, 6, 256),
}
QUICK_SIZES = {
    "market": (600, 3000, 150, 6, 64),
    "msmt": (1500, 9000, 400, 15, 64),
    "rerank-small": (100, 500, 40, 6, 64),
}


def make_problem(n_query, n_gallery, n_ids, n_cams, dim, seed=SEED):
    """Re-id-like embeddings: identity centres, a per-camera shift shared by
    all identities, noise and a ReLU, L2-normalised; 15% of the gallery are
    distractors (pid 0) and every query identity is in the gallery."""
    rng = np.random.default_rng(seed)
    n_distractors = int(0.15 * n_gallery)
    g_pids = np.concatenate(
        [
            np.arange(1, n_ids + 1),
            rng.integers(1, n_ids + 1, n_gallery - n_ids - n_distractors),
            np.zeros(n_distractors, dtype=np.int64),
        ]
    )
    rng.shuffle(g_pids)
    q_pids = rng.integers(1, n_ids + 1, n_query)
    q_cams = rng.integers(0, n_cams, n_query)
    g_cams = rng.integers(0, n_cams, n_gallery)
    centers = rng.standard_normal((n_ids + 1, dim), dtype=np.float32)
    cam_shift = 0.7 * rng.standard_normal((n_cams, dim), dtype=np.float32)

    def features(pids, cams):
        X = centers[pids] + cam_shift[cams]
        X += 1.0 * rng.standard_normal(X.shape, dtype=np.float32)
        # Each distractor is its own random person.
        X[pids == 0] = rng.standard_normal((int((pids == 0).sum()), dim), dtype=np.float32)
        np.maximum(X, 0, out=X)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        return X

    return features(q_pids, q_cams), features(g_pids, g_cams), q_pids, g_pids, q_cams, g_cams


def cosine_distmat(Q, G):
    return 1.0 - Q @ G.T  # rows are unit vectors


# --- the per-query loops compared against ------------------------------------


def numpy_loop(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """Plain per-query NumPy loop: stable argsort of each row."""
    cmc_hits = np.zeros(max_rank)
    aps, inps = [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        same = g_pids[order] == q_pids[i]
        keep = ~(same & (g_camids[order] == q_camids[i]))
        hits = np.flatnonzero(same[keep])
        if hits.size == 0:
            continue
        if hits[0] < max_rank:
            cmc_hits[hits[0] :] += 1
        aps.append(np.mean(np.arange(1, hits.size + 1) / (hits + 1)))
        inps.append(hits.size / (hits[-1] + 1))
    return {"cmc": cmc_hits / len(aps), "mAP": float(np.mean(aps)), "mINP": float(np.mean(inps))}


def torchreid_loop(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """torchreid's ``eval_market1501`` (pure Python), stable sort, plus mINP."""
    num_q, num_g = distmat.shape
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_AP, all_INP = [], [], []
    num_valid_q = 0.0
    for q_idx in range(num_q):
        q_pid, q_camid = q_pids[q_idx], q_camids[q_idx]
        order = indices[q_idx]
        remove = (g_pids[order] == q_pid) & (g_camids[order] == q_camid)
        keep = np.invert(remove)
        raw_cmc = matches[q_idx][keep]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        num_valid_q += 1.0
        num_rel = raw_cmc.sum()
        tmp_cmc = raw_cmc.cumsum()
        tmp_cmc = [x / (i + 1.0) for i, x in enumerate(tmp_cmc)]
        tmp_cmc = np.asarray(tmp_cmc) * raw_cmc
        all_AP.append(tmp_cmc.sum() / num_rel)
        pos_idx = np.where(raw_cmc == 1)[0]
        all_INP.append(num_rel / (pos_idx.max() + 1.0))
    all_cmc = np.asarray(all_cmc).astype(np.float32).sum(0) / num_valid_q
    return {"cmc": all_cmc, "mAP": float(np.mean(all_AP)), "mINP": float(np.mean(all_INP))}


def dense_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """torchreid-style dense k-reciprocal re-ranking (N x N float32 matrices),
    with a stable argsort."""
    original_dist = np.concatenate(
        [np.concatenate([q_q_dist, q_g_dist], axis=1), np.concatenate([q_g_dist.T, g_g_dist], axis=1)],
        axis=0,
    )
    original_dist = np.power(original_dist, 2).astype(np.float32)
    original_dist = np.transpose(1.0 * original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float32)
    initial_rank = np.argsort(original_dist, kind="stable").astype(np.int32)
    query_num = q_g_dist.shape[0]
    all_num = original_dist.shape[0]
    half = int(np.around(k1 / 2.0)) + 1
    for i in range(all_num):
        forward = initial_rank[i, : k1 + 1]
        backward = initial_rank[forward, : k1 + 1]
        k_reciprocal_index = forward[np.where(backward == i)[0]]
        expansion = k_reciprocal_index
        for candidate in k_reciprocal_index:
            c_forward = initial_rank[candidate, :half]
            c_backward = initial_rank[c_forward, :half]
            c_index = c_forward[np.where(c_backward == candidate)[0]]
            if len(np.intersect1d(c_index, k_reciprocal_index)) > 2.0 / 3 * len(c_index):
                expansion = np.append(expansion, c_index)
        expansion = np.unique(expansion)
        weight = np.exp(-original_dist[i, expansion])
        V[i, expansion] = 1.0 * weight / np.sum(weight)
    original_dist = original_dist[:query_num]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    inv_index = [np.where(V[:, i] != 0)[0] for i in range(all_num)]
    jaccard_dist = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, all_num], dtype=np.float32)
        nonzero = np.where(V[i, :] != 0)[0]
        for j in nonzero:
            images = inv_index[j]
            temp_min[0, images] += np.minimum(V[i, j], V[images, j])
        jaccard_dist[i] = 1 - temp_min / (2.0 - temp_min)
    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]


# --- measurements (each in its own process) ----------------------------------


def _median_time(func, repeats):
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = func()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), times, out


def _traced_peak_mb(func):
    """Peak of the memory NumPy and Python allocate during one call, in MiB,
    the call's duration (under tracing) and its result."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    out = func()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak / 2**20, seconds, out


def _max_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _metrics(result):
    return {
        "mAP": float(result["mAP"]),
        "rank1": float(result["cmc"][0]),
        "mINP": float(result["mINP"]),
    }


def _max_diff(a, b):
    return float(
        max(
            np.max(np.abs(np.asarray(a["cmc"], dtype=np.float64) - b["cmc"])),
            abs(a["mAP"] - b["mAP"]),
            abs(a["mINP"] - b["mINP"]),
        )
    )


def measure(case, size_name, repeats, subset, quick):
    from ucal.metrics import evaluate_features, evaluate_reid, rerank

    sizes = QUICK_SIZES if quick else SIZES
    n_query, n_gallery, n_ids, n_cams, dim = sizes[size_name]
    Q, G, q_pids, g_pids, q_cams, g_cams = make_problem(n_query, n_gallery, n_ids, n_cams, dim)
    labels = (q_pids, g_pids, q_cams, g_cams)
    record = {"case": case, "size": size_name, "n_query": n_query, "n_gallery": n_gallery,
              "dim": dim, "repeats": repeats}

    if case in ("evaluate_reid", "numpy_loop", "torchreid_loop") and size_name == "market":
        distmat = cosine_distmat(Q, G)
        record["input"] = f"float32 distmat ({distmat.nbytes / 2**20:.0f} MiB)"
        n = n_query if subset is None else min(subset, n_query)
        sub = distmat[:n]
        sub_labels = (q_pids[:n], g_pids, q_cams[:n], g_cams)
        if case == "evaluate_reid":
            call = lambda: evaluate_reid(distmat, *labels)  # noqa: E731
        else:
            loop = numpy_loop if case == "numpy_loop" else torchreid_loop
            call = lambda: loop(sub, *sub_labels)  # noqa: E731
        seconds, times, result = _median_time(call, repeats)
        record["traced_peak_mb"] = _traced_peak_mb(call)[0]
        if case != "evaluate_reid":
            reference = evaluate_reid(sub, *sub_labels)
            record["max_abs_diff_vs_ucal"] = _max_diff(result, reference)
    elif size_name == "msmt":
        record["input"] = f"float32 features, d={dim}"
        if case == "evaluate_features":
            call = lambda: evaluate_features(Q, G, *labels)  # noqa: E731
            n = n_query
            seconds, times, result = _median_time(call, repeats)
            record["traced_peak_mb"] = _traced_peak_mb(call)[0]
            # Agreement: the same queries' block of distances, evaluated
            # by evaluate_reid, and the numpy loop, on the first queries.
            m = min(500, n_query)
            block = cosine_distmat(Q[:m], G)
            block_labels = (q_pids[:m], g_pids, q_cams[:m], g_cams)
            first = evaluate_features(Q[:m], G, *block_labels)
            record["max_abs_diff_features_vs_distmat"] = _max_diff(
                first, evaluate_reid(block, *block_labels)
            )
            record["max_abs_diff_vs_numpy_loop"] = _max_diff(
                evaluate_reid(block, *block_labels), numpy_loop(block, *block_labels)
            )
        else:
            n = min(subset, n_query)
            block = cosine_distmat(Q[:n], G)
            block_labels = (q_pids[:n], g_pids, q_cams[:n], g_cams)
            loop = numpy_loop if case == "numpy_loop" else torchreid_loop
            call = lambda: loop(block, *block_labels)  # noqa: E731
            seconds, times, result = _median_time(call, repeats)
            record["traced_peak_mb"] = _traced_peak_mb(call)[0]
            record["max_abs_diff_vs_ucal"] = _max_diff(result, evaluate_reid(block, *block_labels))
    elif case == "rerank_features":
        record["input"] = f"float32 features, d={dim}"
        n = n_query
        call = lambda: evaluate_features(Q, G, *labels, rerank=True)  # noqa: E731
        # Too long to run twice: one call, timed while traced.
        record["traced_peak_mb"], seconds, result = _traced_peak_mb(call)
        times = [seconds]
        record["without_rerank"] = _metrics(evaluate_features(Q, G, *labels))
    elif case in ("rerank", "dense_re_ranking"):
        record["input"] = "float32 q_g, q_q, g_g distance matrices"
        n = n_query
        mats = (cosine_distmat(Q, G), cosine_distmat(Q, Q), cosine_distmat(G, G))
        for m in mats:
            np.maximum(m, 0, out=m)
        func = rerank if case == "rerank" else dense_re_ranking
        call = lambda: func(*mats)  # noqa: E731
        seconds, times, out = _median_time(call, repeats)
        record["traced_peak_mb"] = _traced_peak_mb(call)[0]
        result = evaluate_reid(out, *labels)
        if case == "dense_re_ranking":
            record["max_abs_diff_distances_vs_ucal"] = float(np.abs(out - rerank(*mats)).max())
    else:
        raise ValueError(f"unknown case {case} at size {size_name}")

    record.update(_metrics(result))
    record["n_timed_queries"] = n
    record["seconds"] = seconds
    record["times"] = times
    record["extrapolated"] = n < n_query
    record["seconds_full"] = seconds * n_query / n
    record["max_rss_mb"] = _max_rss_mb()
    return record


# --- driver ------------------------------------------------------------------

PLAN = [
    # (case, size, repeats, subset of queries timed or None)
    ("evaluate_reid", "market", 5, None),
    ("numpy_loop", "market", 3, 1000),
    ("torchreid_loop", "market", 3, 100),
    ("evaluate_features", "msmt", 3, None),
    ("numpy_loop", "msmt", 3, 200),
    ("torchreid_loop", "msmt", 3, 20),
    ("rerank", "rerank-small", 3, None),
    ("dense_re_ranking", "rerank-small", 1, None),
    ("rerank_features", "market", 1, None),
]


def run_case(case, size, repeats, subset, quick):
    cmd = [sys.executable, __file__, "--worker", case, size, str(repeats), str(subset or 0)]
    if quick:
        cmd.append("--quick")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{case} at {size} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_info():
    import scipy
    import sklearn

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gib": round(mem_gb, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "seed": SEED,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def to_markdown(payload):
    lines = [
        "# Re-id evaluation and re-ranking benchmark",
        "",
        f"Generated by `benchmarks/bench_evaluation.py` on {payload['date']}"
        + (" (--quick)" if payload["quick"] else "") + ".",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in payload["machine"].items()) + ".",
        f"Total run {payload['total_seconds']:.0f} s; load average (1, 5, 15 min) at the end "
        f"{payload['load_average_at_end']}.",
        "",
        "Synthetic re-id features (identity centre + camera shift + noise, ReLU, "
        "L2-normalised; 15% gallery distractors), cosine distance, camera-aware "
        "protocol. Times are medians over the repeats, in seconds; 'full' "
        "extrapolates a run on the first queries linearly to all queries. "
        "Memory: tracemalloc peak of one call (allocations during the call, "
        "inputs excluded) and the process's max RSS (inputs included).",
        "",
        "| size | method | input | timed queries | repeats | median s | full s | "
        "traced peak MiB | max RSS MiB | mAP | R1 | mINP | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["records"]:
        diff = next((v for k, v in r.items() if k.startswith("max_abs_diff")), None)
        full = f"{r['seconds_full']:.2f}" + (" (extrap.)" if r["extrapolated"] else "")
        lines.append(
            f"| {r['size']} ({r['n_query']}x{r['n_gallery']}) | {r['case']} | {r['input']} | "
            f"{r['n_timed_queries']} | {r['repeats']} | {r['seconds']:.3f} | {full} | "
            f"{r['traced_peak_mb']:.0f} | {r['max_rss_mb']:.0f} | {r['mAP']:.4f} | "
            f"{r['rank1']:.4f} | {r['mINP']:.4f} | "
            + ("-" if diff is None else f"{diff:.1e}") + " |"
        )
    lines += ["", "## Ratios", ""]
    for line in payload["ratios"]:
        lines.append(f"- {line}")
    lines += ["", "## Notes", ""]
    for line in payload["notes"]:
        lines.append(f"- {line}")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--worker", nargs=4, metavar=("CASE", "SIZE", "REPEATS", "SUBSET"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        case, size, repeats, subset = args.worker
        record = measure(case, size, int(repeats), int(subset) or None, args.quick)
        print(json.dumps(record))
        return

    t_start = time.perf_counter()
    machine = machine_info()
    records = []
    header = (f"{'size':<14}{'method':<19}{'queries':>8}{'median s':>10}{'full s':>10}"
              f"{'peak MiB':>10}{'RSS MiB':>9}{'mAP':>8}{'R1':>8}{'mINP':>8}{'diff':>9}")
    print(header)
    print("-" * len(header))
    for case, size, repeats, subset in PLAN:
        r = run_case(case, size, repeats, subset, args.quick)
        records.append(r)
        diff = next((v for k, v in r.items() if k.startswith("max_abs_diff")), None)
        print(
            f"{size:<14}{case:<19}{r['n_timed_queries']:>8}{r['seconds']:>10.3f}"
            f"{r['seconds_full']:>10.2f}{r['traced_peak_mb']:>10.0f}{r['max_rss_mb']:>9.0f}"
            f"{r['mAP']:>8.4f}{r['rank1']:>8.4f}{r['mINP']:>8.4f}"
            + (f"{'-':>9}" if diff is None else f"{diff:>9.1e}"),
            flush=True,
        )

    def find(case, size):
        return next(r for r in records if r["case"] == case and r["size"] == size)

    ucal_m, ucal_s = find("evaluate_reid", "market"), find("evaluate_features", "msmt")
    ratios = []
    for size, ucal in (("market", ucal_m), ("msmt", ucal_s)):
        for case in ("numpy_loop", "torchreid_loop"):
            other = find(case, size)
            ratios.append(
                f"{size}: evaluate_{'reid' if size == 'market' else 'features'} is "
                f"{other['seconds_full'] / ucal['seconds_full']:.1f}x faster than the {case}"
                + (" (extrapolated)" if other["extrapolated"] else "")
            )
    dense, sparse_rr = find("dense_re_ranking", "rerank-small"), find("rerank", "rerank-small")
    ratios.append(
        f"rerank-small: rerank is {dense['seconds'] / sparse_rr['seconds']:.1f}x faster than the "
        f"dense torchreid-style re_ranking, traced peak {sparse_rr['traced_peak_mb']:.0f} vs "
        f"{dense['traced_peak_mb']:.0f} MiB"
    )
    n_q, n_g = SIZES["msmt"][:2]
    notes = [
        "Loops are timed on a precomputed distance block of their first queries; "
        "evaluate_features times include computing the distances from features.",
        f"A full-matrix evaluation at MSMT17 size would hold the {n_q}x{n_g} float32 distance "
        f"matrix ({n_q * n_g * 4 / 2**30:.1f} GiB) and, for torchreid's loop, its int64 argsort "
        f"({n_q * n_g * 8 / 2**30:.1f} GiB) and int32 match matrix "
        f"({n_q * n_g * 4 / 2**30:.1f} GiB): arithmetic, not measured.",
        "mAP, R1 and mINP of a row are over its timed queries (the first ones for the "
        "extrapolated loops), so they differ from the full-size rows.",
        "The loops use a stable argsort (torchreid's default quicksort orders ties "
        "arbitrarily). 'max abs diff' is the largest difference of CMC, mAP and mINP: for a "
        "loop, from evaluate_reid on the same distances; for evaluate_features, from "
        "evaluate_reid on the float32 distance matrix of its first 500 queries (two roundings "
        "of the same distances; evaluate_reid and the numpy loop differ there by "
        f"{ucal_s['max_abs_diff_vs_numpy_loop']:.1e}); for dense_re_ranking, of the re-ranked "
        "distances from rerank's.",
        "rerank_features: evaluate_features(rerank=True) from features (k1=20, k2=6, "
        "lambda=0.3), one run; its memory is dominated by the sparse Jaccard engine "
        "(ucal.cluster._jaccard), which stores all N x N pairs sharing support; it "
        "is timed while traced (one call).",
        "The machine's 2 cores are shared with other jobs: see the load averages; "
        "ratios compare runs made minutes apart under that shared load.",
    ]
    payload = {
        "benchmark": "evaluation",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "quick": args.quick,
        "machine": machine,
        "sizes": QUICK_SIZES if args.quick else SIZES,
        "records": records,
        "ratios": ratios,
        "notes": notes,
        "total_seconds": time.perf_counter() - t_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    print()
    for line in ratios:
        print(line)
    print(f"total {payload['total_seconds']:.0f} s")
    if not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "evaluation.json").write_text(json.dumps(payload, indent=2) + "\n")
        (RESULTS / "evaluation.md").write_text(to_markdown(payload))
        print(f"saved {RESULTS / 'evaluation.json'} and {RESULTS / 'evaluation.md'}")


if __name__ == "__main__":
    main()
