"""Reading person images from disk into uint8 RGB arrays."""

import logging
import os
from numbers import Integral, Real

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["IMAGE_EXTENSIONS", "load_images", "read_image"]

logger = logging.getLogger(__name__)

# File name endings treated as images when a folder is scanned.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def _is_image_file(name):
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def read_image(path):
    """Read one image file as an RGB uint8 array.

    Grayscale, palette and RGBA images are converted to RGB (alpha is
    dropped). The whole file is decoded here, so a truncated or corrupt
    file fails now, with its path in the message, rather than later in a
    training loop.

    Parameters
    ----------
    path : str or path-like
        Image file readable by Pillow (JPEG, PNG, BMP, ...).

    Returns
    -------
    image : ndarray of shape (height, width, 3), dtype uint8
        The pixels in RGB order.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist or is not a file.
    OSError
        If the file exists but cannot be decoded as an image (corrupt,
        truncated, not an image, or not readable).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from ucal.datasets import read_image
    >>> path = os.path.join(tempfile.mkdtemp(), "person.png")
    >>> Image.new("RGB", (64, 128), (200, 30, 30)).save(path)
    >>> image = read_image(path)
    >>> image.shape, image.dtype, image[0, 0].tolist()
    ((128, 64, 3), dtype('uint8'), [200, 30, 30])
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Image file not found: {path!r}.")
    try:
        with Image.open(path) as img:
            # convert() forces a full decode: truncated files fail here.
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise OSError(
            f"Cannot read image {path!r}: the file is corrupt, truncated or not "
            f"an image ({type(exc).__name__}: {exc})."
        ) from exc
    return array


def resize_image(image, size):
    """Resize an HxWx3 uint8 array to ``size = (height, width)`` (bilinear); no copy when equal."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    resized = Image.fromarray(image).resize((width, height), Image.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def check_image_size(size, *, name="size", minimum=(1, 1), whole_floats=False):
    """``size = (height, width)`` as a tuple of ints, or a ValueError naming ``name``.

    Parameters
    ----------
    size : pair of int
        The size to check.
    name : str, default="size"
        The argument's name, used in the messages.
    minimum : pair of int, default=(1, 1)
        The smallest height and width accepted.
    whole_floats : bool, default=False
        Also accept floats with no fractional part (``128.0``).

    Returns
    -------
    size : tuple of (int, int)
    """
    try:
        height, width = size
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (height, width) of ints, got {size!r}.") from None
    kind = Real if whole_floats else Integral
    if not all(
        isinstance(v, kind) and not isinstance(v, bool) and float(v).is_integer()
        for v in (height, width)
    ):
        raise ValueError(f"{name} must be a pair (height, width) of ints, got {size!r}.")
    if height < minimum[0] or width < minimum[1]:
        raise ValueError(
            f"{name} must be at least {tuple(minimum)} (height, width), got {size!r}."
        )
    return int(height), int(width)


def load_images(split_or_paths, size=None):
    """Read a whole set of images into one uint8 array.

    Used for path-based data (the public loaders return file paths): the
    images are decoded, optionally resized, and stacked.

    Parameters
    ----------
    split_or_paths : ReIDSplit, sequence of str, or ndarray
        A :class:`~ucal.datasets.ReIDSplit` (its ``images``), a list of
        image paths, or an array of shape (n_images, height, width, 3)
        of dtype uint8 that is returned as is (resized if ``size`` is
        given).
    size : tuple (height, width) or None, default=None
        Resize every image to this size (bilinear). When None, all
        images must already have the same size.

    Returns
    -------
    images : ndarray of shape (n_images, height, width, 3), dtype uint8
        The images, in the input order.

    Raises
    ------
    FileNotFoundError, OSError
        From :func:`read_image`, naming the file that failed.
    ValueError
        If ``size`` is None and the images differ in size.

    Examples
    --------
    >>> import os, tempfile
    >>> from PIL import Image
    >>> from ucal.datasets import load_images
    >>> folder = tempfile.mkdtemp()
    >>> paths = [os.path.join(folder, f"{i}.png") for i in range(3)]
    >>> for i, p in enumerate(paths):
    ...     Image.new("RGB", (40 + i, 90), (i, i, i)).save(p)
    >>> load_images(paths, size=(128, 64)).shape
    (3, 128, 64, 3)
    """
    from ._base import ReIDSplit  # local import: _base imports this module

    size = None if size is None else check_image_size(size, whole_floats=True)
    images = split_or_paths.images if isinstance(split_or_paths, ReIDSplit) else split_or_paths
    if isinstance(images, np.ndarray) and images.ndim == 4:
        if images.dtype != np.uint8 or images.shape[-1] != 3:
            raise ValueError(
                "An image array must have dtype uint8 and shape (n_images, "
                f"height, width, 3); got dtype {images.dtype} and shape {images.shape}."
            )
        if size is None or images.shape[1:3] == size:
            return images
        return np.stack([resize_image(im, size) for im in images]) if len(images) else (
            np.empty((0, *size, 3), dtype=np.uint8)
        )
    if isinstance(images, np.ndarray) and images.dtype.kind not in "USO":
        raise ValueError(
            "An image array must have shape (n_images, height, width, 3); got "
            f"shape {images.shape}."
        )
    if isinstance(images, (str, os.PathLike)):
        raise TypeError(
            "load_images expects a sequence of paths, not a single path "
            f"({images!r}); use read_image for one file."
        )
    paths = [os.fspath(p) for p in images]
    if not paths:
        if size is None:
            raise ValueError("Cannot infer the image size of an empty list; pass size=.")
        return np.empty((0, *size, 3), dtype=np.uint8)
    first = read_image(paths[0])
    shape = size if size is not None else first.shape[:2]
    out = np.empty((len(paths), *shape, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        image = first if i == 0 else read_image(path)
        if size is not None:
            image = resize_image(image, size)
        elif image.shape[:2] != shape:
            raise ValueError(
                f"Images differ in size: {paths[0]!r} is {shape[0]}x{shape[1]} but "
                f"{path!r} is {image.shape[0]}x{image.shape[1]} (height x width); "
                "pass size=(height, width) to resize them."
            )
        out[i] = image
    logger.debug("Read %d images of size %dx%d.", len(paths), *shape)
    return out
