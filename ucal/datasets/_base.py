"""Containers for re-id data: a split (images, identities, cameras) and a dataset."""

import numbers
import os

import numpy as np

__all__ = ["ReIDDataset", "ReIDSplit"]


def _count(n, singular, plural):
    return f"{n} {singular if n == 1 else plural}"


def _as_int_array(values, what, n=None):
    """1-D int64 copy of ``values``, with clear errors for anything else."""
    array = np.asarray(values)
    if array.size == 0:
        array = array.astype(np.int64).reshape(-1)
    if array.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got an array of shape {array.shape}.")
    if array.dtype.kind not in "iu":
        raise TypeError(
            f"{what} must contain integers, got dtype {array.dtype}"
            + (f" (first value {array[0]!r})." if array.size else ".")
        )
    if n is not None and array.shape[0] != n:
        raise ValueError(f"{what} has {array.shape[0]} entries but there are {n} images.")
    return np.array(array, dtype=np.int64)


class ReIDSplit:
    """One split of a re-id dataset: images with identity and camera labels.

    Parameters
    ----------
    images : list of str or ndarray of shape (n_images, height, width, 3)
        Either image file paths (decoded later, see
        :func:`~ucal.datasets.load_images`) or the pixels themselves as a
        uint8 RGB array.
    pids : array-like of int of shape (n_images,)
        Person identity of each image. In the public benchmarks ``0``
        marks a distractor (a gallery image of nobody in the query set).
    camids : array-like of int of shape (n_images,), default=None
        Camera of each image, counted from 0; ``-1`` means unknown. None
        means no camera is known (``-1`` everywhere).
    name : str, default=""
        A label shown in the ``repr`` (e.g. ``"train"``).

    Attributes
    ----------
    images : list of str or ndarray of shape (n_images, height, width, 3)
        The images as given (paths are converted to ``str``).
    pids : ndarray of shape (n_images,), dtype int64
        Identities.
    camids : ndarray of shape (n_images,), dtype int64
        Cameras (``-1`` = unknown).
    name : str
        The split's label.

    See Also
    --------
    ReIDDataset : Train, query and gallery splits together.

    Notes
    -----
    ``split[i]`` returns ``(image, pid, camid)`` where ``image`` is the
    path or the (height, width, 3) array; a slice, an integer array or a
    boolean mask returns a new :class:`ReIDSplit`. Iterating yields the
    ``(image, pid, camid)`` tuples.

    Examples
    --------
    >>> import numpy as np
    >>> from ucal.datasets import ReIDSplit
    >>> images = np.zeros((4, 128, 64, 3), dtype=np.uint8)
    >>> split = ReIDSplit(images, pids=[1, 1, 2, 2], camids=[0, 1, 0, 1], name="train")
    >>> split
    ReIDSplit('train', 4 images (in memory, 128x64), 2 identities, 2 cameras)
    >>> image, pid, camid = split[2]
    >>> image.shape, pid, camid
    ((128, 64, 3), 2, 0)
    >>> split[split.pids == 1]
    ReIDSplit('train', 2 images (in memory, 128x64), 1 identity, 2 cameras)
    """

    def __init__(self, images, pids, camids=None, name=""):
        if isinstance(images, np.ndarray) and images.dtype.kind not in "USO":
            if images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(
                    "An images array must have shape (n_images, height, width, 3); "
                    f"got shape {images.shape}."
                )
            if images.dtype != np.uint8:
                raise TypeError(
                    f"An images array must have dtype uint8, got {images.dtype}; "
                    "convert it with np.clip(x, 0, 255).astype(np.uint8)."
                )
        elif isinstance(images, (str, os.PathLike)):
            raise TypeError(
                f"images must be a list of paths or a uint8 array, not a single path {images!r}."
            )
        else:
            try:
                images = [str(os.fspath(p)) for p in images]
            except TypeError:
                raise TypeError(
                    "images must be a list of file paths (str) or a uint8 array of "
                    f"shape (n_images, height, width, 3), got {type(images).__name__} "
                    "containing something that is not a path."
                ) from None
        n = len(images)
        self.images = images
        self.pids = _as_int_array(pids, "pids", n)
        if camids is None:
            self.camids = np.full(n, -1, dtype=np.int64)
        else:
            self.camids = _as_int_array(camids, "camids", n)
            if self.camids.size and self.camids.min() < -1:
                raise ValueError(
                    "camids must be >= 0, or -1 for an unknown camera; got "
                    f"{int(self.camids.min())}."
                )
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}.")
        self.name = name

    @property
    def in_memory(self):
        """Whether ``images`` is a pixel array (True) or file paths (False)."""
        return isinstance(self.images, np.ndarray)

    @property
    def n_identities(self):
        """Number of distinct ``pids`` (a distractor pid 0 counts as one)."""
        return int(np.unique(self.pids).size)

    @property
    def n_cameras(self):
        """Number of distinct known cameras (``-1`` is not counted)."""
        return int(np.unique(self.camids[self.camids >= 0]).size)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        if isinstance(index, numbers.Integral) and not isinstance(index, bool):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"index {index} is out of range for a split of {n} images.")
            return self.images[index], int(self.pids[index]), int(self.camids[index])
        if isinstance(index, slice):
            positions = np.arange(len(self))[index]
        else:
            positions = np.asarray(index)
            if positions.dtype == bool:
                if positions.shape != (len(self),):
                    raise IndexError(
                        f"A boolean mask must have shape ({len(self)},), got {positions.shape}."
                    )
                positions = np.flatnonzero(positions)
            elif positions.size == 0:
                positions = positions.astype(np.int64).reshape(-1)
            elif positions.dtype.kind not in "iu" or positions.ndim != 1:
                raise IndexError(
                    "A split is indexed by an int, a slice, a 1-D int array or a "
                    f"boolean mask; got {type(index).__name__}."
                )
        if self.in_memory:
            images = self.images[positions]
        else:
            images = [self.images[i] for i in positions]
        return ReIDSplit(images, self.pids[positions], self.camids[positions], self.name)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self):
        if self.in_memory:
            kind = f"in memory, {self.images.shape[1]}x{self.images.shape[2]}"
        else:
            kind = "paths"
        n_cams = self.n_cameras
        cameras = _count(n_cams, "camera", "cameras") if n_cams else "no cameras"
        return (
            f"ReIDSplit({self.name!r}, {_count(len(self), 'image', 'images')} ({kind}), "
            f"{_count(self.n_identities, 'identity', 'identities')}, {cameras})"
        )


