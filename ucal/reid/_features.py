"""Feature extraction with a network, and the re-id protocol on its features."""

import numpy as np
import torch

from ._data import BatchAugmenter, iter_batches

__all__ = ["check_eval_set", "extract_features", "reid_scores"]


@torch.no_grad()
def extract_features(net, source, precision, batch_size, num_workers, verbose, desc):
    """Eval-mode L2-normalised features of every image in ``source`` (a tensor on the device)."""
    device = precision.device
    n = len(source)
    if n == 0:  # a process's empty share of a small extraction
        return torch.empty((0, net.feature_dim), device=device)
    was_training = net.training
    net.eval()
    augment = BatchAugmenter()
    batches = [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    out = []
    iterator = iter_batches(source, batches, num_workers)
    if verbose:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(batches), desc=desc, unit="batch", leave=False)
    for _, images in iterator:
        x = augment(images.to(device, non_blocking=True), train=False)
        x = x.contiguous(memory_format=precision.memory_format())
        with precision.autocast():
            out.append(net(x).float())
    net.train(was_training)
    return torch.cat(out)


def check_eval_set(eval_set):
    """``eval_set`` -> (query, gallery) splits, or None."""
    if eval_set is None:
        return None
    from ucal.datasets import ReIDDataset, ReIDSplit

    if isinstance(eval_set, ReIDDataset):
        return eval_set.query, eval_set.gallery
    if (
        isinstance(eval_set, (tuple, list))
        and len(eval_set) == 2
        and all(isinstance(s, ReIDSplit) for s in eval_set)
    ):
        return tuple(eval_set)
    raise TypeError(
        "eval_set must be a ReIDDataset or a pair (query, gallery) of ReIDSplit, got "
        f"{type(eval_set).__name__}."
    )


def reid_scores(qf, gf, query, gallery, rerank=False):
    """CMC, mAP and mINP of query features against gallery features (fractions)."""
    from ucal.metrics import evaluate_features

    # Without camera ids (all -1) the protocol must not remove same-camera
    # matches: every true match would look "same camera".
    has_cams = bool(np.any(np.asarray(query.camids) >= 0) or np.any(np.asarray(gallery.camids) >= 0))
    q_cams = query.camids if has_cams else None
    g_cams = gallery.camids if has_cams else None
    result = evaluate_features(qf, gf, query.pids, gallery.pids, q_cams, g_cams, rerank=rerank)
    cmc = np.asarray(result["cmc"])
    return {
        "mAP": float(result["mAP"]),
        "mINP": float(result["mINP"]),
        "R1": float(cmc[0]),
        "R5": float(cmc[min(4, cmc.size - 1)]),
        "R10": float(cmc[min(9, cmc.size - 1)]),
        "cmc": cmc,
        "n_valid_queries": int(result["n_valid_queries"]),
    }
