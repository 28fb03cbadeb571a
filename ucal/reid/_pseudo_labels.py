"""Each epoch's pseudo labels: the base clustering, then the refiner and its oracle.

Torch-free on purpose: it works on the feature matrix of the memory.
"""

import logging
import warnings

import numpy as np
from sklearn.base import clone

from ucal.oracles import BudgetExhaustedWarning

__all__ = ["DegenerateClusteringWarning", "PseudoLabeler", "default_refiner", "innermost_clusterer"]

logger = logging.getLogger(__name__)

# A base clustering is degenerate when more than this share of the images is un-clustered...
_MAX_OUTLIER_SHARE = 0.8
# ...or when one cluster holds more than half the images (whatever the number of
# clusters: SpCL's eps 0.75 on a pretrained start put 93 to 98 % of the images into
# one of 1 to 5 clusters, benchmarks/results/baseline.md)...
_MAX_LARGEST_SHARE = 0.5
# ...or when, among at least 10 clusters, the three largest hold more than half the images.
_MAX_TOP3_SHARE = 0.5
_MIN_CLUSTERS_FOR_TOP3 = 10
# Stages whose cluster changes the history reports as ``n_splits`` / ``n_merges``.
_CHANGE_KEYS = {"snps": "n_splits", "mpps": "n_merges"}


class DegenerateClusteringWarning(UserWarning):
    """The base clustering of an epoch is degenerate: its scale may not suit the features.

    Issued at most once per fit by :class:`~ucal.reid.UCALReID` when more
    than 80 % of the images are un-clustered, when one cluster holds more
    than half of them, or when, among ten or more clusters, the three
    largest hold more than half. On data with one or two dominant people
    (a clip mostly of one person) the second rule can be a false alarm:
    filter this category then.

    Examples
    --------
    >>> import warnings
    >>> from ucal.reid import DegenerateClusteringWarning
    >>> issubclass(DegenerateClusteringWarning, UserWarning)
    True
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warnings.filterwarnings("ignore", category=DegenerateClusteringWarning)
    ...     warnings.warn("the base clustering is degenerate", DegenerateClusteringWarning)
    >>> len(caught)  # filtered: a fit on one dominant person stays quiet
    0
    """


def default_refiner():
    """The answers applied, then SNPS, then MPPS, sharing one oracle and memory."""
    from ucal.active import AnswerConstraints, MPPSMerger, SNPSSplitter

    return MPPSMerger(clusterer=SNPSSplitter(clusterer=AnswerConstraints()))


def innermost_clusterer(refiner):
    """The base clusterer at the bottom of a chain of refiners (None: the default)."""
    from ucal.active import BaseRefiner

    while isinstance(getattr(refiner, "clusterer", None), BaseRefiner):
        refiner = refiner.clusterer
    return getattr(refiner, "clusterer", None)


