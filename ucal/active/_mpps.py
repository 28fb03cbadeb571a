"""MPPS: merge clusters at hard positive centroid pairs (paper Sec. 3.2.2)."""

import logging
from numbers import Integral, Real

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from ..cluster._centers import cluster_centers, cluster_medoids
from ._base import BaseRefiner
from ._relations import DIFFERENT, OPEN, SAME, Groups, Votes, decide, fresh_pair
from ._uncertainty import uncertainty_order

__all__ = ["MPPSMerger"]

logger = logging.getLogger(__name__)

_BLOCK = 2048  # rows of the centroid similarity matrix held at once


def gap_cut(top_sims, delta):
    """Eq. 5 and 6 on rows of similarities sorted from high to low.

    ``d_l = s_l - s_{l+1}``, min-max normalised along each row into
    ``d*_l``; the result is, per row, the first ``l`` (1-based) with
    ``d*_l > delta``: the number of candidates to ask. A row with a single
    candidate, or without any gap (all ``d_l`` equal), gives 1.
    """
    top_sims = np.asarray(top_sims, dtype=np.float64)
    if top_sims.shape[1] < 2:
        return np.ones(len(top_sims), dtype=np.int64)
    d = top_sims[:, :-1] - top_sims[:, 1:]
    lo = d.min(axis=1, keepdims=True)
    span = d.max(axis=1, keepdims=True) - lo
    # rounding leaves tiny spans in gap-free rows: treat them as no gap
    d_star = np.divide(d - lo, span, out=np.zeros_like(d), where=span > 1e-9)
    above = d_star > delta
    return np.where(above.any(axis=1), above.argmax(axis=1) + 1, 1)


def neighbour_pairs(Xn, labels, n_neighbors=10):
    """Image pairs across sets: each image with its nearest neighbour in another set.

    Every image is scored against its ``n_neighbors`` nearest images by an
    exact search of all of them (:class:`~ucal.cluster.ExactSearch` up to
    100,000 images, ``search="auto"``'s engine above: about the cost of the
    clustering's own search); its first neighbour outside its own set gives
    a candidate. Images without one among their ``n_neighbors`` nearest
    give none. Mutual pairs (each the other's nearest outside its set) come
    first, then the rest, each group by decreasing similarity; each pair of
    sets is kept once, with its first image pair in that order.

    Parameters
    ----------
    Xn : ndarray of shape (n_samples, n_features)
        L2-normalised samples (all-zero rows allowed: they take no part).
    labels : ndarray of shape (n_samples,)
        The set of each sample; ``-1``: in none (no candidate, never a
        neighbour).
    n_neighbors : int, default=10
        How far down its neighbour list an image looks for another set.

    Returns
    -------
    pairs : ndarray of shape (m, 2)
        Set pairs ``a < b``, in the order to ask.
    shown : ndarray of shape (m, 2)
        The image pair to show for each, in the same order as ``pairs``.
    """
    from ..cluster._knn import UnitRows
    from ..cluster._search import resolve_search

    labels = np.asarray(labels)
    n = len(Xn)
    k = min(int(n_neighbors) + 1, n)
    empty = np.empty((0, 2), dtype=np.int64)
    if n < 2 or labels.max(initial=-1) < 0:
        return empty, empty
    rows_of = UnitRows(Xn, zero_rows="keep")
    neighbours, sims = resolve_search("auto", n)._search_rows(rows_of, k)
    valid = (labels >= 0) & ~rows_of.zero
    outside = (labels[neighbours] != labels[:, None]) & valid[neighbours] & valid[:, None]
    has = outside.any(axis=1)
    first = outside.argmax(axis=1)
    rows = np.flatnonzero(has)
    cols = neighbours[rows, first[rows]].astype(np.int64)
    sim = sims[rows, first[rows]].astype(np.float64)
    nearest = np.full(n, -1, dtype=np.int64)
    nearest[rows] = cols
    mutual = nearest[cols] == rows
    order = np.lexsort((-sim, ~mutual))  # mutual first, then by decreasing similarity
    rows, cols = rows[order], cols[order]
    a, b = labels[rows], labels[cols]
    keys = np.minimum(a, b).astype(np.int64) * (int(labels.max()) + 1) + np.maximum(a, b)
    _, once = np.unique(keys, return_index=True)
    once = np.sort(once)  # the first image pair of each pair of sets, in order
    pairs = np.stack([np.minimum(a, b)[once], np.maximum(a, b)[once]], axis=1).astype(np.int64)
    shown = np.stack([rows[once], cols[once]], axis=1)
    return pairs, shown


