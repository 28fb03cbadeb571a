"""One rank of a distributed fit, as torchrun starts it (the environment names the rank).

Run by ``test_distributed.py``: ``python ddp_worker.py CONFIG.json``. It fits a
tiny UCALReID on tiny synthetic persons and writes what the tests compare to
``OUT/rank<r>.json``: per-step losses, per-step fingerprints of the weights
and of the feature memory, the pairs the oracle was asked, the history.
"""

import hashlib
import json
import os
import sys

import numpy as np
import torch


def _recorder():
    """After every step: the loss, and digests of the weights and of the memory."""
    from ucal.reid import Callback

    class Recorder(Callback):
        def __init__(self):
            self.losses, self.weights, self.memories = [], [], []
            self.threads = None  # the process's threads at the first step

        def on_batch_end(self, loop, batch, loss):
            if self.threads is None:
                self.threads = _thread_names()
            self.losses.append(float(loss))
            weights = torch.cat([p.detach().float().flatten() for p in loop.net.parameters()])
            self.weights.append(_digest(weights))
            self.memories.append(_digest(loop.memory.features))

    return Recorder()


def _digest(tensor):
    return hashlib.sha1(tensor.detach().cpu().numpy().tobytes()).hexdigest()


def _thread_names():
    """The names of this process's threads (Linux), None where /proc has none."""
    tasks = f"/proc/{os.getpid()}/task"
    if not os.path.isdir(tasks):
        return None
    names = []
    for task in os.listdir(tasks):
        try:
            with open(os.path.join(tasks, task, "comm")) as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended meanwhile
            pass
    return names


def main(config_path):
    with open(config_path) as f:
        config = json.load(f)
    torch.set_num_threads(1)
    from ucal.datasets import make_persons
    from ucal.reid import UCALReID

    rank = int(os.environ.get("RANK", 0))
    data = make_persons(n_identities=8, n_test_identities=3, n_images_per_camera=(3, 4),
                        image_size=(32, 16), random_state=0)
    asked = []
    labels = np.asarray(data.train.pids)

    def oracle(pairs):
        pairs = np.asarray(pairs)
        asked.extend(map(tuple, pairs.tolist()))
        if config.get("oracle_fails"):
            raise RuntimeError("the annotator walked away")
        return labels[pairs[:, 0]] == labels[pairs[:, 1]]

    recorder = _recorder()
    params = dict(
        backbone="tiny", pretrained=False, image_size=(32, 16), epochs=2, warmup_epochs=0,
        batch_size=16, num_instances=4, iters_per_epoch=3, inference_batch_size=64,
        validation_size=0, mixed_precision=False, random_state=0,
        flip_prob=0.0, pad=0, erasing_prob=0.0, callbacks=[recorder],
    )
    params.update(config.get("params", {}))
    model = UCALReID(**params)
    if config.get("oracle_on_rank0_only") and rank != 0:
        oracle = None  # a mistake: every rank must pass one (rank 0 calls it)
    eval_set = None
    if config.get("bad_eval_image"):
        # query images as files, the last one unreadable: only the last rank reads it
        from PIL import Image

        from ucal.datasets import ReIDSplit

        folder = os.path.join(config["out"], f"query{rank}")  # each rank its own copy
        os.makedirs(folder, exist_ok=True)
        paths = []
        for i, image in enumerate(data.query.images):
            path = os.path.join(folder, f"q{i}.png")
            Image.fromarray(image).save(path)
            paths.append(path)
        with open(paths[-1], "wb") as f:
            f.write(b"not a png")
        query = ReIDSplit(paths, data.query.pids, data.query.camids)
        eval_set = (query, data.gallery)
    model.fit(data.train, oracle=oracle, resume=config.get("resume", False), eval_set=eval_set)
    out = {
        "rank": rank,
        "losses": recorder.losses,
        "weights": recorder.weights,
        "memories": recorder.memories,
        "asked": [list(map(int, p)) for p in asked],
        "history": [{k: v for k, v in r.items() if isinstance(v, (int, float, str))}
                    for r in model.history_],
        "final_weights": _digest(torch.cat([p.detach().float().flatten()
                                            for p in model.backbone_.parameters()])),
        "batchnorm_types": sorted({type(m).__name__ for m in model.backbone_.modules()
                                   if "BatchNorm" in type(m).__name__}),
        "n_queries": int(model.n_queries_),
        "threads_in_fit": recorder.threads,
        "threads": _thread_names(),
    }
    with open(os.path.join(config["out"], f"rank{rank}.json"), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(sys.argv[1])
