"""SNPS: split clusters at hard negative centroid pairs (paper Sec. 3.2.1)."""

import logging
from itertools import combinations
from numbers import Integral

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from threadpoolctl import threadpool_limits

from ._base import BaseRefiner
from ._kmedoids import check_engine, kmedoids

__all__ = ["SNPSSplitter"]

logger = logging.getLogger(__name__)


def split_criterion(S, groups, n_groups):
    """Eq. 2 to 4: sum over groups of compactness x independence.

    ``comp_j`` is the smallest similarity inside group j (a singleton's is
    its self-similarity, 1) and ``indep_j`` one minus the largest
    similarity between group j and the other groups; similarities are
    clipped to [0, 1] as in the paper.
    """
    S = np.clip(S, 0.0, 1.0)
    total = 0.0
    for j in range(n_groups):
        inside = groups == j
        comp = S[np.ix_(inside, inside)].min()
        indep = 1.0 - S[np.ix_(inside, ~inside)].max()
        total += comp * indep
    return total


def best_split(Xc, k_max, *, engine, seed):
    """k-medoids on one cluster for k in [2, k_max]; the k* of Eq. 4.

    Returns ``(criterion, groups, medoids)`` (medoids as row indices of
    ``Xc``), or None when no k gives two non-empty groups.
    """
    S = Xc @ Xc.T
    diss = np.clip(1.0 - S, 0.0, None)
    np.fill_diagonal(diss, 0.0)
    best = None
    for k in range(2, k_max + 1):
        groups, medoids = kmedoids(diss, k, engine=engine, seed=seed)
        # identical samples can leave a group empty: renumber the used ones
        used, groups = np.unique(groups, return_inverse=True)
        if len(used) < 2:
            continue
        score = split_criterion(S, groups, len(used))
        if best is None or score > best[0]:
            best = (score, groups, medoids[used])
    return best


def default_k_max(size):
    """The paper's k_max = floor(sqrt(|C| / 2) / 2)."""
    return int(np.floor(np.sqrt(size / 2.0) / 2.0))


