"""A trained network as a file that runs without ucal: TorchScript or ONNX.

The exported graph takes what an image decoder gives, a uint8 batch of
shape (batch, height, width, 3) already resized to the model's
``image_size``, and does the rest of :meth:`UCALReID.transform`'s work
inside: scaling to [0, 1], ImageNet normalisation, the network, the L2
normalisation. A JSON file beside it (``<path>.json``) records what the
caller must do before (the size and the resize) and what comes out, with a
fingerprint of the weights that a gallery index keeps to refuse
embeddings of another model.
"""

import hashlib
import json
import os
import warnings

import numpy as np
import torch
from torch import nn

from ucal.utils import atomic_write

from ._data import _MEAN, _STD

__all__ = ["EXPORT_FORMATS", "export_network", "model_fingerprint", "read_export_info"]

EXPORT_FORMATS = ("onnx", "torchscript")
# Version of the sidecar's layout.
_INFO_VERSION = 1


class _Deployable(nn.Module):
    """uint8 (B, H, W, 3) images -> L2-normalised float32 embeddings."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(_MEAN, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_STD, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images):
        x = images.permute(0, 3, 1, 2).float().div(255.0)
        return self.net((x - self.mean) / self.std)


class _SizeChecked(nn.Module):
    """Refuses images of another size than the model's (a traced graph would embed them)."""

    def __init__(self, inner, height, width):
        super().__init__()
        self.inner = inner
        self.height = height
        self.width = width

    def forward(self, images):
        if images.dim() != 4 or images.shape[1] != self.height or (
            images.shape[2] != self.width or images.shape[3] != 3
        ):
            raise RuntimeError(
                "ucal model: expected uint8 images of shape (batch, " + str(self.height)
                + ", " + str(self.width) + ", 3), resized as the model's description says; got "
                + str(list(images.shape))
            )
        return self.inner(images)


def model_fingerprint(net):
    """SHA-256 (hex) of a network's weights and buffers, in state-dict order."""
    digest = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        digest.update(name.encode("utf-8"))
        digest.update(np.ascontiguousarray(tensor.detach().cpu().float().numpy()).tobytes())
    return digest.hexdigest()


def export_network(net, path, image_size, format, *, extra_info=None):
    """Write ``net`` (a ReIDNet) as ``format`` to ``path`` and its sidecar to ``path + '.json'``.

    Returns the sidecar's content.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {format!r}.")
    path = os.fspath(path)
    height, width = image_size
    module = _Deployable(_cpu_float32_copy(net)).eval()
    example = torch.zeros(2, height, width, 3, dtype=torch.uint8)
    if format == "onnx":
        _export_onnx(module, example, path)
    else:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # PyTorch's note that jit is deprecated
            traced = torch.jit.script(_SizeChecked(torch.jit.trace(module, example),
                                                   int(height), int(width)))
        tmp = path + ".part"
        traced.save(tmp)
        os.replace(tmp, path)
    with torch.no_grad():
        dim = int(module(example).shape[1])
    info = {
        "ucal_export": _INFO_VERSION,
        "format": format,
        "file": os.path.basename(path),
        "input": {"name": "images", "dtype": "uint8", "layout": "NHWC", "height": int(height),
                  "width": int(width), "channels": "RGB",
                  "resize": "bilinear (PIL Image.resize) to height x width, before the model"},
        "inside_the_model": {"scale": "1/255", "mean": list(_MEAN), "std": list(_STD),
                             "output": "L2-normalised"},
        "output": {"name": "embeddings", "dtype": "float32", "dim": dim},
        "fingerprint": model_fingerprint(net),
        **(extra_info or {}),
    }
    payload = (json.dumps(info, indent=1) + "\n").encode("utf-8")
    atomic_write(path + ".json", lambda f: f.write(payload))
    return info


def _cpu_float32_copy(net):
    import copy

    return copy.deepcopy(net).float().cpu().eval()


def _export_onnx(module, example, path):
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ImportError(
            "format='onnx' needs the onnx package: pip install \"ucal[export]\" (onnx and "
            "onnxruntime), or export with format='torchscript'."
        ) from None
    tmp = path + ".part"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notes are not the user's
        torch.onnx.export(
            module, (example,), tmp, input_names=["images"], output_names=["embeddings"],
            dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
            dynamo=False,
        )
    os.replace(tmp, path)


def read_export_info(path):
    """The sidecar of an exported model (``path + '.json'``), or a clear error."""
    path = os.fspath(path)
    info_path = path if path.endswith(".json") else path + ".json"
    if not os.path.isfile(info_path):
        raise FileNotFoundError(
            f"No export description at {info_path!r}: export the model with "
            "UCALReID.export or `ucal export`, which write it beside the model."
        )
    with open(info_path, encoding="utf-8") as f:
        info = json.load(f)
    if not isinstance(info, dict) or info.get("ucal_export") != _INFO_VERSION:
        raise ValueError(f"{info_path!r} is not the description of a ucal export.")
    return info
