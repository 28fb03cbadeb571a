"""SpCL's self-paced DBSCAN on the k-reciprocal Jaccard distance."""

import logging
import time
from numbers import Integral, Real

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import validate_data

from ..utils import outliers_as_singletons, relabel
from ._centers import CenterDistancesMixin, cluster_centers, warn_zero_rows
from ._dbscan import sparse_dbscan
from ._jaccard import jaccard_from_rows
from ._knn import UnitRows
from ._search import SEARCH_NAMES, NeighborSearch, resolve_search

logger = logging.getLogger(__name__)

__all__ = ["SelfPacedDBSCAN"]


def _iou_with(base, other):
    """Per sample: IoU of its cluster in ``base`` with its cluster in ``other``.

    Computed from cluster sizes and the sizes of the (base, other)
    intersections, so it needs no N x N matrix.
    """
    base_size = np.bincount(base)
    other_size = np.bincount(other)
    pair_key = base.astype(np.int64) * (other.max() + 1) + other
    _, pair_idx, pair_count = np.unique(pair_key, return_inverse=True, return_counts=True)
    inter = pair_count[pair_idx].astype(np.float64)
    union = base_size[base] + other_size[other] - inter
    return inter / union


class SelfPacedDBSCAN(
    CenterDistancesMixin,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    ClusterMixin,
    BaseEstimator,
):
    """Self-paced DBSCAN on the k-reciprocal Jaccard distance (SpCL).

    The base clustering of UCAL (paper Sec. 3.1): DBSCAN with a precomputed
    :func:`~ucal.cluster.jaccard_distance`, plus SpCL's reliability
    criterion. Two more DBSCAN runs, at ``eps - eps_gap`` (tighter) and
    ``eps + eps_gap`` (looser), score each sample: its *compactness* is the
    IoU of its cluster with its tighter cluster, its *independence* the IoU of
    its cluster with its looser cluster. A cluster is kept when its
    independence (the best of its members) is among the most reliable
    ``indep_quantile`` of clusters, and inside a kept cluster only the members
    as compact as the cluster's best stay. Everything else is un-clustered
    (``-1``) for this fit.

    Parameters
    ----------
    eps : float, default=0.6
        DBSCAN radius on the Jaccard distance.
    eps_gap : float, default=0.02
        Offset of the tighter and looser DBSCAN runs of the self-paced
        criterion.
    min_samples : int, default=4
        DBSCAN's neighbourhood size for a core point, the point included.
    k1 : int, default=30
        Forward neighbourhood of the Jaccard distance (clipped to the number
        of samples).
    k2 : int, default=6
        Local query expansion of the Jaccard distance.
    self_paced : bool, default=True
        Apply the reliability criterion. ``False`` gives plain DBSCAN on the
        Jaccard distance.
    indep_quantile : float, default=0.9
        Fraction of clusters (of more than one sample) whose independence
        defines the threshold, at the first fit.
    k1_rule : {"cluster_size", "fixed"}, default="cluster_size"
        How ``k1`` follows the data. ``"cluster_size"``: ``k1`` is an upper
        bound. When it exceeds twice the median size of the clusters DBSCAN
        finds with it, the distance is computed again with ``k1`` set to
        that bound (never below ``k2 + 1``), once: a neighbourhood much
        larger than the groups in the data reaches across identities and
        chains them into a few giant clusters. ``"fixed"``: ``k1`` as given
        (SpCL; the ``paper`` preset).
    search : str or NeighborSearch, default="auto"
        Neighbour search of the Jaccard distance. ``"auto"``: exact (NumPy)
        up to 100,000 samples; above, faiss's inverted file
        (``"faiss-ivf"``) where faiss is installed, else exact with a
        warning (inside :class:`~ucal.UCALReID` on a GPU: exact search on
        the GPU at every size). ``"numpy"``, ``"faiss"``, ``"torch"``:
        exact; ``"faiss-ivf"``, ``"hnsw"``: approximate with their
        defaults (faiss); or a configured
        :class:`~ucal.cluster.ExactSearch`, :class:`~ucal.cluster.IVFSearch`
        or :class:`~ucal.cluster.HNSWSearch` (tunable in a grid search as
        ``search__n_probe``). See :doc:`/large_scale`.
    n_jobs : int, default=None
        Threads of the faiss engines (``"faiss"``, ``"faiss-ivf"``,
        ``"hnsw"`` and ``"auto"`` where it picks faiss).

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of each sample, ``-1`` when not clustered in this fit.
    n_clusters_ : int
        Number of clusters.
    k1_ : int
        The ``k1`` of the distance the labels come from (``k1`` clipped to
        the number of samples, or lowered by ``k1_rule``).
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        L2-normalised mean of the L2-normalised members of each cluster.
    dbscan_labels_ : ndarray of shape (n_samples,)
        Labels of the DBSCAN run at ``eps``, before the reliability filter.
    compactness_ : ndarray of shape (n_samples,)
        IoU of each sample's cluster with its cluster at ``eps - eps_gap``
        (1.0 = fully compact). Only with ``self_paced=True``.
    independence_ : ndarray of shape (n_samples,)
        IoU of each sample's cluster with its cluster at ``eps + eps_gap``
        (1.0 = fully independent). Only with ``self_paced=True``.
    independence_threshold_ : float
        Clusters whose best independence is below it are dropped. Fixed at
        the first fit and kept by later fits of the same estimator, as SpCL
        keeps it across epochs. To reset it, refit a fresh estimator
        (``sklearn.base.clone(est)``) or delete the attribute
        (``del est.independence_threshold_``).
    search_ : NeighborSearch
        The neighbour search used (``search`` resolved for this data).
    timings_ : dict
        Seconds of this fit's parts: ``"search"`` (neighbours),
        ``"jaccard"`` (the distance from them), ``"dbscan"`` (the DBSCAN runs
        and the reliability criterion) and ``"total"``.
    n_features_in_ : int
        Number of features seen in ``fit``.

    See Also
    --------
    ucal.cluster.jaccard_distance : The distance clustered here.
    ucal.SNPSSplitter : Splits impure clusters with an oracle.
    ucal.MPPSMerger : Merges fragmented identities with an oracle.

    Notes
    -----
    An all-zero row has no direction: it is made noise (``-1``) with a
    warning, and is at cosine distance 1 from every centre in
    :meth:`transform` (scikit-learn's ``cosine_distances`` convention).

    Memory grows with the number of stored Jaccard entries, not with
    ``n_samples ** 2``: the 100,000-sample case runs in a few GB. Features
    that are already unit-norm float32 are used in place; float16 features
    (or a ``numpy.memmap``) are normalised a block at a time, never copied
    whole.

    Examples
    --------
    >>> import numpy as np
    >>> from ucal import SelfPacedDBSCAN
    >>> rng = np.random.default_rng(0)
    >>> centers = rng.normal(size=(4, 32))
    >>> X = np.repeat(centers, 15, axis=0) + 0.2 * rng.normal(size=(60, 32))
    >>> est = SelfPacedDBSCAN(k1=10, k2=3).fit(X)
    >>> est.n_clusters_
    4
    >>> est.transform(X).shape
    (60, 4)
    """

    _parameter_constraints = {
        "eps": [Interval(Real, 0.0, 1.0, closed="neither")],
        "eps_gap": [Interval(Real, 0.0, 1.0, closed="left")],
        "min_samples": [Interval(Integral, 1, None, closed="left")],
        "k1": [Interval(Integral, 1, None, closed="left")],
        "k2": [Interval(Integral, 1, None, closed="left")],
        "self_paced": ["boolean"],
        "indep_quantile": [Interval(Real, 0.0, 1.0, closed="both")],
        "k1_rule": [StrOptions({"cluster_size", "fixed"})],
        # "ivf" (removed) passes, so that resolve_search says what replaced it
        "search": [StrOptions(set(SEARCH_NAMES) | {"ivf"}, deprecated={"ivf"}), NeighborSearch],
        "n_jobs": [Integral, None],
    }

    _transform_dtypes = [np.float32, np.float64]
    _preserve_transform_dtype = True

    def __init__(
        self,
        eps=0.6,
        eps_gap=0.02,
        min_samples=4,
        k1=30,
        k2=6,
        self_paced=True,
        indep_quantile=0.9,
        k1_rule="cluster_size",
        search="auto",
        n_jobs=None,
    ):
        self.eps = eps
        self.eps_gap = eps_gap
        self.min_samples = min_samples
        self.k1 = k1
        self.k2 = k2
        self.self_paced = self_paced
        self.indep_quantile = indep_quantile
        self.k1_rule = k1_rule
        self.search = search
        self.n_jobs = n_jobs

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Cluster ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings; rows are L2-normalised internally.
        y : Ignored
            Not used, present for API consistency.

        Returns
        -------
        self : SelfPacedDBSCAN
            The fitted estimator.
        """
        clock = time.perf_counter()
        X = validate_data(self, X, dtype=[np.float32, np.float64, np.float16])
        n_samples = X.shape[0]
        if n_samples < self.min_samples:
            raise ValueError(
                f"SelfPacedDBSCAN needs at least min_samples={self.min_samples} "
                f"samples, got n_samples = {n_samples}."
            )
        rows = UnitRows(X, zero_rows="keep")
        # A zero row has no direction: it is noise, and stays out of the graph.
        zero = warn_zero_rows(rows.zero, "SelfPacedDBSCAN")
        kept = np.flatnonzero(~zero)
        kept_rows = rows if kept.size == n_samples else rows.subset(kept)
        labels = np.full(n_samples, -1, dtype=np.int64)
        self.dbscan_labels_ = labels.copy()
        self.k1_ = int(min(self.k1, n_samples))
        self.search_ = resolve_search(self.search, kept.size, n_jobs=self.n_jobs)
        timings = {"search": 0.0, "jaccard": 0.0, "dbscan": 0.0}
        if self.self_paced:
            self.compactness_ = np.zeros(n_samples)
            self.independence_ = np.zeros(n_samples)
        if kept.size >= self.min_samples:
            # Only distances up to the loosest eps matter to DBSCAN: the rest is
            # never stored, which keeps memory proportional to the near pairs.
            max_distance = self.eps + self.eps_gap if self.self_paced else self.eps
            k1 = min(self.k1, kept.size)
            distance = self._distance(kept_rows, k1, max_distance, timings)
            found = self._dbscan(distance, self.eps, timings)
            bound = self._k1_bound(found)
            if bound < k1:
                logger.info(
                    "SelfPacedDBSCAN: k1=%d is more than twice the median cluster size; "
                    "clustering again with k1=%d (k1_rule='cluster_size')", k1, bound,
                )
                k1 = bound
                distance = self._distance(kept_rows, k1, max_distance, timings)
                found = self._dbscan(distance, self.eps, timings)
            self.k1_ = int(k1)
            self.dbscan_labels_[kept] = found
            if self.self_paced:
                started = time.perf_counter()
                found = self._reliable(distance, found, kept)
                timings["dbscan"] += time.perf_counter() - started
            labels[kept] = found
        self.labels_ = labels
        self.n_clusters_ = int(labels.max(initial=-1) + 1)
        self.cluster_centers_ = cluster_centers(rows, labels, self.n_clusters_).astype(np.float32)
        self._n_features_out = self.n_clusters_
        timings["total"] = time.perf_counter() - clock
        self.timings_ = timings
        logger.info(
            "SelfPacedDBSCAN: %d clusters, %d of %d samples un-clustered (%.1f s: search %.1f, "
            "Jaccard %.1f, DBSCAN %.1f)",
            self.n_clusters_,
            int((labels < 0).sum()),
            n_samples,
            timings["total"], timings["search"], timings["jaccard"], timings["dbscan"],
        )
        return self

    def _distance(self, rows, k1, max_distance, timings):
        return jaccard_from_rows(
            rows, k1, self.k2, search=self.search_, max_distance=max_distance, timings=timings
        )

    def _dbscan(self, distance, eps, timings):
        started = time.perf_counter()
        found = sparse_dbscan(distance, eps, self.min_samples)
        timings["dbscan"] += time.perf_counter() - started
        return found

    def _k1_bound(self, labels):
        """The largest k1 the clusters of ``labels`` support (``k1_rule``)."""
        if self.k1_rule == "fixed" or not (labels >= 0).any():
            return np.inf
        median = float(np.median(np.bincount(labels[labels >= 0])))
        return max(self.k2 + 1, int(np.ceil(2 * median)))

    def _reliable(self, distance, labels, kept):
        """SpCL's reliability criterion on the ``kept`` rows; returns their filtered labels."""
        tight = sparse_dbscan(distance, self.eps - self.eps_gap, self.min_samples)
        loose = sparse_dbscan(distance, self.eps + self.eps_gap, self.min_samples)
        normal = outliers_as_singletons(labels)
        compact = _iou_with(normal, outliers_as_singletons(tight))
        indep = _iou_with(normal, outliers_as_singletons(loose))
        self.compactness_[kept] = compact
        self.independence_[kept] = indep
        n_groups = normal.max() + 1
        # A cluster scores as its best member (SpCL takes the min of 1 - IoU).
        cluster_indep = np.zeros(n_groups)
        np.maximum.at(cluster_indep, normal, indep)
        cluster_comp = np.zeros(n_groups)
        np.maximum.at(cluster_comp, normal, compact)
        sizes = np.bincount(normal)
        if not hasattr(self, "independence_threshold_"):
            # SpCL sorts 1 - IoU ascending and takes the entry at round(q * n);
            # the same entry of the IoU sorted descending, without rounding.
            scores = np.sort(cluster_indep[sizes > 1])[::-1]
            if scores.size:
                pos = min(scores.size - 1, int(np.round(scores.size * self.indep_quantile)))
                self.independence_threshold_ = float(scores[pos])
            else:
                self.independence_threshold_ = 1.0
        keep = (
            (labels >= 0)
            & (cluster_indep[normal] >= self.independence_threshold_)
            & (compact >= cluster_comp[normal])
        )
        out = np.full(labels.size, -1, dtype=np.int64)
        out[keep] = labels[keep]
        return relabel(out)

    def __setstate__(self, state):
        # A clusterer pickled before k1_rule existed (in a checkpoint) keeps its k1.
        state.setdefault("k1_rule", "fixed")
        super().__setstate__(state)

    def fit_predict(self, X, y=None):
        """Cluster ``X`` and return the labels.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings.
        y : Ignored
            Not used, present for API consistency.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            Cluster labels, ``-1`` for un-clustered samples.
        """
        return self.fit(X).labels_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags
