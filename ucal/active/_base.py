"""What every refiner shares: the chain of initial labels, oracle access, centres."""

import logging
import os
from numbers import Integral

import numpy as np
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
    column_or_1d,
    validate_data,
)

from ..cluster._centers import (
    CenterDistancesMixin,
    cluster_centers,
    unit_rows,
    zero_rows,
)
from ..metrics import labeling_cost, pairwise_precision_recall_fscore
from ..oracles import OracleError, as_label_memory, resolve_oracle
from ..utils import check_labels, relabel
from ._session import QuerySession, check_query_limit

__all__ = []

logger = logging.getLogger(__name__)


class BaseRefiner(
    CenterDistancesMixin,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    ClusterMixin,
    BaseEstimator,
):
    """Base class of the oracle-driven refiners: subclass it to write your own.

    It does everything :class:`SNPSSplitter` and :class:`MPPSMerger` share:
    validation, the initial labels (``labels=`` or ``clusterer``, nested
    refiners included), one oracle session per outermost fit (the label
    memory, the budgets, the seed), zero rows made noise, and the fitted
    attributes ``labels_``, ``n_clusters_``, ``cluster_centers_``,
    ``n_queries_``, ``n_inferred_``, ``cost_``, ``queries_``,
    ``stage_queries_``, ``stage_inferred_``, ``stage_changes_``,
    ``contradictions_`` and ``label_memory_``, plus :meth:`transform` and
    :meth:`score`.

    A subclass declares ``_parameter_constraints`` (extending this class's
    ``clusterer``, ``max_queries`` and ``memory_path``), an ``__init__``
    that only stores its parameters, ``_stage_name`` (how its questions are
    counted), ``_changes_attribute`` (the fitted attribute counting the
    clusters it changed, or None), and implements
    ``_refine(Xn, labels, session, stage) -> labels``: ``Xn`` holds the
    L2-normalised samples, ``labels`` the initial clusters (``0..k-1``,
    ``-1`` outliers), and ``session.ask(pairs, stage=stage, owner=name)``
    returns int8 answers for ``(m, 2)`` sample pairs (1 same, 0 different,
    -1 unknown), through the memory and within the budget.

    Examples
    --------
    A refiner that asks whether each cluster's two first members match, and
    makes the second an outlier when they do not:

    >>> import numpy as np
    >>> from ucal.active import BaseRefiner
    >>> class FirstPairCheck(BaseRefiner):
    ...     _stage_name = "check"
    ...     def __init__(self, clusterer=None, *, max_queries=None, memory_path=None):
    ...         self.clusterer = clusterer
    ...         self.max_queries = max_queries
    ...         self.memory_path = memory_path
    ...     def _refine(self, Xn, labels, session, stage):
    ...         firsts = [np.flatnonzero(labels == c)[:2] for c in range(labels.max() + 1)]
    ...         pairs = np.array([f for f in firsts if len(f) == 2])
    ...         answers = session.ask(pairs, stage=stage, owner="FirstPairCheck")
    ...         labels = labels.copy()
    ...         labels[pairs[answers == 0, 1]] = -1
    ...         return labels
    >>> X = np.eye(4)[[0, 0, 1, 1, 2, 2]] + 0.01
    >>> check = FirstPairCheck().fit(X, y=[0, 0, 1, 1, 2, 3], labels=[0, 0, 1, 1, 2, 2])
    >>> check.labels_.tolist(), check.stage_queries_
    ([0, 0, 1, 1, 2, -1], {'check': 3})
    """

    _stage_name = "refine"
    _changes_attribute = None

    _parameter_constraints: dict = {
        "clusterer": [HasMethods(["fit"]), None],
        "max_queries": [Interval(Integral, 0, None, closed="left"), None],
        "memory_path": [str, os.PathLike, None],
    }

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(
        self, X, y=None, *, labels=None, oracle=None, label_memory=None, query_limit=None,
        seed=None,
    ):
        """Cluster X (or take ``labels``), then refine by asking an oracle.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings; compared by cosine similarity. An all-zero row has
            no direction: it is made noise (label -1), with a warning.
        y : array-like of shape (n_samples,), default=None
            Ground-truth identities. Used only when ``oracle`` is None, to
            simulate the annotator with ``LabelOracle(y)`` (this is what
            makes ``GridSearchCV(...).fit(X, y)`` work fold by fold).
        labels : array-like of shape (n_samples,), default=None
            Initial cluster labels (``-1`` = outlier). They replace the base
            clustering: a ``clusterer`` that is a plain clusterer is not
            fitted, while a ``clusterer`` that is itself a refiner still
            runs, on these labels (so that
            ``MPPSMerger(clusterer=SNPSSplitter())`` splits, then merges).
        oracle : callable, default=None
            ``oracle(pairs) -> answers`` (see :mod:`ucal.oracles`). Never
            stored on the estimator. With no oracle and no ``y``, only the
            label memory answers (a warning says what was left unasked).
        label_memory : LabelMemory, str or path-like, default=None
            A memory to share (across refiners, across epochs), updated in
            place, or the path of its file. None makes a fresh one on
            ``memory_path``.
        query_limit : int, default=None
            Most pairs this fit may send to the oracle, on top of
            ``max_queries`` (the smaller wins); a caller with a budget of
            its own, such as :class:`~ucal.reid.UCALReID`, passes what is
            left of it. None: no limit but ``max_queries``.
        seed : int, default=None
            Seeds the random steps of every refiner in the chain whose
            ``random_state`` is None (an explicit ``random_state`` wins).

        Returns
        -------
        self : object
            The fitted refiner.
        """
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        oracle = resolve_oracle(oracle, y, n_samples=X.shape[0])
        memory = as_label_memory(label_memory, path=self.memory_path, n_samples=X.shape[0])
        check_query_limit(query_limit)
        session = QuerySession(memory, oracle, query_limit=query_limit, seed=seed)
        try:
            self._fit_in_session(X, labels, session)
        except OracleError as exc:
            if exc.memory is None:
                exc.memory = memory
            raise
        return self

    def _fit_in_session(self, X, labels, session):
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        Xn = unit_rows(X)
        n_samples = X.shape[0]
        first_record = len(session.pairs)
        first_contradiction = len(session.contradictions)
        n_queries0, n_inferred0 = session.n_queries, session.n_inferred
        stages0 = set(session.stage_queries)
        # the cap is in force before a nested refiner runs: it covers it too
        session.push_cap(self.max_queries)
        try:
            initial = self._initial_labels(X, labels, session)
            zero = zero_rows(Xn, type(self).__name__, labels=initial)
            if (initial[zero] >= 0).any():
                initial[zero] = -1
                initial = relabel(initial, order="appearance")  # no empty cluster left
            stage = session.open_stage(self._stage_name)
            refined = self._refine(Xn, initial, session, stage)
            if self._changes_attribute is not None:
                session.stage_changes[stage] = int(getattr(self, self._changes_attribute))
        finally:
            session.pop_cap()

        self.labels_ = relabel(refined, order="appearance")
        self.n_clusters_ = int(self.labels_.max()) + 1 if n_samples else 0
        self.cluster_centers_ = cluster_centers(Xn, self.labels_, self.n_clusters_)
        self._n_features_out = self.n_clusters_
        self.n_queries_ = session.n_queries - n_queries0
        self.n_inferred_ = session.n_inferred - n_inferred0
        self.cost_ = labeling_cost(self.n_queries_, n_samples) if n_samples > 1 else 0.0
        self.queries_ = session.records(first_record)
        new = [k for k in session.stage_queries if k not in stages0]
        self.stage_queries_ = {k: session.stage_queries[k] for k in new}
        self.stage_inferred_ = {k: session.stage_inferred[k] for k in new}
        self.stage_changes_ = {k: session.stage_changes[k] for k in new}
        self.contradictions_ = session.contradictions[first_contradiction:]
        self.label_memory_ = session.memory
        return self

    def _seed(self, session):
        """The random state of this fit: our own, else the caller's seed."""
        own = getattr(self, "random_state", None)
        return own if own is not None else session.seed

    def _initial_labels(self, X, labels, session):
        n_samples = X.shape[0]
        clusterer = self.clusterer
        if isinstance(clusterer, BaseRefiner):
            # a nested refiner shares this fit's oracle, memory, budget and labels
            clusterer = clone(clusterer)
            clusterer._validate_params()
            clusterer._fit_in_session(X, labels, session)
            self.clusterer_ = clusterer
            return clusterer.labels_.copy()
        if labels is not None:
            self.clusterer_ = None
            labels = check_labels(labels, n_samples)
            return relabel(labels, order="appearance")
        if clusterer is None:
            from ..cluster import SelfPacedDBSCAN

            clusterer = SelfPacedDBSCAN()
        else:
            clusterer = clone(clusterer)
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
        return relabel(found, order="appearance")

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
            ``labels``, ``oracle``, ``label_memory``, ``query_limit``,
            ``seed``, see :meth:`fit`.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            Refined cluster labels, ``-1`` for outliers.
        """
        return self.fit(X, y, **fit_params).labels_

    def _refine(self, Xn, labels, session, stage):  # pragma: no cover - abstract
        raise NotImplementedError

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
