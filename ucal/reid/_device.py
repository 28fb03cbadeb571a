"""Device and mixed-precision choice for training and inference."""

import contextlib
import logging
import warnings

import torch

__all__ = ["Precision", "resolve_device", "resolve_precision", "set_num_threads"]

logger = logging.getLogger(__name__)


def resolve_device(device):
    """Turn the ``device`` parameter into a :class:`torch.device`.

    ``"auto"`` picks CUDA when a GPU is visible, else the CPU. A CUDA
    device asked for on a machine without one falls back to the CPU with
    a warning, so that a model trained on a GPU still loads and runs on a
    CPU-only machine.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}."
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(
            f"device={device!r} was requested but CUDA is not available; using the CPU.",
            RuntimeWarning,
            stacklevel=3,
        )
        return torch.device("cpu")
    return resolved


def _cpu_has_fast_bf16():
    """Whether this CPU runs bf16 matrix products natively (AVX512-BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for name in checks:
        check = getattr(torch.cpu, name, None)
        if check is not None:
            try:
                if check():
                    return True
            except RuntimeError:  # pragma: no cover - depends on the build
                continue
    return False


class Precision:
    """How to run the forward pass: autocast dtype, memory format and grad scaling.

    Parameters
    ----------
    device : torch.device
    dtype : torch.dtype or None
        Autocast dtype; ``None`` runs in float32.
    channels_last : bool
        Store conv inputs and weights as NHWC (faster with oneDNN bf16 and
        on tensor cores).
    scale_grads : bool
        Whether a :class:`torch.amp.GradScaler` is needed (float16 only).
    """

    def __init__(self, device, dtype=None, channels_last=False, scale_grads=False):
        self.device = device
        self.dtype = dtype
        self.channels_last = channels_last
        self.scale_grads = scale_grads

    @property
    def name(self):
        if self.dtype is None:
            return "fp32"
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        """Context manager that runs the enclosed ops in ``dtype``."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def memory_format(self):
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def grad_scaler(self):
        return torch.amp.GradScaler(self.device.type, enabled=self.scale_grads)

    def describe(self):
        """How the network runs, in words (for logs and reports)."""
        if self.dtype is None:
            return f"float32 on {self.device.type}"
        return (
            f"{ {torch.bfloat16: 'bfloat16', torch.float16: 'float16'}[self.dtype]} autocast"
            f"{' + channels_last' if self.channels_last else ''} on {self.device.type}"
        )

    def __repr__(self):
        return (
            f"Precision(device={self.device}, dtype={self.name}, "
            f"channels_last={self.channels_last})"
        )


def resolve_precision(mixed_precision, device):
    """Pick the autocast settings for ``device``.

    ``"auto"`` uses bfloat16 autocast plus channels_last on CPUs with
    native bf16 (about 2.7 times the float32 training throughput of a
    ResNet-50 on an AVX512-BF16 CPU, see ``benchmarks/bench_training.py``),
    bfloat16 on GPUs that support it
    and float16 with gradient scaling on older GPUs; it stays in float32
    on CPUs without native bf16, where emulated bf16 is slower. ``True``
    forces mixed precision, ``False`` forces float32.
    """
    if mixed_precision == "auto":
        if device.type == "cpu":
            enabled = _cpu_has_fast_bf16()
        else:
            enabled = device.type == "cuda"
    else:
        enabled = bool(mixed_precision)
    if not enabled:
        return Precision(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(device, torch.bfloat16, channels_last=True)
        return Precision(device, torch.float16, channels_last=True, scale_grads=True)
    if device.type == "cpu":
        return Precision(device, torch.bfloat16, channels_last=True)
    logger.info("No mixed precision on device type %r; using float32.", device.type)
    return Precision(device)


def set_num_threads(threads):
    """Set the number of CPU threads torch uses for its operators.

    Parameters
    ----------
    threads : int or None
        Threads for intra-op parallelism; ``None`` or 0 keeps torch's own
        choice (one per core).

    Examples
    --------
    >>> import torch
    >>> from ucal.reid import set_num_threads
    >>> before = torch.get_num_threads()
    >>> set_num_threads(1)
    >>> torch.get_num_threads()
    1
    >>> set_num_threads(before)
    """
    if threads:
        torch.set_num_threads(int(threads))
