"""Loaders for the public re-id benchmarks in their published folder layouts.

Only file names and list files are read: images are decoded later, by
:func:`~ucal.datasets.read_image` / :func:`~ucal.datasets.load_images`.
"""

import logging
import os
import re
import warnings

import numpy as np

from ._base import ReIDDataset, ReIDSplit
from ._io import _is_image_file

__all__ = ["load_dukemtmc", "load_market1501", "load_msmt17"]

logger = logging.getLogger(__name__)

# "0002_c1s1_000451_03.jpg" (Market) and "0005_c2_f0046985.jpg" (Duke).
_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")
_MARKET_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")


def _listing(folder, limit=12):
    """Short, sorted description of what a folder holds, for error messages."""
    try:
        entries = sorted(os.listdir(folder))
    except OSError as exc:
        return f"(cannot list: {exc})"
    if not entries:
        return "nothing (empty folder)"
    shown = [e + ("/" if os.path.isdir(os.path.join(folder, e)) else "") for e in entries[:limit]]
    more = f", ... ({len(entries) - limit} more)" if len(entries) > limit else ""
    return ", ".join(shown) + more


def _check_root(root, label):
    root = os.path.expanduser(os.fspath(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Cannot load {label}: the root {root!r} does not exist or is not a folder."
        )
    return root


def _find_dataset_dir(root, dataset_dirs, has_layout, expected, label):
    """Return the folder holding the layout: ``root`` itself or ``root/<name>``.

    ``has_layout(folder)`` tells whether a folder holds the layout and
    ``expected`` describes it for the error message.
    """
    root = _check_root(root, label)
    found = [os.path.join(root, d) for d in dataset_dirs if has_layout(os.path.join(root, d))]
    if len(found) > 1:
        raise ValueError(
            f"Cannot load {label}: {root!r} holds several versions "
            f"({', '.join(os.path.basename(f) for f in found)}); pass the one you "
            "want as root."
        )
    if found:
        return found[0]
    if has_layout(root):
        return root
    looked = " or ".join(repr(os.path.join(root, d)) for d in dataset_dirs)
    message = [
        f"Cannot load {label}: expected {expected} in {root!r} or in {looked}.",
        f"Found in {root!r}: {_listing(root)}.",
    ]
    for d in dataset_dirs:
        candidate = os.path.join(root, d)
        if os.path.isdir(candidate):
            message.append(f"Found in {candidate!r}: {_listing(candidate)}.")
    raise FileNotFoundError(" ".join(message))


def _scan_market_folder(folder):
    """(paths, pids, camids) of the images in one Market/Duke-style folder.

    Junk images (pid -1) are dropped; cameras are counted from 0.
    """
    names = sorted(n for n in os.listdir(folder) if _is_image_file(n))
    paths, pids, camids, unparsed = [], [], [], []
    n_junk = 0
    for name in names:
        match = _MARKET_NAME.match(name)
        if match is None:
            unparsed.append(name)
            continue
        pid, cam = int(match.group(1)), int(match.group(2))
        if pid == -1:
            n_junk += 1
            continue
        if pid < -1:
            raise ValueError(
                f"Invalid person id {pid} in the file name {os.path.join(folder, name)!r}."
            )
        if cam < 1:
            raise ValueError(
                f"Invalid camera c{cam} in the file name {os.path.join(folder, name)!r}: "
                "cameras are numbered from c1."
            )
        paths.append(os.path.join(folder, name))
        pids.append(pid)
        camids.append(cam - 1)
    if unparsed:
        warnings.warn(
            f"{len(unparsed)} image file(s) in {folder!r} do not follow the "
            f"'PPPP_cC...' naming and were skipped, e.g. {unparsed[:3]}.",
            UserWarning,
            stacklevel=3,
        )
    if n_junk:
        logger.info("Dropped %d junk image(s) (pid -1) in %s.", n_junk, folder)
    return paths, np.array(pids, dtype=np.int64), np.array(camids, dtype=np.int64)


def _load_market_layout(root, dataset_dir, label, name):
    def has_layout(folder):
        return all(os.path.isdir(os.path.join(folder, f)) for f in _MARKET_FOLDERS)

    folder = _find_dataset_dir(
        root,
        [dataset_dir],
        has_layout,
        "the folders " + ", ".join(f"'{f}'" for f in _MARKET_FOLDERS),
        label,
    )
    splits = []
    for sub, split_name in zip(_MARKET_FOLDERS, ("train", "query", "gallery")):
        paths, pids, camids = _scan_market_folder(os.path.join(folder, sub))
        splits.append(ReIDSplit(paths, pids, camids, name=split_name))
    dataset = ReIDDataset(*splits, name=name)
    logger.info(
        "Loaded %s from %s: %d train, %d query, %d gallery images.",
        label, folder, len(splits[0]), len(splits[1]), len(splits[2]),
    )
    return dataset


def load_market1501(root):
    """Load Market-1501 from its published folder layout.

    Parameters
    ----------
    root : str or path-like
        The ``Market-1501-v15.09.15`` folder, or the folder that contains
        it. It must hold ``bounding_box_train`` (train),
        ``query`` and ``bounding_box_test`` (gallery).

    Returns
    -------
    dataset : ReIDDataset
        Splits of image paths sorted by file name, with the identity and
        camera parsed from names like ``0002_c1s1_000451_03.jpg``
        (identity ``2``, camera ``c1`` -> ``0``). Junk images (identity
        ``-1``) are dropped; distractors (identity ``0``) are kept in the
        gallery. The full dataset gives 12,936 train, 3,368 query and
        15,913 gallery images.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not hold the layout; the message lists what was
        looked for and what was found.

    See Also
    --------
    load_dukemtmc : The same layout for DukeMTMC-reID.
    load_msmt17 : Read MSMT17.
    load_image_folder : Read your own images.
    save_market1501 : Write a dataset in this layout.

    Notes
    -----
    Images are not opened here (loading is fast); an unreadable file is
    reported, with its path, when it is read by
    :func:`~ucal.datasets.load_images`. Image files whose names do not
    follow the pattern are skipped with a warning.

    Examples
    --------
    >>> import tempfile
    >>> from ucal.datasets import load_market1501, make_persons, save_market1501
    >>> root = tempfile.mkdtemp()
    >>> small = make_persons(n_identities=4, n_test_identities=2, random_state=0)
    >>> _ = save_market1501(small, root)
    >>> dataset = load_market1501(root)
    >>> len(dataset.query) == len(small.query)
    True
    >>> dataset.train[0][1:]  # (pid, camid) of the first train image
    (1, 0)
    """
    return _load_market_layout(root, "Market-1501-v15.09.15", "Market-1501", "market1501")


def load_dukemtmc(root):
    """Load DukeMTMC-reID from its published folder layout.

    Parameters
    ----------
    root : str or path-like
        The ``DukeMTMC-reID`` folder, or the folder that contains it. It
        must hold ``bounding_box_train`` (train), ``query`` and
        ``bounding_box_test`` (gallery).

    Returns
    -------
    dataset : ReIDDataset
        Splits of image paths sorted by file name, with the identity and
        camera parsed from names like ``0005_c2_f0046985.jpg`` (identity
        ``5``, camera ``c2`` -> ``1``; 8 cameras). Junk images (identity
        ``-1``) are dropped, distractors (identity ``0``) kept. The full
        dataset gives 16,522 train, 2,228 query and 17,661 gallery images.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not hold the layout; the message lists what was
        looked for and what was found.

    See Also
    --------
    load_market1501 : The same layout for Market-1501.
    load_msmt17 : Read MSMT17.
    load_image_folder : Read your own images.

    Examples
    --------
    >>> import os, tempfile
    >>> from PIL import Image
    >>> from ucal.datasets import load_dukemtmc
    >>> root = os.path.join(tempfile.mkdtemp(), "DukeMTMC-reID")
    >>> for sub, name in [("bounding_box_train", "0001_c1_f0000001.jpg"),
    ...                   ("query", "0005_c2_f0046985.jpg"),
    ...                   ("bounding_box_test", "0005_c3_f0047000.jpg")]:
    ...     os.makedirs(os.path.join(root, sub))
    ...     Image.new("RGB", (64, 128)).save(os.path.join(root, sub, name))
    >>> dataset = load_dukemtmc(os.path.dirname(root))  # the parent works too
    >>> dataset.query[0][1:]
    (5, 1)
    """
    return _load_market_layout(root, "DukeMTMC-reID", "DukeMTMC-reID", "dukemtmc")


# MSMT17 releases differ only in the image folder names.
_MSMT_VERSIONS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}


