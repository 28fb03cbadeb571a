"""SNPS: split clusters at hard negative centroid pairs (paper Sec. 3.2.1)."""

import logging
from itertools import combinations
from numbers import Integral

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from threadpoolctl import threadpool_limits

from ..cluster._centers import cluster_centers
from ._base import BaseRefiner
from ._kmedoids import check_engine, kmedoids
from ._relations import DIFFERENT, OPEN, SAME, Groups, Votes, decide, fresh_pair

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


_ROUNDING = {"floor": np.floor, "round": np.round, "ceil": np.ceil}


def default_k_max(size, rule="floor"):
    """The paper's ``k_max = sqrt(|C| / 2) / 2``, rounded by ``rule``.

    ``"floor"`` (what the formula gives as written) reaches k = 2 only for
    clusters of 32+ samples; ``"round"`` from 18; ``"ceil"`` from 9.
    A callable ``rule(size) -> int`` replaces the formula.
    """
    if callable(rule):
        return int(rule(size))
    return int(_ROUNDING[rule](np.sqrt(size / 2.0) / 2.0))


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
        Largest number of groups tried per cluster. None uses the paper's
        formula ``sqrt(|C| / 2) / 2``, rounded by ``k_max_rule``. k never
        exceeds ``|C| / 2``; clusters too small for k = 2 are left alone.
    k_max_rule : {"ceil", "round", "floor"} or callable, default="ceil"
        How the paper's formula is rounded (a callable ``rule(|C|) -> int``
        replaces it). ``"floor"``, the formula as written, only reaches
        clusters of 32 or more samples (about 46 of 750 at Market-1501's
        identity sizes); ``"ceil"`` reaches clusters of 9 or more. The
        default was chosen by measurement (see :doc:`/reproducing`): it
        brings SNPS's share of the questions closest to the paper's
        per-module costs (SNPS 0.027 % against MPPS 0.046 % on Market).
    cluster_inference : bool, default=True
        Settle pairs of groups from every answer already given across them
        (the answers' votes, see :mod:`ucal.active`) and ask only what they
        leave open: the medoid pair first, then fresh pairs. False is the
        paper's SNPS: each pair of group medoids is asked once (the memory
        only answers that exact pair again).
    confirm_size : int or None, default=8
        With ``cluster_inference``, a split of ``confirm_size`` or more
        samples that rests on a single "different" is confirmed by a second
        pair (a wrong answer then splits nothing). None: one answer splits.
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
    >>> snps.n_clusters_, snps.n_queries_  # the split of 40 samples is confirmed
    (2, 2)
    """

    _stage_name = "snps"
    _changes_attribute = "n_splits_"

    _parameter_constraints: dict = {
        **BaseRefiner._parameter_constraints,
        "k_max": [Interval(Integral, 2, None, closed="left"), None],
        "k_max_rule": [StrOptions({"floor", "round", "ceil"}), callable],
        "engine": [StrOptions({"fasterpam", "sklearn_extra"})],
        "cluster_inference": ["boolean"],
        "confirm_size": [Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        clusterer=None,
        *,
        k_max=None,
        k_max_rule="ceil",
        cluster_inference=True,
        confirm_size=8,
        engine="fasterpam",
        max_queries=None,
        memory_path=None,
        random_state=None,
    ):
        self.clusterer = clusterer
        self.k_max = k_max
        self.k_max_rule = k_max_rule
        self.engine = engine
        self.cluster_inference = cluster_inference
        self.confirm_size = confirm_size
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
                k_hi = self.k_max
                if k_hi is None:
                    k_hi = default_k_max(len(members), self.k_max_rule)
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
        # every sample's group, numbered across clusters (also the oracle's context)
        context = np.full(len(labels), -1, dtype=np.int64)
        group_pairs, group_medoids, offset = [], [], 0
        for _, _, members, groups, medoids in candidates:
            context[members] = offset + groups
            k = len(medoids)
            group_pairs.extend((offset + a, offset + b) for a, b in combinations(range(k), 2))
            group_medoids.extend(medoids.tolist())
            offset += k
        group_pairs = np.array(group_pairs, dtype=np.int64)
        group_medoids = np.array(group_medoids, dtype=np.int64)
        relation = self._relations(Xn, context, group_pairs, group_medoids, session, stage)

        labels = labels.copy()
        next_label = n_clusters
        offset, position = 0, 0
        for _, _, members, groups, medoids in candidates:
            k = len(medoids)
            n_pairs = k * (k - 1) // 2
            local = group_pairs[position : position + n_pairs] - offset
            rel = relation[position : position + n_pairs]
            position += n_pairs
            offset += k
            parts = Groups(k)
            # "same" joins groups (a chain of them wins over a "different", as
            # in the paper), then "different" keeps the parts it separates apart
            for (a, b), r in zip(local.tolist(), rel.tolist()):
                if r == SAME:
                    parts.union(a, b)
            for (a, b), r in zip(local.tolist(), rel.tolist()):
                if r == DIFFERENT:
                    if parts.find(a) == parts.find(b):
                        session.contradiction(
                            stage, "cycle", pair=(int(medoids[a]), int(medoids[b])),
                            resolution="not applied",
                        )
                    parts.keep_apart(a, b)
            # no answer (not sure, or beyond the budget) keeps groups together,
            # unless a "different" already separates their parts
            for (a, b), r in zip(local.tolist(), rel.tolist()):
                if r == OPEN:
                    parts.union(a, b)
            roots = parts.roots()
            split = np.unique(roots)
            if len(split) == 1:
                continue
            self.n_splits_ += 1
            # the part holding group 0 keeps the label, the others get new ones
            for root in split:
                if root == roots[0]:
                    continue
                labels[members[roots[groups] == root]] = next_label
                next_label += 1
        logger.info(
            "%s: %d candidate clusters, %d split into %d new clusters.",
            stage, len(candidates), self.n_splits_, next_label - n_clusters,
        )
        return labels

    def _relations(self, Xn, context, group_pairs, group_medoids, session, stage):
        """SAME / DIFFERENT / OPEN for every pair of groups, asking what is open.

        The paper's SNPS (``cluster_inference=False``) asks each pair of group
        medoids once. Otherwise, the answers already given across two groups
        settle them first; open pairs are asked (medoids first, then fresh
        pairs), and a split between two groups of ``confirm_size`` or more
        samples on a single "different" is confirmed by a second pair.
        """
        owner = type(self).__name__
        if not self.cluster_inference:
            answers = session.ask(
                group_medoids[group_pairs], stage=stage, owner=owner, context=context
            )
            return np.where(answers == 1, SAME, np.where(answers == 0, DIFFERENT, OPEN))
        votes = Votes(session.memory, context)
        sizes = np.bincount(context[context >= 0], minlength=len(group_medoids))
        # a split of confirm_size or more samples on one "different" is confirmed
        pair_size = sizes[group_pairs[:, 0]] + sizes[group_pairs[:, 1]]
        need_diff = np.where(
            pair_size >= (np.inf if self.confirm_size is None else self.confirm_size), 2, 1
        )
        order = np.argsort(context, kind="stable")
        bounds = np.searchsorted(context[order], np.arange(len(group_medoids) + 1))
        centers = None
        tries = np.zeros(len(group_pairs), dtype=np.int64)
        events = {}  # group pair -> its contradiction record
        first_pass = True
        names = {SAME: "same", DIFFERENT: "different", OPEN: "open"}
        spent = False  # no oracle, or the budget is spent
        while True:
            counts = np.array([votes.between(a, b) for a, b in group_pairs.tolist()])
            counts = counts.reshape(-1, 2)
            relation = decide(counts[:, 0], counts[:, 1], need_same=1, need_diff=need_diff)
            if first_pass:
                session.settled(stage, (relation != OPEN).sum())
                first_pass = False
            open_ = np.flatnonzero((relation == OPEN) & (tries < 3))
            for p, event in events.items():
                event["resolution"] = names[int(relation[p])]
            if spent or not len(open_):
                return relation
            ask = []
            for p in open_.tolist():
                a, b = group_pairs[p]
                n_same, n_diff = counts[p]
                if n_same + n_diff and p not in events:
                    events[p] = session.contradiction(
                        stage, "tie" if n_same == n_diff else "confirm",
                        groups=(int(group_medoids[a]), int(group_medoids[b])),
                        votes=(int(n_same), int(n_diff)), asked=[],
                    )
                pair = (int(group_medoids[a]), int(group_medoids[b]))
                if (min(pair), max(pair)) in votes.answered:
                    if centers is None:
                        centers = cluster_centers(Xn, context, len(group_medoids))
                    pair = fresh_pair(
                        order[bounds[a] : bounds[a + 1]], order[bounds[b] : bounds[b + 1]],
                        Xn, centers[a], centers[b], votes.answered,
                    )
                if pair is None:
                    tries[p] = 3
                    continue
                if p in events:
                    events[p]["asked"].append(pair)
                ask.append(pair)
            tries[open_] += 1
            if not ask:
                continue
            ask = np.array(ask, dtype=np.int64)
            answers = session.ask(ask, stage=stage, owner=owner, context=context)
            votes.add(ask, answers)
            spent = session.remaining() == 0
