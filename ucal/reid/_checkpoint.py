"""Atomic checkpoints: a crash while saving never leaves a half-written file."""

import os

import torch

__all__ = ["CHECKPOINT_NAME", "LABEL_MEMORY_NAME", "load_checkpoint", "save_checkpoint"]

# File names inside ``checkpoint_dir``.
CHECKPOINT_NAME = "checkpoint.pt"
LABEL_MEMORY_NAME = "label_memory.jsonl"


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def save_checkpoint(state, directory):
    """Write ``state`` to ``directory/checkpoint.pt`` atomically.

    The state goes to a temporary file in the same directory, is flushed
    to disk, then renamed over the previous checkpoint (``os.replace`` is
    atomic), so a reader sees either the old or the new epoch, never a
    partial file.
    """
    os.makedirs(directory, exist_ok=True)
    final = os.path.join(directory, CHECKPOINT_NAME)
    tmp = f"{final}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(directory)
    return final


def load_checkpoint(directory):
    """Read ``directory/checkpoint.pt``, or return None when there is none.

    The checkpoint holds pickled Python objects (the clustering estimator,
    RNG states): load only checkpoints you wrote yourself.
    """
    path = os.path.join(directory, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def save_weights(module, path):
    """Save a module's state dict (CPU tensors) as a plain ``torch.save`` file,
    the format ``UCALReID(pretrained=path)`` loads."""
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    torch.save(state, path)
