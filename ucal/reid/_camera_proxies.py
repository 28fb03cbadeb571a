"""Camera-aware proxies: per-camera cluster prototypes and an inter-camera term.

Wang et al., *Camera-aware Proxies for Unsupervised Person
Re-Identification* (CAP, AAAI 2021). A cluster's images from one camera
look more alike than its images across cameras, so one centroid per
cluster is pulled towards the camera with most images. CAP splits each
cluster into one **proxy** per camera it covers (the normalised mean of
those members' memory features, then moved with momentum by the batches)
and trains with two terms:

- intra-camera: a softmax over the proxies of the image's own camera, the
  image's proxy the target (learns identities where the domain is fixed);
- inter-camera: every proxy of the image's cluster, whatever its camera, is
  a positive, against the ``HARD_NEGATIVES`` most similar proxies of other
  clusters, ``-1/|P| sum_p log(exp(s_p / t) / sum_{P u Q} exp(s / t))``
  (pulls the cameras of one identity together).

The loss is ``intra + INTER_WEIGHT * inter``. It needs camera ids; the
trainer falls back to the cluster memory (with a log line) without them.
"""

import numpy as np
import torch
import torch.nn.functional as F

from ._cluster_memory import member_means, momentum_update

__all__ = ["CameraProxyMemory", "HARD_NEGATIVES", "INTER_WEIGHT"]

# CAP's lambda: weight of the inter-camera term.
INTER_WEIGHT = 0.5
# CAP's k: the most similar proxies of other clusters that enter the inter-camera softmax.
HARD_NEGATIVES = 50


class CameraProxyMemory:
    """Proxies of (cluster, camera), updated with momentum, and CAP's two-term loss.

    Parameters
    ----------
    labels : ndarray of shape (n_samples,)
        The epoch's pseudo identities (``>= 0``; ``< 0`` = not trained on).
    camids : ndarray of shape (n_samples,)
        Camera of each image (any integers; unknown ``-1`` counts as one
        more camera).
    features : torch.Tensor of shape (n_samples, dim)
        The instance memory's features, whose means start the proxies.
    temperature : float
        Temperature of both softmaxes.
    momentum : float, default=0.2
        Weight of the old proxy in an update (CAP's 0.2).

    Attributes
    ----------
    prototypes : torch.Tensor of shape (n_proxies, dim)
        The proxies, L2-normalised.
    proxy_of : ndarray of shape (n_samples,)
        Each image's proxy (-1 where it is not clustered).
    proxy_label : torch.Tensor of shape (n_proxies,)
        Each proxy's cluster.
    proxy_cam : torch.Tensor of shape (n_proxies,)
        Each proxy's camera (as a code 0, 1, ...).

    See Also
    --------
    ClusterMemory : One prototype per cluster.

    Examples
    --------
    >>> import numpy as np, torch
    >>> import torch.nn.functional as F
    >>> from ucal.reid import CameraProxyMemory
    >>> features = F.normalize(torch.rand(6, 8), dim=1)
    >>> labels = np.array([0, 0, 0, 1, 1, -1])
    >>> cams = np.array([0, 1, 1, 0, 1, 0])
    >>> memory = CameraProxyMemory(labels, cams, features, temperature=0.07)
    >>> memory.n_proxies, memory.proxy_of.tolist()
    (4, [0, 1, 1, 2, 3, -1])
    >>> memory.loss(features[:2], np.array([0, 1]), reduction="none").shape
    torch.Size([2])
    """

    def __init__(self, labels, camids, features, temperature, momentum=0.2):
        labels = np.asarray(labels, dtype=np.int64)
        camids = np.asarray(camids, dtype=np.int64)
        clustered = labels >= 0
        cam_codes = np.unique(camids, return_inverse=True)[1].reshape(-1)
        n_cams = int(cam_codes.max()) + 1 if len(cam_codes) else 1
        keys = labels * n_cams + cam_codes
        unique_keys, proxy = np.unique(keys[clustered], return_inverse=True)
        self.proxy_of = np.full(len(labels), -1, dtype=np.int64)
        self.proxy_of[clustered] = proxy.reshape(-1)
        self.labels = labels
        self.cam_codes = cam_codes
        device = features.device
        self.proxy_label = torch.as_tensor(unique_keys // n_cams, device=device)
        self.proxy_cam = torch.as_tensor(unique_keys % n_cams, device=device)
        self.prototypes = member_means(self.proxy_of, features, len(unique_keys))
        self.temperature = float(temperature)
        self.momentum = float(momentum)

    @property
    def n_proxies(self):
        """Number of (cluster, camera) proxies."""
        return len(self.proxy_label)

    def loss(self, features, indices, reduction="mean"):
        """``intra + INTER_WEIGHT * inter`` for each image of the batch.

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
        indices = np.asarray(indices)
        device = features.device
        proxies = torch.as_tensor(self.proxy_of[indices], device=device)
        cams = torch.as_tensor(self.cam_codes[indices], device=device)
        labels = torch.as_tensor(self.labels[indices], device=device)
        logits = features.float() @ self.prototypes.to(device).t() / self.temperature
        proxy_cam, proxy_label = self.proxy_cam.to(device), self.proxy_label.to(device)
        # intra-camera: the softmax sees only the proxies of the image's camera
        other_cam = proxy_cam[None, :] != cams[:, None]
        intra = F.cross_entropy(logits.masked_fill(other_cam, float("-inf")), proxies,
                                reduction="none")
        # inter-camera: all proxies of the cluster against the hardest other-cluster proxies
        positive = proxy_label[None, :] == labels[:, None]
        # each row's own hardest negatives: a row with fewer gets -inf fillers, which add
        # nothing, so a row's loss never depends on the other rows of its batch
        n_hard = min(HARD_NEGATIVES, self.n_proxies)
        hard = logits.masked_fill(positive, float("-inf")).topk(n_hard, dim=1).values
        pos_logits = logits.masked_fill(~positive, float("-inf"))
        denominator = torch.logsumexp(torch.cat([pos_logits, hard], dim=1), dim=1)
        n_pos = positive.sum(1)
        inter = -(logits - denominator[:, None]).masked_fill(~positive, 0.0).sum(1) / n_pos
        loss = intra + INTER_WEIGHT * inter
        return loss.mean() if reduction == "mean" else loss

    @torch.no_grad()
    def update(self, indices, features):
        """Move the proxies of the batch's images, one image after another, in batch order.

        Parameters
        ----------
        indices : ndarray of shape (batch,)
            Training-image indices of the batch.
        features : torch.Tensor of shape (batch, dim)
            Their features (the global batch's, with several processes).
        """
        ids = self.proxy_of[np.asarray(indices)]
        keep = ids >= 0
        features = features.detach().float()
        features = features[torch.as_tensor(keep, device=features.device)]
        momentum_update(self.prototypes, ids[keep], features, self.momentum)
