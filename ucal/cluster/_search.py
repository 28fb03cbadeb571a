"""Neighbour-search backends of the clustering step: exact and approximate.

Every epoch's clustering starts from the ``k1`` nearest neighbours of every
sample. Exact search costs one N x N similarity product: seconds at
Market-1501 size, hours at a million images on a CPU. The backends here trade
exactness for speed where the user asks (or where ``"auto"`` must):

* :class:`ExactSearch` -- blocked BLAS products (``"numpy"``), faiss's flat
  index (``"faiss"``) or blocked products on a torch device (``"torch"``, the
  GPU of :class:`ucal.UCALReID`);
* :class:`IVFSearch` -- an inverted file: k-means lists, each row searched in
  the ``n_probe`` lists nearest to it (BLAS, or faiss's ``IndexIVFFlat``,
  ``IndexIVFScalarQuantizer`` or ``IndexIVFPQ``, on a GPU where faiss has one);
* :class:`HNSWSearch` -- faiss's HNSW graph.

Which one ``"auto"`` picks, and why, is measured by
``benchmarks/bench_search.py --part backends`` (docs: large_scale).

They are scikit-learn estimators (``get_params``/``set_params``), so a
clusterer's ``search`` can be tuned in a grid search (``search__n_probe``).
"""

import logging
import time
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from ._faiss import (
    ENCODINGS,
    FASTSCAN_MIN_ROWS,
    code_layout,
    gpu_of,
    import_faiss,
    inverted_file,
    ivf_index,
    on_device,
    rescore,
    search_index,
)
from ._ivf import default_n_lists, ivf_knn, training_sample
from ._knn import UnitRows, exact_knn, self_first

logger = logging.getLogger(__name__)

__all__ = [
    "AUTO_EXACT_MAX_SAMPLES",
    "ExactSearch",
    "HNSWSearch",
    "IVFSearch",
    "NeighborSearch",
    "resolve_search",
]

#: ``search="auto"`` searches exactly up to this many samples (on a CPU).
AUTO_EXACT_MAX_SAMPLES = 100_000

SEARCH_NAMES = ("auto", "numpy", "faiss", "torch", "ivf", "faiss-ivf", "hnsw")


class NeighborSearch(BaseEstimator):
    """Base class of the neighbour-search backends.

    Subclasses implement ``_search(rows, n_neighbors)`` on the unit-norm rows
    (``ucal.cluster._knn.UnitRows``) and declare ``exact``; any subclass can
    be passed as the ``search`` of :class:`~ucal.SelfPacedDBSCAN` and
    :func:`~ucal.cluster.jaccard_distance`.

    Examples
    --------
    >>> import numpy as np
    >>> from ucal.cluster import NeighborSearch
    >>> class FirstRows(NeighborSearch):
    ...     exact = False
    ...     def _search(self, rows, k):  # a (useless) search: rows 0..k-1
    ...         idx = np.tile(np.arange(k), (rows.n_samples, 1))
    ...         idx[:, 0] = np.arange(rows.n_samples)
    ...         return idx, np.ones(idx.shape, dtype=np.float32)
    >>> FirstRows().kneighbors(np.eye(3) + 0.1, 2)[0][:, 0].tolist()
    [0, 1, 2]
    """

    exact = True
    _parameter_constraints = {}

    def kneighbors(self, X, n_neighbors):
        """The ``n_neighbors`` most cosine-similar rows of ``X`` to each row.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features; rows are L2-normalised (float16 features are read and
            normalised a block at a time, never copied whole).
        n_neighbors : int
            Neighbours per row, the row itself included (it comes first).

        Returns
        -------
        indices : ndarray of shape (n_samples, n_neighbors), int64
            Neighbours by decreasing similarity, ``indices[i, 0] == i``.
        similarities : ndarray of shape (n_samples, n_neighbors), float32
            The matching cosine similarities.
        """
        rows = X if isinstance(X, UnitRows) else UnitRows(X)
        return self._search_rows(rows, n_neighbors)

    def _search_rows(self, rows, n_neighbors):
        """:meth:`kneighbors` on rows already wrapped in ``UnitRows``."""
        self._validate_params()
        k = min(int(n_neighbors), rows.n_samples)
        indices, sims = self._search(rows, k)
        return _fill_missing(indices, sims)


