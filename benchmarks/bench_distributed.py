"""Training throughput of UCALReID in 1 and several processes (PyTorch DDP).

Each configuration trains for a fixed number of steps on random images with
the same global batch; the throughput is the global batch times the steps
after a warm-up, over their wall time (rank 0's clock), median of the steps.
On CPUs the processes use gloo and share the cores: 1 process with T
threads against K processes with T / K threads each, so that the comparison
spends the same cores. On GPUs (``--device cuda``) each process has a GPU
(NCCL), as ``torchrun --nproc_per_node=K`` gives it.

Usage::

    python benchmarks/bench_distributed.py                       # CPU: 1 and 2 processes
    python benchmarks/bench_distributed.py --device cuda --procs 1 2 4 \\
        --backbone resnet50 --image-size 256 128 --batch-size 64

Saves ``benchmarks/results/distributed.{json,md}`` (``distributed_cuda`` on GPUs).
"""

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def worker(config):
    import numpy as np
    import torch

    from ucal.reid import Callback, UCALReID

    class StepClock(Callback):
        """Wall time of every training step (rank 0)."""

        def __init__(self):
            self.times = []

        def on_epoch_begin(self, loop, epoch):
            self.times.append(time.perf_counter())

        def on_batch_end(self, loop, batch, loss):
            self.times.append(time.perf_counter())

    torch.set_num_threads(config["threads"])
    rng = np.random.default_rng(0)
    height, width = config["image_size"]
    images = rng.integers(0, 256, size=(config["n_images"], height, width, 3), dtype=np.uint8)
    clock = StepClock()
    model = UCALReID(
        backbone=config["backbone"], pretrained=False, image_size=(height, width), epochs=1,
        warmup_epochs=0, batch_size=config["batch_size"], iters_per_epoch=config["steps"],
        refiner="passthrough", validation_size=0, device=config["device"],
        sync_batchnorm=config["sync_batchnorm"],
        callbacks=[clock], random_state=0,
    )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(images)
    if int(os.environ.get("RANK", 0)) == 0:
        steps = np.diff(clock.times)[config["warmup_steps"]:]
        with open(config["out"], "w") as f:
            json.dump({"step_seconds": steps.tolist(), "precision": model.precision_}, f)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(n_procs, threads, args, root, sync=True):
    out = os.path.join(root, f"p{n_procs}_t{threads}_{int(sync)}.json")
    config = {
        "threads": threads, "image_size": args.image_size, "n_images": args.n_images,
        "backbone": args.backbone, "batch_size": args.batch_size, "steps": args.steps,
        "warmup_steps": args.warmup_steps, "device": args.device, "out": out,
        "sync_batchnorm": sync,
    }
    port = _free_port()
    procs = []
    for rank in range(n_procs):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)
        if n_procs > 1:
            env.update(WORLD_SIZE=str(n_procs), RANK=str(rank), LOCAL_RANK=str(rank),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(config)], env=env
        ))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"{n_procs} processes: exit codes {codes}")
    with open(out) as f:
        result = json.load(f)
    median = statistics.median(result["step_seconds"])
    return {
        "processes": n_procs, "threads_per_process": threads, "sync_batchnorm": sync,
        "median_step_s": median, "images_per_s": args.batch_size / median,
        "steps_timed": len(result["step_seconds"]), "precision": result["precision"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1,
                        help="CPU threads shared by the processes (CPU runs)")
    parser.add_argument("--backbone", default="small")
    parser.add_argument("--image-size", type=int, nargs=2, default=[64, 32])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-images", type=int, default=512)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--warmup-steps", type=int, default=5)
    args = parser.parse_args()
    if args.worker is not None:
        worker(json.loads(args.worker))
        return
    rows = []
    with tempfile.TemporaryDirectory() as root:
        configs = []
        for n in args.procs:
            if args.device == "cpu":
                configs.append((n, max(1, args.cores // n)))
                if n == 1 and args.cores > 1:
                    configs.append((1, 1))
            else:
                configs.append((n, 1))
        for n, threads in configs:
            for sync in ((True, False) if n > 1 else (True,)):
                row = run(n, threads, args, root, sync)
                rows.append(row)
                print(f"{n} process(es) x {threads} thread(s), sync_batchnorm={sync}: "
                      f"{row['images_per_s']:.1f} images/s "
                      f"(median step {row['median_step_s'] * 1000:.0f} ms)", flush=True)
    import torch

    base = next(r for r in rows if r["processes"] == 1 and r["threads_per_process"] ==
                max(r2["threads_per_process"] for r2 in rows if r2["processes"] == 1))
    where = (f"{torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}"
             if args.device != "cpu" else f"{os.cpu_count()} CPUs ({platform.machine()})")
    lines = [
        "# Training throughput, 1 and several processes (DistributedDataParallel)",
        "",
        f"{where}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}. "
        f"Backbone {args.backbone!r} at {args.image_size[0]}x{args.image_size[1]}, global "
        f"batch {args.batch_size}, {args.steps} steps of which the first "
        f"{args.warmup_steps} are not timed; median step of rank 0.",
        "",
        "| processes | threads each | sync_batchnorm | images/s | median step (ms) "
        "| vs 1 process |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        sync = "yes (default)" if r["sync_batchnorm"] else "no"
        sync = sync if r["processes"] > 1 else "-"
        lines.append(f"| {r['processes']} | {r['threads_per_process']} | {sync} | "
                     f"{r['images_per_s']:.1f} | {1000 * r['median_step_s']:.0f} | "
                     f"{r['images_per_s'] / base['images_per_s']:.2f}x |")
    table = "\n".join(lines) + "\n"
    print(table)
    stem = "distributed" if args.device == "cpu" else "distributed_cuda"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.md").write_text(table)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"args": vars(args), "rows": rows},
                                                     indent=1))


if __name__ == "__main__":
    main()
