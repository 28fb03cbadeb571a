"""Pair supervision: the oracle's answers as a loss term, beside the centroid loss.

An answer moves cluster labels (SNPS, MPPS, the answer constraints), but the
centroid loss of Eq. 1 then sees only centroids: a "same" answer across two
cameras and a "different" answer between two look-alikes, the two strongest
signals a person gives, reach the network only through the clusters they
changed. :class:`PairSupervision` puts every answered pair of the training
memory into the loss of every epoch as a verification term:

- each epoch, a one-dimensional logistic regression on the answered pairs'
  memory similarities draws the boundary the answers set on the current
  features, ``P(same | s) = sigmoid(a (s - b))`` (``a`` kept between 1 and
  ``1 / temperature``). The fit keeps scikit-learn's default penalty
  (``C=1``) on the raw similarities, which flattens the slope and pulls the
  boundary towards the majority answer: a soft margin, and the form the
  benchmarks measured;
- every batch image ``i`` with answered partners ``j`` adds the binary
  cross-entropy of ``sigmoid(a (f_i . m_j - b))`` against the answer, where
  ``m_j`` is the partner's memory feature (a constant).

A pair on the right side of the boundary costs little; a "same" pair the
features still keep apart, or a "different" pair of look-alikes they still
join, costs much. With ``trim``, the answers the features contradict most
(the largest such costs on the memory features, a fixed share of each kind
of answer) sit the epoch out and the boundary is drawn again without them:
a wrong answer from a fallible annotator is the costliest pair there is,
and it would otherwise be trained on every epoch. The answers stay in the
memory; the next epoch ranks them again on its own features. Both
directions are used: ``(i, j)`` trains ``i`` when ``i`` is in the batch and
``j`` when ``j`` is. Until the answers hold both kinds, there is no boundary
and no term.

A first design, the partner as one more class of Eq. 1's softmax (a "same"
partner as the positive against the other clusters' centroids, a "different"
one as a hard negative), measured no gain at any weight on the project's
benchmarks (``docs/answers.rst``) and was dropped.
"""

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PairSupervision"]


