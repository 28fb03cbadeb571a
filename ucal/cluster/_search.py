"""Neighbour-search backends of the clustering step: exact and approximate.

Every epoch's clustering starts from the ``k1`` nearest neighbours of every
sample. Exact search costs one N x N similarity product: seconds at
Market-1501 size, hours at a million images on a CPU. The backends here trade
exactness for speed where the user asks (or where ``"auto"`` must):

* :class:`ExactSearch` -- blocked BLAS products (``"numpy"``), faiss's flat
  index (``"faiss"``) or blocked products on a torch device (``"torch"``, the
  GPU of :class:`ucal.UCALReID`);
* :class:`IVFSearch` -- faiss's inverted file: k-means lists, each row
  searched in the ``n_probe`` lists nearest to it (``IndexIVFPQFastScan``,
  ``IndexIVFFlat``, ``IndexIVFScalarQuantizer`` or ``IndexIVFPQ``, on a GPU
  where faiss has one);
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
    default_n_lists,
    gpu_of,
    import_faiss,
    inverted_file,
    ivf_index,
    on_device,
    rescore,
    search_index,
    training_sample,
)
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

SEARCH_NAMES = ("auto", "numpy", "faiss", "torch", "faiss-ivf", "hnsw")
# Whether "auto" has said, in this process, that it searches exactly for want of faiss.
_WARNED_NO_FAISS = []


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
        if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, Integral) or n_neighbors < 1:
            raise ValueError(f"n_neighbors must be an int of at least 1, got {n_neighbors!r}.")
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
    """Approximate nearest neighbours by faiss's inverted file (needs faiss).

    The rows are split into ``n_lists`` lists by k-means (faiss's, trained
    on a sample); each row is searched among the members of the ``n_probe``
    lists whose centroids are nearest to it, in a smaller space where the
    features allow it (``n_components``); each row's ``refine *
    n_neighbors`` best candidates are then rescored exactly, in all
    dimensions, so the similarities handed on are exact.

    The defaults are what ``search="auto"`` uses above 100,000 samples on a
    CPU: measured at N = 100,000, d = 2,048 on 2 CPU cores, labels within
    pairwise F 0.01 of exact search's (0.993), the whole clustering step 3.9
    to 4.6 times faster than exact search in seven runs
    (``benchmarks/results/search_backends_100000*.md``,
    ``search_compare_faiss.md``). ucal's former NumPy inverted file needed
    160 probes for the same F and was 1.5 to 1.8 times faster than exact
    search; it was removed.

    Parameters
    ----------
    n_probe : int, default=256
        Lists searched per row: the accuracy knob (more is slower and closer
        to exact; at least the number of lists searches them all).
    n_lists : int, default=None
        Number of lists (None: lists of about 32 rows, at most
        ``2 * sqrt(32 * n_samples)`` lists, which bounds the cost of
        assigning every row to them).
    n_iter : int, default=5
        k-means iterations.
    n_components : int, float or None, default=0.8
        Dimensions of the space the lists and their codes live in: the rows
        minus their mean, projected on the leading principal directions of
        the training sample. An int is that many directions; a float in
        (0, 1) the fewest that hold that share of the sample's variance, and
        all dimensions where that takes half of them or more (features
        without a low-dimensional structure, whose lists a projection would
        blur). None: all dimensions. faiss scans a list at a cost that grows
        with the dimension; the neighbours' similarities stay exact, in all
        dimensions.
    sample_size : int, default=None
        Rows the lists are trained on (None: ``32 * n_lists``, at most all).
    encoding : {"flat", "fp16", "sq8", "pq", "fastscan"} or None, default=None
        Codes of the lists: float32 (``IndexIVFFlat``), 2 or 1 bytes per
        dimension (``IndexIVFScalarQuantizer``), a product quantiser of
        about 2 bits per dimension (``IndexIVFPQ``) where the index's copy
        of the rows must be small, or ``"fastscan"``: 4-bit codes of 2
        dimensions scanned with SIMD (``IndexIVFPQFastScan``, CPU only),
        four times the candidates re-ranked by their float32 copy in the
        lists' space (``IndexRefineFlat``) before the exact rescoring.
        None: ``"fastscan"`` on the CPU, ``"flat"`` on a GPU.
    refine : float, default=1.5
        Candidates per neighbour rescored exactly (``ceil(refine *
        n_neighbors)`` per row; at least 1). Above 1 it recovers neighbours
        the list codes or the projection ranked too low.
    device : str, default=None
        CUDA device of the index (``"cuda"``, ``"cuda:1"``; needs faiss's
        GPU build). None: the CPU.
    random_state : int, RandomState instance or None, default=None
        Chooses the training sample and seeds faiss's k-means.
    n_jobs : int, default=None
        Threads of faiss and of the rescoring.

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
        "encoding": [StrOptions(set(ENCODINGS)), None],
        "refine": [Interval(Real, 1, None, closed="left")],
        "device": [str, None],
        "random_state": ["random_state"],
        "n_jobs": [Integral, None],
    }

    def __init__(
        self,
        n_probe=256,
        *,
        n_lists=None,
        n_iter=5,
        n_components=0.8,
        sample_size=None,
        encoding=None,
        refine=1.5,
        device=None,
        random_state=None,
        n_jobs=None,
    ):
        self.n_probe = n_probe
        self.n_lists = n_lists
        self.n_iter = n_iter
        self.n_components = n_components
        self.sample_size = sample_size
        self.encoding = encoding
        self.refine = refine
        self.device = device
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _search(self, rows, k):
        on_cpu = self.device in (None, "cpu")
        encoding = self.encoding or ("fastscan" if on_cpu else "flat")
        if encoding == "fastscan" and not on_cpu:
            raise ValueError(
                "IVFSearch(encoding='fastscan') runs on the CPU only (faiss has no GPU fast-scan "
                f"index); got device={self.device!r}. Use encoding='flat' or 'pq' on a GPU "
                "(or encoding=None, which picks 'flat' there)."
            )
        faiss = import_faiss("IVFSearch", self.n_jobs)
        gpu = gpu_of(faiss, self.device)  # before any work
        n = rows.n_samples
        n_lists = min(self.n_lists or default_n_lists(n), n)
        sample_size = self.sample_size or 32 * n_lists
        rng = check_random_state(self.random_state)
        clock = time.perf_counter()
        # A product quantiser trains 2**bits centroids per sub-vector: 256 rows at least.
        min_rows = 256 if encoding in ("pq", "fastscan") else 0
        sample, space = training_sample(rows, n_lists, sample_size, rng, self.n_components, min_rows)
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
    above, faiss's inverted file (:class:`IVFSearch` with its defaults:
    fast-scan codes, 256 probes, 1.5 candidates per neighbour rescored)
    where faiss is installed, else exact NumPy search, with a warning that
    says how much faster faiss is. The CPU choice is the one measured in
    ``benchmarks/results/search_backends_*.md``: the fastest engine whose
    labels stayed within pairwise F 0.01 of exact search's. faiss's GPU
    indexes are not chosen on their own (not measured here); ask for them
    with ``IVFSearch(device="cuda")``.

    The names ``"numpy"``, ``"faiss"`` and ``"torch"`` are exact searches;
    ``"faiss-ivf"`` (faiss's inverted file, as ``"auto"`` uses it) and
    ``"hnsw"`` the approximate ones; a :class:`NeighborSearch` is used as
    given. ``n_jobs`` is the thread count of the faiss engines; ``device``
    is used by ``"torch"`` only.
    """
    if isinstance(search, NeighborSearch):
        return search
    if search == "auto":
        if device is not None and str(device) != "cpu":
            return ExactSearch("torch", device=str(device))
        if n_samples <= AUTO_EXACT_MAX_SAMPLES:
            return ExactSearch("numpy")
        if _has_faiss():
            return IVFSearch(n_jobs=n_jobs, random_state=0)
        if not _WARNED_NO_FAISS:  # once per process, not every epoch
            _WARNED_NO_FAISS.append(True)
            logger.warning(
                "search='auto' on %d samples without faiss: exact NumPy search. faiss's "
                "inverted file is about 4 times faster at the same clustering (pip install "
                "'ucal[faiss]').", n_samples,
            )
        return ExactSearch("numpy")
    if search == "torch":
        return ExactSearch("torch", device=None if device is None else str(device))
    if search in ("numpy", "faiss"):
        return ExactSearch(search, n_jobs=n_jobs if search == "faiss" else None)
    if search == "faiss-ivf":
        return IVFSearch(n_jobs=n_jobs, random_state=0)
    if search == "hnsw":
        return HNSWSearch(n_jobs=n_jobs)
    removed = (
        " ('ivf', ucal's NumPy inverted file, was removed: faiss's, 'faiss-ivf', is faster at "
        "the same accuracy)" if search == "ivf" else ""
    )
    raise ValueError(
        f"search must be one of {', '.join(repr(s) for s in SEARCH_NAMES)} or a "
        f"NeighborSearch instance (ExactSearch, IVFSearch, HNSWSearch), got {search!r}{removed}."
    )


def _has_faiss():
    try:
        import_faiss("search='auto'")
    except ImportError:
        return False
    return True
