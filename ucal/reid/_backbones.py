"""Backbones and the SpCL neck (last stride 1, GAP, BatchNorm1d, L2)."""

import copy
import logging
import os
import socket
import threading
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BACKBONES", "POOLINGS", "GeneralizedMeanPooling", "ReIDNet", "build_backbone",
           "save_weights"]

logger = logging.getLogger(__name__)

# Named backbones; a torch.nn.Module instance is accepted as well.
BACKBONES = ("resnet50", "resnet18", "small", "tiny")

# How the neck pools a feature map into a vector.
POOLINGS = ("avg", "gem")

# torchvision's original ImageNet weights, the ones SpCL and the paper start from.
_IMAGENET_WEIGHTS = {
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
}
# Seconds allowed to reach the download server before declaring the machine offline.
_PROBE_TIMEOUT = 5.0


class GeneralizedMeanPooling(nn.Module):
    """GeM pooling: ``(mean(x ** p)) ** (1 / p)`` over the spatial positions.

    ``p = 1`` is average pooling and large ``p`` tends to max pooling; ``p``
    is learnt, starting at 3 (Radenovic et al., TPAMI 2019; the pooling
    cluster-contrast offers beside average pooling). Activations are
    clamped at ``eps`` first, so that the power is defined.

    Parameters
    ----------
    p : float, default=3.0
        Initial exponent.
    eps : float, default=1e-6
        Lower clamp of the activations.

    Attributes
    ----------
    p : torch.nn.Parameter
        The exponent.

    Examples
    --------
    >>> import torch
    >>> from ucal.reid import GeneralizedMeanPooling
    >>> maps = torch.ones(2, 5, 4, 3)
    >>> GeneralizedMeanPooling()(maps).shape
    torch.Size([2, 5])
    """

    def __init__(self, p=3.0, eps=1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = float(eps)

    def forward(self, maps):
        """Pool feature maps over their spatial positions.

        Parameters
        ----------
        maps : torch.Tensor of shape (batch, channels, height, width)

        Returns
        -------
        pooled : torch.Tensor of shape (batch, channels)
            In float32.
        """
        # float32 whatever the autocast: x ** 3 of bf16 activations loses the small ones
        with torch.autocast(device_type=maps.device.type, enabled=False):
            p = self.p.float()
            pooled = maps.float().clamp(min=self.eps).pow(p).mean(dim=(2, 3))
            return pooled.pow(1.0 / p)


class ReIDNet(nn.Module):
    """A body followed by the SpCL neck.

    The body maps an image batch (B, 3, H, W) to feature maps (B, C, h, w)
    or vectors (B, C). Feature maps are pooled (global average, or GeM);
    the vectors go through BatchNorm1d (bias frozen at 0, as in SpCL) and
    are L2-normalised, in float32 whatever the autocast setting.

    Parameters
    ----------
    body : torch.nn.Module
        The feature extractor.
    feature_dim : int
        Number of channels ``C`` the body outputs.
    pooling : {"avg", "gem"}, default="avg"
        Global average pooling (SpCL's), or :class:`GeneralizedMeanPooling`.
    """

    def __init__(self, body, feature_dim, pooling="avg"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
        self.body = body
        self.feature_dim = int(feature_dim)
        self.pooling = pooling
        # average pooling has no parameter: no module, so its state dict keys stay SpCL's
        if pooling == "gem":
            self.pool = GeneralizedMeanPooling()
        self.neck = nn.BatchNorm1d(self.feature_dim)
        nn.init.ones_(self.neck.weight)
        nn.init.zeros_(self.neck.bias)
        self.neck.bias.requires_grad_(False)

    def forward(self, images):
        features = self.body(images)
        if isinstance(features, (tuple, list)):
            features = features[0]
        if features.dim() == 4:
            features = self.pool(features) if self.pooling == "gem" else features.mean(dim=(2, 3))
        elif features.dim() != 2:
            raise ValueError(
                "The backbone must return feature maps (B, C, H, W) or vectors "
                f"(B, C); it returned a tensor of shape {tuple(features.shape)}."
            )
        with torch.autocast(device_type=features.device.type, enabled=False):
            features = self.neck(features.float())
            return F.normalize(features, dim=1)


def _last_stride_one(resnet):
    """Set layer4's stride to 1 (SpCL): twice the spatial resolution at the end."""
    block = resnet.layer4[0]
    # Bottleneck strides in conv2 (torchvision v1.5), BasicBlock in conv1.
    conv = block.conv2 if hasattr(block, "conv3") else block.conv1
    conv.stride = (1, 1)
    if block.downsample is not None:
        block.downsample[0].stride = (1, 1)


class _ResNetBody(nn.Module):
    """A torchvision ResNet without its pooling and classifier."""

    def __init__(self, resnet):
        super().__init__()
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


# Channels of the four stages of the CPU-sized residual CNNs.
_SMALL_WIDTHS = {"small": (32, 64, 128, 256), "tiny": (16, 32, 64, 128)}


def _small_body(widths=_SMALL_WIDTHS["small"]):
    """A four-stage residual CNN sized for CPU runs.

    Built from torchvision's BasicBlock: a stride-2 stem, then stages of
    ``widths`` channels with strides 1, 2, 2 and 1 (last stride 1 as in the
    ResNets). A 64x32 input gives an 8x4 final map. ``"small"`` (32, 64,
    128, 256 channels) has about 1.2 M parameters; ``"tiny"`` (16, 32, 64,
    128) about 0.3 M and trains about three times faster in float32.
    """
    from torchvision.models.resnet import BasicBlock

    def stage(in_ch, out_ch, stride):
        downsample = None
        if stride != 1 or in_ch != out_ch:
            downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        return BasicBlock(in_ch, out_ch, stride=stride, downsample=downsample)

    w1, w2, w3, w4 = widths
    return nn.Sequential(
        nn.Conv2d(3, w1, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(w1),
        nn.ReLU(inplace=True),
        stage(w1, w1, 1),
        stage(w1, w2, 2),
        stage(w2, w3, 2),
        stage(w3, w4, 1),
    )


def _probe_online(url, timeout):
    """Whether the host of ``url`` answers within ``timeout`` seconds.

    Runs in a daemon thread so that even a DNS lookup that hangs cannot
    block the caller longer than ``timeout``.
    """
    host = urlparse(url).hostname
    result = {}

    def connect():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result["ok"] = True
        except OSError as exc:
            result["error"] = exc

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return result.get("ok", False)


def _imagenet_state_dict(name, verbose=False):
    """torchvision's ImageNet weights for ``name``, from the torch cache or the web."""
    url = _IMAGENET_WEIGHTS[name]
    cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    cached = os.path.join(cache_dir, os.path.basename(urlparse(url).path))
    if not os.path.isfile(cached):
        offline_msg = (
            f"pretrained=True needs torchvision's ImageNet weights for {name}, which "
            f"are not in the torch cache ({cached}) and cannot be downloaded from "
            f"{url}: this machine appears to be offline. Either pass "
            "pretrained=PATH with a local state dict (for example that file copied "
            "from an online machine), or pretrained=False to start from random weights."
        )
        if not _probe_online(url, _PROBE_TIMEOUT):
            raise OSError(offline_msg)
        os.makedirs(cache_dir, exist_ok=True)
        logger.info("Downloading %s ImageNet weights to %s", name, cached)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(60.0)
        try:
            torch.hub.download_url_to_file(url, cached, progress=bool(verbose))
        except OSError as exc:  # URLError is an OSError
            raise OSError(f"{offline_msg} ({type(exc).__name__}: {exc})") from exc
        finally:
            socket.setdefaulttimeout(previous)
    return torch.load(cached, map_location="cpu", weights_only=True)


def _load_into(module, state_dict, source, *, ignore_prefixes=()):
    """Load ``state_dict`` into ``module``; unexpected or missing keys are errors."""
    state_dict = {
        k: v for k, v in state_dict.items() if not k.startswith(tuple(ignore_prefixes))
    }
    missing, unexpected = module.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"The state dict from {source} does not fit the backbone: "
            f"missing keys {list(missing)[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected keys {list(unexpected)[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}."
        )


def _reset_parameters(module):
    for sub in module.modules():
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()


def build_backbone(backbone, pretrained, image_size, *, pooling="avg", verbose=False):
    """Build a :class:`ReIDNet` from a backbone name or module.

    Parameters
    ----------
    backbone : {"resnet50", "resnet18", "small", "tiny"} or torch.nn.Module
        The body. A module is deep-copied, never modified in place.
    pretrained : bool or path-like
        ``True``: torchvision's ImageNet weights for the ResNets (a module
        keeps the weights it has). A path: a state dict saved with
        ``torch.save``, either of the body (a torchvision ResNet state
        dict, its ``fc`` entries ignored, or the module's own) or of a whole
        :class:`ReIDNet`. ``False``: random initialisation.
    image_size : tuple of int
        ``(height, width)`` used to find the body's output width.
    pooling : {"avg", "gem"}, default="avg"
        The neck's pooling (see :class:`ReIDNet`). A whole-network state
        dict saved without GeM loads into a GeM network, whose exponent
        then starts at 3.
    verbose : bool, default=False
        Show a download progress bar.

    Returns
    -------
    net : ReIDNet
    """
    from torchvision import models

    path = None
    if not isinstance(pretrained, bool):
        path = os.fspath(pretrained)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pretrained weights file not found: {path!r}.")

    if isinstance(backbone, nn.Module):
        body = copy.deepcopy(backbone)
        if pretrained is False:
            _reset_parameters(body)
    elif backbone in ("resnet50", "resnet18"):
        resnet = getattr(models, backbone)(weights=None)
        if pretrained is True:
            _load_into(
                resnet, _imagenet_state_dict(backbone, verbose), "torchvision's ImageNet weights"
            )
        _last_stride_one(resnet)
        body = _ResNetBody(resnet)
    elif backbone in _SMALL_WIDTHS:
        if pretrained is True:
            raise ValueError(
                f"backbone={backbone!r} has no ImageNet weights: use pretrained=False, or "
                "pretrained=PATH with a state dict you saved."
            )
        body = _small_body(_SMALL_WIDTHS[backbone])
    else:
        raise ValueError(
            f"backbone must be one of {BACKBONES} or a torch.nn.Module, got {backbone!r}."
        )

    feature_dim, n_dims = _output_dim(body, image_size)
    if pooling == "gem" and n_dims != 4:
        # vectors are taken as they are: a GeM exponent would be a parameter no loss reaches
        # (an error for DistributedDataParallel)
        logger.info("The backbone returns vectors: no pooling, pooling='gem' does not apply.")
        pooling = "avg"
    net = ReIDNet(body, feature_dim, pooling=pooling)
    if path is not None:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state_dict, dict):
            raise ValueError(f"{path!r} does not hold a state dict (a dict of tensors).")
        if any(k.startswith("body.") for k in state_dict):
            if pooling == "gem" and "pool.p" not in state_dict:
                # weights of an average-pooled network: GeM starts from its own p
                state_dict = {**state_dict, "pool.p": net.pool.p.detach().clone()}
            elif pooling == "avg" and "pool.p" in state_dict:
                raise ValueError(
                    f"{path!r} holds a network with GeM pooling (pool.p); build it with "
                    "pooling='gem'."
                )
            _load_into(net, state_dict, repr(path))
        else:
            # A body-only dict: torchvision ResNet keys (fc ignored) or the module's own.
            _load_into(net.body, state_dict, repr(path), ignore_prefixes=("fc.",))
    return net


def _output_dim(body, image_size):
    """Channels of the body's output, found by running two blank images through it."""
    was_training = body.training
    body.eval()
    try:
        with torch.no_grad():
            out = body(torch.zeros(2, 3, *image_size))
    except RuntimeError as exc:
        raise ValueError(
            f"The backbone cannot process images of size {tuple(image_size)} "
            f"(height, width): {exc}"
        ) from exc
    finally:
        body.train(was_training)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() not in (2, 4):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            "The backbone must map an image batch to feature maps (B, C, H, W) or "
            f"vectors (B, C); it returned {shape}."
        )
    return out.shape[1], out.dim()


def save_weights(module, path):
    """Save a module's weights as a plain ``torch.save`` state dict.

    This is the format ``UCALReID(pretrained=path)`` loads, for example the
    ``backbone_`` of a fitted model used to start another run.

    Parameters
    ----------
    module : torch.nn.Module
        The network whose ``state_dict`` is saved (as CPU tensors).
    path : str or path-like
        The file to write.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> from ucal.reid import save_weights
    >>> path = os.path.join(tempfile.mkdtemp(), "weights.pt")
    >>> save_weights(torch.nn.Linear(2, 1), path)
    >>> sorted(torch.load(path))
    ['bias', 'weight']
    """
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    torch.save(state, path)
