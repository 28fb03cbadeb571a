"""Training throughput of UCALReID against the raw backbone forward + backward.

For each backbone / input size / precision, two numbers measured in the
same process, on the same batch size:

- raw: images/s of ``forward -> loss -> backward -> Adam step`` on one
  fixed, pre-normalised tensor (the most a training loop can reach);
- loop: images/s of UCALReID's own epoch loop (pseudo-identity sampler,
  uint8 batch loading, SpCL's augmentations, forward, Eq. 1 loss against
  the memory centroids, backward, Adam step, memory momentum update).

``overhead = 1 - loop / raw`` is the cost of everything around the
network; the target is at most 10 %. Precision is float32 and bfloat16
autocast + channels_last (what ``mixed_precision="auto"`` picks on CPUs
with native bf16).

``--pair-term`` measures instead what the pair term of the loss
(``pair_weight``, :class:`~ucal.reid.PairSupervision`) costs an epoch: the
loop with and without it, interleaved, on answers as dense as a run at
0.1 % of all pairs on Market-1501 (1.5 answered pairs per image, half
"same"). The target is at most 10 %.

``--bases`` measures what each unsupervised base (``loss``, ``pooling``; see
``docs/bases.rst``) costs an epoch against SpCL's centroids: the same loop,
interleaved epochs, 8 images per pseudo identity spread over 6 cameras. The
target is within 15 %.

Usage::

    python benchmarks/bench_training.py              # all configurations
    python benchmarks/bench_training.py --quick      # small CNN only
    python benchmarks/bench_training.py --pair-term  # the pair term's cost
    python benchmarks/bench_training.py --bases      # each base's epoch time

Writes ``benchmarks/results/training.json`` and ``training.md``
(``training_pairs`` with ``--pair-term``, ``training_bases`` with ``--bases``).
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ucal.reid import TrainingLoop, UCALReID  # noqa: E402
from ucal.reid._data import as_image_source  # noqa: E402
from ucal.reid._memory import centroid_contrastive_loss  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# (backbone, (height, width), batch size, timed iterations)
CONFIGS = [
    ("small", (64, 32), 64, 30),
    ("resnet18", (128, 64), 64, 8),
    ("resnet50", (256, 128), 32, 3),
]


def _trainer(backbone, size, batch, n_images, mixed, seed, **params):
    rng = np.random.RandomState(seed)
    X = rng.randint(0, 256, size=(n_images, *size, 3), dtype=np.uint8)
    if params.pop("cameras", False):
        from ucal.datasets import ReIDSplit

        X = ReIDSplit(X, np.arange(n_images) // 8, np.arange(n_images) % 6)
    est = UCALReID(
        backbone=backbone,
        pretrained=False,
        image_size=size,
        batch_size=batch,
        mixed_precision=mixed,
        device="cpu",
        refiner="passthrough",
        random_state=seed,
        **params,
    )
    est._validate_params()
    trainer = TrainingLoop(est, as_image_source(X, size), None, None, None, None, False)
    trainer._setup()  # builds the net, optimizer and memory (not timed)
    labels = np.arange(n_images) // 8  # 8 images per pseudo identity
    labels[::13] = -1  # some outliers, as after clustering
    return trainer, labels


def _time_raw(trainer, labels, iters):
    """forward + loss + backward + step on one fixed batch."""
    net, precision, opt = trainer.net, trainer.precision, trainer.optimizer
    batch = trainer.estimator.batch_size
    size = trainer.estimator.image_size
    x = torch.randn(batch, 3, *size).contiguous(memory_format=precision.memory_format())
    trainer.memory.set_labels(labels)
    targets = torch.as_tensor(labels[labels >= 0][:batch])
    centroids = trainer.memory.centroids()
    net.train()

    def step():
        with precision.autocast():
            feats = net(x)
        loss = centroid_contrastive_loss(feats, targets, centroids, 0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (oneDNN primitive creation)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return batch * iters / (time.perf_counter() - start)


def _time_loop(trainer, labels, iters):
    """UCALReID's own epoch loop, iters_per_epoch = iters."""
    trainer.estimator.iters_per_epoch = 1
    trainer._train_epoch(labels)  # warm-up
    trainer.estimator.iters_per_epoch = iters
    start = time.perf_counter()
    trainer._train_epoch(labels)
    return trainer.estimator.batch_size * iters / (time.perf_counter() - start)