def candidate_pairs(centers, l_max, delta):
    """Eq. 5 and 6: the centroid pairs worth asking, with their similarity.

    For each centroid, the ``l_max`` most similar other centroids are
    ranked, ``d_l = s_l - s_{l+1}`` is min-max normalised along the list,
    and the pairs up to the first ``l`` with ``d*_l > delta`` are kept. With
    a single candidate, or a list without any gap (all ``d_l`` equal),
    only the most similar centroid is kept. ``delta=None`` keeps all
    ``l_max`` (no cut).

    Returns
    -------
    pairs : ndarray of shape (m, 2)
        Cluster pairs ``a < b``, each once, by decreasing similarity.
    sims : ndarray of shape (m,)
        Their centroid similarities.
    """
    n = len(centers)
    L = min(l_max, n - 1)
    if L < 1:
        return np.empty((0, 2), dtype=np.int64), np.empty(0)
    rows, cols, sims = [], [], []
    for start in range(0, n, _BLOCK):
        block = centers[start : start + _BLOCK] @ centers.T
        local = np.arange(len(block))
        block[local, start + local] = -np.inf  # a centroid is not its own candidate
        top = np.argpartition(-block, L - 1, axis=1)[:, :L]
        top_sims = np.take_along_axis(block, top, axis=1)
        rank = np.argsort(-top_sims, axis=1, kind="stable")
        top = np.take_along_axis(top, rank, axis=1)
        top_sims = np.take_along_axis(top_sims, rank, axis=1)
        cut = np.full(len(top), L) if delta is None else gap_cut(top_sims, delta)
        keep = np.arange(L)[None, :] < cut[:, None]
        rows.append(np.broadcast_to((start + local)[:, None], top.shape)[keep])
        cols.append(top[keep])
        sims.append(top_sims[keep])
    a, b = np.concatenate(rows), np.concatenate(cols)
    sims = np.concatenate(sims)
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)
    # (i, j) and (j, i) are one pair; ask the most similar first
    _, first = np.unique(pairs[:, 0] * n + pairs[:, 1], return_index=True)
    pairs, sims = pairs[first], sims[first]
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -sims))
    return pairs[order], sims[order]