def _msmt_folders(folder):
    """(train_dir, test_dir) names present in ``folder``, or None."""
    for train_dir, test_dir in _MSMT_VERSIONS.values():
        if os.path.isdir(os.path.join(folder, train_dir)) and os.path.isdir(
            os.path.join(folder, test_dir)
        ):
            return train_dir, test_dir
    return None


def _read_msmt_list(list_path, image_dir):
    """Parse an MSMT17 list file: lines ``relative/path.jpg pid``."""
    paths, pids, camids = [], [], []
    n_junk = 0
    with open(list_path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(None, 1)
            try:
                if len(parts) != 2:
                    raise ValueError("expected 'path pid'")
                rel_path, pid = parts[0], int(parts[1])
                # camera = third underscore field of the file name, from 1.
                cam = int(os.path.basename(rel_path).split("_")[2])
            except (ValueError, IndexError) as exc:
                raise ValueError(
                    f"{list_path}, line {line_no}: cannot parse {line!r} ({exc}); MSMT17 "
                    "list lines look like '0000/0000_000_01_0303morning_0015_0.jpg 0'."
                ) from None
            if pid == -1:
                n_junk += 1
                continue
            if cam < 1:
                raise ValueError(
                    f"{list_path}, line {line_no}: camera {cam} in {rel_path!r}; cameras "
                    "are numbered from 1."
                )
            paths.append(os.path.join(image_dir, *rel_path.split("/")))
            pids.append(pid)
            camids.append(cam - 1)
    if paths and not os.path.isfile(paths[0]):
        raise FileNotFoundError(
            f"{list_path} names {paths[0]!r}, which does not exist: the list and "
            f"the image folder {image_dir!r} do not match (mixed MSMT17 versions?)."
        )
    if n_junk:
        logger.info("Dropped %d junk entries (pid -1) of %s.", n_junk, list_path)
    return paths, pids, camids


def load_msmt17(root, *, combine_train_val=True):
    """Load MSMT17 (V1 or V2) from its published folder layout.

    Parameters
    ----------
    root : str or path-like
        The ``MSMT17_V1`` or ``MSMT17_V2`` folder, or the folder that
        contains one of them. It must hold the list files
        ``list_train.txt``, ``list_val.txt``, ``list_query.txt``,
        ``list_gallery.txt`` and the image folders ``train`` and ``test``
        (V1) or ``mask_train_v2`` and ``mask_test_v2`` (V2).
    combine_train_val : bool, default=True
        Train on ``list_train.txt`` plus ``list_val.txt`` (32,621 images,
        the usual unsupervised setting and the paper's). When False only
        ``list_train.txt`` is loaded (30,248 images) and the validation
        list is not read.

    Returns
    -------
    dataset : ReIDDataset
        Splits of image paths sorted by path. Each list line is
        ``relative/path.jpg pid``; the camera is the third underscore
        field of the file name minus 1 (``0000_000_01_...`` -> ``0``; 15
        cameras). MSMT17 numbers its identities from 0 and has no
        distractors: identity ``0`` is a real person here. Entries with
        identity ``-1`` would be dropped as junk. The full dataset gives
        11,659 query and 82,161 gallery images.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not hold the layout (the message lists what was
        looked for and what was found), or if a list names files absent
        from the image folder.
    ValueError
        If a list line cannot be parsed (file and line are named).

    See Also
    --------
    load_market1501 : Read Market-1501.
    load_dukemtmc : Read DukeMTMC-reID.
    load_image_folder : Read your own images.

    Examples
    --------
    >>> import os, tempfile
    >>> from PIL import Image
    >>> from ucal.datasets import load_msmt17
    >>> root = os.path.join(tempfile.mkdtemp(), "MSMT17_V2")
    >>> entries = {"train": ["0000/0000_000_01_0303morning_0015_0.jpg 0"],
    ...            "val": ["0001/0001_004_03_0303morning_0020_1.jpg 1"],
    ...            "query": ["0000/0000_012_05_0303noon_0100_0.jpg 0"],
    ...            "gallery": ["0000/0000_013_07_0303noon_0111_1.jpg 0"]}
    >>> for split, lines in entries.items():
    ...     folder = "mask_train_v2" if split in ("train", "val") else "mask_test_v2"
    ...     for line in lines:
    ...         path = os.path.join(root, folder, line.split()[0])
    ...         os.makedirs(os.path.dirname(path), exist_ok=True)
    ...         Image.new("RGB", (64, 128)).save(path)
    ...     with open(os.path.join(root, f"list_{split}.txt"), "w") as f:
    ...         _ = f.write("\\n".join(lines) + "\\n")
    >>> dataset = load_msmt17(root)
    >>> len(dataset.train), dataset.query.camids.tolist()
    (2, [4])
    """
    if not isinstance(combine_train_val, (bool, np.bool_)):
        raise TypeError(f"combine_train_val must be a bool, got {combine_train_val!r}.")
    lists = ["list_train.txt", "list_query.txt", "list_gallery.txt"]
    if combine_train_val:
        lists.insert(1, "list_val.txt")

    def has_layout(folder):
        return _msmt_folders(folder) is not None and all(
            os.path.isfile(os.path.join(folder, f)) for f in lists
        )

    expected = (
        "the list files " + ", ".join(f"'{f}'" for f in lists)
        + " with the image folders 'train' and 'test' (V1) or 'mask_train_v2' "
        "and 'mask_test_v2' (V2)"
    )
    if combine_train_val:
        expected += " (list_val.txt is needed only with combine_train_val=True)"
    folder = _find_dataset_dir(root, list(_MSMT_VERSIONS), has_layout, expected, "MSMT17")
    train_dir, test_dir = (os.path.join(folder, d) for d in _msmt_folders(folder))

    def split(list_names, image_dir, split_name):
        paths, pids, camids = [], [], []
        for list_name in list_names:
            p, i, c = _read_msmt_list(os.path.join(folder, list_name), image_dir)
            paths += p
            pids += i
            camids += c
        order = sorted(range(len(paths)), key=paths.__getitem__)
        return ReIDSplit(
            [paths[k] for k in order],
            np.array(pids, dtype=np.int64)[order] if order else np.empty(0, np.int64),
            np.array(camids, dtype=np.int64)[order] if order else np.empty(0, np.int64),
            name=split_name,
        )

    train_lists = ["list_train.txt"] + (["list_val.txt"] if combine_train_val else [])
    dataset = ReIDDataset(
        split(train_lists, train_dir, "train"),
        split(["list_query.txt"], test_dir, "query"),
        split(["list_gallery.txt"], test_dir, "gallery"),
        name="msmt17",
    )
    logger.info(
        "Loaded MSMT17 from %s: %d train, %d query, %d gallery images.",
        folder, len(dataset.train), len(dataset.query), len(dataset.gallery),
    )
    return dataset