class PseudoLabeler:
    """The clustering step of one fit.

    The base ``clusterer`` is refitted every epoch (its state, SpCL's
    independence threshold, carries over and is checkpointed); from
    ``warmup_epochs`` on, a fresh clone of ``refiner`` repairs its labels
    by asking ``oracle`` through ``label_memory``, within what is left of
    ``max_queries``. Budgets and seeds of the user's refiner are never
    rewritten: they travel as ``fit(query_limit=..., seed=...)``.
    """

    def __init__(self, clusterer, refiner, oracle, label_memory, *, warmup_epochs,
                 max_queries, seed, epochs=None, pacing="greedy"):
        self.clusterer = clusterer
        self.refiner = refiner
        self.oracle = oracle
        self.label_memory = label_memory
        self.warmup_epochs = warmup_epochs
        self.max_queries = max_queries
        self.seed = seed
        self.epochs = epochs
        self.pacing = pacing
        self.n_queries = 0
        # questions of max_queries kept for the end-of-fit check (set by the trainer)
        self.reserve = 0
        self._budget_warned = False
        self._degenerate_warned = False

    @property
    def refines(self):
        return self.refiner is not None and self.oracle is not None

    def __call__(self, features, epoch, record):
        """Labels of ``features`` for ``epoch`` (0-based); fills ``record``."""
        self.clusterer.fit(features)
        labels = np.asarray(self.clusterer.labels_)
        record["n_clusters_base"] = int(np.unique(labels[labels >= 0]).size)
        if hasattr(self.clusterer, "k1_"):
            record["k1"] = int(self.clusterer.k1_)
        self._check_degenerate(labels, epoch)
        for stage in ("snps", "mpps"):
            record[f"{stage}_queries"] = 0
            record[f"{stage}_inferred"] = 0
            record[_CHANGE_KEYS[stage]] = 0
        if not self.refines or epoch < self.warmup_epochs:
            return labels
        refiner = clone(self.refiner)
        query_limit = None
        if self.max_queries is not None:
            query_limit = max(0, self.max_queries - self.reserve - self.n_queries)
            if self.pacing == "even" and self.epochs is not None:
                # what is left, shared by the refinement epochs still to come
                query_limit = int(np.ceil(query_limit / max(1, self.epochs - epoch)))
        n_records = len(self.label_memory)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                refiner.fit(
                    features,
                    labels=labels,
                    oracle=self.oracle,
                    label_memory=self.label_memory,
                    query_limit=query_limit,
                    seed=(self.seed + 7919 * epoch) % (2**31 - 1),
                )
            except BaseException:
                # Answers a failing refinement recorded were asked too: count them.
                self.n_queries += len(self.label_memory) - n_records
                raise
        self.n_queries += int(refiner.n_queries_)
        self._rewarn(caught)
        for stage, n in refiner.stage_queries_.items():
            record[f"{stage}_queries"] = int(n)
            record[f"{stage}_inferred"] = int(refiner.stage_inferred_[stage])
            key = _CHANGE_KEYS.get(stage, f"{stage}_changes")
            record[key] = int(refiner.stage_changes_.get(stage, 0))
        return np.asarray(refiner.labels_)

    def _check_degenerate(self, labels, epoch):
        """Warn once per fit when the base clustering is degenerate (documented rule)."""
        if self._degenerate_warned or len(labels) < 50:
            return
        n = len(labels)
        outliers = float((labels < 0).mean())
        sizes = np.sort(np.bincount(labels[labels >= 0]))[::-1] if (labels >= 0).any() else []
        top3 = float(np.sum(sizes[:3]) / n)
        largest = float(sizes[0] / n) if len(sizes) else 0.0
        problem = None
        if outliers > _MAX_OUTLIER_SHARE:
            problem = f"{100 * outliers:.0f} % of the images are un-clustered"
        elif largest > _MAX_LARGEST_SHARE:
            which = ("its only cluster" if len(sizes) == 1
                     else f"the largest of its {len(sizes)} clusters")
            problem = (f"{which} holds {100 * largest:.0f} % of the images "
                       "(likely many people merged)")
        elif top3 > _MAX_TOP3_SHARE and len(sizes) >= _MIN_CLUSTERS_FOR_TOP3:
            problem = (
                f"its 3 largest clusters of {len(sizes)} hold {100 * top3:.0f} % of the "
                "images (likely several people merged)"
            )
        if problem is None:
            return
        self._degenerate_warned = True
        params = getattr(self.clusterer, "get_params", dict)()
        if hasattr(self.clusterer, "k1_"):
            params["k1"] = self.clusterer.k1_  # the k1 in use, after k1_rule
        scale = ", ".join(f"{k}={params[k]}" for k in ("eps", "k1") if k in params)
        warnings.warn(
            f"Epoch {epoch + 1}: the base clustering is degenerate: {problem}. Its scale "
            f"({scale or 'its parameters'}) may not suit these features: let the oracle "
            "calibrate it (UCALReID(calibrator=ucal.active.ClusteringCalibrator()), with "
            "an oracle) or set the clusterer's eps / k1.",
            DegenerateClusteringWarning,
            stacklevel=3,
        )

    def _rewarn(self, caught):
        """Re-issue the refiner's warnings; the spent-budget one only once per fit."""
        for w in caught:
            if issubclass(w.category, BudgetExhaustedWarning):
                if self._budget_warned:
                    continue
                self._budget_warned = True
                warnings.warn(
                    f"The query budget max_queries={self.max_queries} is spent; "
                    "later epochs refine the clusters with the label memory alone.",
                    BudgetExhaustedWarning,
                    stacklevel=2,
                )
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