def _fill_missing(indices, sims):
    """Where an approximate search met fewer than k neighbours (index -1),
    repeat the row itself at its last similarity: a repeated self adds no
    neighbour to the Jaccard sets."""
    missing = indices < 0
    if missing.any():
        rows, cols = np.nonzero(missing)
        indices[rows, cols] = rows
        last = np.where(np.isfinite(sims), sims, np.inf).min(axis=1)
        sims[rows, cols] = last[rows]
    return indices, sims


class ExactSearch(NeighborSearch):
    """Exact nearest neighbours by cosine similarity.

    Parameters
    ----------
    backend : {"numpy", "faiss", "torch"}, default="numpy"
        ``"numpy"``: blocked BLAS products over the upper block triangle of
        the similarity matrix (half of one X Xᵀ). ``"faiss"``:
        ``faiss.IndexFlatIP`` (needs faiss; on a GPU with faiss's GPU build
        when ``device`` is a CUDA device). ``"torch"``: blocked products on
        ``device``, where a GPU makes a million images a matter of minutes
        (needs torch; see :mod:`ucal.reid`).
    device : str, default=None
        Torch device of the ``"torch"`` backend (None: CUDA when available,
        else the CPU); CUDA device of the ``"faiss"`` backend (None: the
        CPU).
    block_rows : int, default=None
        Rows per block (None: sized so that a block of similarities stays
        under about 48 MB on the CPU, 1 GB on a GPU).
    n_jobs : int, default=None
        Threads of the faiss backend.

    Examples
    --------
    >>> import numpy as np
    >>> from ucal.cluster import ExactSearch
    >>> X = np.eye(4) + 0.1
    >>> idx, sim = ExactSearch().kneighbors(X, 2)
    >>> idx[:, 0].tolist()
    [0, 1, 2, 3]
    """

    _parameter_constraints = {
        "backend": [StrOptions({"numpy", "faiss", "torch"})],
        "device": [str, None],
        "block_rows": [Interval(Integral, 1, None, closed="left"), None],
        "n_jobs": [Integral, None],
    }

    def __init__(self, backend="numpy", *, device=None, block_rows=None, n_jobs=None):
        self.backend = backend
        self.device = device
        self.block_rows = block_rows
        self.n_jobs = n_jobs

    def _search(self, rows, k):
        if self.backend == "torch":
            from ..reid._neighbors import torch_knn  # the only torch import of this path

            return torch_knn(rows, k, device=self.device, block_rows=self.block_rows)
        return exact_knn(rows, k, search=self.backend, block_size=self.block_rows, n_jobs=self.n_jobs,
                         device=self.device)


class IVFSearch(NeighborSearch):
    """Approximate nearest neighbours by an inverted file (k-means lists).

    The rows are split into ``n_lists`` lists by spherical k-means; each row
    is searched among the members of the ``n_probe`` lists whose centroids
    are nearest to it. The work is about ``n_probe / n_lists`` of an exact
    search, plus the assignment of every row to the centroids.

    Parameters
    ----------
    n_probe : int, default=96
        Lists searched per row: the accuracy knob (more is slower and closer
        to exact; at least the number of lists searches them all, exactly).
        Measured at N = 100,000 on embeddings of a low intrinsic dimension:
        96 probes found 0.96 of the exact neighbours, 160 probes 0.98, with
        labels agreeing with the exact ones at pairwise F 0.985 and 0.992.
    n_lists : int, default=None
        Number of lists (None: lists of about 32 rows, at most
        ``2 * sqrt(32 * n_samples)`` lists, which bounds the cost of
        assigning every row to them).
    n_iter : int, default=5
        k-means iterations.
    n_components : int, float or None, default=0.8
        Dimensions of the space in which the rows are assigned to lists and
        choose the lists they probe: the rows minus their mean, projected on
        the leading principal directions of the k-means sample. An int is
        that many directions; a float in (0, 1) the fewest that hold that
        share of the sample's variance, and all dimensions where that takes
        half of them or more (features without a low-dimensional structure,
        whose lists a projection would blur). None: all dimensions.
        Assigning every row to every list is the largest cost at a million
        rows, and falls with the dimension; the neighbours' similarities
        stay exact, in all dimensions (``"numpy"`` backend).
    sample_size : int, default=None
        Rows the k-means is trained on (None: ``32 * n_lists``, at most all).
        k-means trained on few rows per list gives lists that follow
        identities less closely (measured at N = 100,000: 5 rows per list
        found 0.90 of the exact neighbours at 64 probes, all rows 0.94).
    backend : {"numpy", "faiss"}, default="numpy"
        ``"numpy"``: each list is scanned with one matrix product for all the
        rows that probe it, and updates the lists of both sides; no copy of
        the features. ``"faiss"``: faiss's inverted file, in the same space
        as the lists (``n_components``), its codes set by ``encoding``; each
        row's ``refine * n_neighbors`` best candidates are then rescored
        exactly, in all dimensions. Measured at N = 100,000 on 2 CPU cores,
        faiss's with ``encoding="fastscan"``, 256 probes and ``refine=1.5``
        kept the labels within pairwise F 0.01 of exact search's 3.9 to 4.2
        times faster than exact search, the NumPy one with 160 probes 1.5 times
        faster (``benchmarks/results/search_backends_100000*.md``);
        ``"auto"`` uses the former (``search="faiss-ivf"``).
    encoding : {"flat", "fp16", "sq8", "pq", "fastscan"}, default="flat"
        Codes of the faiss backend's lists (``"numpy"`` needs ``"flat"``):
        float32 (``IndexIVFFlat``), 2 or 1 bytes per dimension
        (``IndexIVFScalarQuantizer``), a product quantiser of about 2 bits
        per dimension (``IndexIVFPQ``) where the index's copy of the rows
        must be small, or ``"fastscan"``: 4-bit codes of 2 dimensions
        scanned with SIMD (``IndexIVFPQFastScan``, CPU only), four times the
        candidates re-ranked by their float32 copy in the lists' space
        (``IndexRefineFlat``) before the exact rescoring.
    refine : float, default=1.0
        Candidates per neighbour the faiss backend rescores exactly
        (``ceil(refine * n_neighbors)`` per row; at least 1). Above 1 it
        recovers neighbours the list codes or the projection ranked too low.
    device : str, default=None
        CUDA device of the faiss backend's index (``"cuda"``, ``"cuda:1"``;
        needs faiss's GPU build). None: the CPU.
    random_state : int, RandomState instance or None, default=None
        Chooses the k-means sample and its initial centroids.
    n_jobs : int, default=None
        Threads of the faiss backend.
    verbose : bool, default=False
        A progress bar over the lists (``"numpy"`` backend).

    Examples
    --------
    >>> import numpy as np
    >>> from ucal.cluster import IVFSearch
    >>> rng = np.random.default_rng(0)
    >>> X = np.repeat(rng.normal(size=(20, 16)), 5, axis=0) + 0.05 * rng.normal(size=(100, 16))
    >>> idx, sim = IVFSearch(n_probe=4, random_state=0).kneighbors(X, 5)
    >>> bool((idx // 5 == np.arange(100)[:, None] // 5).mean() > 0.9)
    True
    """

    exact = False

    _parameter_constraints = {
        "n_probe": [Interval(Integral, 1, None, closed="left")],
        "n_lists": [Interval(Integral, 1, None, closed="left"), None],
        "n_iter": [Interval(Integral, 0, None, closed="left")],
        "n_components": [
            Interval(Integral, 1, None, closed="left"), Interval(Real, 0, 1, closed="neither"), None,
        ],
        "sample_size": [Interval(Integral, 1, None, closed="left"), None],
        "backend": [StrOptions({"numpy", "faiss"})],
        "encoding": [StrOptions(set(ENCODINGS))],
        "refine": [Interval(Real, 1, None, closed="left")],
        "device": [str, None],
        "random_state": ["random_state"],
        "n_jobs": [Integral, None],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        n_probe=96,
        *,
        n_lists=None,
        n_iter=5,
        n_components=0.8,
        sample_size=None,
        backend="numpy",
        encoding="flat",
        refine=1.0,
        device=None,
        random_state=None,
        n_jobs=None,
        verbose=False,
    ):
        self.n_probe = n_probe
        self.n_lists = n_lists
        self.n_iter = n_iter
        self.n_components = n_components
        self.sample_size = sample_size
        self.backend = backend
        self.encoding = encoding
        self.refine = refine
        self.device = device
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.verbose = verbose

    def _search(self, rows, k):
        n = rows.n_samples
        n_lists = self.n_lists or default_n_lists(n)
        sample_size = self.sample_size or 32 * n_lists
        rng = check_random_state(self.random_state)
        if self.backend == "faiss":
            return self._search_faiss(rows, k, min(n_lists, n), sample_size, rng)
        if self.encoding != "flat" or self.refine != 1 or self.device not in (None, "cpu"):
            raise ValueError(
                f"IVFSearch(backend='numpy') scans exact float32 rows on the CPU: encoding="
                f"{self.encoding!r}, refine={self.refine!r} and device={self.device!r} need "
                "backend='faiss' (the defaults are 'flat', 1.0 and None)."
            )
        bar = None
        if self.verbose:
            from tqdm.auto import tqdm

            bar = tqdm(total=min(n_lists, n), desc="IVF search", unit="list")
        try:
            progress = None if bar is None else (lambda done: bar.update(done - bar.n))
            return ivf_knn(
                rows, k, n_lists=n_lists, n_probe=self.n_probe, n_iter=self.n_iter,
                sample_size=sample_size, rng=rng, n_components=self.n_components,
                progress=progress,
            )
        finally:
            if bar is not None:
                bar.close()

    def _search_faiss(self, rows, k, n_lists, sample_size, rng):
        if self.encoding == "fastscan" and self.device not in (None, "cpu"):
            raise ValueError(
                "IVFSearch(encoding='fastscan') runs on the CPU only (faiss has no GPU fast-scan "
                f"index); got device={self.device!r}. Use encoding='flat' or 'pq' on a GPU."
            )
        faiss = import_faiss("IVFSearch(backend='faiss')", self.n_jobs)
        gpu = gpu_of(faiss, self.device)  # before any work
        clock = time.perf_counter()
        # A product quantiser trains 2**bits centroids per sub-vector: 256 rows at least.
        min_rows = 256 if self.encoding in ("pq", "fastscan") else 0
        sample, space = training_sample(rows, n_lists, sample_size, rng, self.n_components, min_rows)
        encoding = self.encoding
        if encoding == "fastscan" and sample.size < FASTSCAN_MIN_ROWS:
            encoding = "flat"  # too few rows to train 4-bit codes; flat lists are exact anyway
        dim, project = code_layout(space.n_components, encoding)[1], space.project
        pad = dim - space.n_components
        if pad:  # zero columns: the sub-vectors divide the dimension, no distance changes
            project = lambda block: np.pad(space.project(block), ((0, 0), (0, pad)))  # noqa: E731
        lists_seed = int(rng.randint(2**31 - 1))
        codes_seed = int(rng.randint(2**31 - 1)) if encoding == "fastscan" else 0
        index = ivf_index(faiss, dim, n_lists, encoding, sample.size, seed=codes_seed)
        lists = inverted_file(faiss, index)  # fastscan: the one inside the re-ranking
        lists.cp.seed = lists_seed
        lists.cp.niter = max(1, int(self.n_iter))
        lists.cp.min_points_per_centroid = 1  # our sample size is deliberate: no warning
        index.train(space.embed_rows(rows, sample, project))
        lists.nprobe = int(min(self.n_probe, n_lists))
        index = on_device(faiss, index, gpu)
        trained = time.perf_counter()
        # (a small tolerance: 2.2 * 25 is 55.000000000000014 in floating point)
        width = min(rows.n_samples, max(k, int(np.ceil(self.refine * k - 1e-9))))
        candidates, _ = search_index(index, rows, width, embed=project)
        del index
        searched = time.perf_counter()
        threads = self.n_jobs if self.n_jobs is not None and self.n_jobs > 0 else None
        indices, sims = rescore(rows, candidates, k, n_threads=threads)
        logger.info(
            "faiss IVF (%s): %d rows, %d lists in %d of %d dimensions, %d probes; training %.1f s, "
            "search %.1f s, rescoring %d candidates per row %.1f s", encoding, rows.n_samples,
            n_lists, space.n_components, rows.n_features, min(self.n_probe, n_lists), trained - clock,
            searched - trained, width, time.perf_counter() - searched,
        )
        return self_first(indices, sims)


