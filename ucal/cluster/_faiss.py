"""The faiss engines of the neighbour search: flat, inverted-file and HNSW indexes.

faiss is optional (``pip install 'ucal[faiss]'``); nothing here imports it at
module import. Every index is filled and queried a block of rows at a time
(:meth:`UnitRows.blocks`), so float16 or memory-mapped features are never
normalised whole. On a CUDA machine with faiss's GPU build the index is moved
to the GPU (``device``).

The inverted files work in a smaller space where the features allow it
(:class:`ListSpace`: the rows minus their mean, projected on the principal
directions that hold most of their variance): faiss scans a list one query at
a time, at a cost that grows with the dimension, and 2,048-dimensional
embeddings of a network have far fewer directions that matter. They search
by Euclidean distance there (which, in
all dimensions, ranks unit rows as cosine similarity does). The candidates'
similarities are then computed again in the original space (:func:`rescore`),
so every backend hands the Jaccard step exact cosine similarities.
"""

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["ENCODINGS", "ListSpace", "code_layout", "default_n_lists", "gpu_of", "import_faiss",
           "inverted_file", "ivf_index", "on_device", "pq_layout", "rescore", "search_index",
           "training_sample"]

#: Codes of the inverted lists: ``"flat"`` float32 (``IndexIVFFlat``),
#: ``"fp16"`` / ``"sq8"`` (``IndexIVFScalarQuantizer``, 2 and 1 bytes per
#: dimension), ``"pq"`` (``IndexIVFPQ``, 8 bits per sub-vector of 4 or more
#: dimensions, see :func:`pq_layout`: at most about 2 bits per dimension),
#: ``"fastscan"`` (``IndexIVFPQFastScan``, 4 bits per 2 dimensions, inside an
#: ``IndexRefineFlat``; CPU only).
ENCODINGS = ("flat", "fp16", "sq8", "pq", "fastscan")
# "fastscan": faiss ranks k_factor times as many candidates by their 4-bit codes,
# then re-ranks them by their float32 copy in the lists' own space.
FASTSCAN_K_FACTOR = 4
# A 4-bit code has 16 centroids: fewer training rows than that cannot train it.
FASTSCAN_MIN_ROWS = 16

# Rows whose candidates are rescored at a time (256 x 60 x 2,048 float32: 126 MB).
_RESCORE_ROWS = 256
_RESCORE_THREADS = 8
_GPU_RESOURCES = {}
# Lists faiss's GPU inverted files probe at most, and the sub-vector counts
# their product quantiser takes (up to 64: more would not fit its tables).
_GPU_MAX_PROBES = 2048
_GPU_PQ_SUBVECTORS = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64)
# Rows embedded in the lists' space at a time.
_EMBED_ROWS = 8192
# Rows of the training sample the principal directions are computed from.
_PCA_ROWS = 32768


def import_faiss(what, n_jobs=None):
    """faiss (using ``n_jobs`` threads when given), or an ImportError that says how to get it."""
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(
            f"{what} needs the faiss package: pip install 'ucal[faiss]' (or faiss-cpu), "
            "or use the exact NumPy search (search='numpy')."
        ) from exc
    if n_jobs is not None and n_jobs > 0:
        faiss.omp_set_num_threads(int(n_jobs))
    return faiss


