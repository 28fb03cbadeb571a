"""AnswerConstraints: the answers already given shape every new clustering."""

import logging
from numbers import Integral

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from sklearn.utils._param_validation import Interval

from ..cluster._centers import cluster_centers
from ._base import BaseRefiner
from ._relations import DIFFERENT, OPEN, SAME, Groups, Votes, decide, fresh_pair

__all__ = ["AnswerConstraints"]

_NAMES = {SAME: "same", DIFFERENT: "different", OPEN: "open"}

logger = logging.getLogger(__name__)


class AnswerConstraints(BaseRefiner):
    """Make a clustering agree with the answers in the label memory.

    A clustering redone from scratch (every training epoch) forgets what
    the oracle said about the previous one. This step puts the answers back
    before SNPS and MPPS look for new questions, following the decision
    rule of :mod:`ucal.active` (votes across two clusters; see Notes):

    1. **Outliers with answers.** An outlier answered "same" as members of
       a cluster joins the cluster with the most such answers (when they
       outnumber its "different" answers there); outliers answered "same"
       as each other form a cluster of their own.
    2. **Same is kept together.** Two clusters whose answers settle as
       "same" merge, in order of the number of "same" answers; a merge that
       would join two groups with a settled "different" between them is
       refused (A same as B, B same as C, A different from C: the chain is
       cut).
    3. **Different is kept apart.** Inside a cluster, the answered samples
       joined by "same" answers form anchors; anchors with a "different"
       between them go to different parts (each anchor to the allowed part
       whose mean is most similar to its own), and every other member to
       the part whose mean is nearest. A split of a cluster of
       ``confirm_size`` or more samples that rests on a single "different"
       is confirmed by a second pair first (a question, within the budget);
       without confirmation the parts stay together. A "different" between
       two samples that "same" answers chain together is a contradiction:
       it is recorded in ``contradictions_`` and not applied.

    Usable on its own (``AnswerConstraints().fit(X, labels=..., label_memory=...)``),
    as the base of a refiner chain
    (``MPPSMerger(clusterer=SNPSSplitter(clusterer=AnswerConstraints()))``,
    what :class:`~ucal.reid.UCALReID` runs by default), in pipelines and grid
    search.

    Parameters
    ----------
    clusterer : estimator, default=None
        Makes the initial clusters when ``fit`` gets no ``labels`` (see
        :class:`SNPSSplitter`). None means ``ucal.SelfPacedDBSCAN()``.
    confirm_size : int or None, default=8
        Two clusters of at least this size each are merged only on two
        "same" answers, and a cluster of at least this size is split only on
        two "different" answers (more than the answers against, in both
        cases). None: one answer is enough.
    max_queries : int, default=None
        Most confirmation pairs sent to the oracle in one fit; None is
        unlimited.
    memory_path : str or path-like, default=None
        File in which a fresh :class:`~ucal.oracles.LabelMemory` persists
        answers, when ``fit`` gets no ``label_memory``.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        The clusters once the answers are applied, ``-1`` for outliers.
    n_clusters_ : int
        Number of clusters.
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        L2-normalised mean of each cluster's L2-normalised samples.
    n_joined_ : int
        Outliers that joined a cluster (or formed one) by their answers.
    n_merges_ : int
        Clusters removed by "same" answers.
    n_splits_ : int
        Clusters split by "different" answers.
    n_changes_ : int
        ``n_joined_ + n_merges_ + n_splits_``.
    contradictions_ : list of dict
        ``{"stage", "kind": "cycle", "pair": (i, j), "resolution": "not
        applied"}``: a "different" answer inside a chain of "same" answers;
        ``{"stage", "kind": "tie" or "confirm", "votes", "asked",
        "resolution"}``: answers across two parts that were tied, or a
        single one on a large cluster, and the pairs asked to settle them.
    n_queries_ : int
        Confirmation pairs sent to the oracle.
    n_inferred_ : int
        Pairs the memory answered when a confirmation pair was already
        known by inference.
    cost_ : float
        Labeling cost of Eq. 7 of those questions.
    queries_ : dict
        The pairs sent, their answers and their stage.
    stage_queries_ : dict
        Pairs sent per stage, ``{"constraints": n}`` (with nested refiners,
        theirs too).
    stage_inferred_ : dict
        Pairs answered by the memory per stage.
    stage_changes_ : dict
        Clusters changed per stage.
    label_memory_ : LabelMemory
        The memory read.
    clusterer_ : estimator or None
        The fitted clone of ``clusterer`` (None when ``labels`` were given).
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when X has string feature names.

    See Also
    --------
    SNPSSplitter, MPPSMerger : The refiners that ask new questions.
    ucal.oracles.LabelMemory : Where the answers are.

    Notes
    -----
    The answers between two clusters are *votes*: the relation is "same"
    when the "same" answers reach the number needed (2 between clusters of
    ``confirm_size`` or more, else 1) and outnumber the "different" ones,
    "different" in the symmetric case, and open otherwise. One wrong answer
    among several therefore decides nothing, and every answer keeps
    working when the clusters are redrawn.

    Examples
    --------
    >>> import numpy as np
    >>> from ucal.active import AnswerConstraints
    >>> from ucal.oracles import LabelMemory
    >>> X = np.eye(3)[[0, 0, 0, 1, 1, 1, 2]] + 0.01
    >>> memory = LabelMemory()
    >>> memory.record([[0, 3], [0, 6], [1, 5]], [True, True, False])
    3
    >>> labels = np.array([0, 0, 0, 1, 1, 1, -1])  # 6 is an outlier
    >>> step = AnswerConstraints().fit(X, labels=labels, label_memory=memory)
    >>> step.labels_.tolist(), step.n_joined_
    ([0, 0, 0, 1, 1, 1, 0], 1)

    Clusters 0 and 1 stay apart: one "same" and one "different" answer
    across them is a tie. Answers inside one cluster split it:

    >>> memory = LabelMemory()
    >>> memory.record([[0, 4]], [False])
    1
    >>> one = np.array([0, 0, 0, 0, 0, 0, -1])
    >>> AnswerConstraints().fit(X, labels=one, label_memory=memory).labels_.tolist()
    [0, 0, 0, 1, 1, 1, -1]
    """

    _stage_name = "constraints"
    _changes_attribute = "n_changes_"

    _parameter_constraints: dict = {
        **BaseRefiner._parameter_constraints,
        "confirm_size": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(self, clusterer=None, *, confirm_size=8, max_queries=None, memory_path=None):
        self.clusterer = clusterer
        self.confirm_size = confirm_size
        self.max_queries = max_queries
        self.memory_path = memory_path

    def _need(self, size_a, size_b, split=False):
        """Answers needed: 2 to merge two clusters of ``confirm_size`` or more each,
        2 to split a cluster of ``confirm_size`` or more, else 1."""
        if self.confirm_size is None:
            return 1
        size = size_a + size_b if split else min(size_a, size_b)
        return 2 if size >= self.confirm_size else 1

    def _refine(self, Xn, labels, session, stage):
        self.n_joined_ = self.n_merges_ = self.n_splits_ = 0
        pairs, same = session.memory.to_arrays()
        inside = pairs[:, 1] < len(labels) if len(pairs) else np.zeros(0, bool)
        pairs, same = pairs[inside], same[inside]
        if len(pairs):
            labels = self._join_outliers(labels, pairs, same)
            labels = self._merge(labels, session.memory)
            labels = self._split(Xn, labels, session, stage)
        self.n_changes_ = self.n_joined_ + self.n_merges_ + self.n_splits_
        logger.info(
            "%s: %d outliers joined, %d merges, %d splits, %d contradictions.",
            stage, self.n_joined_, self.n_merges_, self.n_splits_,
            sum(c["kind"] == "cycle" and c["stage"] == stage for c in session.contradictions),
        )
        return labels

    def _join_outliers(self, labels, pairs, same):
        labels = labels.copy()
        la, lb = labels[pairs[:, 0]], labels[pairs[:, 1]]
        # outlier -> cluster answers, oriented (outlier, cluster, same)
        one = (la < 0) ^ (lb < 0)
        outlier = np.where(la < 0, pairs[:, 0], pairs[:, 1])[one]
        cluster = np.where(la < 0, lb, la)[one]
        votes = {}
        for o, c, s in zip(outlier.tolist(), cluster.tolist(), same[one].tolist()):
            n_same, n_diff = votes.get((o, c), (0, 0))
            votes[(o, c)] = (n_same + s, n_diff + (not s))
        best = {}
        for (o, c), (n_same, n_diff) in votes.items():
            if n_same > n_diff and n_same > best.get(o, (0, -1))[0]:
                best[o] = (n_same, c)
        for o, (_, c) in best.items():
            labels[o] = c
        self.n_joined_ += len(best)
        # outliers answered "same" as each other (and still outliers): new clusters
        both = (labels[pairs[:, 0]] < 0) & (labels[pairs[:, 1]] < 0) & same
        if both.any():
            n = len(labels)
            graph = sparse.coo_matrix(
                (np.ones(both.sum()), (pairs[both, 0], pairs[both, 1])), shape=(n, n)
            )
            _, comp = connected_components(graph, directed=False)
            linked = np.unique(pairs[both])
            next_label = labels.max(initial=-1) + 1
            for c in np.unique(comp[linked]):
                members = linked[comp[linked] == c]
                labels[members] = next_label
                next_label += 1
                self.n_joined_ += len(members)
        return labels

    def _merge(self, labels, memory):
        n_clusters = int(labels.max()) + 1
        if n_clusters == 0:  # every sample an outlier: nothing to merge
            return labels
        sizes = np.bincount(labels[labels >= 0], minlength=n_clusters)
        votes = Votes(memory, labels)
        a, b, n_same, n_diff = votes.pairs()
        need = np.array([self._need(sizes[x], sizes[y]) for x, y in zip(a, b)], dtype=np.int64)
        relation = decide(n_same, n_diff, need_same=need) if len(a) else np.empty(0)
        groups = Groups(n_clusters)
        for x, y in zip(a[relation == DIFFERENT], b[relation == DIFFERENT]):
            groups.keep_apart(x, y)
        merge = np.flatnonzero(relation == SAME)
        for k in merge[np.argsort(-n_same[merge], kind="stable")]:
            self.n_merges_ += groups.union(a[k], b[k])
        roots = groups.roots()
        return np.where(labels >= 0, roots[np.maximum(labels, 0)], -1)

    def _split(self, Xn, labels, session, stage):
        votes = Votes(session.memory, labels)
        inside = votes.inside()
        if not len(inside) or not (inside[:, 2] == 0).any():
            return labels
        labels = labels.copy()
        next_label = int(labels.max()) + 1
        owner = type(self).__name__
        for c in np.unique(labels[inside[inside[:, 2] == 0, 0]]):
            answers = inside[labels[inside[:, 0]] == c]
            cycles, parts = self._parts(Xn, np.flatnonzero(labels == c), answers)
            for i, j in cycles:
                session.contradiction(stage, "cycle", pair=(i, j), resolution="not applied")
            if parts is None:
                continue
            members, part = parts
            part = self._confirm(Xn, members, part, answers, session, stage, owner)
            for p in np.unique(part)[1:]:
                labels[members[part == p]] = next_label
                next_label += 1
            self.n_splits_ += len(np.unique(part)) > 1
        return labels

    def _parts(self, Xn, members, answers):
        """Anchors of one cluster, coloured apart by its "different" answers.

        Returns the contradictions found (pairs answered "different" inside
        a chain of "same") and ``(members, part)``, or None for no split.
        """
        local = {int(m): k for k, m in enumerate(members)}
        n = len(members)
        ii = np.array([local[i] for i in answers[:, 0]])
        jj = np.array([local[j] for j in answers[:, 1]])
        same = answers[:, 2] == 1
        graph = sparse.coo_matrix((np.ones(same.sum()), (ii[same], jj[same])), shape=(n, n))
        _, comp = connected_components(graph, directed=False)
        di, dj = comp[ii[~same]], comp[jj[~same]]
        cycle = di == dj
        cycles = [tuple(int(v) for v in answers[~same][k, :2]) for k in np.flatnonzero(cycle)]
        di, dj = di[~cycle], dj[~cycle]
        if not len(di):
            return cycles, None
        anchors = np.unique(np.concatenate([ii, jj]))
        anchor_comps = np.unique(comp[anchors])
        apart = {a: set() for a in anchor_comps.tolist()}
        for x, y in zip(di.tolist(), dj.tolist()):
            apart[x].add(y)
            apart[y].add(x)
        X = Xn[members]
        means = {a: X[anchors[comp[anchors] == a]].mean(axis=0) for a in anchor_comps.tolist()}
        order = sorted(anchor_comps.tolist(), key=lambda a: -(comp[anchors] == a).sum())
        part_of, part_sum = {}, []
        for a in order:
            allowed = [
                p for p in range(len(part_sum))
                if not any(part_of.get(b) == p for b in apart[a])
            ]
            if allowed:
                p = max(allowed, key=lambda p: float(means[a] @ part_sum[p]))
                part_sum[p] = part_sum[p] + means[a]
            else:
                p = len(part_sum)
                part_sum.append(means[a].copy())
            part_of[a] = p
        if len(part_sum) < 2:
            return cycles, None
        centres = np.array(part_sum)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True) + 1e-12
        part = np.argmax(X @ centres.T, axis=1)
        anchored = np.isin(comp, anchor_comps)
        part[anchored] = [part_of[a] for a in comp[anchored].tolist()]
        return cycles, (members, part)

    def _confirm(self, Xn, members, part, answers, session, stage, owner):
        """Keep a split only where the answers across the parts settle as "different"."""
        n_parts = int(part.max()) + 1
        sizes = np.bincount(part, minlength=n_parts)
        by_part = np.full(Xn.shape[0], -1, dtype=np.int64)
        by_part[members] = part
        centres = cluster_centers(Xn[members], part, n_parts)
        groups = Groups(n_parts)
        together = []
        votes = Votes(session.memory, by_part)
        for a in range(n_parts):
            for b in range(a + 1, n_parts):
                need = self._need(sizes[a], sizes[b], split=True)
                event = None
                for _ in range(3):  # the answers across, then up to two more pairs
                    n_same, n_diff = votes.between(a, b)
                    relation = int(decide(n_same, n_diff, need_diff=need))
                    if n_same + n_diff == 0 or relation != OPEN or session.remaining() == 0:
                        break
                    if event is None:
                        event = session.contradiction(
                            stage, "tie" if n_same == n_diff else "confirm",
                            votes=(int(n_same), int(n_diff)), asked=[],
                        )
                    pair = fresh_pair(
                        members[part == a], members[part == b], Xn, centres[a], centres[b],
                        votes.answered,
                    )
                    if pair is None:
                        break
                    answer = session.ask(np.array([pair]), stage=stage, owner=owner)
                    event["asked"].append(pair)
                    votes.add([pair], answer)  # an answer the memory inferred counts too
                if event is not None:
                    event["resolution"] = _NAMES[relation]
                if relation == DIFFERENT:
                    groups.keep_apart(a, b)
                else:
                    together.append((a, b))
        for a, b in together:
            groups.union(a, b)
        roots = groups.roots()
        return np.unique(roots, return_inverse=True)[1][part]
