"""Deployment costs: gallery index build and query latency, and ONNX Runtime against torch.

Part 1, search (:class:`ucal.search.GalleryIndex`): random unit embeddings
with a cluster structure (groups of 8 near-duplicates, as identities are),
galleries of 10,000 and 1,000,000 images, each size in a process of its own.
For each backend (exact NumPy, exact faiss flat, faiss inverted file at two
probe settings): the build time, the latency of one query (median and 95th
percentile over 200 single queries), the throughput of a batch of 1,000
queries, and recall@10 against the exact ranking.

Part 2, embedding: images per second of the same network run by torch
(float32, eval, no autocast) and by ONNX Runtime (the file
``UCALReID.export`` writes), same CPU threads, same batch; the small CNN at
64x32 and ResNet-50 at 256x128 (random weights: speed does not depend on
them).

Usage::

    python benchmarks/bench_deploy.py               # both parts, about 15 min on 2 cores
    python benchmarks/bench_deploy.py --quick       # 10,000 images only, small CNN only

Saves ``benchmarks/results/deploy.{json,md}``.
"""

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import resource
import tempfile
import time

import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _embeddings(n, dim, seed):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 8), dim), dtype=np.float32)
    X = centres[np.arange(n) // 8 % len(centres)]
    X += 0.35 * rng.standard_normal((n, dim), dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X


def search_case(n, dim, seed=0):
    """Every backend on one gallery size (run in a process of its own)."""
    from ucal.search import GalleryIndex

    G = _embeddings(n, dim, seed)
    rng = np.random.default_rng(seed + 1)
    Q = G[rng.choice(n, 1000, replace=False)] + 0.1 * rng.standard_normal((1000, dim),
                                                                          dtype=np.float32)
    rows, exact_top = [], None
    for backend, probes in (("numpy", None), ("faiss", None), ("faiss-ivf", 16),
                            ("faiss-ivf", 64)):
        start = time.perf_counter()
        index = GalleryIndex(backend, n_probe=probes or 64).fit(G)
        build = time.perf_counter() - start
        single = []
        for k in range(200):
            t = time.perf_counter()
            index.kneighbors(Q[k:k + 1], 10)
            single.append(time.perf_counter() - t)
        t = time.perf_counter()
        _, top = index.kneighbors(Q, 10)
        batch = time.perf_counter() - t
        if exact_top is None:
            exact_top = top
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, exact_top)]))
        rows.append({
            "n_gallery": n, "dim": dim, "backend": backend, "n_probe": probes,
            "build_s": build, "query_ms_median": 1000 * float(np.median(single)),
            "query_ms_p95": 1000 * float(np.percentile(single, 95)),
            "batch_1000_s": batch, "queries_per_s": 1000 / batch, "recall_at_10": recall,
        })
        del index
    rows_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    for row in rows:
        row["process_peak_gb"] = rows_peak
        row["features_gb"] = G.nbytes / 1024 ** 3
    return rows


