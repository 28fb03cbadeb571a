"""The unsupervised bases: cluster memory, camera-aware proxies, GeM pooling (UCALReID(loss=, pooling=))."""

import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from ucal.reid import (  # noqa: E402
    CameraProxyMemory,
    ClusterMemory,
    GeneralizedMeanPooling,
    UCALReID,
)
from ucal.reid import _camera_proxies  # noqa: E402
from ucal.reid._backbones import build_backbone, save_weights  # noqa: E402
from ucal.reid._cluster_memory import momentum_update  # noqa: E402


def _unit(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1)


def _fit(data, **params):
    values = dict(backbone="tiny", pretrained=False, image_size=(32, 16), epochs=2,
                  warmup_epochs=0, batch_size=16, iters_per_epoch=3, validation_size=0,
                  inference_batch_size=64, random_state=0)
    values.update(params)
    return UCALReID(**values).fit(data.train, data.train.pids)


# ------------------------------------------------------------ momentum update
def test_the_vector_update_is_the_sequential_loop_in_batch_order():
    protos = _unit(4, 5, seed=1)
    feats = _unit(9, 5, seed=2)
    ids = np.array([2, 0, 2, 2, 1, 0, 3, 2, 0])
    expected = protos.clone()
    for k, i in enumerate(ids):
        expected[i] = F.normalize(0.3 * expected[i] + 0.7 * feats[k], dim=0)
    momentum_update(protos, ids, feats, 0.3)
    torch.testing.assert_close(protos, expected)


# ------------------------------------------------------------ cluster memory
def test_cluster_memory_starts_at_member_means_and_is_a_softmax_over_prototypes():
    feats = _unit(7, 4)
    labels = np.array([0, 0, 1, 1, 1, -1, 2])
    memory = ClusterMemory(labels, feats, temperature=0.1)
    for k in range(3):
        torch.testing.assert_close(memory.prototypes[k],
                                   F.normalize(feats[labels == k].mean(0), dim=0))
    batch = _unit(3, 4, seed=5)
    indices = np.array([0, 4, 6])
    loss = memory.loss(batch, indices, reduction="none")
    manual = F.cross_entropy(batch @ memory.prototypes.t() / 0.1,
                             torch.tensor([0, 1, 2]), reduction="none")
    torch.testing.assert_close(loss, manual)


def test_average_update_moves_every_batch_feature_in_and_skips_unclustered():
    feats = _unit(6, 4)
    labels = np.array([0, 0, 1, 1, -1, 1])
    memory = ClusterMemory(labels, feats, temperature=0.05, momentum=0.1)
    before = memory.prototypes.clone()
    batch = _unit(4, 4, seed=3)
    memory.update(np.array([2, 4, 5, 0]), batch)
    # image 4 is not clustered: its feature moves nothing
    expected = before.clone()
    for k, i in [(0, 1), (2, 1), (3, 0)]:
        expected[i] = F.normalize(0.1 * expected[i] + 0.9 * batch[k], dim=0)
    torch.testing.assert_close(memory.prototypes, expected)


def test_hard_update_moves_each_cluster_by_its_least_similar_batch_instance():
    protos_at = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    labels = np.array([0, 0, 0, 1, 1])
    memory = ClusterMemory(labels, protos_at[[0, 0, 0, 1, 1]], temperature=0.05,
                           momentum=0.5, update="hard")
    batch = F.normalize(torch.tensor([[1.0, 0.1], [1.0, 1.0], [1.0, 0.5], [0.2, 1.0]]), dim=1)
    memory.update(np.array([0, 1, 2, 3]), batch)
    # cluster 0's hardest instance is row 1 (45 degrees away), cluster 1's its only one
    torch.testing.assert_close(memory.prototypes[0],
                               F.normalize(0.5 * protos_at[0] + 0.5 * batch[1], dim=0))
    torch.testing.assert_close(memory.prototypes[1],
                               F.normalize(0.5 * protos_at[1] + 0.5 * batch[3], dim=0))


