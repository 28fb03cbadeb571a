"""The run directory of a fit: guard, fingerprint, atomic checkpoints, resume.

``checkpoint_dir`` holds ``checkpoint.pt`` (rewritten atomically after every
epoch, with a SHA-256 of its content in its first line), the one before it
as ``checkpoint.prev.pt``, ``label_memory.jsonl`` (the oracle's answers,
appended as they arrive), ``validation_memory.jsonl`` (the held-out
answers) and ``start_check.jsonl`` (the held-out answers of the end-of-fit
check against the start network). A directory that already holds a run is never overwritten: it is
resumed (``resume=True``) or refused. A damaged checkpoint is named and the
previous one is used instead, when it is sound.
"""

import hashlib
import io
import logging
import os
import warnings

import torch

from ucal.utils import atomic_write

from ._data import check_image_size

__all__ = [
    "CHECKPOINT_NAME",
    "LABEL_MEMORY_NAME",
    "PREVIOUS_CHECKPOINT_NAME",
    "VALIDATION_MEMORY_NAME",
    "DamagedCheckpointError",
    "RunDirectory",
    "fingerprint",
    "load_checkpoint",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

# File names inside ``checkpoint_dir``.
CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.pt"  # the epoch before: the fallback
LABEL_MEMORY_NAME = "label_memory.jsonl"
VALIDATION_MEMORY_NAME = "validation_memory.jsonl"  # held-out answers, never trained on
CHECK_MEMORY_NAME = "start_check.jsonl"  # the end-of-fit check's answers, never trained on

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
    "loss",
    "pooling",
    "supervised",
    "validation_size",
)

# Values of fingerprint keys that checkpoints written before the key existed lack.
_FINGERPRINT_DEFAULTS = {"lr_schedule": "step", "validation_size": 0, "loss": "centroid",
                         "pooling": "avg"}
# Keys not compared when a checkpoint written before they existed lacks them.
_OPTIONAL_KEYS = ("data",)

# First line of a checkpoint file: the magic, then the SHA-256 of the rest.
_MAGIC = b"UCAL-CHECKPOINT-1 sha256="


class DamagedCheckpointError(ValueError):
    """A checkpoint file whose content does not match its checksum, or cannot be read."""


def fingerprint(est, n_samples, data=None):
    """What must match for a run to be resumed: the run's parameters and data.

    ``data`` is the training images' content digest
    (:meth:`ImageSource.fingerprint`).
    """
    params = {k: getattr(est, k) for k in RESUME_PARAMS}
    params["image_size"] = list(check_image_size(est.image_size))
    if callable(est.lr_schedule):
        params["lr_schedule"] = "callable"
    params["backbone"] = est.backbone if isinstance(est.backbone, str) else "module"
    params["n_samples"] = n_samples
    if data is not None:
        params["data"] = data
    return params


