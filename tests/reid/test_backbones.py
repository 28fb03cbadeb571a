"""Backbones, the SpCL neck, weight loading and the offline error."""

import os
import socket
import time

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from ucal.reid._backbones import ReIDNet, build_backbone  # noqa: E402


def _features(net, size, n=3):
    net.eval()
    with torch.no_grad():
        return net(torch.rand(n, 3, *size))


@pytest.mark.parametrize("name, dim", [("tiny", 128), ("small", 256), ("resnet18", 512)])
def test_named_backbones_give_unit_vectors(name, dim):
    torch.manual_seed(0)
    net = build_backbone(name, False, (32, 16))
    out = _features(net, (32, 16))
    assert isinstance(net, ReIDNet)
    assert out.shape == (3, dim)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_resnet_last_stride_is_one():
    net = build_backbone("resnet18", False, (64, 32))
    with torch.no_grad():
        maps = net.body(torch.zeros(1, 3, 64, 32))
    # Strides 2 (conv1), 2 (maxpool), 1, 2, 2, then 1 instead of 2: 64/16 x 32/16.
    assert maps.shape[-2:] == (4, 2)


def test_neck_bias_is_frozen():
    net = build_backbone("small", False, (32, 16))
    assert not net.neck.bias.requires_grad
    assert net.neck.weight.requires_grad


class _VectorBody(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 16 * 8, 20)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_custom_module_vectors_and_maps():
    vec = build_backbone(_VectorBody(), True, (16, 8))
    assert vec.feature_dim == 20
    assert _features(vec, (16, 8)).shape == (3, 20)
    maps = build_backbone(nn.Conv2d(3, 7, 3), True, (16, 8))
    assert maps.feature_dim == 7


def test_custom_module_is_copied_and_kept_or_reset():
    body = _VectorBody()
    before = body.fc.weight.detach().clone()
    kept = build_backbone(body, True, (16, 8))
    torch.testing.assert_close(kept.body.fc.weight, before)
    assert kept.body is not body
    torch.manual_seed(1)
    reset = build_backbone(body, False, (16, 8))
    assert not torch.equal(reset.body.fc.weight, before)
    torch.testing.assert_close(body.fc.weight, before)  # the user's module is untouched


def test_module_with_bad_output_is_rejected():
    class Flat(nn.Module):
        def forward(self, x):
            return x.sum(dim=(2, 3))[:, :, None]  # 3-D

    with pytest.raises(ValueError, match="feature maps"):
        build_backbone(Flat(), True, (16, 8))


def test_too_small_image_size_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot process images"):
        build_backbone(nn.Conv2d(3, 4, 9), True, (4, 4))


def test_pretrained_path_loads_body_and_full_state_dicts(tmp_path):
    torch.manual_seed(0)
    source = build_backbone("small", False, (32, 16))
    body_file = tmp_path / "body.pt"
    torch.save(source.body.state_dict(), body_file)
    full_file = tmp_path / "full.pt"
    with torch.no_grad():
        source.neck.weight.mul_(3.0)
    torch.save(source.state_dict(), full_file)

    torch.manual_seed(1)
    from_body = build_backbone("small", str(body_file), (32, 16))
    for a, b in zip(from_body.body.parameters(), source.body.parameters()):
        torch.testing.assert_close(a, b)
    from_full = build_backbone("small", full_file, (32, 16))
    torch.testing.assert_close(from_full.neck.weight, source.neck.weight)


def test_torchvision_state_dict_with_fc_loads(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    reference = resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)  # includes fc.*, which is ignored
    net = build_backbone("resnet18", path, (32, 16))
    torch.testing.assert_close(net.body.conv1.weight, reference.conv1.weight)


def test_wrong_state_dict_is_rejected(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"something.weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="does not fit"):
        build_backbone("small", path, (32, 16))
    with pytest.raises(FileNotFoundError, match="not found"):
        build_backbone("small", tmp_path / "missing.pt", (32, 16))


@pytest.mark.parametrize("name", ["small", "tiny"])
def test_cpu_backbones_have_no_imagenet_weights(name):
    with pytest.raises(ValueError, match=f"backbone='{name}' has no ImageNet weights"):
        build_backbone(name, True, (32, 16))


def test_tiny_is_a_quarter_of_small():
    n_params = {
        name: sum(p.numel() for p in build_backbone(name, False, (32, 16)).parameters())
        for name in ("tiny", "small")
    }
    assert 0.2 < n_params["tiny"] / n_params["small"] < 0.3


def test_pretrained_offline_without_cache_names_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    # Simulate an offline machine even where CI has internet.
    monkeypatch.setattr(socket, "create_connection", offline)
    start = time.perf_counter()
    with pytest.raises(OSError) as info:
        build_backbone("resnet18", True, (32, 16))
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "offline" in message
    assert "pretrained=PATH" in message and "pretrained=False" in message
    assert str(tmp_path) in message


def test_pretrained_true_uses_the_torch_cache(tmp_path, monkeypatch):
    from torchvision.models import resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("network used"))
    torch.manual_seed(3)
    reference = resnet18(weights=None)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / "resnet18-f37072fd.pth")
    assert os.path.isfile(cache / "resnet18-f37072fd.pth")
    net = build_backbone("resnet18", True, (32, 16))
    torch.testing.assert_close(net.body.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