def test_an_unknown_update_rule_is_refused():
    with pytest.raises(ValueError, match="update must be one of"):
        ClusterMemory(np.zeros(3, int), _unit(3, 2), 0.05, update="median")


# ------------------------------------------------------------ camera proxies
def _proxy_case():
    feats = _unit(8, 6, seed=4)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, -1])
    cams = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    return feats, labels, cams


def test_proxies_are_the_cameras_of_each_cluster():
    feats, labels, cams = _proxy_case()
    memory = CameraProxyMemory(labels, cams, feats, temperature=0.1)
    # (0, cam 0), (0, cam 1), (1, cam 0), (1, cam 1), (2, cam 0)
    assert memory.n_proxies == 5
    assert memory.proxy_label.tolist() == [0, 0, 1, 1, 2]
    assert memory.proxy_cam.tolist() == [0, 1, 0, 1, 0]
    assert memory.proxy_of.tolist() == [0, 1, 1, 2, 3, 4, 4, -1]
    torch.testing.assert_close(memory.prototypes[1], F.normalize(feats[1] + feats[2], dim=0))


def test_proxy_loss_is_intra_camera_plus_half_inter_camera(monkeypatch):
    monkeypatch.setattr(_camera_proxies, "HARD_NEGATIVES", 2)
    feats, labels, cams = _proxy_case()
    t = 0.1
    memory = CameraProxyMemory(labels, cams, feats, temperature=t)
    batch = _unit(2, 6, seed=9)
    loss = memory.loss(batch, np.array([1, 4]), reduction="none")
    logits = batch @ memory.prototypes.t() / t
    # image 1: cluster 0, camera 1, proxy 1; camera 1's proxies are 1 and 3
    intra = -torch.log_softmax(logits[0, [1, 3]], 0)[0]
    positives, negatives = [0, 1], [2, 3, 4]
    hard = logits[0, negatives].topk(2).values
    denominator = torch.logsumexp(torch.cat([logits[0, positives], hard]), 0)
    inter = -(logits[0, positives] - denominator).mean()
    torch.testing.assert_close(loss[0], intra + 0.5 * inter)
    # image 4: cluster 1, camera 1, proxy 3; positives 2 and 3
    intra = -torch.log_softmax(logits[1, [1, 3]], 0)[1]
    hard = logits[1, [0, 1, 4]].topk(2).values
    denominator = torch.logsumexp(torch.cat([logits[1, [2, 3]], hard]), 0)
    inter = -(logits[1, [2, 3]] - denominator).mean()
    torch.testing.assert_close(loss[1], intra + 0.5 * inter)


def _optimised_towards(memory, index, steps=100):
    x = _unit(1, 6, seed=11).requires_grad_(True)
    optimiser = torch.optim.SGD([x], lr=0.05)
    for _ in range(steps):
        optimiser.zero_grad()
        memory.loss(F.normalize(x, dim=1), np.array([index])).backward()
        optimiser.step()
    return F.normalize(x.detach(), dim=1)[0]


def test_the_inter_camera_term_pulls_an_image_to_its_cluster_in_other_cameras(monkeypatch):
    feats, labels, cams = _proxy_case()
    memory = CameraProxyMemory(labels, cams, feats, temperature=0.1)
    # image 3: cluster 1, camera 0 (proxy 2); its cluster in camera 1 is proxy 3, which the
    # intra-camera softmax (camera 0's proxies 0, 2, 4) never sees
    with_inter = _optimised_towards(memory, 3)
    monkeypatch.setattr(_camera_proxies, "INTER_WEIGHT", 0.0)
    intra_only = _optimised_towards(memory, 3)
    proxies = memory.prototypes
    assert float(with_inter @ proxies[3]) > float(intra_only @ proxies[3]) + 0.05
    # and it ranks both of its cluster's proxies above every other cluster's
    sims = (proxies @ with_inter).tolist()
    assert min(sims[2], sims[3]) > max(sims[0], sims[1], sims[4])