def _answers(trainer, labels, seed, per_image=1.5):
    """A PairSupervision as dense as a real run's: half "same" (within a pseudo identity)."""
    from ucal.reid import PairSupervision

    rng = np.random.RandomState(seed)
    n = len(labels)
    m = int(per_image * n)
    same_pairs = []
    for i in rng.randint(0, n, size=m // 2):
        mates = np.flatnonzero((labels == labels[i]) & (np.arange(n) != i))
        if labels[i] >= 0 and len(mates):
            same_pairs.append((i, rng.choice(mates)))
    other = rng.randint(0, n, size=(m - len(same_pairs), 2))
    pairs = np.vstack([np.array(same_pairs), other])
    same = np.concatenate([np.ones(len(same_pairs), bool), np.zeros(len(other), bool)])
    keep = pairs[:, 0] != pairs[:, 1]
    features = trainer.memory.features.cpu().numpy()
    return PairSupervision(pairs[keep], same[keep], n, features)


def run_pairs(configs, threads, repeats, seed):
    """Epoch loop throughput with and without the pair term, interleaved."""
    torch.set_num_threads(threads)
    rows = []
    for backbone, size, batch, iters in configs:
        trainer, labels = _trainer(backbone, size, batch, max(512, 4 * batch), "auto", seed)
        trainer.memory.set_labels(labels)
        supervision = _answers(trainer, labels, seed)
        est = trainer.estimator
        without, with_pairs = [], []
        for _ in range(repeats):
            for weight, out in ((0.0, without), (1.0, with_pairs)):
                est.pair_weight = weight
                trainer._pair_supervision = lambda: supervision if est.pair_weight else None
                out.append(_time_loop(trainer, labels, iters))
        a, b = float(np.median(without)), float(np.median(with_pairs))
        row = {"backbone": backbone, "image_size": list(size), "batch_size": batch,
               "iterations": iters, "precision": trainer.precision.name,
               "answered_pairs": len(supervision), "images": len(labels),
               "without_images_per_s": a, "with_images_per_s": b, "cost": a / b - 1.0,
               "without_runs": without, "with_runs": with_pairs}
        rows.append(row)
        print(f"{backbone:9s} b{batch:<3d} without {a:7.1f} img/s  with {b:7.1f} img/s  "
              f"pair term {100 * row['cost']:5.1f}% of the epoch", flush=True)
    return rows


# name -> (loss, pooling), as in bench_bases.py
BASES = {
    "SpCL centroids": ("centroid", "avg"),
    "cluster memory": ("cluster_memory", "avg"),
    "cluster memory, hard": ("cluster_memory_hard", "avg"),
    "camera proxies": ("camera_proxies", "avg"),
    "SpCL centroids + GeM": ("centroid", "gem"),
    "cluster memory + GeM": ("cluster_memory", "gem"),
}


def run_bases(configs, threads, repeats, seed):
    """Epoch loop throughput of each base, interleaved, against SpCL's centroids."""
    torch.set_num_threads(threads)
    rows = []
    for backbone, size, batch, iters in configs:
        n_images = max(512, 4 * batch)
        trainers = {pooling: _trainer(backbone, size, batch, n_images, "auto", seed,
                                      pooling=pooling, cameras=True)
                    for pooling in ("avg", "gem")}
        speeds = {name: [] for name in BASES}
        for _ in range(repeats):
            for name, (loss, pooling) in BASES.items():
                trainer, labels = trainers[pooling]
                trainer.estimator.loss = loss
                speeds[name].append(_time_loop(trainer, labels, iters))
        reference = float(np.median(speeds["SpCL centroids"]))
        for name, runs in speeds.items():
            speed = float(np.median(runs))
            row = {"backbone": backbone, "image_size": list(size), "batch_size": batch,
                   "iterations": iters, "precision": trainers["avg"][0].precision.name,
                   "base": name, "images_per_s": speed, "epoch_time_ratio": reference / speed,
                   "runs": runs}
            rows.append(row)
            print(f"{backbone:9s} {name:22s} {speed:7.1f} img/s  epoch time "
                  f"x{row['epoch_time_ratio']:.3f}", flush=True)
    return rows


def _markdown_bases(result):
    m = result["machine"]
    lines = [
        "# What each unsupervised base costs an epoch",
        "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {result['threads']} torch "
        f"threads; torch {m['torch']}. Median of {result['repeats']} interleaved epochs each, "
        "the same loop (sampler, augmentation, forward, the base's loss, backward, memory "
        "updates) on 512 images of 64 pseudo identities over 6 cameras. Epoch time: the "
        "base's over SpCL centroids' (target: within 15 %). Produced by "
        "`benchmarks/bench_training.py --bases`.",
        "",
        "| backbone | input | batch | precision | base | img/s | epoch time vs SpCL |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['backbone']} | {r['image_size'][0]}x{r['image_size'][1]} | {r['batch_size']} "
            f"| {r['precision']} | {r['base']} | {r['images_per_s']:.1f} "
            f"| {r['epoch_time_ratio']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def _markdown_pairs(result):
    m = result["machine"]
    lines = [
        "# What the pair term costs an epoch",
        "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {result['threads']} torch "
        f"threads; torch {m['torch']}. Median of {result['repeats']} interleaved epochs each, "
        "the same loop with `pair_weight` 0 and 1, 1.5 answered pairs per image (half "
        "\"same\"). Produced by `benchmarks/bench_training.py --pair-term`.",
        "",
        "| backbone | input | batch | precision | answered pairs / images | without img/s | "
        "with img/s | epoch time added |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['backbone']} | {r['image_size'][0]}x{r['image_size'][1]} | {r['batch_size']} "
            f"| {r['precision']} | {r['answered_pairs']} / {r['images']} "
            f"| {r['without_images_per_s']:.1f} | {r['with_images_per_s']:.1f} "
            f"| {100 * r['cost']:.1f} % |"
        )
    return "\n".join(lines) + "\n"


def run(configs, threads, repeats, seed):
    torch.set_num_threads(threads)
    rows = []
    for backbone, size, batch, iters in configs:
        for mixed in (False, True):
            trainer, labels = _trainer(backbone, size, batch, max(512, 4 * batch), mixed, seed)
            raws, loops = [], []
            # Interleave the two measurements so that load from other processes hits both.
            for _ in range(repeats):
                raws.append(_time_raw(trainer, labels, iters))
                loops.append(_time_loop(trainer, labels, iters))
            raw, loop = float(np.median(raws)), float(np.median(loops))
            row = {
                "backbone": backbone,
                "image_size": list(size),
                "batch_size": batch,
                "iterations": iters,
                "precision": trainer.precision.name
                + ("+channels_last" if trainer.precision.channels_last else ""),
                "raw_images_per_s": raw,
                "loop_images_per_s": loop,
                "overhead": 1.0 - loop / raw,
                "raw_runs": raws,
                "loop_runs": loops,
            }
            rows.append(row)
            print(
                f"{backbone:9s} {size[0]:3d}x{size[1]:<3d} b{batch:<3d} {row['precision']:22s} "
                f"raw {raw:7.1f} img/s  loop {loop:7.1f} img/s  "
                f"overhead {100 * row['overhead']:5.1f}%",
                flush=True,
            )
    return rows


def _machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "avx512_bf16": bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()),
    }


