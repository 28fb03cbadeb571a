"""What SNPS and MPPS share: initial clustering, oracle access, centres."""

import logging
import os
import warnings
from numbers import Integral

import numpy as np
from scipy import sparse
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
    _fit_context,
    clone,
)
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.validation import (
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
    validate_data,
)

from ..cluster._knn import l2_normalize as _unit_rows
from ..metrics import labeling_cost, pairwise_precision_recall_fscore
from ..oracles import BudgetExhaustedWarning, LabelMemory, LabelOracle, OracleError

__all__ = []

logger = logging.getLogger(__name__)


def l2_normalize(X):
    """Rows of X scaled to unit norm, in X's float dtype; all-zero rows are an error."""
    return _unit_rows(X, dtype=X.dtype if X.dtype.kind == "f" else np.float64)


def cluster_centers(Xn, labels, n_clusters):
    """L2-normalised mean of each cluster's (unit) samples."""
    clustered = np.flatnonzero(labels >= 0)
    # sparse indicator @ X: a vectorised per-cluster sum (np.add.at is slow)
    indicator = sparse.csr_matrix(
        (np.ones(clustered.size), (labels[clustered], clustered)),
        shape=(n_clusters, Xn.shape[0]),
    )
    sums = np.asarray(indicator @ Xn, dtype=np.float64)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    # a cluster of exactly opposite samples has no direction: keep it at 0
    return np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)


def cluster_medoids(Xn, labels, centers):
    """Index of each cluster's sample nearest its centre (what a human sees)."""
    members = np.flatnonzero(labels >= 0)
    sims = np.einsum("ij,ij->i", Xn[members], centers[labels[members]])
    # sort by cluster, then by decreasing similarity: first of each cluster wins
    order = np.lexsort((-sims, labels[members]))
    first = np.r_[True, np.diff(labels[members][order]) != 0]
    return members[order[first]]


