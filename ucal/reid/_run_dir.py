"""The run directory of a fit: guard, fingerprint, atomic checkpoints, resume.

``checkpoint_dir`` holds ``checkpoint.pt`` (rewritten atomically after every
epoch), ``label_memory.jsonl`` (the oracle's answers, appended as they
arrive) and ``validation_memory.jsonl`` (the held-out answers). A directory that already holds a run is never overwritten: it is
resumed (``resume=True``) or refused.
"""

import logging
import os

import torch

from ucal.utils import atomic_write

from ._data import check_image_size

__all__ = [
    "CHECKPOINT_NAME",
    "LABEL_MEMORY_NAME",
    "VALIDATION_MEMORY_NAME",
    "RunDirectory",
    "fingerprint",
]

logger = logging.getLogger(__name__)

# File names inside ``checkpoint_dir``.
CHECKPOINT_NAME = "checkpoint.pt"
LABEL_MEMORY_NAME = "label_memory.jsonl"
VALIDATION_MEMORY_NAME = "validation_memory.jsonl"  # held-out answers, never trained on

# Parameters that define the training run: a resumed fit must use the same values.
RESUME_PARAMS = (
    "image_size",
    "warmup_epochs",
    "batch_size",
    "num_instances",
    "lr",
    "weight_decay",
    "lr_schedule",
    "lr_step",
    "lr_gamma",
    "temperature",
    "memory_momentum",
    "memory_refresh",
    "outliers",
    "centroid_momentum",
    "supervised",
    "validation_size",
)

# Values of fingerprint keys that checkpoints written before the key existed lack.
_FINGERPRINT_DEFAULTS = {"lr_schedule": "step", "validation_size": 0}


def fingerprint(est, n_samples):
    """What must match for a run to be resumed: the run's parameters and data size."""
    params = {k: getattr(est, k) for k in RESUME_PARAMS}
    params["image_size"] = list(check_image_size(est.image_size))
    if callable(est.lr_schedule):
        params["lr_schedule"] = "callable"
    params["backbone"] = est.backbone if isinstance(est.backbone, str) else "module"
    params["n_samples"] = n_samples
    return params


class RunDirectory:
    """``checkpoint_dir`` of one fit.

    Parameters
    ----------
    path : str or path-like
        The directory (created on first save).
    resume : bool
        Whether the fit continues the run saved there.
    given_memory : LabelMemory, path-like or None
        The ``label_memory`` passed to ``fit``; None (or the run's own
        memory file) means the run's memory, ``label_memory.jsonl``.
    """

    def __init__(self, path, resume, given_memory=None):
        self.path = os.fspath(path)
        self.resume = resume
        self.memory_path = os.path.join(self.path, LABEL_MEMORY_NAME)
        self.validation_path = os.path.join(self.path, VALIDATION_MEMORY_NAME)
        given = getattr(given_memory, "path", given_memory)
        # A memory given on the run's own memory file counts as the run's memory.
        self.owns_memory = given_memory is None or (
            given is not None and os.path.abspath(given) == os.path.abspath(self.memory_path)
        )

    def load(self):
        """The saved checkpoint (None when there is none); refuses to start over a run.

        Raises
        ------
        FileExistsError
            If the directory holds a run (a checkpoint, or answers in the
            run's memory file) and ``resume`` is False.
        """
        path = os.path.join(self.path, CHECKPOINT_NAME)
        checkpoint = None
        if os.path.isfile(path):
            # pickled Python objects (the clusterer, RNG states): our own files only
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        if not self.resume and (
            checkpoint is not None
            or (
                self.owns_memory
                and os.path.isfile(self.memory_path)
                and os.path.getsize(self.memory_path) > 0
            )
            or (
                os.path.isfile(self.validation_path)
                and os.path.getsize(self.validation_path) > 0
            )
        ):
            raise FileExistsError(
                f"checkpoint_dir {self.path!r} already holds a run (a checkpoint or "
                "oracle answers). Pass resume=True to continue it, or choose another "
                "directory; nothing there is overwritten."
            )
        os.makedirs(self.path, exist_ok=True)
        if checkpoint is None and self.resume:
            logger.info("No checkpoint in %s yet: starting from epoch 1.", self.path)
        return checkpoint

    def check_fingerprint(self, saved, current):
        """Refuse to resume a run trained with other settings or data."""
        saved = {**_FINGERPRINT_DEFAULTS, **saved}
        diff = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
        if diff:
            details = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(
                f"Cannot resume the run in {self.path!r}: it was trained with other "
                f"settings or data ({details})."
            )

    def save(self, state):
        """Write ``state`` to ``checkpoint.pt`` atomically (old or new epoch, never a part)."""
        os.makedirs(self.path, exist_ok=True)
        return atomic_write(
            os.path.join(self.path, CHECKPOINT_NAME), lambda f: torch.save(state, f)
        )