def embed_case(backbone, size, batch, repeats=5, threads=2):
    """Images per second of torch and ONNX Runtime on the same network and batch."""
    import onnxruntime as ort
    import torch

    from ucal.reid._backbones import build_backbone
    from ucal.reid._export import export_network

    torch.set_num_threads(threads)
    net = build_backbone(backbone, False, size).eval()
    images = np.random.default_rng(0).integers(0, 256, (batch, *size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as root:
        path = os.path.join(root, "m.onnx")
        export_network(net, path, size, "onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        from ucal.reid._export import _Deployable

        module = _Deployable(net).eval()
        x = torch.from_numpy(images)

        def run_torch():
            with torch.no_grad():
                return module(x).numpy()

        def run_ort():
            return session.run(["embeddings"], {"images": images})[0]

        diff = float(np.abs(run_torch() - run_ort()).max())  # (also the warm-up)
        speeds = {"torch": [], "onnxruntime": []}
        for _ in range(repeats):  # interleaved: load from elsewhere hits both
            for name, fn in (("torch", run_torch), ("onnxruntime", run_ort)):
                t = time.perf_counter()
                fn()
                speeds[name].append(batch / (time.perf_counter() - t))
    t_med = float(np.median(speeds["torch"]))
    o_med = float(np.median(speeds["onnxruntime"]))
    return {"backbone": backbone, "image_size": list(size), "batch": batch, "threads": threads,
            "torch_img_per_s": t_med, "onnxruntime_img_per_s": o_med, "ratio": o_med / t_med,
            "max_abs_diff": diff, "runs": speeds}


def _markdown(result):
    env = result["environment"]
    lines = [
        "# Deployment: gallery search and exported-model throughput", "",
        f"{env['cpus']} CPUs ({env['machine']}), numpy {env['numpy']}, faiss {env['faiss']}, "
        f"torch {env['torch']}, onnxruntime {env['onnxruntime']}; {env['date']}. Produced by "
        "`benchmarks/bench_deploy.py`.", "",
        "## Gallery search (`ucal.search.GalleryIndex`)", "",
        "Random unit embeddings in groups of 8 near-duplicates; 1,000 queries near gallery "
        "images; top 10. One process per gallery size. Latency: one query at a time "
        "(median and 95th percentile of 200); throughput: one batch of 1,000; recall@10 "
        "against exact NumPy.", "",
        "| gallery | dim | backend | probes | build (s) | query median (ms) | query p95 (ms) | "
        "batch queries/s | recall@10 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["search"]:
        lines.append(
            f"| {r['n_gallery']:,} | {r['dim']} | {r['backend']} | {r['n_probe'] or ''} | "
            f"{r['build_s']:.2f} | {r['query_ms_median']:.2f} | {r['query_ms_p95']:.2f} | "
            f"{r['queries_per_s']:.0f} | {r['recall_at_10']:.3f} |"
        )
    lines += ["", "## Embedding: ONNX Runtime against torch", "",
              "The same network, float32, same threads and batch; median of 5 interleaved "
              "runs; max |difference| of the embeddings.", "",
              "| backbone | input | batch | torch img/s | onnxruntime img/s | ratio | max abs diff |",
              "|---|---|---|---|---|---|---|"]
    for r in result["embed"]:
        lines.append(
            f"| {r['backbone']} | {r['image_size'][0]}x{r['image_size'][1]} | {r['batch']} | "
            f"{r['torch_img_per_s']:.1f} | {r['onnxruntime_img_per_s']:.1f} | {r['ratio']:.2f} | "
            f"{r['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    import faiss
    import onnxruntime
    import torch

    cases = [(10_000, 2048), (10_000, 256)] + ([] if args.quick else [(1_000_000, 256)])
    search = []
    context = multiprocessing.get_context("spawn")
    for n, dim in cases:  # one process per size: its peak memory is its own
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            rows = pool.submit(search_case, n, dim).result()
        for row in rows:
            print(f"{row['n_gallery']:>9,} x {row['dim']:<4} {row['backend']:9s} "
                  f"{row['n_probe'] or '':>3} build {row['build_s']:7.2f} s, query "
                  f"{row['query_ms_median']:7.2f} ms (p95 {row['query_ms_p95']:.2f}), "
                  f"recall {row['recall_at_10']:.3f}", flush=True)
        search += rows
    embeds = [("small", (64, 32), 64)] + ([] if args.quick else [("resnet50", (256, 128), 16)])
    embed = []
    for backbone, size, batch in embeds:
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            row = pool.submit(embed_case, backbone, size, batch).result()
        print(f"{backbone}: torch {row['torch_img_per_s']:.1f} img/s, onnxruntime "
              f"{row['onnxruntime_img_per_s']:.1f} img/s (x{row['ratio']:.2f})", flush=True)
        embed.append(row)
    result = {
        "environment": {"machine": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count(), "numpy": np.__version__,
                        "faiss": faiss.__version__, "torch": torch.__version__,
                        "onnxruntime": onnxruntime.__version__,
                        "date": time.strftime("%Y-%m-%d %H:%M")},
        "search": search, "embed": embed,
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "deploy.json"), "w") as f:
        json.dump(result, f, indent=1)
    text = _markdown(result)
    with open(os.path.join(RESULTS, "deploy.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