class PairSupervision:
    """The answered pairs of one epoch, indexed by image, and their loss.

    Parameters
    ----------
    pairs : ndarray of shape (m, 2)
        Answered image pairs (training images only: the held-out
        validation answers never reach it).
    same : ndarray of shape (m,), dtype bool
        Their answers.
    n_samples : int
        Training images; pairs outside are ignored.
    features : ndarray of shape (n_samples, dim)
        The memory features the boundary is fitted on (L2-normalised).
    temperature : float, default=0.05
        ``tau`` of Eq. 1: the boundary's slope is at most ``1 / tau``.
    exclude : array-like of int or None
        Images whose pairs are left out (the validation images, which are
        never trained on).
    trim : float, default=0.0
        Share of the answered pairs left out this epoch, of each kind of
        answer ("same", "different") apart: those whose answer costs most
        under the boundary fitted on all of them (rounded down, at least one
        of each kind kept; 0 keeps every answer).

    Attributes
    ----------
    slope, boundary : float or None
        ``a`` and ``b`` of ``sigmoid(a (s - b))``; None (the term is off)
        until the answers hold both kinds, and while "same" answers do not
        sit at higher similarities than "different" ones.
    n_trimmed : int
        Answered pairs left out by ``trim`` this epoch.

    Examples
    --------
    Three answers on four memory features, the "same" ones the more similar;
    image 0 in a batch meets its partner 1 ("same") and its partner 2
    ("different"):

    >>> import numpy as np, torch
    >>> from ucal.reid import PairSupervision
    >>> from ucal.reid._memory import FeatureMemory
    >>> memory = FeatureMemory(torch.tensor([[1., 0, 0], [.9, .1, 0], [0, 1, 0], [0, .9, .1]]))
    >>> sup = PairSupervision([[0, 1], [0, 2], [2, 3]], [True, False, True], 4,
    ...                       memory.features.numpy())
    >>> sup.active, len(sup)
    (True, 3)
    >>> sup.batch_pairs([0])
    (array([0, 0]), array([1, 2]), array([ True, False]))
    >>> loss, n_terms = sup.loss(memory.features[[0]], [0], memory)
    >>> n_terms, bool(loss > 0)
    (2, True)
    """

    def __init__(self, pairs, same, n_samples, features, temperature=0.05, exclude=None,
                 trim=0.0):
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        same = np.asarray(same, dtype=bool).reshape(-1)
        keep = (pairs >= 0).all(axis=1) & (pairs < n_samples).all(axis=1)
        keep &= pairs[:, 0] != pairs[:, 1]
        pairs, same = pairs[keep], same[keep]
        if exclude is not None and len(exclude):
            out = np.zeros(n_samples, dtype=bool)
            out[np.asarray(exclude, dtype=np.int64)] = True
            keep = ~out[pairs].any(axis=1)
            pairs, same = pairs[keep], same[keep]
        self.slope = self.boundary = None
        self.n_trimmed = 0
        if 0 < same.sum() < len(same):
            f = np.asarray(features)  # only the answered rows are cast
            sims = np.einsum("ij,ij->i", f[pairs[:, 0]].astype(np.float64),
                             f[pairs[:, 1]].astype(np.float64))
            self._fit(sims, same, temperature)
            if trim and self.slope is not None:
                keep = self._trimmed(sims, same, trim)
                first = self.slope, self.boundary
                self._fit(sims[keep], same[keep], temperature)
                if self.slope is None:  # (not seen) the rest draws no boundary: keep the first
                    self.slope, self.boundary = first
                pairs, same = pairs[keep], same[keep]
                self.n_trimmed = int((~keep).sum())
        # both directions, sorted by anchor: a CSR row per image
        anchors = np.concatenate([pairs[:, 0], pairs[:, 1]])
        partners = np.concatenate([pairs[:, 1], pairs[:, 0]])
        answers = np.concatenate([same, same])
        order = np.argsort(anchors, kind="stable")
        self.partners = partners[order]
        self.same = answers[order]
        self.indptr = np.zeros(n_samples + 1, dtype=np.int64)
        np.cumsum(np.bincount(anchors, minlength=n_samples), out=self.indptr[1:])
        self.n_pairs = len(pairs)
        self.n_same = int(same.sum())

    def _trimmed(self, sims, same, trim):
        """Mask of the answers kept: the share ``trim`` of each answer's kind that
        costs most under the boundary sits out (rounded down; one of each kind
        stays). Per kind, because "same" answers usually outnumber "different"
        ones: ranked together, the look-alikes' "different" answers, which sit
        on the wrong side of a boundary drawn mostly by "same" ones, would go
        first, true as they are."""
        margin = self.slope * (sims - self.boundary)
        cost = np.logaddexp(0.0, np.where(same, -margin, margin))  # BCE per answer
        keep = np.ones(len(sims), dtype=bool)
        for kind in (True, False):
            members = np.flatnonzero(same == kind)
            n_out = min(int(trim * members.size), members.size - 1)
            if n_out > 0:
                keep[members[np.argsort(-cost[members], kind="stable")[:n_out]]] = False
        return keep

    def _fit(self, sims, same, temperature):
        """The boundary ``sigmoid(a (s - b))`` of the answers on their similarities."""
        from sklearn.linear_model import LogisticRegression

        fit = LogisticRegression(C=1.0).fit(sims[:, None], same)
        coef, intercept = float(fit.coef_[0, 0]), float(fit.intercept_[0])
        if coef > 0:  # "same" answers sit at higher similarity: a boundary to learn
            self.slope = float(np.clip(coef, 1.0, 1.0 / temperature))
            self.boundary = -intercept / coef

    def __len__(self):
        return self.n_pairs

    @property
    def active(self):
        """Whether the term trains (answers of both kinds drew a boundary)."""
        return self.slope is not None

    def batch_pairs(self, indices):
        """The batch's (row, partner, same) triples: every answer of every batch image.

        Parameters
        ----------
        indices : array-like of int
            The batch's image indices, in row order.

        Returns
        -------
        rows, partners : ndarray of int64
            Batch row of the anchor and image index of its partner.
        same : ndarray of bool
        """
        indices = np.asarray(indices, dtype=np.int64)
        starts, stops = self.indptr[indices], self.indptr[indices + 1]
        counts = stops - starts
        rows = np.repeat(np.arange(len(indices)), counts)
        if not len(rows):
            empty = np.empty(0, dtype=np.int64)
            return empty, empty, np.empty(0, dtype=bool)
        # positions starts[r] .. stops[r] - 1 for each row, without a Python loop
        offsets = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        where = np.repeat(starts, counts) + offsets
        return rows, self.partners[where], self.same[where]

    def loss(self, features, indices, memory):
        """The summed pair loss of a batch (divide by the batch size for a mean).

        Parameters
        ----------
        features : torch.Tensor of shape (batch, dim)
            L2-normalised batch features (with gradient).
        indices : array-like of int
            The batch's image indices.
        memory : FeatureMemory
            Supplies the partners' features (constants).

        Returns
        -------
        loss : torch.Tensor
            Sum over the batch's answered pairs (0 when none, or inactive).
        n_pairs : int
            How many (image, partner) terms the sum holds.
        """
        rows, partners, same = self.batch_pairs(indices)
        if not len(rows) or not self.active:
            return features.sum() * 0.0, 0
        device = features.device
        f = features.float()[torch.as_tensor(rows, device=device)]
        partner_features = memory.features[torch.as_tensor(partners, device=memory.device)]
        s = (f * partner_features.detach().float().to(device)).sum(dim=1)
        logits = self.slope * (s - self.boundary)
        target = torch.as_tensor(same, dtype=torch.float32, device=device)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="sum"), len(rows)
