"""What the commands of ``ucal`` share: logging, JSON files, the results
table, the thread count and the argument groups (verbosity, dataset)."""

import json
import logging
import os
import sys

import numpy as np

from ucal.datasets import DATASET_NAMES
from ucal.utils import atomic_write

logger = logging.getLogger(__name__)

# Loggers whose per-step chatter shows only with -v.
_DETAIL_LOGGERS = ("ucal.cluster", "ucal.active", "ucal.oracles", "ucal.annotation")


def setup_logging(verbose, log_file=None):
    """Log to stderr (and ``log_file``): INFO, or WARNING with ``-q``."""
    level = logging.INFO if verbose >= 0 else logging.WARNING
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=level, format="%(asctime)s %(message)s", handlers=handlers, force=True
    )
    # The per-step chatter of the clustering and refinement modules stays at DEBUG.
    for name in _DETAIL_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if verbose < 1 else logging.INFO)


def set_threads(threads):
    """torch's CPU threads (None: torch's choice); torch is reached through ucal.reid only."""
    from ucal.reid import set_num_threads

    set_num_threads(threads)


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json(path, obj):
    """Write ``obj`` as JSON, atomically (a crash leaves the old file or the new one)."""
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, default=_json_default), mode="w")


def percent(x):
    """A fraction as a percentage."""
    return 100.0 * float(x)


def held_record(model):
    """The history record of the network a fitted UCALReID holds (its best epoch, or last)."""
    held = model.best_epoch_ if model.best_epoch_ is not None else model.history_[-1]["epoch"]
    return next(r for r in model.history_ if r["epoch"] == held)


def results_table(rows):
    """Markdown table of Method / R1 / R5 / R10 / mAP / queries / cost."""
    lines = [
        "| Method | R1 | R5 | R10 | mAP | Queries | Labeling cost |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cost = "100 %" if r["cost"] >= 1 else f"{percent(r['cost']):.4f} %"
        lines.append(
            f"| {r['method']} | {percent(r['R1']):.1f} | {percent(r['R5']):.1f} | "
            f"{percent(r['R10']):.1f} | {percent(r['mAP']):.1f} | {r['n_queries']} | {cost} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------ argument groups
def add_verbosity(parser):
    """``-v`` / ``-q``: the ``verbose`` count (-1 with ``-q``)."""
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-v: clustering and refinement details)")
    parser.add_argument("-q", "--quiet", action="store_const", const=-1, dest="verbose",
                        help="warnings only, no progress bars")


def add_threads(parser):
    """``--threads``: torch's CPU threads."""
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")


def add_dataset_arguments(parser, *, purpose):
    """``--dataset`` (a name of :func:`ucal.datasets.load_dataset`), ``--root``,
    ``--pattern`` and ``--random-state``, as one group."""
    group = parser.add_argument_group(
        "dataset", "The data, by a name of ucal.datasets.load_dataset."
    )
    group.add_argument("--dataset", required=True, choices=DATASET_NAMES,
                       help=f"{purpose} (folder: your own images, see load_image_folder; "
                       "synthetic: make_persons)")
    group.add_argument("--root", metavar="DIR",
                       help="dataset folder (or CSV file for --dataset folder); required "
                       "except for --dataset synthetic")
    group.add_argument("--pattern", default=None, metavar="REGEX",
                       help="--dataset folder: regular expression with groups pid and camid")
    group.add_argument("--random-state", type=int, default=0, metavar="SEED",
                       help="--dataset synthetic: the seed of make_persons (default 0)")


def check_dataset_arguments(parser, args):
    """Refuse, as a usage error, a dataset read from disk without ``--root``."""
    if args.dataset != "synthetic" and not args.root:
        parser.error(f"--dataset {args.dataset} needs --root DIR.")


def load_data(args):
    """The dataset named by the arguments of :func:`add_dataset_arguments`."""
    from ucal.datasets import load_dataset

    if args.dataset == "synthetic":
        return load_dataset("synthetic", random_state=args.random_state)
    if args.dataset == "folder":
        return load_dataset("folder", args.root, pattern=args.pattern)
    return load_dataset(args.dataset, args.root)


def load_model(run):
    """The UCALReID of a run folder (its ``model.joblib``) or of a model file, or a clear error."""
    import joblib

    from ucal.reid import UCALReID

    path = os.path.join(run, "model.joblib") if os.path.isdir(run) else run
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No model at {run!r}: give the output folder of ucal train or ucal demo (holding "
            "model.joblib) or the model file itself."
        )
    try:
        model = joblib.load(path)
    except Exception as exc:  # whatever a file that is not a joblib pickle raises
        raise ValueError(
            f"{path!r} is not a model saved by ucal train (model.joblib): it cannot be read "
            f"({type(exc).__name__}: {exc})."
        ) from exc
    if not isinstance(model, UCALReID):
        raise ValueError(f"{path!r} holds a {type(model).__name__}, not a UCALReID.")
    return model, os.path.abspath(path)


def image_paths(location, pattern=None):
    """Image files of a folder (recursively, sorted) or one file; with ``pattern``, the
    ``pid`` and ``camid`` groups of each name (-1 where a group is absent)."""
    import re

    from ucal.datasets._folder import _walk_images

    if os.path.isdir(location):
        paths = [os.path.join(location, p) for p in _walk_images(location)]
    elif os.path.isfile(location):
        paths = [location]
    else:
        raise FileNotFoundError(f"No image or folder at {location!r}.")
    if not paths:
        raise ValueError(f"{location!r} holds no image file (.jpg, .png, ...).")
    ids = cams = None
    if pattern:
        regex = re.compile(pattern)
        if not {"pid", "camid"} & set(regex.groupindex):
            raise ValueError(f"--pattern {pattern!r} has no group named pid or camid.")
        ids, cams = [], []
        for path in paths:
            match = regex.search(os.path.basename(path))
            if match is None:
                raise ValueError(f"--pattern {pattern!r} does not match {path!r}.")
            groups = match.groupdict()
            ids.append(int(groups["pid"]) if groups.get("pid") is not None else -1)
            cams.append(int(groups["camid"]) if groups.get("camid") is not None else -1)
        # a group the pattern lacks is not known: no filtering on it
        ids = ids if "pid" in regex.groupindex else None
        cams = cams if "camid" in regex.groupindex else None
    return paths, ids, cams