class MPPSMerger(BaseRefiner):
    """Merge fragmented clusters by asking about similar centroids (MPPS).

    Merge by hard Positive centroid-Pair Selection, Sec. 3.2.2 of the UCAL
    paper. For each cluster centroid, the other centroids are ranked by
    similarity (top ``l_max``); the adjacent differences ``d_l`` are
    min-max normalised (Eq. 5, 6) and the pairs up to the first ``l`` with
    ``d*_l > delta`` are asked, all in one batch, each unordered pair once.
    The human is shown each cluster's medoid (its sample nearest the
    centroid): that is the pair of sample indices sent to the oracle.
    Clusters joined by "same" answers are merged, in order of decreasing
    centroid similarity, until the number of clusters removed by merging
    reaches ``max_merge_ratio`` times the number of clusters.

    Parameters
    ----------
    clusterer : estimator, default=None
        Makes the initial clusters: any scikit-learn clusterer (cloned,
        fitted on X, its ``labels_`` used; skipped when ``fit`` gets
        ``labels``), or another refiner such as :class:`SNPSSplitter`, which runs first, on the
        ``labels`` given to ``fit`` if any, and shares this fit's oracle,
        memory, budget and seed (the paper runs SNPS, then MPPS). None means ``ucal.SelfPacedDBSCAN()``.
    l_max : int, default=10
        Length of each centroid's candidate list. The paper gives no value;
        10 keeps a batch below ``10 * n_clusters`` pairs.
    delta : float, default=0.3
        Threshold on the normalised similarity gap ``d*_l`` (paper: 0.3).
    max_merge_ratio : float, default=0.2
        Merges stop once this fraction of the clusters has been removed by
        merging (paper: 20% per epoch). With ``cluster_inference``, merges
        the answers already settle do not count against it, and it is
        applied before asking: questions stop once it is reached. With
        ``selection="neighbors"`` or ``"gap_then_neighbors"`` the outliers
        count in its base, as clusters of one.
    selection : {"gap", "uncertain", "nearest", "random", "neighbors", \
            "gap_then_neighbors"}, default="gap"
        Which centroid pairs are candidates, in which order: Eq. 5 and 6
        (``"gap"``, the paper's), most similar first; each centroid's
        ``l_max`` nearest, the least certain answer first (``"uncertain"``:
        ``P(same)`` calibrated on the answers so far by a logistic fit of
        the shown pair's similarity, nearest even odds first, in rounds in
        which each cluster appears once; see :mod:`ucal.active._uncertainty`;
        without ``cluster_inference`` all ``n_clusters * l_max`` candidates
        are asked in one batch and merged in that order, so use it with
        ``cluster_inference``); each centroid's nearest only
        (``"nearest"``), or random cluster pairs (``"random"``); the last
        two are controls for benchmarks. ``"neighbors"`` asks about images,
        not centroids: each image's nearest neighbour in another cluster
        among its 10 nearest (mutual pairs first, then by similarity; one
        image pair per pair of clusters, shown as it is, not the medoids;
        ``l_max`` and ``delta`` play no part), outliers included as clusters
        of one, so that two outliers a "same" answer joins become a cluster.
        Joining an outlier counts as a merge (in ``max_merge_ratio``, whose
        base then counts the outliers too, and in ``n_merges_``). It costs
        one exact neighbour search of all images per fit (about the
        clustering's own), and is meant for weak features, whose clusters
        are too impure for their centroids to say much.
        ``"gap_then_neighbors"`` asks the gap rule's candidates first
        (``"gap"``, medoid pairs shown; ``l_max`` and ``delta`` shape this
        part only), then, with what the budget leaves, ``"neighbors"``'s
        image pairs between the sets the gap rule did not pair (outliers
        included, as there). As with ``"neighbors"``, the outliers count in
        ``max_merge_ratio``'s base, for the gap rule's merges too, and the
        neighbour search runs in every fit, even when the gap rule's
        questions spend the whole budget.
    cluster_inference : bool, default=True
        Settle candidate pairs from every answer already given across the
        two clusters (votes, see :mod:`ucal.active`), keep apart groups a
        settled "different" separates (A same as B, B same as C, A
        different from C: no chain), and ask only open pairs, in batches no
        larger than the merges the cap still allows. False is the paper's
        MPPS: every candidate's medoid pair (``"neighbors"``: its image
        pair; ``"gap_then_neighbors"``: the first for the gap rule's
        candidates, the second for the others) is asked in one batch and
        the cap applied afterwards.
    confirm_size : int or None, default=8
        With ``cluster_inference``, two clusters of this size or more each
        merge only on two "same" answers (a second pair confirms the
        first). None: one answer merges.
    max_queries : int, default=None
        Most pairs sent to the oracle in one fit (a nested refiner's
        queries included); None is unlimited. When it runs out, the
        candidates first in ``selection``'s order (the most similar
        centroid pairs for ``"gap"``) have been asked, a
        :class:`~ucal.oracles.BudgetExhaustedWarning` is issued and
        refinement goes on with what is known.
    memory_path : str or path-like, default=None
        File in which a fresh :class:`~ucal.oracles.LabelMemory` persists
        answers, when ``fit`` gets no ``label_memory``.
    random_state : int, RandomState instance or None, default=None
        Seeds ``selection="random"``; when None, the ``seed`` given to
        :meth:`fit` (if any) is used.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Refined cluster labels, ``-1`` for outliers (never queried, never
        made into clusters, except by ``selection="neighbors"`` or
        ``"gap_then_neighbors"``, where an
        outlier a "same" answer joins to another image leaves them).
    n_clusters_ : int
        Number of refined clusters.
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        L2-normalised mean of each refined cluster's L2-normalised samples.
    n_merges_ : int
        Number of clusters this stage removed by merging on answers given
        during this fit (with ``selection="neighbors"`` or
        ``"gap_then_neighbors"``, outliers joined
        to a cluster or to each other included).
    n_known_merges_ : int
        Merges the answers already in the memory settled (not counted
        against ``max_merge_ratio``).
    n_queries_ : int
        Pairs sent to the oracle during this fit, a nested refiner's
        included (see ``stage_queries_`` for each stage's share).
    n_inferred_ : int
        Pairs the label memory answered instead of the oracle.
    cost_ : float
        Labeling cost of Eq. 7, ``n_queries_ / (N (N - 1) / 2)``.
    queries_ : dict
        ``"pairs"`` (m, 2) sent to the oracle (``i < j``), ``"answers"``
        (m,) int8 (1 same, 0 different, -1 not sure) and ``"stage"`` (m,).
    stage_queries_ : dict
        Pairs sent per stage, e.g. ``{"snps": 12, "mpps": 30}``.
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
    SNPSSplitter : Split impure clusters (the paper's other module).
    ucal.oracles.LabelMemory : The memory of answers shared across fits.

    Examples
    --------
    >>> import numpy as np
    >>> from ucal import MPPSMerger
    >>> rng = np.random.RandomState(0)
    >>> y = np.repeat(np.arange(5), 10)
    >>> X = np.eye(8)[y] + 0.05 * rng.randn(50, 8)
    >>> labels = y.copy()
    >>> labels[:5] = 5                      # identity 0 split in two clusters
    >>> mpps = MPPSMerger(max_merge_ratio=0.5).fit(X, y, labels=labels)
    >>> mpps.n_clusters_, mpps.n_merges_
    (5, 1)
    """

    _stage_name = "mpps"
    _changes_attribute = "n_merges_"

    _parameter_constraints: dict = {
        **BaseRefiner._parameter_constraints,
        "l_max": [Interval(Integral, 1, None, closed="left")],
        "delta": [Interval(Real, 0, 1, closed="both")],
        "max_merge_ratio": [Interval(Real, 0, 1, closed="both")],
        "selection": [StrOptions({"gap", "uncertain", "nearest", "random", "neighbors",
                                   "gap_then_neighbors"})],
        "cluster_inference": ["boolean"],
        "confirm_size": [Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        clusterer=None,
        *,
        l_max=10,
        delta=0.3,
        max_merge_ratio=0.2,
        selection="gap",
        cluster_inference=True,
        confirm_size=8,
        max_queries=None,
        memory_path=None,
        random_state=None,
    ):
        self.clusterer = clusterer
        self.l_max = l_max
        self.delta = delta
        self.max_merge_ratio = max_merge_ratio
        self.selection = selection
        self.cluster_inference = cluster_inference
        self.confirm_size = confirm_size
        self.max_queries = max_queries
        self.memory_path = memory_path
        self.random_state = random_state

    def _refine(self, Xn, labels, session, stage):
        self.n_merges_ = 0
        self.n_known_merges_ = 0
        n_clusters = int(labels.max()) + 1 if len(labels) else 0
        outliers = np.empty(0, dtype=np.int64)
        if self.selection in ("neighbors", "gap_then_neighbors"):
            # outliers take part as sets of one: a "same" answer can pair two of
            # them (all-zero rows, made noise by the base class, stay out)
            outliers = np.flatnonzero((labels < 0) & Xn.any(axis=1))
        n_sets = n_clusters + outliers.size
        if n_sets < 2:
            return labels
        if outliers.size:
            labels = labels.copy()
            labels[outliers] = n_clusters + np.arange(outliers.size)
        centers = cluster_centers(Xn, labels, n_sets)
        medoids = cluster_medoids(Xn, labels, centers)
        shown = None
        if self.selection == "neighbors":
            pairs, shown = neighbour_pairs(Xn, labels)
        elif self.selection == "gap_then_neighbors":
            pairs, shown = self._gap_then_neighbours(Xn, labels, centers, medoids, n_clusters)
        else:
            pairs = self._candidates(Xn, centers, medoids, session)
        limit = self.max_merge_ratio * n_sets
        if self.cluster_inference:
            groups = self._merge_by_votes(Xn, labels, centers, medoids, pairs, limit, session, stage,
                                          shown)
        else:
            groups = self._merge_as_the_paper(medoids, pairs, labels, limit, session, stage, shown)
        roots = groups.roots()
        logger.info(
            "%s: %d clusters, %d candidate pairs, %d merges (%d known from the memory).",
            stage, n_clusters, len(pairs), self.n_merges_, self.n_known_merges_,
        )
        refined = np.where(labels >= 0, roots[np.maximum(labels, 0)], -1)
        if outliers.size:  # an outlier no answer joined to anyone is an outlier again
            alone = np.bincount(refined[refined >= 0], minlength=n_sets)[refined[outliers]] == 1
            refined[outliers[alone]] = -1
        return refined

    def _gap_then_neighbours(self, Xn, labels, centers, medoids, n_clusters):
        """The gap rule's cluster pairs (medoids shown), then the image-neighbour
        pairs of the sets it left out (each shown as it is).

        The gap rule's candidates run out before a budget does when the
        clusters are few or clean; the neighbour pairs spend the rest where
        the images themselves, outliers included, say two sets may meet.
        """
        gap = candidate_pairs(centers[:n_clusters], self.l_max, self.delta)[0]
        near, near_shown = neighbour_pairs(Xn, labels)
        n_sets = len(centers)  # both give pairs a < b
        fresh = ~np.isin(near[:, 0] * n_sets + near[:, 1], gap[:, 0] * n_sets + gap[:, 1])
        pairs = np.concatenate([gap, near[fresh]]).astype(np.int64)
        shown = np.concatenate([medoids[gap].reshape(-1, 2), near_shown[fresh]]).astype(np.int64)
        return pairs, shown

    def _candidates(self, Xn, centers, medoids, session):
        """Cluster pairs to consider, in the order they are asked (``selection``)."""
        if self.selection == "uncertain":
            pairs = candidate_pairs(centers, self.l_max, None)[0]
            shown = np.einsum("ij,ij->i", Xn[medoids[pairs[:, 0]]], Xn[medoids[pairs[:, 1]]])
            order, calibrated = uncertainty_order(pairs, shown, session.memory, Xn, len(centers))
            if not calibrated:
                logger.info("Too few answers to calibrate P(same): most similar pairs first.")
            return pairs[order]
        if self.selection == "gap":
            return candidate_pairs(centers, self.l_max, self.delta)[0]
        if self.selection == "nearest":
            return candidate_pairs(centers, 1, self.delta)[0]
        # control: random cluster pairs, as many as the gap rule would consider
        n = len(centers)
        rng = check_random_state(self._seed(session))
        m = min(n * (n - 1) // 2, n * self.l_max)
        a, b = rng.randint(0, n, size=(2, 4 * m + 16))
        keys = np.unique(np.minimum(a, b)[a != b] * n + np.maximum(a, b)[a != b])
        keys = rng.permutation(keys)[:m]
        return np.stack([keys // n, keys % n], axis=1)

    def _merge_as_the_paper(self, medoids, pairs, labels, limit, session, stage, shown=None):
        """Ask every candidate's medoid pair (or its ``shown`` pair), then merge
        by similarity up to the cap."""
        answers = session.ask(
            medoids[pairs] if shown is None else shown, stage=stage, owner=type(self).__name__,
            context=labels,
        )
        groups = Groups(len(medoids))
        for a, b in pairs[answers == 1].tolist():
            if self.n_merges_ >= limit:
                break
            self.n_merges_ += groups.union(a, b)
        return groups

    def _merge_by_votes(self, Xn, labels, centers, medoids, pairs, limit, session, stage,
                        shown=None):
        """Settle candidates from the answers, asking only what they leave open.

        Candidates are taken by decreasing similarity. A pair the votes
        settle as "same" merges (without counting against the cap when the
        votes were there before this fit), one they settle as "different"
        keeps the two groups apart, and an open one is asked, in batches no
        larger than the merges the cap still allows: its medoid pair first,
        then fresh pairs across (a confirmation, a tie-break). With
        ``shown``, a candidate's own image pair is asked first instead of
        its medoid pair.
        """
        n_clusters = len(medoids)
        sizes = np.bincount(labels[labels >= 0], minlength=n_clusters)
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(n_clusters + 1))
        votes = Votes(session.memory, labels)
        groups = Groups(n_clusters)
        confirm = self.confirm_size

        def relation(a, b):
            need = 2 if confirm is not None and min(sizes[a], sizes[b]) >= confirm else 1
            return int(decide(*votes.between(a, b), need_same=need))

        for a, b, n_same, n_diff in zip(*votes.pairs()):
            if decide(n_same, n_diff) == DIFFERENT:
                groups.keep_apart(a, b)
        pending = list(range(len(pairs)))
        tries = np.zeros(len(pairs), dtype=np.int64)
        events = {}  # candidate -> its contradiction record
        first_pass = True
        while pending and self.n_merges_ < limit:
            batch, still = [], []
            for c in pending:
                a, b = int(pairs[c, 0]), int(pairs[c, 1])
                if groups.find(a) == groups.find(b) or groups.apart(a, b):
                    continue
                rel = relation(a, b)
                if first_pass and rel != OPEN:
                    session.settled(stage, 1)
                if rel == SAME:
                    if groups.union(a, b):
                        if first_pass:
                            self.n_known_merges_ += 1
                        else:
                            self.n_merges_ += 1
                    if self.n_merges_ >= limit:
                        break
                    continue
                if rel == DIFFERENT:
                    groups.keep_apart(a, b)
                    continue
                if tries[c] >= 3:  # asked three times and still open: leave it
                    continue
                still.append(c)
                if len(batch) < max(1, int(np.ceil(limit - self.n_merges_))):
                    batch.append(c)
            pending = still
            first_pass = False
            if not batch:
                break
            ask, asked_for = [], []
            for c in batch:
                a, b = int(pairs[c, 0]), int(pairs[c, 1])
                pair = (int(medoids[a]), int(medoids[b])) if shown is None else (
                    int(shown[c, 0]), int(shown[c, 1]))
                if (min(pair), max(pair)) in votes.answered:
                    pair = fresh_pair(
                        order[bounds[a] : bounds[a + 1]], order[bounds[b] : bounds[b + 1]],
                        Xn, centers[a], centers[b], votes.answered,
                    )
                if pair is None:  # every pair across is answered, and still open
                    tries[c] = 3
                    continue
                n_same, n_diff = votes.between(a, b)
                if n_same + n_diff and c not in events:
                    events[c] = session.contradiction(
                        stage, "tie" if n_same == n_diff else "confirm",
                        clusters=(int(medoids[a]), int(medoids[b])),
                        votes=(int(n_same), int(n_diff)), asked=[],
                    )
                if c in events:
                    events[c]["asked"].append(pair)
                ask.append(pair)
                asked_for.append(c)
            if not ask:
                continue
            ask = np.array(ask, dtype=np.int64)
            answers = session.ask(ask, stage=stage, owner=type(self).__name__, context=labels)
            votes.add(ask, answers)
            tries[asked_for] += 1
            if session.remaining() == 0:
                break  # no oracle, or the budget is spent: nothing more to learn in this fit
        names = {SAME: "same", DIFFERENT: "different", OPEN: "open"}
        for c, event in events.items():
            event["resolution"] = names[relation(int(pairs[c, 0]), int(pairs[c, 1]))]
        return groups