def test_proxy_update_moves_the_image_proxy_only():
    feats, labels, cams = _proxy_case()
    memory = CameraProxyMemory(labels, cams, feats, temperature=0.1, momentum=0.2)
    before = memory.prototypes.clone()
    batch = _unit(2, 6, seed=12)
    memory.update(np.array([2, 7]), batch)  # image 7 is not clustered
    expected = before.clone()
    expected[1] = F.normalize(0.2 * before[1] + 0.8 * batch[0], dim=0)
    torch.testing.assert_close(memory.prototypes, expected)


# ------------------------------------------------------------ GeM
def test_gem_is_average_pooling_at_p_one_and_tends_to_max_pooling():
    maps = torch.rand(2, 3, 4, 5) + 0.01
    gem = GeneralizedMeanPooling(p=1.0)
    torch.testing.assert_close(gem(maps), maps.mean(dim=(2, 3)))
    big = GeneralizedMeanPooling(p=60.0)(maps)
    assert torch.all(big <= maps.amax(dim=(2, 3)) + 1e-5)
    assert torch.all(big > 0.9 * maps.amax(dim=(2, 3)))


def test_gem_learns_its_exponent():
    net = build_backbone("tiny", False, (32, 16), pooling="gem")
    out = net(torch.rand(4, 3, 32, 16))
    out[:, 0].sum().backward()
    assert net.pool.p.grad is not None and float(net.pool.p.grad) != 0.0
    assert float(net.pool.p.detach()) == pytest.approx(3.0)


def test_average_pooled_weights_start_a_gem_network_but_not_the_reverse(tmp_path):
    avg = build_backbone("tiny", False, (32, 16))
    path = str(tmp_path / "avg.pt")
    save_weights(avg, path)
    gem = build_backbone("tiny", path, (32, 16), pooling="gem")
    torch.testing.assert_close(gem.body.state_dict(), avg.body.state_dict())
    assert float(gem.pool.p.detach()) == pytest.approx(3.0)
    gem_path = str(tmp_path / "gem.pt")
    save_weights(gem, gem_path)
    with pytest.raises(ValueError, match="pooling='gem'"):
        build_backbone("tiny", gem_path, (32, 16))
    with pytest.raises(ValueError, match="pooling must be one of"):
        build_backbone("tiny", False, (32, 16), pooling="max")


# ------------------------------------------------------------ in the trainer
@pytest.mark.parametrize("loss", ["cluster_memory", "cluster_memory_hard", "camera_proxies"])
def test_each_base_trains_something_else_than_the_centroids(data, loss):
    ref = _fit(data).transform(data.query)
    other = _fit(data, loss=loss)
    emb = other.transform(data.query)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(ref, emb)
    assert all(np.isfinite(h["loss"]) for h in other.history_)


def test_gem_pooling_trains_and_is_saved_with_the_model(data, tmp_path):
    import joblib

    model = _fit(data, pooling="gem")
    assert hasattr(model.backbone_, "pool")
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    np.testing.assert_allclose(joblib.load(path).transform(data.query),
                               model.transform(data.query), atol=1e-6)


def test_camera_proxies_without_cameras_train_the_cluster_memory_and_say_so(data, caplog):
    from ucal.datasets import ReIDSplit

    no_cams = ReIDSplit(data.train.images, data.train.pids, None, "no cameras")
    common = dict(backbone="tiny", pretrained=False, image_size=(32, 16), epochs=2,
                  warmup_epochs=0, batch_size=16, iters_per_epoch=3, validation_size=0,
                  inference_batch_size=64, random_state=0)
    with caplog.at_level(logging.INFO, logger="ucal.reid._loop"):
        proxies = UCALReID(loss="camera_proxies", **common).fit(no_cams, no_cams.pids)
    assert "needs camera ids" in caplog.text
    memory = UCALReID(loss="cluster_memory", centroid_momentum=0.2, **common).fit(
        no_cams, no_cams.pids)
    # the same run as the cluster memory at the proxies' momentum
    np.testing.assert_allclose(proxies.transform(data.query), memory.transform(data.query),
                               atol=1e-6)


