"""Loading a user's own re-id images: a folder tree or a CSV file."""

import csv
import logging
import os
import re
import warnings

import numpy as np

from ._base import ReIDDataset, ReIDSplit
from ._io import IMAGE_EXTENSIONS, _is_image_file

__all__ = ["load_image_folder"]

logger = logging.getLogger(__name__)

_SPLITS = ("train", "query", "gallery")
_INT = re.compile(r"^[+-]?\d+$")


def _codes(values, what):
    """Map raw labels (strings) to ints.

    Identities that are all integers keep their value; otherwise, and for
    cameras always, labels are numbered 0, 1, ... in sorted order
    (numeric order when every label is an integer).
    """
    unique = sorted(set(values))
    numeric = all(_INT.match(v) for v in unique)
    if what == "pid" and numeric:
        return {v: int(v) for v in unique}
    if numeric:
        unique = sorted(unique, key=int)
    return {v: i for i, v in enumerate(unique)}


def _walk_images(folder):
    """Sorted relative POSIX paths of all image files under ``folder``."""
    found = []
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_dir = os.path.relpath(current, folder)
        for f in sorted(files):
            if _is_image_file(f):
                found.append(f if rel_dir == "." else f"{rel_dir}/{f}".replace(os.sep, "/"))
    return found


def _scan_split(folder, pattern):
    """Records (path, raw_pid, raw_camid or None) of one split folder."""
    records, unmatched, loose = [], [], []
    by_folder = pattern is None or "pid" not in pattern.groupindex
    if by_folder:
        # One sub-folder per identity; the folder name is the identity.
        for entry in sorted(os.listdir(folder)):
            full = os.path.join(folder, entry)
            if os.path.isdir(full) and not entry.startswith("."):
                for rel in _walk_images(full):
                    records.append((os.path.join(full, *rel.split("/")), entry, rel))
            elif _is_image_file(entry):
                loose.append(entry)
        if loose:
            warnings.warn(
                f"{len(loose)} image file(s) directly in {folder!r} were skipped: "
                "identities are read from sub-folders (one folder per person), or "
                f"pass a pattern with a (?P<pid>...) group; e.g. {loose[:3]}.",
                UserWarning,
                stacklevel=4,
            )
    else:
        for rel in _walk_images(folder):
            records.append((os.path.join(folder, *rel.split("/")), None, rel))
    out = []
    for path, pid, rel in records:
        if pattern is None:
            out.append((path, pid, None))
            continue
        match = pattern.search(os.path.basename(path))
        if match is None:
            unmatched.append(rel)
            continue
        groups = match.groupdict()
        out.append((path, groups.get("pid", pid), groups.get("camid")))
    if unmatched:
        if not out:
            raise ValueError(
                f"No image file in {folder!r} matches the pattern {pattern.pattern!r} "
                f"(it is searched in each file name); e.g. {unmatched[:3]}."
            )
        warnings.warn(
            f"{len(unmatched)} image file(s) in {folder!r} do not match the pattern "
            f"{pattern.pattern!r} and were skipped, e.g. {unmatched[:3]}.",
            UserWarning,
            stacklevel=4,
        )
    return out


def _read_csv(csv_path):
    """Records (split, path, raw_pid, raw_camid or None) of a label CSV."""
    base = os.path.dirname(os.path.abspath(csv_path))
    records, missing = [], []
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = columns
        if "path" not in columns or "pid" not in columns:
            raise ValueError(
                f"{csv_path} must have a header with the columns 'path' and 'pid' "
                f"(optionally 'camid' and 'split'); found {columns}."
            )
        for line_no, row in enumerate(reader, start=2):
            path = (row.get("path") or "").strip()
            pid = (row.get("pid") or "").strip()
            camid = (row.get("camid") or "").strip() or None
            split = (row.get("split") or "").strip() or "train"
            if not path or not pid:
                raise ValueError(f"{csv_path}, line {line_no}: empty 'path' or 'pid' in {row}.")
            if split not in _SPLITS:
                raise ValueError(
                    f"{csv_path}, line {line_no}: split must be one of {list(_SPLITS)}, "
                    f"got {split!r}."
                )
            full = os.path.join(base, os.path.expanduser(path))
            if not os.path.isfile(full):
                missing.append(full)
            records.append((split, full, pid, camid))
    if not records:
        raise ValueError(f"{csv_path} has a header but no rows: no image to load.")
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} file(s) listed in {csv_path} do not exist "
            f"(paths are relative to the CSV's folder {base!r}); e.g. {missing[:3]}."
        )
    return records