class ReIDDataset:
    """A re-id dataset: a training split and a query/gallery test protocol.

    Parameters
    ----------
    train : ReIDSplit
        Training images (their identities are hidden from unsupervised
        methods; they serve for evaluation of clusters and for oracles).
    query : ReIDSplit
        Query (probe) images of the test protocol.
    gallery : ReIDSplit
        Gallery images searched for each query.
    name : str, default=""
        Dataset name shown in the ``repr``.

    Attributes
    ----------
    train, query, gallery : ReIDSplit
        The three splits.
    name : str
        The dataset name.

    See Also
    --------
    load_market1501 : Read Market-1501.
    load_dukemtmc : Read DukeMTMC-reID.
    load_msmt17 : Read MSMT17.
    load_image_folder : Read your own images.
    make_persons : Generate synthetic persons.

    Examples
    --------
    >>> from ucal.datasets import ReIDDataset, ReIDSplit
    >>> train = ReIDSplit(["a.jpg", "b.jpg"], [1, 1], [0, 1], name="train")
    >>> query = ReIDSplit(["q.jpg"], [7], [0], name="query")
    >>> gallery = ReIDSplit(["g.jpg", "h.jpg"], [7, 0], [1, 2], name="gallery")
    >>> print(ReIDDataset(train, query, gallery, name="toy"))
    ReIDDataset('toy')
      train:   2 images, 1 identity, 2 cameras (paths)
      query:   1 image, 1 identity, 1 camera (paths)
      gallery: 2 images, 2 identities, 2 cameras (paths)
    """

    def __init__(self, train, query, gallery, name=""):
        for split_name, split in (("train", train), ("query", query), ("gallery", gallery)):
            if not isinstance(split, ReIDSplit):
                raise TypeError(
                    f"{split_name} must be a ReIDSplit, got {type(split).__name__}."
                )
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}.")
        self.train = train
        self.query = query
        self.gallery = gallery
        self.name = name

    def __repr__(self):
        lines = [f"ReIDDataset({self.name!r})"]
        width = max(len(str(len(s))) for s in (self.train, self.query, self.gallery))
        for label in ("train", "query", "gallery"):
            split = getattr(self, label)
            kind = (
                f"in memory, {split.images.shape[1]}x{split.images.shape[2]}"
                if split.in_memory
                else "paths"
            )
            images = "image" if len(split) == 1 else "images"
            cameras = (
                _count(split.n_cameras, "camera", "cameras") if split.n_cameras else "no cameras"
            )
            lines.append(
                f"  {label + ':':<8} {len(split):>{width}} {images}, "
                f"{_count(split.n_identities, 'identity', 'identities')}, {cameras} ({kind})"
            )
        return "\n".join(lines)