def gpu_count(faiss):
    """GPUs faiss can use (0 for the CPU build)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def gpu_of(faiss, device):
    """The GPU number of ``device`` (None for None or "cpu"), checked against
    what faiss sees before any work is done.

    ``"cuda"`` is GPU 0; the error says what to install where faiss's build
    has no GPU support or sees fewer GPUs.
    """
    if device is None or str(device) == "cpu":
        return None
    name = str(device)
    head, _, number = name.partition(":")
    if head != "cuda" or (number and not number.isdigit()):
        raise ValueError(f"device must be None, 'cpu' or a CUDA device ('cuda', 'cuda:N'), got {device!r}.")
    gpu = int(number or 0)
    available = gpu_count(faiss)
    if available == 0:
        raise RuntimeError(
            f"device={device!r} needs faiss's GPU build (conda install -c pytorch faiss-gpu) "
            "and a visible CUDA GPU; this faiss sees none. Use device=None (CPU) or the "
            "torch exact search (ExactSearch('torch'))."
        )
    if gpu >= available:
        raise RuntimeError(f"device={device!r}: faiss sees {available} GPU(s), numbered from 0.")
    return gpu


def on_device(faiss, index, gpu):
    """``index`` moved to GPU number ``gpu`` (:func:`gpu_of`); unchanged for None.

    An inverted file keeps its ``nprobe`` (faiss's GPU indexes probe at most
    2,048 lists); product-quantiser tables are kept in float16 on the GPU,
    where float32 tables of many sub-vectors do not fit its shared memory.
    """
    if gpu is None:
        return index
    if getattr(index, "nprobe", 0) > _GPU_MAX_PROBES:
        logger.info("faiss's GPU index probes at most %d lists (asked: %d)", _GPU_MAX_PROBES, index.nprobe)
        index.nprobe = _GPU_MAX_PROBES
    # One set of resources per GPU, for the life of the process (faiss's own
    # advice): a GPU index must not outlive them.
    if gpu not in _GPU_RESOURCES:
        _GPU_RESOURCES[gpu] = faiss.StandardGpuResources()
    options = faiss.GpuClonerOptions()
    options.useFloat16 = True  # PQ lookup tables; no effect on flat or scalar-quantised lists
    return faiss.index_cpu_to_gpu(_GPU_RESOURCES[gpu], gpu, index, options)


class ListSpace:
    """The space an inverted file's rows are listed and searched in: minus
    the training sample's mean (features that all share a direction, as ReLU
    outputs do, otherwise give a few lists near it that half the rows fall
    in), projected on the sample's leading principal directions.

    ``n_components``: an int is that many directions; a float in (0, 1) the
    fewest directions that hold that share of the sample's variance, or all
    dimensions where that takes half of them or more (features without a
    low-dimensional structure, where a projection would blur the lists);
    None is all dimensions.
    """

    def __init__(self, sample, n_components):
        self.mean = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
        self.basis = None
        d = sample.shape[1]
        self.n_components, self.variance = d, 1.0
        fraction = not isinstance(n_components, Integral)
        if n_components is None or (not fraction and n_components >= d):
            return
        centred = sample - self.mean
        scatter = (centred.T @ centred).astype(np.float64)
        values, vectors = np.linalg.eigh(scatter)  # ascending
        values, vectors = np.clip(values[::-1], 0.0, None), vectors[:, ::-1]
        share = np.cumsum(values) / max(values.sum(), np.finfo(np.float64).tiny)
        if fraction:
            keep = int(np.searchsorted(share, n_components)) + 1
            if 2 * keep >= d:
                return
        else:
            keep = int(n_components)
        self.n_components, self.variance = keep, float(share[keep - 1])
        self.basis = np.ascontiguousarray(vectors[:, :keep], dtype=np.float32)

    def project(self, block):
        """The rows ``block`` minus the mean, on the principal directions kept:
        Euclidean distances there are the original ones less the part of the
        difference outside those directions (all of it, with no projection)."""
        z = block - self.mean
        return z if self.basis is None else z @ self.basis

    def embed_rows(self, rows, index, embed):
        """The rows ``index`` of ``rows`` (UnitRows) mapped by ``embed``, read a
        block at a time: no full-dimension copy of them at once."""
        return np.concatenate([
            embed(rows.take(index[a : a + _EMBED_ROWS]))
            for a in range(0, max(index.size, 1), _EMBED_ROWS)
        ])


def training_sample(rows, n_lists, sample_size, rng, n_components, min_rows=0):
    """The sorted rows an inverted file is trained on (``sample_size``, at
    least ``n_lists`` and ``min_rows``, at most all) and the
    :class:`ListSpace` of their space, whose principal directions need far
    fewer rows."""
    n = rows.n_samples
    size = min(n, max(int(sample_size), int(n_lists), int(min_rows)))
    sample = np.sort(rng.choice(n, size=size, replace=False))
    space = ListSpace(rows.take(sample[:: max(1, sample.size // _PCA_ROWS)]), n_components)
    return sample, space


def default_n_lists(n_samples):
    """Lists of about 32 rows, but at most ``2 sqrt(32 N)`` lists.

    Small lists follow the identities more closely (measured with ucal's
    former NumPy inverted file at N = 100,000: 32 probes of lists of 32 rows
    found 0.90 of the exact neighbours, of lists of 128 rows 0.75); the cap
    bounds the cost of assigning every row to the lists (N x lists
    products), the largest cost at a million rows.
    """
    cap = 2.0 * math.sqrt(32 * n_samples)
    return max(1, min(n_samples, int(round(min(n_samples / 32.0, cap)))))


def ivf_index(faiss, dim, n_lists, encoding, n_train, seed=0):
    """An untrained inverted file of ``n_lists`` lists on ``dim``-dimensional rows, by Euclidean distance.

    ``dim`` must be a multiple of the product quantiser's sub-vectors for
    ``"pq"`` (:func:`pq_layout`) and ``"fastscan"`` (:func:`code_layout`);
    ``n_train`` (the training rows) bounds the ``"pq"`` code size, since
    each sub-vector's 2**bits centroids need as many rows.

    ``"fastscan"`` is faiss's SIMD scan of 4-bit product codes of 2
    dimensions each (``IndexIVFPQFastScan``) inside an ``IndexRefineFlat``,
    which re-ranks :data:`FASTSCAN_K_FACTOR` times the candidates asked for
    by exact distance in ``dim`` dimensions: the scan is several times
    faster than flat lists', the re-ranking gives back most of what the
    coarse codes lose. ``seed`` seeds its codes' k-means.
    """
    quantizer = faiss.IndexFlatL2(dim)  # faiss's wrappers keep it alive with the index
    metric = faiss.METRIC_L2
    if encoding == "flat":
        return faiss.IndexIVFFlat(quantizer, dim, n_lists, metric)
    if encoding in ("fp16", "sq8"):
        kind = faiss.ScalarQuantizer.QT_fp16 if encoding == "fp16" else faiss.ScalarQuantizer.QT_8bit
        return faiss.IndexIVFScalarQuantizer(quantizer, dim, n_lists, kind, metric)
    if encoding == "pq":
        bits = int(max(1, min(8, np.floor(np.log2(max(2, n_train))))))
        return faiss.IndexIVFPQ(quantizer, dim, n_lists, pq_layout(dim)[0], bits, metric)
    if encoding == "fastscan":
        coarse = faiss.IndexIVFPQFastScan(quantizer, dim, n_lists, code_layout(dim, encoding)[0],
                                          4, metric)
        coarse.pq.cp.min_points_per_centroid = 1  # 16 centroids a code: any sample >= 16 does
        coarse.pq.cp.seed = seed
        index = faiss.IndexRefineFlat(coarse)  # faiss's wrapper keeps coarse alive with it
        index.k_factor = float(FASTSCAN_K_FACTOR)
        return index
    raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}.")


def inverted_file(faiss, index):
    """The inverted file of an :func:`ivf_index` (inside the re-ranking for ``"fastscan"``)."""
    if isinstance(index, faiss.IndexRefine):
        return faiss.downcast_index(index.base_index)
    return index


def code_layout(dim, encoding):
    """Sub-vectors and padded dimension of an encoding's product codes ((0, dim): none)."""
    if encoding == "pq":
        return pq_layout(dim)
    if encoding == "fastscan":  # 2 dimensions per 4-bit code
        count = -(-dim // 2)
        return count, 2 * count
    return 0, dim


def pq_layout(dim):
    """Sub-vectors of the product quantiser of ``dim``-dimensional rows, and
    the dimension the rows are padded to with zeros (which changes no distance).

    About 4 dimensions per sub-vector (1 byte each: about 2 bits per
    dimension), at most 64 sub-vectors, and a count faiss's GPU index
    accepts.
    """
    wanted = max(1, -(-dim // 4))
    count = max(m for m in _GPU_PQ_SUBVECTORS if m <= wanted)
    return count, -(-dim // count) * count


def search_index(index, rows, k, *, embed=None):
    """Fill ``index`` with every row and search it for every row's ``k`` nearest.

    ``embed`` maps a block of unit rows to the vectors the index holds
    (identity when None). Returns faiss's (indices int64, scores float32),
    ``-1`` where fewer than ``k`` were found.
    """
    embed = embed or (lambda block: block)
    # Each block is embedded twice (to add, then to query) rather than kept:
    # the embedded copy of every row would raise the peak by the index's size.
    for _, _, block in rows.blocks():
        index.add(np.ascontiguousarray(embed(block), dtype=np.float32))
    indices = np.empty((rows.n_samples, k), dtype=np.int64)
    scores = np.empty((rows.n_samples, k), dtype=np.float32)
    for start, stop, block in rows.blocks():
        scores[start:stop], indices[start:stop] = index.search(
            np.ascontiguousarray(embed(block), dtype=np.float32), k
        )
    return indices, scores


def rescore(rows, candidates, k, *, n_threads=None):
    """The ``k`` candidates most similar to each row, by exact cosine similarity.

    Parameters
    ----------
    rows : UnitRows
    candidates : ndarray of shape (n_samples, n_candidates), int
        Candidate neighbours of each row, each at most once (``-1``: none),
        as a faiss index returns them.
    k : int
        Neighbours kept (at most ``n_candidates``).
    n_threads : int, default=None
        Threads sharing the blocks of rows (None: one per CPU, at most 8:
        each holds a block of gathered rows, about 126 MB at 2,048
        dimensions and 60 candidates). The cost is gathering the candidates'
        rows, which NumPy does without the GIL.

    Returns
    -------
    indices, similarities : ndarrays of shape (n_samples, k)
        By decreasing similarity; ``-1`` / ``-inf`` where a row had fewer
        than ``k`` distinct candidates. The row itself is not added (the
        caller puts it first).
    """
    n, width = candidates.shape
    k = min(k, width)
    indices = np.full((n, k), -1, dtype=np.int64)
    sims = np.full((n, k), -np.inf, dtype=np.float32)

    def block(start):
        stop = min(start + _RESCORE_ROWS, n)
        cand = candidates[start:stop]
        missing = cand < 0
        # A contiguous block of queries and one gather of their candidates.
        gathered = rows.take(np.where(missing, 0, cand).ravel()).reshape(stop - start, width, -1)
        s = np.matmul(gathered, rows.block(start, stop)[:, :, None])[:, :, 0]
        s[missing] = -np.inf
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best = np.take_along_axis(s, top, axis=1)
        indices[start:stop] = np.where(np.isfinite(best), np.take_along_axis(cand, top, axis=1), -1)
        sims[start:stop] = best

    starts = range(0, n, _RESCORE_ROWS)
    n_threads = min(len(starts), n_threads or min(_RESCORE_THREADS, os.cpu_count() or 1))
    if n_threads <= 1:
        for start in starts:
            block(start)
    else:
        with ThreadPoolExecutor(n_threads) as pool:
            list(pool.map(block, starts))
    return indices, sims