class SNPSSplitter(BaseRefiner):
    """Split impure clusters by asking about their group medoids (SNPS).

    Split by hard Negative centroid-Pair Selection, Sec. 3.2.1 of the UCAL
    paper. Each cluster C is partitioned by k-medoids into k groups for
    every k in ``[2, k_max]``; the k* maximising
    ``sum_j comp_j * indep_j`` (Eq. 2 to 4) is kept. The oracle is then
    asked about every pair of the k* group medoids (one batch for all
    clusters): groups joined by "same" answers stay together, the others
    become clusters of their own. A pair the oracle did not answer (not
    sure, or beyond the budget) keeps its groups together: a split needs
    an answer.

    Parameters
    ----------
    clusterer : estimator, default=None
        Makes the initial clusters: any scikit-learn clusterer (cloned,
        fitted on X, its ``labels_`` used; skipped when ``fit`` gets
        ``labels``), or another refiner, which runs first, on the
        ``labels`` given to ``fit`` if any, and shares this fit's oracle,
        memory, budget and seed. None means ``ucal.SelfPacedDBSCAN()``.
    k_max : int, default=None
        Largest number of groups tried per cluster. None is the paper's
        ``floor(sqrt(|C| / 2) / 2)``, which leaves clusters of fewer than
        32 samples alone. k never exceeds ``|C| / 2``; clusters too small
        for k = 2 are left alone.
    engine : {"fasterpam", "sklearn_extra"}, default="fasterpam"
        k-medoids implementation: FasterPAM from the ``kmedoids`` package,
        or scikit-learn-extra's ``KMedoids`` (optional extra
        ``ucal[sklearn-extra]``; version 0.3.0 does not import beside
        NumPy 2, and selecting it then raises an ``ImportError`` naming the
        fix).
    max_queries : int, default=None
        Most pairs sent to the oracle in one fit (a nested refiner's
        queries included); None is unlimited. When it runs out, the
        clusters with the best split criterion are asked first, a
        :class:`~ucal.oracles.BudgetExhaustedWarning` is issued and
        refinement goes on with what is known.
    memory_path : str or path-like, default=None
        File in which a fresh :class:`~ucal.oracles.LabelMemory` persists
        answers, when ``fit`` gets no ``label_memory``.
    random_state : int, RandomState instance or None, default=None
        Seeds the k-medoids engine. When None, the ``seed`` given to
        :meth:`fit` (if any) is used.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Refined cluster labels, ``-1`` for outliers (never queried, never
        made into clusters).
    n_clusters_ : int
        Number of refined clusters.
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        L2-normalised mean of each refined cluster's L2-normalised samples.
    n_splits_ : int
        Number of clusters this stage split.
    n_queries_ : int
        Pairs sent to the oracle during this fit (a nested refiner's
        included).
    n_inferred_ : int
        Pairs the label memory answered instead of the oracle.
    cost_ : float
        Labeling cost of Eq. 7, ``n_queries_ / (N (N - 1) / 2)``.
    queries_ : dict
        ``"pairs"`` (m, 2) sent to the oracle (``i < j``), ``"answers"``
        (m,) int8 (1 same, 0 different, -1 not sure) and ``"stage"`` (m,).
    stage_queries_ : dict
        Pairs sent per stage, e.g. ``{"snps": 12}``.
    stage_inferred_ : dict
        Pairs answered by the memory per stage.
    stage_changes_ : dict
        Clusters changed per stage (split by SNPS, removed by merging in
        MPPS).
    label_memory_ : LabelMemory
        The memory used (holds no oracle; pickles).
    clusterer_ : estimator or None
        The fitted clone of ``clusterer`` (None when ``labels`` were given).
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when X has string feature names.

    See Also
    --------
    MPPSMerger : Merge fragmented clusters (the paper's other module).
    ucal.oracles.LabelMemory : The memory of answers shared across fits.

    Examples
    --------
    >>> import numpy as np
    >>> from ucal import SNPSSplitter
    >>> rng = np.random.RandomState(0)
    >>> centres = np.eye(8)[:2]
    >>> y = np.repeat([0, 1], 20)
    >>> X = centres[y] + 0.05 * rng.randn(40, 8)
    >>> labels = np.zeros(40, dtype=int)      # both identities in one cluster
    >>> snps = SNPSSplitter(k_max=2).fit(X, y, labels=labels)
    >>> snps.n_clusters_, snps.n_queries_
    (2, 1)
    """

    _stage_name = "snps"
    _changes_attribute = "n_splits_"

    _parameter_constraints: dict = {
        **BaseRefiner._parameter_constraints,
        "k_max": [Interval(Integral, 2, None, closed="left"), None],
        "engine": [StrOptions({"fasterpam", "sklearn_extra"})],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        clusterer=None,
        *,
        k_max=None,
        engine="fasterpam",
        max_queries=None,
        memory_path=None,
        random_state=None,
    ):
        self.clusterer = clusterer
        self.k_max = k_max
        self.engine = engine
        self.max_queries = max_queries
        self.memory_path = memory_path
        self.random_state = random_state

    def _refine(self, Xn, labels, session, stage):
        check_engine(self.engine)
        seed = int(check_random_state(self._seed(session)).randint(np.iinfo(np.int32).max))
        n_clusters = int(labels.max()) + 1 if len(labels) else 0
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(n_clusters + 1))

        candidates = []  # (criterion, cluster, members, groups, medoids)
        # many tiny matrix products: BLAS threads only add synchronisation
        with threadpool_limits(limits=1, user_api="blas"):
            for c in range(n_clusters):
                members = order[bounds[c] : bounds[c + 1]]
                k_hi = default_k_max(len(members)) if self.k_max is None else self.k_max
                k_hi = min(k_hi, len(members) // 2)  # groups of 2+ samples on average
                if k_hi < 2:
                    continue
                best = best_split(Xn[members], k_hi, engine=self.engine, seed=seed)
                if best is not None:
                    score, groups, medoids = best
                    candidates.append((score, c, members, groups, members[medoids]))

        self.n_splits_ = 0
        if not candidates:
            logger.info("%s: no cluster large enough to split.", stage)
            return labels
        # budget priority: the clusters with the best split criterion first
        candidates.sort(key=lambda cand: -cand[0])
        pair_lists, owners = [], []
        context = np.full(len(labels), -1, dtype=np.int64)
        offset = 0
        for idx, (_, _, members, groups, medoids) in enumerate(candidates):
            index = list(combinations(range(len(medoids)), 2))
            pair_lists.append(medoids[np.array(index)])
            owners.append(index)
            context[members] = offset + groups
            offset += len(medoids)
        answers = session.ask(
            np.concatenate(pair_lists), stage=stage, owner=type(self).__name__,
            context=context,
        )

        labels = labels.copy()
        next_label = n_clusters
        position = 0
        for (_, _, members, groups, medoids), index in zip(candidates, owners):
            k = len(medoids)
            parent = list(range(k))

            def find(a):
                while parent[a] != a:
                    parent[a] = parent[parent[a]]
                    a = parent[a]
                return a

            for (a, b), answer in zip(index, answers[position : position + len(index)]):
                if answer != 0:  # same, or unknown: keep together
                    parent[find(a)] = find(b)
            position += len(index)
            roots = np.array([find(a) for a in range(k)])
            parts = np.unique(roots)
            if len(parts) == 1:
                continue
            self.n_splits_ += 1
            # the part holding group 0 keeps the label, the others get new ones
            for root in parts:
                if root == roots[0]:
                    continue
                labels[members[roots[groups] == root]] = next_label
                next_label += 1
        logger.info(
            "%s: %d candidate clusters, %d split into %d new clusters.",
            stage, len(candidates), self.n_splits_, next_label - n_clusters,
        )
        return labels