class HNSWSearch(NeighborSearch):
    """Approximate nearest neighbours by faiss's HNSW graph (needs faiss).

    Parameters
    ----------
    n_links : int, default=32
        Links per node of the graph (faiss's ``M``): more is more accurate
        and more memory (``n_samples * n_links * 8`` bytes, plus faiss's
        float32 copy of the features).
    ef_construction : int, default=80
        Candidate list while building: the build-time accuracy knob.
    ef_search : int, default=128
        Candidate list while searching: the search-time accuracy knob (at
        least ``n_neighbors`` is used).
    n_jobs : int, default=None
        Threads of faiss.

    Examples
    --------
    >>> import numpy as np
    >>> from ucal.cluster import HNSWSearch
    >>> rng = np.random.default_rng(0)
    >>> X = np.repeat(rng.normal(size=(20, 16)), 5, axis=0) + 0.05 * rng.normal(size=(100, 16))
    >>> idx, sim = HNSWSearch(n_links=8).kneighbors(X, 5)
    >>> bool((idx // 5 == np.arange(100)[:, None] // 5).mean() > 0.9)
    True
    """

    exact = False

    _parameter_constraints = {
        "n_links": [Interval(Integral, 2, None, closed="left")],
        "ef_construction": [Interval(Integral, 1, None, closed="left")],
        "ef_search": [Interval(Integral, 1, None, closed="left")],
        "n_jobs": [Integral, None],
    }

    def __init__(self, n_links=32, *, ef_construction=80, ef_search=128, n_jobs=None):
        self.n_links = n_links
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.n_jobs = n_jobs

    def _search(self, rows, k):
        faiss = import_faiss("HNSWSearch", self.n_jobs)
        index = faiss.IndexHNSWFlat(rows.n_features, int(self.n_links), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(self.ef_construction)
        index.hnsw.efSearch = max(int(self.ef_search), k)
        return self_first(*search_index(index, rows, k))


def resolve_search(search, n_samples, *, device=None, n_jobs=None):
    """The backend object for a ``search`` parameter value.

    ``"auto"``: on an accelerator ``device``, exact search on it with torch.
    On the CPU, exact NumPy search up to ``AUTO_EXACT_MAX_SAMPLES`` samples;
    above, faiss's inverted file (:func:`faiss_ivf`: fast-scan codes, 256
    probes, 1.5 candidates per neighbour rescored) where faiss is installed, else
    ucal's NumPy :class:`IVFSearch` (96 probes). The CPU choice is the one
    measured in ``benchmarks/results/search_backends_*.md``: the fastest
    engine whose labels stayed within pairwise F 0.01 of exact search's.
    faiss's GPU indexes are not chosen on their own (not measured here); ask
    for them with ``IVFSearch(backend="faiss", device="cuda")``.

    The names ``"numpy"``, ``"faiss"`` and ``"torch"`` are exact searches;
    ``"ivf"`` (ucal's inverted file), ``"faiss-ivf"`` (faiss's, as
    ``"auto"`` uses it) and ``"hnsw"`` the approximate ones; a
    :class:`NeighborSearch` is used as given. ``n_jobs`` is the thread
    count of the faiss engines; ``device`` is used by ``"torch"`` only.
    """
    if isinstance(search, NeighborSearch):
        return search
    if search == "auto":
        if device is not None and str(device) != "cpu":
            return ExactSearch("torch", device=str(device))
        if n_samples <= AUTO_EXACT_MAX_SAMPLES:
            return ExactSearch("numpy")
        return faiss_ivf(n_jobs=n_jobs) if _has_faiss() else IVFSearch(random_state=0)
    if search == "torch":
        return ExactSearch("torch", device=None if device is None else str(device))
    if search in ("numpy", "faiss"):
        return ExactSearch(search, n_jobs=n_jobs if search == "faiss" else None)
    if search == "ivf":
        return IVFSearch(random_state=0)
    if search == "faiss-ivf":
        return faiss_ivf(n_jobs=n_jobs)
    if search == "hnsw":
        return HNSWSearch(n_jobs=n_jobs)
    raise ValueError(
        f"search must be one of {', '.join(repr(s) for s in SEARCH_NAMES)} or a "
        f"NeighborSearch instance (ExactSearch, IVFSearch, HNSWSearch), got {search!r}."
    )


def faiss_ivf(*, n_jobs=None):
    """faiss's inverted file with the settings ``search="auto"`` uses above
    ``AUTO_EXACT_MAX_SAMPLES`` samples: 4-bit fast-scan codes
    (``encoding="fastscan"``), 256 probes, ``refine=1.5``, seed 0.

    Measured at N = 100,000, d = 2,048 on 2 CPU cores, in three runs:
    labels at pairwise F 0.993 against exact search's, the whole clustering
    step 3.9 to 4.2 times faster than exact search; faiss's flat lists at
    256 probes with ``refine=2`` reached the same F at 2.6 to 2.7 times,
    ucal's NumPy inverted file needed 160 probes for F 0.992 at 1.5 times
    (``benchmarks/results/search_backends_100000_fastscan*.md``,
    ``search_backends_100000_refine.md``).
    """
    return IVFSearch(n_probe=256, backend="faiss", encoding="fastscan", refine=1.5,
                     n_jobs=n_jobs, random_state=0)


def _has_faiss():
    try:
        import_faiss("search='auto'")
    except ImportError:
        return False
    return True
