"""Choosing the clustering scale by agreement with answered pairs."""

import logging
import os
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, _fit_context, clone
from sklearn.model_selection import ParameterGrid
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.validation import validate_data

from ..cluster._centers import unit_rows
from ..cluster._knn import exact_knn
from ..metrics import labeling_cost
from ..metrics._clustering import _same_pairs
from ..oracles import OracleError, as_label_memory, resolve_oracle
from ._session import check_query_limit

__all__ = ["ClusteringCalibrator", "near_neighbour_pairs"]

logger = logging.getLogger(__name__)

# SpCL's eps is 0.6 (Market-1501, ImageNet start); the grid spans tighter and looser scales.
DEFAULT_EPS_GRID = (0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)


def near_neighbour_pairs(X, n_pairs, *, n_neighbors=10, exclude=(), random_state=None):
    """Random pairs among near neighbours: a random sample and one of its nearest.

    Random pairs of a re-id set are almost all "different"; pairs drawn
    among near neighbours hold both answers, so that a few questions
    measure how well an embedding (or a clustering) separates people.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        Embeddings (compared by cosine similarity).
    n_pairs : int
        Pairs wanted; fewer come back when the neighbourhoods run out.
    n_neighbors : int, default=10
        The partner is drawn uniformly among the anchor's ``n_neighbors``
        nearest other samples.
    exclude : iterable of (int, int), default=()
        Pairs not to draw (for example those already answered).
    random_state : int, RandomState instance or None, default=None
        Seeds the draw.

    Returns
    -------
    pairs : ndarray of shape (m, 2), dtype int64
        Distinct pairs ``i < j``, ``m <= n_pairs``, in the order drawn.

    Examples
    --------
    >>> import numpy as np
    >>> from ucal.active import near_neighbour_pairs
    >>> X = np.random.RandomState(0).normal(size=(50, 8))
    >>> near_neighbour_pairs(X, 5, random_state=0).shape
    (5, 2)
    """
    rng = check_random_state(random_state)
    Xn = unit_rows(np.asarray(X, dtype=np.float32))
    n_samples = Xn.shape[0]
    n_pairs = int(n_pairs)
    if n_samples < 2 or n_pairs <= 0:
        return np.empty((0, 2), dtype=np.int64)
    k = min(int(n_neighbors), n_samples - 1)
    neighbours, _ = exact_knn(Xn, k + 1)
    neighbours = neighbours[:, 1:]
    seen = {(min(int(a), int(b)), max(int(a), int(b))) for a, b in exclude}
    pairs = []
    # Each (anchor, rank) slot is drawn at most once: the loop ends.
    slots = rng.permutation(n_samples * k)
    for slot in slots:
        i, r = divmod(int(slot), k)
        j = int(neighbours[i, r])
        key = (min(i, j), max(i, j))
        if i == j or key in seen:
            continue
        seen.add(key)
        pairs.append(key)
        if len(pairs) == n_pairs:
            break
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def within_cluster_pairs(labels, n_pairs, rng):
    """Pairs drawn uniformly among the pairs that share a cluster (``-1`` shares nothing)."""
    labels = np.asarray(labels)
    clustered = np.flatnonzero(labels >= 0)
    if clustered.size == 0 or n_pairs <= 0:
        return np.empty((0, 2), dtype=np.int64)
    ids, inverse, sizes = np.unique(labels[clustered], return_inverse=True, return_counts=True)
    weights = sizes * (sizes - 1) / 2.0
    if weights.sum() == 0:
        return np.empty((0, 2), dtype=np.int64)
    members = np.split(clustered[np.argsort(inverse, kind="stable")], np.cumsum(sizes)[:-1])
    chosen = rng.choice(len(ids), size=n_pairs, p=weights / weights.sum())
    pairs = np.empty((n_pairs, 2), dtype=np.int64)
    for row, c in enumerate(chosen):
        pairs[row] = rng.choice(members[c], size=2, replace=False)
    return np.sort(pairs, axis=1)


def _wilson_lower(p, n, z=1.0):
    """Wilson score lower bound (one standard error) of a proportion ``p`` over ``n``."""
    denominator = 1 + z * z / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / denominator)


