"""The pieces of the distributed fit that one process can check (issue 14)."""

import os
import pickle
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = torch.distributed
if not dist.is_available():  # pragma: no cover - depends on the build
    pytest.skip("torch.distributed is not available in this build", allow_module_level=True)

from ucal.reid._distributed import DistributedContext, _SyncBatchNormFunction  # noqa: E402

pytestmark = pytest.mark.xdist_group("distributed")


@pytest.mark.parametrize("groups, world", [
    ([4, 4, 4, 4], 2), ([3, 3, 3, 1], 3), ([1, 1, 1, 4, 4, 1], 3), ([4] * 15 + [3], 4),
    ([1] * 16, 4), ([2, 1, 1, 4, 1, 1, 4, 2], 2),
])
def test_batch_shares_cover_the_batch_by_whole_groups_and_no_share_has_one_row(groups, world):
    shares = DistributedContext(world, 0).batch_shares(groups)
    assert len(shares) == world
    every = np.sort(np.concatenate(shares))
    np.testing.assert_array_equal(every, np.arange(sum(groups)))
    starts = np.concatenate([[0], np.cumsum(groups)[:-1]])
    for share in shares:
        assert len(share) >= 2  # a BatchNorm of its own can train on it
        for start, size in zip(starts, groups):  # whole groups only
            inside = np.isin(np.arange(start, start + size), share)
            assert inside.all() or not inside.any()


@pytest.fixture
def one_process_group():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("mean", [0.0, 300.0, 3000.0])
def test_synchronised_batchnorm_matches_float64_at_any_mean(one_process_group, mean):
    rng = torch.Generator().manual_seed(0)
    x = (torch.randn(8, 3, 5, 4, generator=rng) + mean).requires_grad_(True)
    weight = torch.tensor([1.0, 2.0, 0.5], requires_grad=True)
    bias = torch.tensor([0.0, 1.0, -1.0], requires_grad=True)
    grad = torch.randn(8, 3, 5, 4, generator=rng)
    y, batch_mean, unbiased = _SyncBatchNormFunction.apply(x, weight, bias, 1e-5)
    y.backward(grad)
    x64 = x.detach().double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(True)
    b64 = bias.detach().double().requires_grad_(True)
    ref = torch.nn.functional.batch_norm(x64, None, None, w64, b64, training=True, eps=1e-5)
    ref.backward(grad.double())
    # float32 itself holds x = 3000 + noise to about 2e-4: ours is within twice what
    # torch's own float32 BatchNorm makes of it, as a float64 computation sees both
    x32 = x.detach().clone().requires_grad_(True)
    plain = torch.nn.functional.batch_norm(x32, None, None, weight.detach(), bias.detach(),
                                           training=True, eps=1e-5)
    plain.backward(grad)
    for ours, torchs, exact in ((y, plain, ref), (x.grad, x32.grad, x64.grad)):
        error = (ours.double() - exact).abs().max().item()
        assert error <= max(2 * (torchs.double() - exact).abs().max().item(), 1e-5)
    torch.testing.assert_close(weight.grad.double(), w64.grad, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(bias.grad.double(), b64.grad, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(batch_mean.double(), x64.mean((0, 2, 3)), atol=1e-3, rtol=1e-6)
    torch.testing.assert_close(unbiased.double(), x64.var((0, 2, 3)), atol=1e-3, rtol=1e-3)


def test_an_empty_extraction_share_gives_no_rows_of_the_right_width():
    from ucal.reid._backbones import build_backbone
    from ucal.reid._data import as_image_source
    from ucal.reid._device import resolve_precision
    from ucal.reid._features import extract_features

    net = build_backbone("tiny", False, (32, 16))
    images = np.zeros((3, 32, 16, 3), dtype=np.uint8)
    source = as_image_source(images, (32, 16)).subset([])
    out = extract_features(net, source, resolve_precision(False, torch.device("cpu")), 8, 0,
                           False, "test")
    assert out.shape == (0, net.feature_dim)


def _tiny_model(**params):
    from ucal.reid import UCALReID

    return UCALReID(backbone="tiny", pretrained=False, image_size=(32, 16), epochs=1,
                    warmup_epochs=0, batch_size=8, iters_per_epoch=1, refiner="passthrough",
                    validation_size=0, random_state=0, **params)


def test_distributed_false_trains_alone_in_a_torchrun_environment(monkeypatch):
    # a pod whose environment names a group this process must not join
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")  # nobody listens: joining would fail
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 16, 3), dtype=np.uint8)
    model = _tiny_model(distributed=False).fit(images)
    assert len(model.history_) == 1 and not dist.is_initialized()
    for key in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key)
    with pytest.raises(ValueError, match="distributed=True, but this process is alone"):
        _tiny_model(distributed=True).fit(images)


def test_models_and_clusterers_pickled_before_the_new_parameters_still_load():
    from ucal.cluster import SelfPacedDBSCAN
    from ucal.reid import UCALReID

    old = SelfPacedDBSCAN(k1=30)
    state = old.__getstate__()
    del state["k1_rule"]
    restored = SelfPacedDBSCAN.__new__(SelfPacedDBSCAN)
    restored.__setstate__(state)
    assert restored.k1_rule == "fixed"  # an old run keeps its k1
    restored.fit(np.random.default_rng(0).normal(size=(40, 8)))
    model = UCALReID()
    state = model.__getstate__()
    del state["distributed"], state["sync_batchnorm"]
    back = UCALReID.__new__(UCALReID)
    back.__setstate__(state)
    assert back.get_params()["distributed"] == "auto" and back.sync_batchnorm is True
    pickle.loads(pickle.dumps(back))
    assert os.environ.get("WORLD_SIZE") is None