def load_image_folder(root, pattern=None, *, name=None):
    r"""Load your own re-id images from a folder tree or a CSV file.

    Three ways to give identities (and, optionally, cameras):

    * **file names**: ``pattern`` is a regular expression with a named
      group ``pid`` and optionally ``camid``, searched in every image
      file name under the folder (recursively). For Market-style names
      use ``r"(?P<pid>-?\d+)_c(?P<camid>\d+)"``.
    * **sub-folders** (``pattern`` None or without a ``pid`` group): each
      sub-folder is one person, named by its identity; its images may sit
      in nested folders. A ``pattern`` with only a ``camid`` group reads
      the camera from the file names.
    * **CSV**: ``root`` is a ``.csv`` file with a header and the columns
      ``path,pid`` and optionally ``camid`` and ``split`` (``train``,
      ``query`` or ``gallery``; empty means ``train``). Paths are
      relative to the CSV file's folder.

    How the splits are formed for a folder: if ``root`` has both a
    ``query`` and a ``gallery`` sub-folder, they give the test protocol
    and a ``train`` sub-folder (if present) the training images; other
    entries of ``root`` are then ignored with a warning. Otherwise every
    image under ``root`` is a training image, and the query and gallery
    splits are empty (enough for unsupervised training and annotation).

    Parameters
    ----------
    root : str or path-like
        A folder, or a ``.csv`` label file.
    pattern : str or re.Pattern, default=None
        Regular expression with named groups ``pid`` and/or ``camid``,
        searched (:func:`re.search`) in each file name. Image files it
        does not match are skipped with a warning (an error if none
        matches). Not used with a CSV.
    name : str, default=None
        Dataset name; defaults to the folder (or CSV) name.

    Returns
    -------
    dataset : ReIDDataset
        Image paths sorted by path within each split. Integer identities
        keep their value, identity ``-1`` (junk) is dropped and ``0`` is
        kept (the distractor convention of the public benchmarks);
        identities given as text are numbered 0, 1, ... in sorted order of
        their names, over all splits together. Camera labels are numbered
        0, 1, ... in sorted order (numeric when they are integers, so
        ``c1..c6`` give 0..5); without cameras every camid is ``-1``.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist, or a CSV names missing files.
    ValueError
        If the pattern has neither group or matches no file, only one of
        ``query``/``gallery`` exists, or a CSV is malformed.

    See Also
    --------
    load_market1501 : Read Market-1501.
    load_dukemtmc : Read DukeMTMC-reID.
    load_msmt17 : Read MSMT17.

    Examples
    --------
    >>> import os, tempfile
    >>> from PIL import Image
    >>> from ucal.datasets import load_image_folder
    >>> root = tempfile.mkdtemp()
    >>> for person in ["alice", "bob"]:
    ...     os.makedirs(os.path.join(root, person))
    ...     for cam in [1, 2]:
    ...         path = os.path.join(root, person, f"cam{cam}_001.png")
    ...         Image.new("RGB", (64, 128)).save(path)
    >>> dataset = load_image_folder(root, pattern=r"cam(?P<camid>\d+)_")
    >>> dataset.train.pids.tolist(), dataset.train.camids.tolist()
    ([0, 0, 1, 1], [0, 1, 0, 1])
    >>> len(dataset.query)  # no query/gallery sub-folders: all is train
    0
    """
    root = os.path.expanduser(os.fspath(root))
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {type(name).__name__}.")
    if name is None:
        name = os.path.splitext(os.path.basename(os.path.abspath(root)))[0]

    if os.path.isfile(root):
        if not root.lower().endswith(".csv"):
            raise ValueError(f"root must be a folder or a .csv file, got the file {root!r}.")
        if pattern is not None:
            raise ValueError(
                "pattern is not used with a CSV file: identities come from its 'pid' column."
            )
        records = _read_csv(root)
    elif not os.path.isdir(root):
        raise FileNotFoundError(f"Cannot load images: {root!r} does not exist.")
    else:
        if pattern is not None:
            if isinstance(pattern, str):
                try:
                    pattern = re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"Invalid pattern {pattern!r}: {exc}.") from None
            elif not isinstance(pattern, re.Pattern):
                raise TypeError(
                    f"pattern must be a str or a compiled regex, got {type(pattern).__name__}."
                )
            if not {"pid", "camid"} & set(pattern.groupindex):
                raise ValueError(
                    f"pattern {pattern.pattern!r} needs a named group (?P<pid>...) and/or "
                    "(?P<camid>...)."
                )
        has_query = os.path.isdir(os.path.join(root, "query"))
        has_gallery = os.path.isdir(os.path.join(root, "gallery"))
        if has_query != has_gallery:
            raise ValueError(
                f"{root!r} has a {'query' if has_query else 'gallery'} folder but no "
                f"{'gallery' if has_query else 'query'} folder: a test protocol needs both "
                "(or neither, to load everything as train)."
            )
        if has_query:
            folders = {s: os.path.join(root, s) for s in _SPLITS}
            if not os.path.isdir(folders["train"]):
                del folders["train"]
            ignored = [
                e
                for e in sorted(os.listdir(root))
                if e not in _SPLITS
                and not e.startswith(".")
                and (os.path.isdir(os.path.join(root, e)) or _is_image_file(e))
            ]
            if ignored:
                warnings.warn(
                    f"{root!r} has query/gallery folders, so only 'train', 'query' and "
                    f"'gallery' are read; ignored: {ignored[:5]}"
                    + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "") + ".",
                    UserWarning,
                    stacklevel=2,
                )
        else:
            folders = {"train": root}
        records = [
            (split, path, pid, camid)
            for split, folder in folders.items()
            for path, pid, camid in _scan_split(folder, pattern)
        ]
        if not records:
            raise ValueError(
                f"No image file found under {root!r} (searched the folders "
                f"{sorted(folders)} for {', '.join(IMAGE_EXTENSIONS)} files)."
            )

    pid_codes = _codes([r[2] for r in records], "pid")
    cam_codes = _codes([r[3] for r in records if r[3] is not None], "camid")
    n_junk = 0
    splits = {}
    for split in _SPLITS:
        rows = sorted(
            (path, pid_codes[pid], -1 if camid is None else cam_codes[camid])
            for s, path, pid, camid in records
            if s == split
        )
        kept = [r for r in rows if r[1] != -1]
        n_junk += len(rows) - len(kept)
        splits[split] = ReIDSplit(
            [r[0] for r in kept],
            np.array([r[1] for r in kept], dtype=np.int64),
            np.array([r[2] for r in kept], dtype=np.int64),
            name=split,
        )
    if n_junk:
        logger.info("Dropped %d junk image(s) (pid -1) under %s.", n_junk, root)
    dataset = ReIDDataset(splits["train"], splits["query"], splits["gallery"], name=name)
    logger.info(
        "Loaded %s: %d train, %d query, %d gallery images.",
        root, len(dataset.train), len(dataset.query), len(dataset.gallery),
    )
    return dataset
