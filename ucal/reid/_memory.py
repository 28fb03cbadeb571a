"""Feature memory of all training images and the cluster-centroid contrastive loss."""

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FeatureMemory", "centroid_contrastive_loss"]


class FeatureMemory:
    """L2-normalised features of all N training images, updated with momentum.

    After a training step, each image of the batch updates its slot:
    ``m <- momentum * m + (1 - momentum) * f`` then ``m <- m / ||m||``
    (SpCL's hybrid memory, ``momentum = 0.2``). The memory also keeps, per
    pseudo identity, the sum of its members' features, so the centroids
    of Eq. 1 (member means) stay current at O(batch) cost per step.

    Parameters
    ----------
    features : torch.Tensor of shape (n_samples, dim)
        Initial features (normalised here).
    momentum : float
        Weight of the old memory entry.
    centroid_momentum : float or None
        None: centroids are the members' mean memory feature (SpCL). A
        float: cluster-contrast's centroid memory, set to the normalised
        member mean when labels are set, then updated by each batch,
        ``c <- cm * c + (1 - cm) * mean(batch features of the cluster)``,
        renormalised.
    normalize : bool
        Normalise ``features`` (False for a memory restored from a checkpoint).
    """

    def __init__(self, features, momentum=0.2, *, centroid_momentum=None, normalize=True):
        features = features.detach().float()
        # A restored memory is already normalised: renormalising would change its last bits.
        self.features = F.normalize(features, dim=1) if normalize else features.clone()
        self.momentum = float(momentum)
        self.centroid_momentum = centroid_momentum
        self._centroids = None
        # Which slots a training batch updated since the last refresh.
        self.fresh = torch.zeros(self.features.shape[0], dtype=torch.bool, device=self.device)
        self.labels = None
        self._sums = None
        self._counts = None

    @property
    def device(self):
        return self.features.device

    def set_labels(self, labels):
        """Use ``labels`` (>= 0 clustered, < 0 ignored) for the centroids."""
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=self.device)
        self.labels = labels
        n_clusters = int(labels.max().item()) + 1 if labels.numel() and labels.max() >= 0 else 0
        keep = labels >= 0
        self._sums = torch.zeros(n_clusters, self.features.shape[1], device=self.device)
        self._sums.index_add_(0, labels[keep], self.features[keep])
        self._counts = torch.bincount(labels[keep], minlength=n_clusters).float()
        if self.centroid_momentum is not None:
            self._centroids = F.normalize(self._sums, dim=1)

    def centroids(self):
        """Cluster centroids (n_clusters, dim) of Eq. 1."""
        if self.centroid_momentum is not None:
            return self._centroids
        return self._sums / self._counts.clamp(min=1)[:, None]

    @torch.no_grad()
    def update(self, indices, features):
        """Momentum update of the slots ``indices`` with new batch ``features``.

        A sample drawn twice in the batch updates its slot once (first
        occurrence), so that the centroid sums stay exact.
        """
        indices = np.asarray(indices)
        _, first = np.unique(indices, return_index=True)
        idx = torch.as_tensor(indices[first], device=self.device)
        new = features.detach().float()[torch.as_tensor(first, device=features.device)]
        new = new.to(self.device)
        old = self.features[idx]
        updated = F.normalize(self.momentum * old + (1.0 - self.momentum) * new, dim=1)
        self.features[idx] = updated
        self.fresh[idx] = True
        if self.labels is not None:
            lab = self.labels[idx]
            keep = lab >= 0
            self._sums.index_add_(0, lab[keep], (updated - old)[keep])
            if self.centroid_momentum is not None and keep.any():
                lab, new = lab[keep], new[keep]
                batch_sum = torch.zeros_like(self._centroids).index_add_(0, lab, new)
                seen = torch.unique(lab)
                batch_mean = F.normalize(batch_sum[seen], dim=1)
                cm = self.centroid_momentum
                self._centroids[seen] = F.normalize(
                    cm * self._centroids[seen] + (1.0 - cm) * batch_mean, dim=1
                )

    def stale(self):
        """Indices of the slots no training batch updated since the last refresh."""
        return torch.nonzero(~self.fresh).flatten().cpu().numpy()

    @torch.no_grad()
    def refresh(self, indices, features):
        """Overwrite slots with newly extracted features; every slot is fresh again."""
        if len(indices):
            idx = torch.as_tensor(np.asarray(indices), device=self.device)
            self.features[idx] = F.normalize(features.float().to(self.device), dim=1)
        self.fresh.zero_()

    def state_dict(self):
        return {"features": self.features.cpu(), "momentum": self.momentum}


def centroid_contrastive_loss(features, targets, centroids, temperature=0.05, reduction="mean"):
    """Eq. 1: softmax cross-entropy of feature-centroid similarities over temperature.

    Parameters
    ----------
    features : torch.Tensor of shape (batch, dim)
        L2-normalised batch features.
    targets : torch.Tensor of shape (batch,)
        Pseudo identity of each sample (row of ``centroids``).
    centroids : torch.Tensor of shape (n_clusters, dim)
        Cluster centroids (constants: no gradient flows into the memory).
    temperature : float
        ``tau`` of Eq. 1.
    reduction : {"mean", "none"}
        The batch's mean, or one loss per sample.

    Returns
    -------
    loss : torch.Tensor
        Mean over the batch, or the per-sample losses.
    """
    logits = features.float() @ centroids.detach().float().t() / temperature
    return F.cross_entropy(logits, targets, reduction=reduction)
