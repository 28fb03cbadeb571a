"""Cluster-contrast's cluster memory: one prototype per cluster, moved by the batches.

Dai et al., *Cluster Contrast for Unsupervised Person Re-Identification*
(2021). Where SpCL's centroid (Eq. 1) is the mean of all members' memory
features, and so changes by ``1 / n`` of a member's step, the cluster
memory keeps one vector per cluster, set to the normalised member mean when
the epoch's labels are set and then overwritten with momentum by the
cluster's batch features: every prototype moves with the network at the
pace of the batches, whatever the cluster's size. The loss is the same
softmax over prototype similarities (the InfoNCE of the paper).

Two updates, as in the peer's code:

- ``"average"``: every batch feature, in batch order,
  ``c <- m c + (1 - m) f``, renormalised;
- ``"hard"``: per cluster of the batch, only its hardest instance (the one
  least similar to the prototype) moves it, which keeps the prototype near
  the cluster's hard members.
"""

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ClusterMemory", "UPDATES", "momentum_update"]

# How a batch moves the prototypes.
UPDATES = ("average", "hard")


def _occurrence_rank(ids):
    """For each position, how many earlier positions hold the same id."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_ids)) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(ids)]))
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids)) - run_start
    return rank


@torch.no_grad()
def momentum_update(prototypes, ids, features, momentum):
    """Move ``prototypes[ids[k]]`` towards ``features[k]``, one feature after another.

    Equal to the sequential loop ``c <- normalise(m c + (1 - m) f)`` over
    the batch in order (the peer's), done in as many vector steps as the
    most frequent id has features.

    Parameters
    ----------
    prototypes : torch.Tensor of shape (n_prototypes, dim)
        Updated in place.
    ids : ndarray of shape (batch,)
        Prototype of each feature.
    features : torch.Tensor of shape (batch, dim)
    momentum : float
        Weight of the old prototype.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if not len(ids):
        return
    rank = _occurrence_rank(ids)
    features = features.detach().float().to(prototypes.device)
    for r in range(int(rank.max()) + 1):
        rows = np.flatnonzero(rank == r)  # each id at most once: no write conflict
        idx = torch.as_tensor(ids[rows], device=prototypes.device)
        new = features[torch.as_tensor(rows, device=prototypes.device)]
        prototypes[idx] = F.normalize(momentum * prototypes[idx] + (1.0 - momentum) * new, dim=1)


def member_means(labels, features, n_groups):
    """Normalised mean feature of each group (``labels >= 0``); zeros for an empty one."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=features.device)
    keep = labels >= 0
    sums = torch.zeros(n_groups, features.shape[1], device=features.device)
    sums.index_add_(0, labels[keep], features[keep].float())
    return F.normalize(sums, dim=1)


class ClusterMemory:
    """One prototype per pseudo identity, updated with momentum by the batches.

    Parameters
    ----------
    labels : ndarray of shape (n_samples,)
        The epoch's pseudo identities (``>= 0``; ``< 0`` = not trained on).
    features : torch.Tensor of shape (n_samples, dim)
        The instance memory's features, whose member means start the
        prototypes.
    temperature : float
        Temperature of the softmax.
    momentum : float, default=0.1
        Weight of the old prototype in an update (cluster-contrast's 0.1:
        a prototype is mostly its latest features).
    update : {"average", "hard"}, default="average"
        Every batch feature moves its prototype, or only the hardest of
        each cluster.

    Attributes
    ----------
    prototypes : torch.Tensor of shape (n_clusters, dim)
        The current prototypes, L2-normalised.

    See Also
    --------
    CameraProxyMemory : One prototype per cluster and camera.

    Notes
    -----
    :class:`~ucal.reid.UCALReID` builds one per epoch (``loss="cluster_memory"``
    or ``"cluster_memory_hard"``) from its feature memory; the feature memory
    is kept as well, for the clustering and the pair term.

    Examples
    --------
    >>> import numpy as np, torch
    >>> import torch.nn.functional as F
    >>> from ucal.reid import ClusterMemory
    >>> features = F.normalize(torch.eye(4)[[0, 0, 1, 1, 2, 3]] + 0.1, dim=1)
    >>> memory = ClusterMemory(np.array([0, 0, 1, 1, 2, 2]), features, temperature=0.05)
    >>> memory.prototypes.shape
    torch.Size([3, 4])
    >>> batch = features[[0, 2]]
    >>> float(memory.loss(batch, np.array([0, 2]))) < 0.1
    True
    >>> memory.update(np.array([0, 2]), batch)
    """

    def __init__(self, labels, features, temperature, momentum=0.1, update="average"):
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {update!r}.")
        self.labels = np.asarray(labels, dtype=np.int64)
        n_clusters = int(self.labels.max()) + 1 if (self.labels >= 0).any() else 0
        self.prototypes = member_means(self.labels, features, n_clusters)
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.update_rule = update

    def loss(self, features, indices, reduction="mean"):
        """Softmax cross-entropy of the batch over all prototypes.

        Parameters
        ----------
        features : torch.Tensor of shape (batch, dim)
            L2-normalised batch features.
        indices : ndarray of shape (batch,)
            Their training-image indices.
        reduction : {"mean", "none"}

        Returns
        -------
        loss : torch.Tensor
        """
        targets = torch.as_tensor(self.labels[np.asarray(indices)], device=features.device)
        logits = features.float() @ self.prototypes.to(features.device).t() / self.temperature
        return F.cross_entropy(logits, targets, reduction=reduction)

    @torch.no_grad()
    def update(self, indices, features):
        """Move the prototypes of the batch's clusters (the whole batch, in batch order).

        Parameters
        ----------
        indices : ndarray of shape (batch,)
            Training-image indices of the batch.
        features : torch.Tensor of shape (batch, dim)
            Their features (the global batch's, with several processes).
        """
        ids = self.labels[np.asarray(indices)]
        keep = ids >= 0
        features = features.detach().float()
        ids, features = ids[keep], features[torch.as_tensor(keep, device=features.device)]
        if self.update_rule == "hard":
            ids, features = self._hardest(ids, features)
        momentum_update(self.prototypes, ids, features, self.momentum)

    def _hardest(self, ids, features):
        """Per cluster of the batch, the feature least similar to its prototype."""
        features = features.to(self.prototypes.device)
        sims = (features * self.prototypes[torch.as_tensor(ids, device=features.device)]).sum(1)
        sims = sims.cpu().numpy()
        # sort by cluster, then by similarity: the first row of each cluster is its hardest
        order = np.lexsort((sims, ids))
        first = order[np.r_[True, ids[order][1:] != ids[order][:-1]]]
        return ids[first], features[torch.as_tensor(first, device=features.device)]
