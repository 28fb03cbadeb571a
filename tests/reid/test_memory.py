"""Feature memory (momentum update, centroids) and the loss of Eq. 1."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from ucal.reid._memory import FeatureMemory, centroid_contrastive_loss  # noqa: E402


def _unit(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1)


def test_memory_starts_normalised():
    memory = FeatureMemory(3 * torch.ones(4, 2), momentum=0.2)
    torch.testing.assert_close(memory.features.norm(dim=1), torch.ones(4))


def test_momentum_update_formula():
    feats = _unit(6, 5)
    memory = FeatureMemory(feats.clone(), momentum=0.2)
    new = _unit(2, 5, seed=1)
    memory.update(np.array([4, 1]), new)
    expected = F.normalize(0.2 * feats[[4, 1]] + 0.8 * new, dim=1)
    torch.testing.assert_close(memory.features[[4, 1]], expected)
    torch.testing.assert_close(memory.features[[0, 2, 3, 5]], feats[[0, 2, 3, 5]])


def test_duplicate_indices_update_once():
    feats = _unit(3, 4)
    memory = FeatureMemory(feats.clone(), momentum=0.5)
    new = _unit(3, 4, seed=2)
    memory.update(np.array([1, 1, 2]), new)
    expected = F.normalize(0.5 * feats[1] + 0.5 * new[0], dim=0)
    torch.testing.assert_close(memory.features[1], expected)


def test_centroids_follow_updates_and_ignore_outliers():
    feats = _unit(10, 6)
    labels = np.array([0, 0, 1, 1, 1, -1, 2, 2, -1, 0])
    memory = FeatureMemory(feats.clone(), momentum=0.2)
    memory.set_labels(labels)
    memory.update(np.array([0, 5, 7, 3]), _unit(4, 6, seed=3))
    memory.update(np.array([9, 2]), _unit(2, 6, seed=4))
    mem = memory.features
    expected = torch.stack([mem[torch.as_tensor(labels == k)].mean(0) for k in range(3)])
    torch.testing.assert_close(memory.centroids(), expected)


def test_loss_is_eq1():
    feats = _unit(4, 8)
    centroids = _unit(3, 8, seed=5)
    targets = torch.tensor([0, 2, 1, 2])
    loss = centroid_contrastive_loss(feats, targets, centroids, temperature=0.05)
    logits = feats @ centroids.T / 0.05
    manual = -(logits[torch.arange(4), targets] - torch.logsumexp(logits, dim=1)).mean()
    torch.testing.assert_close(loss, manual)


def test_loss_gradient_reaches_features_only():
    feats = _unit(4, 8).requires_grad_(True)
    centroids = _unit(3, 8, seed=5).requires_grad_(True)
    loss = centroid_contrastive_loss(feats, torch.tensor([0, 1, 2, 0]), centroids)
    loss.backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert centroids.grad is None


def test_momentum_centroids_follow_the_batch():
    feats = _unit(6, 4)
    labels = np.array([0, 0, 0, 1, 1, -1])
    memory = FeatureMemory(feats.clone(), momentum=0.2, centroid_momentum=0.1)
    memory.set_labels(labels)
    start = memory.centroids().clone()
    torch.testing.assert_close(start[0], F.normalize(feats[:3].mean(0), dim=0))
    new = _unit(3, 4, seed=7)
    memory.update(np.array([1, 2, 5]), new)
    batch_mean = F.normalize(new[:2].mean(0), dim=0)
    expected = F.normalize(0.1 * start[0] + 0.9 * batch_mean, dim=0)
    torch.testing.assert_close(memory.centroids()[0], expected)
    torch.testing.assert_close(memory.centroids()[1], start[1])  # not in the batch