def test_resume_with_the_cluster_memory_is_the_same_run(data, tmp_path):
    run = str(tmp_path / "run")
    straight = _fit(data, epochs=3, loss="cluster_memory_hard")
    _fit(data, epochs=2, loss="cluster_memory_hard", checkpoint_dir=run)
    resumed = UCALReID(backbone="tiny", pretrained=False, image_size=(32, 16), epochs=3,
                       warmup_epochs=0, batch_size=16, iters_per_epoch=3, validation_size=0,
                       inference_batch_size=64, random_state=0, loss="cluster_memory_hard",
                       checkpoint_dir=run).fit(data.train, data.train.pids, resume=True)
    np.testing.assert_allclose(resumed.transform(data.query), straight.transform(data.query),
                               atol=1e-5)


def test_resume_with_another_base_is_refused(data, tmp_path):
    run = str(tmp_path / "run")
    _fit(data, epochs=1, checkpoint_dir=run)
    other = UCALReID(backbone="tiny", pretrained=False, image_size=(32, 16), epochs=2,
                     warmup_epochs=0, batch_size=16, iters_per_epoch=3, validation_size=0,
                     inference_batch_size=64, random_state=0, loss="camera_proxies",
                     checkpoint_dir=run)
    with pytest.raises(ValueError, match="loss"):
        other.fit(data.train, data.train.pids, resume=True)


def test_paper_preset_keeps_the_paper_base():
    paper = UCALReID.from_preset("paper")
    assert (paper.loss, paper.pooling, paper.centroid_momentum) == ("centroid", "avg", None)


@pytest.mark.parametrize("name, value", [("loss", "arcface"), ("pooling", "max")])
def test_unknown_bases_are_refused(data, name, value):
    from sklearn.utils._param_validation import InvalidParameterError

    with pytest.raises(InvalidParameterError, match=name):
        _fit(data, **{name: value})


def test_a_rows_proxy_loss_does_not_depend_on_the_rest_of_its_batch():
    feats, labels, cams = _proxy_case()  # 5 proxies: fewer than the 50 hard negatives
    memory = CameraProxyMemory(labels, cams, feats, temperature=0.1)
    batch = _unit(4, 6, seed=3)
    indices = np.array([0, 3, 5, 1])
    together = memory.loss(batch, indices, reduction="none")
    alone = torch.cat([memory.loss(batch[k:k + 1], indices[k:k + 1], reduction="none")
                       for k in range(4)])
    torch.testing.assert_close(together, alone)


def test_gem_leaves_a_backbone_that_returns_vectors_alone():
    class Flat(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    net = build_backbone(Flat(), True, (16, 8), pooling="gem")
    # no exponent that nothing trains (DistributedDataParallel would refuse it)
    assert not hasattr(net, "pool") and net.pooling == "avg"
    assert all(p.requires_grad is False or p.grad is None for p in net.parameters())


def test_a_model_pickled_before_the_bases_existed_loads(data):
    import pickle

    model = _fit(data, epochs=1, pooling="avg")  # what every model was before GeM
    state = model.__getstate__()
    for name in ("loss", "pooling"):
        state.pop(name)
    old = UCALReID.__new__(UCALReID)
    old.__setstate__(pickle.loads(pickle.dumps(state)))
    assert (old.loss, old.pooling) == ("centroid", "avg")
    np.testing.assert_allclose(old.transform(data.query), model.transform(data.query), atol=1e-6)


def test_a_model_pickled_before_the_pair_term_existed_loads(data):
    import pickle

    model = _fit(data, epochs=1, pair_weight=0.0)  # what every model was before the pair term
    state = model.__getstate__()
    for name in ("pair_weight", "pair_trim"):
        state.pop(name)
    old = UCALReID.__new__(UCALReID)
    old.__setstate__(pickle.loads(pickle.dumps(state)))
    assert (old.pair_weight, old.pair_trim) == (0.0, 0.0)
    assert old.get_params()["pair_trim"] == 0.0
    np.testing.assert_allclose(old.transform(data.query), model.transform(data.query), atol=1e-6)