def estimated_agreement(candidates, drawn, drawn_same, beta=1.0):
    """Estimated pairwise precision, recall and F1 of each candidate clustering.

    ``drawn`` holds pairs drawn in equal numbers among each candidate's
    within-cluster pairs (a mixture of uniform draws), ``drawn_same`` their
    answers. A candidate's precision is estimated without bias by weighting
    each answer with the ratio of the candidate's uniform distribution to
    the mixture's (self-normalised importance sampling); its "same" pairs
    kept together, ``TP``, are its within-cluster pairs times that
    precision. The total number of "same" pairs is unknown: it is taken as
    the largest ``TP`` of any candidate, each computed with a one-standard-
    error lower bound of its precision (Wilson, on the effective number of
    answers) so that a lucky answer in a huge candidate does not set it;
    recall is ``TP / total`` and F-beta
    ``(1 + beta^2) TP / (pairs together + beta^2 total)``.
    """
    n = len(candidates)
    totals = np.array([_same_pairs(labels) for labels in candidates], dtype=np.float64)
    together = np.array([
        (labels[drawn[:, 0]] == labels[drawn[:, 1]]) & (labels[drawn[:, 0]] >= 0)
        for labels in candidates
    ]).reshape(n, len(drawn))
    safe = np.where(totals > 0, totals, np.inf)
    density = np.where(together, 1.0 / safe[:, None], 0.0)
    mixture = density.mean(axis=0)
    precision = np.zeros(n)
    lower = np.zeros(n)
    for c in range(n):
        inside = together[c] & (mixture > 0)
        if inside.any():
            w = density[c, inside] / mixture[inside]
            precision[c] = np.sum(w * drawn_same[inside]) / np.sum(w)
            n_eff = np.sum(w) ** 2 / np.sum(w**2)
            lower[c] = _wilson_lower(precision[c], n_eff)
    tp = totals * precision
    # A lower bound: one lucky "same" in a huge, impure candidate must not set the total.
    total_same = float(np.max(totals * lower))
    results = []
    for c in range(n):
        recall = min(1.0, tp[c] / total_same) if total_same > 0 else 0.0
        b2 = beta * beta
        denominator = totals[c] + b2 * total_same
        score = (1 + b2) * tp[c] / denominator if denominator > 0 else 0.0
        results.append({"precision": float(precision[c]), "recall": float(recall),
                        "f1": float(score)})
    return results