def save_checkpoint(state, path, *, previous=None):
    """Write ``state`` to ``path`` atomically, with its checksum in the first line.

    The new file is written and synced under a temporary name first; then,
    with ``previous``, the file at ``path`` becomes ``previous``, and the new
    one takes its place. A state that cannot be saved changes nothing.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = _MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"
    path = os.fspath(path)

    def write(f):
        f.write(header)
        f.write(payload)

    def keep_previous():
        if previous is not None and os.path.isfile(path):
            # the fallback is made beside the newest, which stays in place meanwhile
            _replace_by_copy_of(path, previous)

    return atomic_write(path, write, before_replace=keep_previous)


def _replace_by_copy_of(source, target):
    """Make ``target`` a copy of ``source`` atomically (a hard link where possible)."""
    staging = f"{target}.tmp-{os.getpid()}"
    if os.path.exists(staging):
        os.remove(staging)
    try:
        os.link(source, staging)
    except OSError:  # no hard links on this file system
        import shutil

        shutil.copyfile(source, staging)
    os.replace(staging, target)


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint`, verifying its checksum.

    Files without the checksum line (written by ucal before it) load as they
    are. Raises :class:`DamagedCheckpointError`, naming ``path``, when the
    content does not match its checksum or cannot be unpickled.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(_MAGIC):
        end = data.find(b"\n")
        expected = data[len(_MAGIC):end].decode("ascii", errors="replace")
        data = data[end + 1:]
        if end < 0 or hashlib.sha256(data).hexdigest() != expected:
            raise DamagedCheckpointError(
                f"The checkpoint {path!r} is damaged: its content does not match the "
                "checksum written with it."
            )
    try:
        # pickled Python objects (the clusterer, RNG states): our own files only
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as exc:  # EOFError, UnpicklingError, RuntimeError...
        raise DamagedCheckpointError(
            f"The checkpoint {path!r} cannot be read ({type(exc).__name__}: {exc})."
        ) from exc


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
        self._newest_damaged = False
        self.validation_path = os.path.join(self.path, VALIDATION_MEMORY_NAME)
        self.check_path = os.path.join(self.path, CHECK_MEMORY_NAME)
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
        checkpoint, found = None, False
        if self.resume:
            checkpoint, found = self._load_sound()
        else:
            found = any(
                os.path.isfile(os.path.join(self.path, name))
                for name in (CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME)
            )
        if not self.resume and (
            found
            or (
                self.owns_memory
                and os.path.isfile(self.memory_path)
                and os.path.getsize(self.memory_path) > 0
            )
            or any(
                os.path.isfile(path) and os.path.getsize(path) > 0
                for path in (self.validation_path, self.check_path)
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

    def _load_sound(self):
        """(checkpoint, found): the newest sound checkpoint, falling back to the previous one."""
        self._remove_stale_temporaries()
        errors = []
        for name in (CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME):
            path = os.path.join(self.path, name)
            if not os.path.isfile(path):
                continue
            try:
                checkpoint = load_checkpoint(path)
            except DamagedCheckpointError as exc:
                errors.append(str(exc))
                if name == CHECKPOINT_NAME:
                    self._newest_damaged = True  # never rotated over the sound one
                continue
            if errors:
                warnings.warn(
                    f"{errors[0]} Resuming from the previous checkpoint {path!r} "
                    f"(epoch {checkpoint.get('epoch')}) instead; the answers given "
                    "since are kept in the label memory and not asked again.",
                    UserWarning,
                    stacklevel=4,
                )
            return checkpoint, True
        if errors:
            raise DamagedCheckpointError(
                " ".join(errors) + " No sound checkpoint is left to resume from: start "
                "a new run in another directory (its label memory can be passed as "
                "label_memory= to keep every answer)."
            )
        return None, False

    def _remove_stale_temporaries(self):
        """Half-written checkpoints of a process killed while saving (never read)."""
        if not os.path.isdir(self.path):
            return
        for name in os.listdir(self.path):
            if name.startswith((CHECKPOINT_NAME + ".tmp-", PREVIOUS_CHECKPOINT_NAME + ".tmp-")):
                os.remove(os.path.join(self.path, name))
                logger.info("Removed %s, left by a process killed while saving.", name)

    def check_fingerprint(self, saved, current):
        """Refuse to resume a run trained with other settings or data."""
        saved = {**_FINGERPRINT_DEFAULTS, **saved}
        current = {k: v for k, v in current.items() if k in saved or k not in _OPTIONAL_KEYS}
        diff = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
        if diff:
            def describe(key, a, b):
                if key == "data":
                    return ("data: the training images are not the ones the run was trained "
                            "on (their content digest differs)")
                return f"{key}: saved {a!r}, now {b!r}"

            details = ", ".join(describe(k, a, b) for k, (a, b) in diff.items())
            raise ValueError(
                f"Cannot resume the run in {self.path!r}: it was trained with other "
                f"settings or data ({details})."
            )

    def save(self, state):
        """Write ``state`` to ``checkpoint.pt`` atomically (old or new epoch, never a part).

        The checkpoint it replaces becomes ``checkpoint.prev.pt``, the
        fallback of a resume that finds the newest one damaged.
        """
        os.makedirs(self.path, exist_ok=True)
        # A damaged newest checkpoint is overwritten, not kept as the fallback.
        previous = None if self._newest_damaged else os.path.join(
            self.path, PREVIOUS_CHECKPOINT_NAME
        )
        path = save_checkpoint(state, os.path.join(self.path, CHECKPOINT_NAME),
                               previous=previous)
        self._newest_damaged = False
        return path
