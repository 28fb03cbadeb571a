"""Gentle training from a pretrained start: does the network need it? (issue 12)

On ``bench_start.py``'s setting (a tiny CNN pretrained on other synthetic
people, 150 new identities of about 12 images, SpCL's k1 = 30 bounded by the
default ``k1_rule``), UCAL with ucal's defaults at 0.09 % cost, trained:

- as is (SpCL's schedule: Adam at lr 3.5e-4, BatchNorm in training mode);
- with the backbone's BatchNorm statistics frozen at their pretrained values
  (its layers in eval mode while the rest trains);
- with the backbone at a tenth of the learning rate (the new neck at the full
  rate);
- with the learning rate ramped up linearly over the first 2 epochs.

The variants are not parameters of the library: this script applies them by
patching the training loop, to decide by measurement whether one should be.
3 seeds; each run in a fresh process (the patches never compound).

Usage::

    python benchmarks/bench_gentle.py        # about 10 min on 2 cores

Saves ``benchmarks/results/gentle.{json,md}``.
"""

import concurrent.futures
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results"
SEEDS = (0, 1, 2)
VARIANTS = {
    "as is (SpCL's schedule)": {},
    "backbone BatchNorm frozen": {"frozen_bn": True},
    "backbone at lr x 0.1": {"backbone_lr_scale": 0.1},
    "lr warm-up over 2 epochs": {"warmup_epochs": 2},
}


def _patch(variant):
    """Apply ``variant`` to this process's ``TrainingLoop``."""
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm

    import ucal.reid._loop as loop
    from ucal.reid._schedules import build_lr_scheduler

    setup, train_epoch = loop.TrainingLoop._setup, loop.TrainingLoop._train_epoch

    def patched_setup(self):
        setup(self)
        est, scale = self.estimator, variant.get("backbone_lr_scale", 1.0)
        if scale != 1.0:
            body = [p for p in self.net.body.parameters() if p.requires_grad]
            neck = [p for p in self.net.neck.parameters() if p.requires_grad]
            self.optimizer = torch.optim.Adam(
                [{"params": body, "lr": est.lr * scale}, {"params": neck, "lr": est.lr}],
                lr=est.lr, weight_decay=est.weight_decay,
            )
            self.scheduler = build_lr_scheduler(est.lr_schedule, self.optimizer, est)

    def patched_train_epoch(self, labels):
        net = self.net
        if variant.get("frozen_bn"):
            def train(mode=True):
                torch.nn.Module.train(net, mode)
                if mode:
                    for module in net.body.modules():
                        if isinstance(module, _BatchNorm):
                            module.eval()
                return net

            net.train = train
        warmup = variant.get("warmup_epochs", 0)
        saved = [group["lr"] for group in self.optimizer.param_groups]
        if self.epoch <= warmup:  # self.epoch counts from 1 here
            for group in self.optimizer.param_groups:
                group["lr"] *= self.epoch / (warmup + 1)
        try:
            return train_epoch(self, labels)
        finally:
            for group, lr in zip(self.optimizer.param_groups, saved):
                group["lr"] = lr

    loop.TrainingLoop._setup = patched_setup
    loop.TrainingLoop._train_epoch = patched_train_epoch


def run(seed, name, weights):
    import bench_start

    from ucal.cli._common import held_record
    from ucal.reid import set_num_threads

    set_num_threads(1)
    _patch(VARIANTS[name])
    data = bench_start._data(seed)
    n = len(data.train)
    budget = int(bench_start.SETTINGS["budget"] * n * (n - 1) / 2)
    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = bench_start._model(seed, weights, max_queries=budget)
        model.fit(data.train, data.train.pids, eval_set=data)
    held = held_record(model)
    return {
        "seed": seed, "variant": name, "start": model.history_[0]["mAP"],
        "held_epoch": held["epoch"], "held_mAP": held["mAP"],
        "last_mAP": model.history_[-1]["mAP"],
        "mAP_by_epoch": [h["mAP"] for h in model.history_],
        "k1_by_epoch": [h.get("k1") for h in model.history_[1:]],
        "cost": model.cost_, "seconds": time.perf_counter() - began,
    }


def _mean_sd(values):
    values = 100 * np.asarray(values, dtype=float)
    return values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0


def main():
    import bench_start

    began = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    rows = []
    with tempfile.TemporaryDirectory() as root:
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
            weights = dict(zip(SEEDS, pool.map(bench_start.pretrain, SEEDS, [root] * 3)))
        # one process per run: each patches its own TrainingLoop
        with concurrent.futures.ProcessPoolExecutor(
            2, mp_context=context, max_tasks_per_child=1
        ) as pool:
            futures = [pool.submit(run, seed, name, weights[seed])
                       for name in VARIANTS for seed in SEEDS]
            for future in concurrent.futures.as_completed(futures):
                row = future.result()
                rows.append(row)
                print(f"seed {row['seed']} {row['variant']:>28}: held {100 * row['held_mAP']:.1f} "
                      f"(epoch {row['held_epoch']}), last {100 * row['last_mAP']:.1f}, "
                      f"start {100 * row['start']:.1f}", flush=True)
    import torch

    lines = [
        "# Gentle training from a pretrained start",
        "",
        f"Mean ± standard deviation over seeds {list(SEEDS)}; {os.cpu_count()} CPUs "
        f"({platform.machine()}), torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{(time.perf_counter() - began) / 60:.0f} min in all. `bench_start.py`'s setting "
        "(tiny CNN pretrained on other people; 150 new identities; SpCL's k1 = 30 under "
        "the default k1_rule); UCAL with ucal's defaults at 0.09 % cost, 12 epochs. mAP "
        "differences to the pretrained start, in points.",
        "",
        "| variant | held network - start | last epoch - start | held epochs |",
        "|---|---|---|---|",
    ]
    for name in VARIANTS:
        mine = sorted((r for r in rows if r["variant"] == name), key=lambda r: r["seed"])
        held = _mean_sd([r["held_mAP"] - r["start"] for r in mine])
        last = _mean_sd([r["last_mAP"] - r["start"] for r in mine])
        lines.append(f"| {name} | {held[0]:+.1f} ± {held[1]:.1f} | {last[0]:+.1f} ± "
                     f"{last[1]:.1f} | {', '.join(str(r['held_epoch']) for r in mine)} |")
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gentle.md").write_text(table)
    (RESULTS / "gentle.json").write_text(
        json.dumps({"settings": bench_start.SETTINGS, "runs": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
