"""Exact nearest neighbours on a torch device (the GPU of the trainer).

The backend of :class:`ucal.cluster.ExactSearch` with ``backend="torch"``.
It lives under :mod:`ucal.reid`, the only package that imports torch. The
features are copied to the device once (float16 features stay float16 there,
half the memory), then each block of rows is multiplied by all of them and
``torch.topk`` keeps its best; only the top-k lists come back to the host.
"""

import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["torch_knn", "torch_rerank_neighbors"]

# Similarities per block: about 1 GB of float32 on an accelerator, 48 MB on a CPU.
_BLOCK_CELLS = {"cpu": 12 * 2**20, "accelerator": 256 * 2**20}


def _device(device):
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"ExactSearch(backend='torch', device={str(device)!r}): CUDA is not "
            "available on this machine; use device='cpu' or backend='numpy'."
        )
    return device


def _block_rows(n, device, block_rows):
    """Query rows per block: as given, else sized to the device's block of similarities."""
    cells = _BLOCK_CELLS["cpu" if device.type == "cpu" else "accelerator"]
    return int(block_rows or max(1, min(n, cells // max(1, n))))


def torch_knn(rows, k, *, device=None, block_rows=None):
    """Exact ``k`` nearest rows (cosine) of every row, computed on ``device``.

    Parameters
    ----------
    rows : ucal.cluster._knn.UnitRows
        The unit-norm rows.
    k : int
        Neighbours per row, the row itself included (it comes first).
    device : str or torch.device, default=None
        None: CUDA when available, else the CPU.
    block_rows : int, default=None
        Query rows per block (None: sized to the device).

    Returns
    -------
    indices : ndarray of shape (n_samples, k), int64
    similarities : ndarray of shape (n_samples, k), float32
    """
    device = _device(device)
    n = rows.n_samples
    k = min(int(k), n)
    half = rows.data.dtype == np.float16 and device.type != "cpu"
    dtype = torch.float16 if half else torch.float32
    data = torch.empty((n, rows.n_features), dtype=dtype, device=device)
    for start, stop, block in rows.blocks():
        data[start:stop] = torch.from_numpy(block).to(device=device, dtype=dtype)
    step = _block_rows(n, device, block_rows)
    indices = np.empty((n, k), dtype=np.int64)
    sims = np.empty((n, k), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, n, step):
            stop = min(start + step, n)
            block = (data[start:stop] @ data.T).float()
            local = torch.arange(stop - start, device=device)
            # The row itself always ranks first, whatever the rounding.
            block[local, local + start] = float("inf")
            values, idx = torch.topk(block, k, dim=1, largest=True, sorted=True)
            indices[start:stop] = idx.cpu().numpy()
            sims[start:stop] = values.cpu().numpy()
            logger.debug("torch_knn: rows %d-%d of %d", start, stop, n)
    sims[:, 0] = 1.0
    return indices, sims


def torch_rerank_neighbors(X, width, *, device=None, block_rows=None):
    """The neighbour lists k-reciprocal re-ranking needs, computed on ``device``.

    For the cosine distance ``d = max(1 - cos, 0)`` between the unit rows of
    ``X`` (queries then gallery): each row's ``width`` nearest rows (itself
    first), their distances squared over the row's largest squared distance
    (the re-ranking's "original distance"), and that largest squared
    distance. What :func:`ucal.metrics.evaluate_features` computes with
    NumPy blocks, here on a GPU.

    Returns
    -------
    knn_index : ndarray of shape (n, width), int64
    knn_distance : ndarray of shape (n, width), float64
    col_max : ndarray of shape (n,), float64
    """
    device = _device(device)
    n = X.shape[0]
    data = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device)
    step = _block_rows(n, device, block_rows)
    knn_index = np.empty((n, width), dtype=np.int64)
    knn_distance = np.empty((n, width), dtype=np.float64)
    col_max = np.empty(n, dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, n, step):
            stop = min(start + step, n)
            dist = (1.0 - data[start:stop] @ data.T).clamp_(min=0.0)
            local = torch.arange(stop - start, device=device)
            peak = dist.max(dim=1).values.double() ** 2
            peak = torch.where(peak > 0, peak, torch.ones_like(peak))
            self_value = dist[local, local + start].double()
            dist[local, local + start] = -float("inf")  # each row ranks itself first
            values, idx = torch.topk(dist, width, dim=1, largest=False, sorted=True)
            values = values.double()
            values[:, 0] = self_value
            knn_index[start:stop] = idx.cpu().numpy()
            knn_distance[start:stop] = (values**2 / peak[:, None]).cpu().numpy()
            col_max[start:stop] = peak.cpu().numpy()
    return knn_index, knn_distance, col_max