class ClusteringCalibrator(ClusterMixin, BaseEstimator):
    """Pick a clusterer's scale (``eps``, ``k1``...) by agreement with answered pairs.

    A clustering's scale is data-dependent: SpCL's ``eps=0.6`` and
    ``k1=30`` fit Market-1501 from ImageNet features, and over-merge other
    data. This step fits a clone of ``clusterer`` for each candidate of
    ``param_grid``, asks the oracle a few pairs, and keeps the candidate
    with the best estimated pairwise F1 against the answers:

    It draws pairs uniformly among each candidate's within-cluster pairs,
    in equal numbers per candidate, and asks those the memory does not
    know. Weighting each answer by the ratio of a candidate's uniform
    distribution to the mixture of the draws gives an unbiased estimate of
    the candidate's pairwise precision, hence of the same-person pairs it
    keeps together (``TP``). Recall would need the total number of
    same-person pairs, which no one knows; it is taken as the largest
    ``TP`` of any candidate (with a lower bound of each precision), and the
    candidate with the best ``F1 = 2 TP / (pairs kept together + total)``
    is kept (ties: the first listed). Pairs among near neighbours alone would not do: they cannot
    see the large merges that ruin a clustering's precision.

    Parameters
    ----------
    clusterer : estimator, default=None
        The clusterer to calibrate (``fit(X)`` then ``labels_``, ``-1`` =
        not clustered). None: :class:`~ucal.SelfPacedDBSCAN`.
    param_grid : dict or list of dicts, default=None
        Candidates, as for :class:`~sklearn.model_selection.ParameterGrid`.
        None: ``{"eps": (0.35, 0.4, ..., 0.7)}`` (SpCL's 0.6 in the middle).
    n_queries : int, default=300
        Pairs drawn, shared evenly by the candidates; only those the memory
        does not know are asked (at most ``n_queries``), so a refit with
        the same ``random_state`` on the same features and memory asks
        nothing.
    beta : float, default=1.0
        The score is the pairwise F-beta: ``beta > 1`` weighs recall more
        (a scale that keeps a person together matters more when a refiner
        splits what is impure afterwards).
    memory_path : str or path-like, default=None
        File of the label memory made when ``fit`` is given none.
    random_state : int, RandomState instance or None, default=None
        Seeds the draw of the questions.

    Attributes
    ----------
    best_params_ : dict
        The chosen candidate.
    best_score_ : float
        Its agreement.
    best_estimator_ : estimator
        The clusterer with ``best_params_``, fitted on ``X``.
    labels_ : ndarray of shape (n_samples,)
        ``best_estimator_.labels_``.
    cv_results_ : dict of lists
        Per candidate: ``params``, ``score`` (the estimated F-beta),
        ``precision``, ``recall``, ``n_clusters`` and ``n_outliers``.
    n_pairs_ : int
        Drawn pairs with a definite answer (duplicates counted).
    n_same_ : int
        How many of them are "same".
    n_queries_ : int
        Pairs sent to the oracle by this fit.
    cost_ : float
        ``n_queries_`` as a labeling cost (Eq. 7).
    label_memory_ : LabelMemory
        The memory used.
    n_features_in_ : int
        Number of features seen in ``fit``.

    See Also
    --------
    ucal.SelfPacedDBSCAN : The default clusterer.
    ucal.reid.UCALReID : Calibrates its clusterer with this step (``calibrator=``).

    Examples
    --------
    >>> import numpy as np
    >>> from ucal import SelfPacedDBSCAN
    >>> from ucal.active import ClusteringCalibrator
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(np.arange(8), 12)
    >>> X = rng.normal(size=(8, 16))[y] + 0.8 * rng.normal(size=(96, 16))
    >>> cal = ClusteringCalibrator(SelfPacedDBSCAN(k1=10, k2=3), n_queries=60,
    ...                            random_state=0).fit(X, y)
    >>> sorted(cal.best_params_), cal.n_queries_ <= 60
    (['eps'], True)
    >>> again = ClusteringCalibrator(SelfPacedDBSCAN(k1=10, k2=3), n_queries=60,
    ...                              random_state=0).fit(X, label_memory=cal.label_memory_)
    >>> again.n_queries_, again.best_params_ == cal.best_params_
    (0, True)
    """

    _parameter_constraints: dict = {
        "clusterer": [HasMethods(["fit"]), None],
        "param_grid": [dict, list, None],
        "n_queries": [Interval(Integral, 0, None, closed="left")],
        "beta": [Interval(Real, 0, None, closed="neither")],
        "memory_path": [str, os.PathLike, None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        clusterer=None,
        *,
        param_grid=None,
        n_queries=300,
        beta=1.0,
        memory_path=None,
        random_state=None,
    ):
        self.clusterer = clusterer
        self.param_grid = param_grid
        self.n_queries = n_queries
        self.beta = beta
        self.memory_path = memory_path
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None, *, oracle=None, label_memory=None, query_limit=None):
        """Fit every candidate, ask the questions still needed, keep the best.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings.
        y : array-like of shape (n_samples,), default=None
            Ground-truth identities, used only when ``oracle`` is None to
            simulate the annotator (as in the refiners).
        oracle : callable, default=None
            ``oracle(pairs) -> answers``. With neither oracle nor ``y``,
            only the memory's answers are used.
        label_memory : LabelMemory, str or path-like, default=None
            The memory to read and add to (its answers index rows of ``X``).
        query_limit : int, default=None
            Most pairs this fit may send to the oracle.

        Returns
        -------
        self : ClusteringCalibrator
            The fitted calibrator.
        """
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        n_samples = X.shape[0]
        oracle = resolve_oracle(oracle, y, n_samples=n_samples)
        memory = as_label_memory(label_memory, path=self.memory_path, n_samples=n_samples)
        check_query_limit(query_limit)
        from ..cluster import SelfPacedDBSCAN

        base = SelfPacedDBSCAN() if self.clusterer is None else self.clusterer
        grid = {"eps": list(DEFAULT_EPS_GRID)} if self.param_grid is None else self.param_grid
        candidates = list(ParameterGrid(grid))
        if not candidates:
            raise ValueError("param_grid has no candidate.")
        rng = check_random_state(self.random_state)
        self.label_memory_ = memory
        n_sent = memory.n_queries
        try:
            estimators = [clone(base).set_params(**params).fit(X) for params in candidates]
            labels = [np.asarray(est.labels_) for est in estimators]
            drawn, drawn_same = self._ask(labels, memory, oracle, query_limit, rng)
        except OracleError as exc:
            if exc.memory is None:
                exc.memory = memory
            raise
        finally:
            self.n_queries_ = int(memory.n_queries - n_sent)
        self.n_pairs_ = len(drawn)
        self.n_same_ = int(drawn_same.sum())
        self.cost_ = labeling_cost(self.n_queries_, n_samples) if n_samples > 1 else 0.0

        if not drawn_same.any() or drawn_same.all():
            logger.warning(
                "ClusteringCalibrator: %d answered pairs drawn, %d of them 'same': too few "
                "of each answer to compare scales; keeping the clusterer's own parameters.",
                len(drawn_same), int(drawn_same.sum()),
            )
            candidates, estimators = [{}], [clone(base).fit(X)]
            labels = [np.asarray(estimators[0].labels_)]
            scores = [{"precision": float("nan"), "recall": float("nan"), "f1": 0.0}]
        else:
            scores = estimated_agreement(labels, drawn, drawn_same, self.beta)
        best = int(np.argmax([sc["f1"] for sc in scores]))  # ties: the first listed
        self.cv_results_ = {
            "params": candidates,
            "score": [sc["f1"] for sc in scores],
            "precision": [sc["precision"] for sc in scores],
            "recall": [sc["recall"] for sc in scores],
            "n_clusters": [int(np.unique(lab[lab >= 0]).size) for lab in labels],
            "n_outliers": [int((lab < 0).sum()) for lab in labels],
        }
        self.best_params_ = dict(candidates[best])
        self.best_score_ = float(scores[best]["f1"])
        self.best_estimator_ = estimators[best]
        self.labels_ = labels[best]
        logger.info(
            "ClusteringCalibrator: %s (estimated pairwise F-score %.3f, precision %.3f, recall "
            "%.3f; %d answered pairs, %d same; %d asked).",
            self.best_params_ or "the clusterer's own parameters", self.best_score_,
            scores[best]["precision"], scores[best]["recall"], self.n_pairs_, self.n_same_,
            self.n_queries_,
        )
        return self

    def _ask(self, labels, memory, oracle, query_limit, rng):
        """Draw within-cluster pairs of each candidate; ask those the memory does not know.

        Returns the drawn pairs that have a definite answer, and their answers.
        """
        # n_queries draws in all, as evenly as possible over the candidates
        counts = np.full(len(labels), self.n_queries // len(labels))
        counts[: self.n_queries % len(labels)] += 1
        drawn = np.concatenate(
            [within_cluster_pairs(lab, int(k), rng) for lab, k in zip(labels, counts)]
        )
        if len(drawn) == 0:
            return drawn, np.zeros(0, dtype=bool)
        known = memory.lookup(drawn)
        if oracle is not None and (query_limit is None or query_limit > 0):
            _, first = np.unique(drawn[known < 0], axis=0, return_index=True)
            unknown = drawn[known < 0][np.sort(first)]
            # a random order, so that a short budget is spread over the candidates evenly
            unknown = unknown[rng.permutation(len(unknown))][:query_limit]
            if len(unknown):
                memory.ask(unknown, oracle)
            known = memory.lookup(drawn)
        valid = known >= 0
        return drawn[valid], known[valid] == 1