def _markdown(result):
    m = result["machine"]
    lines = [
        "# Training throughput: UCALReID loop vs raw forward + backward",
        "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {result['threads']} torch "
        f"threads; Python {m['python']}, torch {m['torch']}, numpy {m['numpy']}; "
        f"AVX512-BF16: {m['avx512_bf16']}. Seed {result['seed']}; median of "
        f"{result['repeats']} interleaved runs each. Produced by "
        "`benchmarks/bench_training.py`.",
        "",
        "| backbone | input | batch | precision | raw img/s | loop img/s | loop overhead |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['backbone']} | {r['image_size'][0]}x{r['image_size'][1]} | {r['batch_size']} "
            f"| {r['precision']} | {r['raw_images_per_s']:.1f} | {r['loop_images_per_s']:.1f} "
            f"| {100 * r['overhead']:.1f} % |"
        )
    lines += [
        "",
        "raw = forward, Eq. 1 loss, backward and Adam step on one fixed tensor; loop = "
        "UCALReID's epoch loop (sampler, uint8 loading, flip/pad-crop/erasing, forward, loss, "
        "backward, step, memory update). Overhead = 1 - loop / raw (negative values are "
        "measurement noise).",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the small CNN")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--pair-term", action="store_true",
                        help="the pair term's share of an epoch (results: training_pairs)")
    parser.add_argument("--bases", action="store_true",
                        help="each unsupervised base's epoch time (results: training_bases)")
    args = parser.parse_args(argv)
    configs = CONFIGS[:1] if args.quick else CONFIGS
    if args.bases:  # the small CNN and ResNet-18, 5 epochs each at least
        measure, stem, markdown = run_bases, "training_bases", _markdown_bases
        configs, repeats = CONFIGS[:1] if args.quick else CONFIGS[:2], max(args.repeats, 5)
    elif args.pair_term:  # the small CNN and ResNet-18, 5 epochs each at least
        measure, stem, markdown = run_pairs, "training_pairs", _markdown_pairs
        configs, repeats = CONFIGS[:1] if args.quick else CONFIGS[:2], max(args.repeats, 5)
    else:
        measure, stem, markdown = run, "training", _markdown
        repeats = args.repeats
    rows = measure(configs, args.threads, repeats, args.seed)
    result = {
        "machine": _machine(),
        "threads": args.threads,
        "repeats": repeats,
        "seed": args.seed,
        "rows": rows,
    }
    if not args.no_save:
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, f"{stem}.json"), "w") as f:
            json.dump(result, f, indent=2)
        with open(os.path.join(RESULTS, f"{stem}.md"), "w") as f:
            f.write(markdown(result))
    return result


if __name__ == "__main__":
    main()