def relabel(labels):
    """Clusters renumbered 0..k-1 in order of first appearance; -1 kept."""
    out = np.full(labels.shape, -1, dtype=np.int64)
    clustered = labels >= 0
    _, first, inverse = np.unique(labels[clustered], return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    out[clustered] = rank[inverse]
    return out


class _QuerySession:
    """One fit's access to the oracle and memory, shared by nested refiners.

    Keeps the budget stack (each refiner caps the queries of its own
    subtree), the warnings (once per outermost fit) and every pair sent.
    """

    def __init__(self, memory, oracle):
        self.memory = memory
        self.oracle = oracle
        self.n_queries = 0
        self.n_inferred = 0
        self.pairs, self.answers, self.stages = [], [], []
        self.stage_queries, self.stage_inferred = {}, {}
        self._caps = []  # (cap, n_queries when that refiner started)
        self._warned_budget = False
        self._warned_no_oracle = False

    def push_cap(self, cap):
        """A refiner starts: its ``max_queries`` caps everything until pop."""
        self._caps.append((cap, self.n_queries))

    def pop_cap(self):
        self._caps.pop()

    def open_stage(self, name):
        """Register a stage under a unique name (``snps``, ``snps_2``...)."""
        base, k = name, 2
        while name in self.stage_queries:
            name, k = f"{base}_{k}", k + 1
        self.stage_queries[name] = 0
        self.stage_inferred[name] = 0
        return name

    def ask(self, pairs, *, stage, owner, context=None):
        """Ask (m, 2) pairs in priority order; return int8 answers (-1 = unknown)."""
        limits = [cap - (self.n_queries - start) for cap, start in self._caps if cap is not None]
        limit = max(min(limits), 0) if limits else None
        if context is not None and not callable(getattr(self.oracle, "set_context", None)):
            context = None
        result = self.memory._ask(
            pairs, self.oracle, max_queries=limit, context=context, source=stage
        )
        n_sent = len(result.sent_pairs)
        self.n_queries += n_sent
        self.n_inferred += result.n_inferred
        self.stage_queries[stage] += n_sent
        self.stage_inferred[stage] += result.n_inferred
        self.pairs.append(result.sent_pairs)
        self.answers.append(result.sent_answers)
        self.stages.append(np.full(n_sent, stage))
        if result.n_unsent:
            n_unknown = result.n_unsent + n_sent
            if self.oracle is None and not self._warned_no_oracle:
                self._warned_no_oracle = True
                warnings.warn(
                    f"{owner} was fitted with no oracle and no y: {result.n_unsent} "
                    "pairs the label memory could not answer were not asked; "
                    "pass oracle= (or y for a simulated oracle) to query them.",
                    UserWarning,
                    stacklevel=4,
                )
            elif self.oracle is not None and not self._warned_budget:
                self._warned_budget = True
                warnings.warn(
                    f"{owner}: the query budget (max_queries) is spent: "
                    f"{result.n_unsent} of {n_unknown} pairs the label memory could "
                    "not answer were not sent to the oracle; refinement goes on "
                    "with what is known.",
                    BudgetExhaustedWarning,
                    stacklevel=4,
                )
        logger.info(
            "%s: %d pairs, %d answered by the label memory, %d sent to the oracle, "
            "%d left unknown.",
            stage, len(pairs), result.n_inferred, n_sent, result.n_unsent,
        )
        return result.answers

    def records(self, start=0):
        pairs = np.concatenate([np.empty((0, 2), np.int64)] + self.pairs[start:])
        answers = np.concatenate([np.empty(0, np.int8)] + self.answers[start:])
        stages = np.concatenate([np.empty(0, dtype=str)] + self.stages[start:])
        return {"pairs": pairs, "answers": answers, "stage": stages}


class _BaseRefiner(ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, BaseEstimator):
    """Shared plumbing of the oracle-driven refiners (not public)."""

    _stage_name = "refine"

    _parameter_constraints: dict = {
        "clusterer": [HasMethods(["fit"]), None],
        "max_queries": [Interval(Integral, 0, None, closed="left"), None],
        "memory_path": [str, os.PathLike, None],
    }

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None, *, labels=None, oracle=None, label_memory=None):
        """Cluster X (or take ``labels``), then refine by asking an oracle.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings; compared by cosine similarity.
        y : array-like of shape (n_samples,), default=None
            Ground-truth identities. Used only when ``oracle`` is None, to
            simulate the annotator with ``LabelOracle(y)`` (this is what
            makes ``GridSearchCV(...).fit(X, y)`` work fold by fold).
        labels : array-like of shape (n_samples,), default=None
            Initial cluster labels (``-1`` = outlier). When given, they win
            over ``clusterer``.
        oracle : callable, default=None
            ``oracle(pairs) -> answers`` (see :mod:`ucal.oracles`). Never
            stored on the estimator. With no oracle and no ``y``, only the
            label memory answers (a warning says what was left unasked).
        label_memory : LabelMemory, default=None
            A memory to share (across refiners, across epochs); it is
            updated in place. None makes a fresh one on ``memory_path``.

        Returns
        -------
        self : object
            The fitted refiner.
        """
        if oracle is not None and not callable(oracle):
            raise TypeError(f"oracle must be callable, got {type(oracle).__name__}.")
        if label_memory is not None and not isinstance(label_memory, LabelMemory):
            raise TypeError(
                f"label_memory must be a ucal.oracles.LabelMemory, got "
                f"{type(label_memory).__name__}."
            )
        memory = LabelMemory(self.memory_path) if label_memory is None else label_memory
        if oracle is None and y is not None:
            y = column_or_1d(y, warn=True)
            check_consistent_length(X, y)
            oracle = LabelOracle(y)
        session = _QuerySession(memory, oracle)
        try:
            self._fit_in_session(X, labels, session)
        except OracleError as exc:
            if exc.memory is None:
                exc.memory = memory
            raise
        return self

    def _fit_in_session(self, X, labels, session):
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        Xn = l2_normalize(X)
        n_samples = X.shape[0]
        first_record = len(session.pairs)
        n_queries0, n_inferred0 = session.n_queries, session.n_inferred
        stages0 = set(session.stage_queries)
        # the cap is in force before a nested refiner runs: it covers it too
        session.push_cap(self.max_queries)
        try:
            initial = self._initial_labels(X, labels, session)
            stage = session.open_stage(self._stage_name)
            refined = self._refine(Xn, initial, session, stage)
        finally:
            session.pop_cap()

        self.labels_ = relabel(refined)
        self.n_clusters_ = int(self.labels_.max()) + 1 if n_samples else 0
        self.cluster_centers_ = cluster_centers(Xn, self.labels_, self.n_clusters_)
        self._n_features_out = self.n_clusters_
        self.n_queries_ = session.n_queries - n_queries0
        self.n_inferred_ = session.n_inferred - n_inferred0
        self.cost_ = labeling_cost(self.n_queries_, n_samples) if n_samples > 1 else 0.0
        self.queries_ = session.records(first_record)
        self.stage_queries_ = {
            k: v for k, v in session.stage_queries.items() if k not in stages0
        }
        self.stage_inferred_ = {
            k: v for k, v in session.stage_inferred.items() if k not in stages0
        }
        self.label_memory_ = session.memory
        return self

    def _initial_labels(self, X, labels, session):
        n_samples = X.shape[0]
        if labels is not None:
            self.clusterer_ = None
            labels = column_or_1d(labels)
            if not np.issubdtype(labels.dtype, np.integer):
                raise TypeError(
                    f"labels must be integer cluster labels (-1 = outlier), got "
                    f"dtype {labels.dtype}."
                )
            if len(labels) != n_samples:
                raise ValueError(
                    f"labels has {len(labels)} entries but X has {n_samples} samples."
                )
            if len(labels) and labels.min() < -1:
                raise ValueError(
                    f"labels must be >= -1 (-1 = outlier), got {labels.min()}."
                )
            return relabel(labels.astype(np.int64))
        if self.clusterer is None:
            from ..cluster import SelfPacedDBSCAN

            clusterer = SelfPacedDBSCAN()
        else:
            clusterer = clone(self.clusterer)
        if isinstance(clusterer, _BaseRefiner):
            # a nested refiner shares this fit's oracle, memory and budget
            clusterer._validate_params()
            clusterer._fit_in_session(X, None, session)
        else:
            clusterer.fit(X)
        self.clusterer_ = clusterer
        found = getattr(clusterer, "labels_", None)
        if found is None:
            raise TypeError(
                f"clusterer {type(clusterer).__name__} has no labels_ after fit; "
                "pass a scikit-learn clusterer or labels= to fit."
            )
        found = column_or_1d(found)
        if len(found) != n_samples or not np.issubdtype(found.dtype, np.integer):
            raise ValueError(
                f"clusterer {type(clusterer).__name__} gave labels_ of shape "
                f"{found.shape} and dtype {found.dtype}; expected {n_samples} ints."
            )
        return relabel(found.astype(np.int64))

    def fit_predict(self, X, y=None, **fit_params):
        """Fit, then return the refined labels.

        Unlike ``ClusterMixin.fit_predict``, ``y`` is passed on to ``fit``
        (it simulates the oracle when no ``oracle`` is given).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings.
        y : array-like of shape (n_samples,), default=None
            Ground-truth identities, see :meth:`fit`.
        **fit_params : dict
            ``labels``, ``oracle``, ``label_memory``, see :meth:`fit`.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            Refined cluster labels, ``-1`` for outliers.
        """
        return self.fit(X, y, **fit_params).labels_

    def _refine(self, Xn, labels, session, stage):  # pragma: no cover - abstract
        raise NotImplementedError

    def transform(self, X):
        """Cosine distances of X to the refined cluster centres.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings.

        Returns
        -------
        distances : ndarray of shape (n_samples, n_clusters)
            ``1 - cos(x, centre)``, in ``[0, 2]``.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return 1.0 - l2_normalize(X) @ self.cluster_centers_.T

    def score(self, X, y):
        """Pairwise F-score of X assigned to the nearest refined centre.

        Each sample goes to the cluster whose centre is nearest (cosine), so
        held-out samples can be scored, as ``GridSearchCV`` does. For the
        training clustering itself (outliers included), use
        ``ucal.metrics.pairwise_precision_recall_fscore(y, labels_)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings.
        y : array-like of shape (n_samples,)
            Ground-truth identities.

        Returns
        -------
        score : float
            Pairwise F-score in ``[0, 1]``.
        """
        distances = self.transform(X)
        y = column_or_1d(y)
        check_consistent_length(distances, y)
        if distances.shape[1] == 0:
            return 0.0
        return pairwise_precision_recall_fscore(y, distances.argmin(axis=1))[2]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags
