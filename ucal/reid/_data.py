"""Image inputs, SpCL's augmentations (batched) and the pseudo-identity sampler."""

import hashlib
import os

import numpy as np
import torch
from PIL import Image

from ucal.datasets._io import check_image_size as _check_size
from ucal.datasets._io import resize_image

__all__ = ["BatchAugmenter", "PseudoIdentitySampler", "as_image_source", "iter_batches"]

# ImageNet statistics, used by torchvision's weights and by SpCL.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def _to_hwc_uint8(item, where):
    """Convert one dataset item (PIL image, array or tensor) to an HxWx3 uint8 array."""
    if isinstance(item, (tuple, list)) and item:
        item = item[0]  # (image, target, ...) items: keep the image
    if isinstance(item, Image.Image):
        return np.asarray(item.convert("RGB"), dtype=np.uint8)
    if isinstance(item, torch.Tensor):
        tensor = item.detach().cpu()
        if tensor.dim() != 3 or tensor.shape[0] != 3:
            raise ValueError(
                f"{where}: an image tensor must have shape (3, height, width), got "
                f"{tuple(tensor.shape)}."
            )
        if tensor.is_floating_point():
            if not torch.isfinite(tensor).all():
                raise ValueError(f"{where}: the image tensor holds NaN or infinite values.")
            low, high = float(tensor.min()), float(tensor.max())
            if low < -1e-3 or high > 1 + 1e-3:
                raise ValueError(
                    f"{where}: a float image tensor must hold values in [0, 1], got "
                    f"[{low:g}, {high:g}]"
                    + ("; divide 0-255 pixels by 255." if high > 1.5 else ".")
                )
            tensor = (tensor.clamp(0, 1) * 255).round()
        return tensor.to(torch.uint8).permute(1, 2, 0).numpy()
    if isinstance(item, np.ndarray):
        if item.ndim != 3 or item.shape[-1] != 3:
            raise ValueError(
                f"{where}: an image array must have shape (height, width, 3), got {item.shape}."
            )
        if item.dtype != np.uint8:
            raise TypeError(f"{where}: an image array must have dtype uint8, got {item.dtype}.")
        return item
    raise TypeError(
        f"{where}: expected a PIL image, a uint8 array (H, W, 3) or a tensor (3, H, W), "
        f"got {type(item).__name__}."
    )


class ImageSource(torch.utils.data.Dataset):
    """Uniform access to the accepted image inputs, resized to ``size``.

    ``load(indices)`` returns a uint8 tensor (B, 3, H, W); the class is also
    a torch ``Dataset`` (one image per item) so that a ``DataLoader`` with
    workers can decode files in parallel.
    """

    def __init__(self, kind, images, size, camids=None):
        self.kind = kind
        self.images = images
        self.size = tuple(size)
        self.camids = camids

    def __len__(self):
        return len(self.images)

    def _get(self, index):
        if self.kind == "array":
            image = self.images[index]
        elif self.kind == "paths":
            from ucal.datasets import read_image

            image = read_image(self.images[index])
        else:
            image = _to_hwc_uint8(self.images[index], f"X[{index}]")
        return resize_image(image, self.size)

    def __getitem__(self, index):
        image = np.require(self._get(int(index)), requirements=["C", "W"])
        return torch.from_numpy(image).permute(2, 0, 1)

    def subset(self, indices):
        """A source of the images at ``indices`` (in that order)."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.kind == "array":
            images = self.images[indices]
        elif self.kind == "paths":
            images = [self.images[i] for i in indices]
        else:
            images = torch.utils.data.Subset(self.images, indices.tolist())
        camids = None if self.camids is None else self.camids[indices]
        return ImageSource(self.kind, images, self.size, camids)

    def fingerprint(self, n_images=64):
        """A digest of the images' content, cheap at any size.

        Covers the number of images, their cameras, the file names (for
        paths) and the content of ``n_images`` images spread evenly over the
        set (first and last included): the file bytes for paths (so that
        another image decoder does not change it), the pixels otherwise.
        The same images in another order, other images of the same count,
        or every image flipped or re-encoded give another digest. A change
        to a few images between the sampled ones is not seen. For a torch
        Dataset, whose items may change from one read to the next (random
        transforms), only the count and the cameras are covered.
        """
        digest = hashlib.blake2b(digest_size=16)
        n = len(self)
        digest.update(f"{n} {self.size}".encode())
        if self.camids is not None:
            digest.update(np.ascontiguousarray(self.camids, dtype=np.int64).tobytes())
        if self.kind == "paths":
            digest.update("\n".join(os.path.basename(p) for p in self.images).encode())
        if self.kind == "dataset":
            # its items may change from one read to the next (random transforms)
            return digest.hexdigest()
        sampled = np.unique(np.linspace(0, n - 1, min(n, n_images)).round().astype(int))
        for index in sampled:
            if self.kind == "paths":
                with open(self.images[index], "rb") as f:
                    digest.update(f.read())
            elif self.kind == "array":
                digest.update(np.ascontiguousarray(self.images[index]).tobytes())
            else:
                digest.update(np.ascontiguousarray(self._get(int(index))).tobytes())
        return digest.hexdigest()

    def load(self, indices):
        if self.kind == "array" and self.images.shape[1:3] == self.size:
            batch = torch.from_numpy(self.images[np.asarray(indices)])
            return batch.permute(0, 3, 1, 2)
        return torch.stack([self[i] for i in indices])


def as_image_source(X, size, *, name="X"):
    """Validate ``X`` and wrap it as an :class:`ImageSource`.

    Accepted: a :class:`~ucal.datasets.ReIDSplit`, a list of image paths, a
    uint8 array (N, H, W, 3), or a torch ``Dataset`` whose items are PIL
    images, uint8 arrays (H, W, 3), tensors (3, H, W) (floats in [0, 1]) or
    tuples starting with one of these.
    """
    from ucal.datasets import ReIDDataset, ReIDSplit

    camids = None
    if isinstance(X, ReIDDataset):
        raise TypeError(
            f"{name} is a whole ReIDDataset; pass one of its splits, e.g. dataset.train."
        )
    if isinstance(X, ReIDSplit):
        if np.any(X.camids >= 0):
            camids = X.camids
        X = X.images
    if isinstance(X, torch.utils.data.Dataset) and not isinstance(X, ImageSource):
        try:
            n = len(X)
        except TypeError:
            raise TypeError(f"{name}: a torch Dataset must define __len__.") from None
        if n == 0:
            raise ValueError(f"{name} is empty: at least one image is needed.")
        _to_hwc_uint8(X[0], f"{name}[0]")  # fail now on unusable items
        return ImageSource("dataset", X, size, camids)
    if isinstance(X, torch.Tensor):
        raise TypeError(
            f"{name} is a torch Tensor; pass a uint8 numpy array (N, H, W, 3) or a "
            "torch Dataset of images."
        )
    if isinstance(X, np.ndarray) and X.dtype.kind not in "USO":
        if X.ndim != 4 or X.shape[-1] != 3:
            raise ValueError(
                f"{name} must be an image array of shape (n_images, height, width, 3), "
                f"got shape {X.shape}."
            )
        if X.dtype != np.uint8:
            raise TypeError(
                f"{name} must have dtype uint8 (RGB pixels 0-255), got {X.dtype}; convert "
                "with np.clip(X, 0, 255).astype(np.uint8)."
            )
        if X.shape[0] == 0:
            raise ValueError(f"{name} is empty: at least one image is needed.")
        return ImageSource("array", X, size, camids)
    if isinstance(X, (str, os.PathLike)):
        raise TypeError(f"{name} is a single path {X!r}; pass a list of image paths.")
    try:
        paths = [os.fspath(p) for p in X]
    except TypeError:
        raise TypeError(
            f"{name} must be a ReIDSplit, a list of image paths, a uint8 array "
            "(n_images, height, width, 3) or a torch Dataset of images; got "
            f"{type(X).__name__}."
        ) from None
    if not paths:
        raise ValueError(f"{name} is empty: at least one image is needed.")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(paths)} image files in {name} do not exist, "
            f"e.g. {missing[0]!r}."
        )
    return ImageSource("paths", paths, size, camids)


def iter_batches(source, batches, num_workers=0):
    """Yield ``(indices, uint8 batch)`` for each index array in ``batches``.

    With ``num_workers > 0`` and file or dataset inputs, images are decoded
    by a ``DataLoader`` in worker processes while the model trains.
    """
    batches = [np.asarray(b) for b in batches]
    if num_workers and source.kind != "array":
        loader = torch.utils.data.DataLoader(
            source,
            batch_sampler=[b.tolist() for b in batches],
            num_workers=num_workers,
            collate_fn=torch.stack,
            persistent_workers=False,
        )
        yield from zip(batches, loader)
    else:
        for b in batches:
            yield b, source.load(b)


class BatchAugmenter:
    """SpCL's training augmentations, applied to a whole batch at once.

    Horizontal flip with probability ``flip_prob``; zero padding of ``pad``
    pixels then a random crop back to the input size; ImageNet
    normalisation; random erasing with probability ``erasing_prob`` (area
    2-40 % of the image, aspect ratio 0.3-3.3, filled with the mean, i.e.
    zero after normalisation). Random numbers come from ``generator`` (on
    the CPU), so runs repeat on any device.
    """

    def __init__(self, flip_prob=0.5, pad=10, erasing_prob=0.5, generator=None):
        self.flip_prob = flip_prob
        self.pad = pad
        self.erasing_prob = erasing_prob
        self.generator = generator
        self._rows = self._n_total = None

    def _rand(self, *shape):
        if self._rows is None:
            return torch.rand(*shape, generator=self.generator)
        # draw for the whole global batch, keep this process's rows
        full = torch.rand(self._n_total, *shape[1:], generator=self.generator)
        return full[self._rows]

    def __call__(self, batch, train=True, rows=None, n_total=None):
        """Turn a uint8 batch (B, 3, H, W) into a normalised float batch.

        With ``rows`` (positions in a global batch of ``n_total`` images),
        the random draws are those of the whole global batch and ``batch``
        gets the draws of its rows: several processes sharing a batch
        augment it as one process would.
        """
        self._rows = None if rows is None else torch.as_tensor(np.asarray(rows), dtype=torch.long)
        self._n_total = n_total
        try:
            return self._augment(batch, train)
        finally:
            self._rows = self._n_total = None

    def _augment(self, batch, train):
        x = batch.float().div_(255.0)
        device = x.device
        if train:
            n, _, h, w = x.shape
            if self.flip_prob > 0:
                flip = (self._rand(n) < self.flip_prob).to(device)
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            if self.pad > 0:
                p = self.pad
                padded = torch.nn.functional.pad(x, (p, p, p, p))
                top = (self._rand(n) * (2 * p + 1)).long().to(device)
                left = (self._rand(n) * (2 * p + 1)).long().to(device)
                rows = (top[:, None] + torch.arange(h, device=device))[:, None, :, None]
                cols = (left[:, None] + torch.arange(w, device=device))[:, None, None, :]
                x = padded[
                    torch.arange(n, device=device)[:, None, None, None],
                    torch.arange(3, device=device)[None, :, None, None],
                    rows,
                    cols,
                ]
        mean = torch.tensor(_MEAN, device=device)[None, :, None, None]
        std = torch.tensor(_STD, device=device)[None, :, None, None]
        x = (x - mean) / std
        if train and self.erasing_prob > 0:
            x = x.masked_fill(self._erasing_mask(x.shape).to(device), 0.0)
        return x

    def _erasing_mask(self, shape):
        """Boolean (B, 1, H, W) mask of the rectangles to erase."""
        n, _, h, w = shape
        tries = 10  # rejection sampling as in the original RandomErasing
        area = h * w * (0.02 + (0.4 - 0.02) * self._rand(n, tries))
        log_ratio = np.log(0.3) + (np.log(1 / 0.3) - np.log(0.3)) * self._rand(n, tries)
        ratio = torch.exp(log_ratio)
        eh = torch.sqrt(area * ratio).round().long()
        ew = torch.sqrt(area / ratio).round().long()
        fits = (eh < h) & (ew < w) & (eh > 0) & (ew > 0)
        first = torch.argmax(fits.int(), dim=1)
        rows = torch.arange(n)
        eh, ew = eh[rows, first], ew[rows, first]
        active = fits[rows, first] & (self._rand(n) < self.erasing_prob)
        top = (self._rand(n) * (h - eh + 1).clamp(min=1)).long()
        left = (self._rand(n) * (w - ew + 1).clamp(min=1)).long()
        yy = torch.arange(h)[None, :, None]
        xx = torch.arange(w)[None, None, :]
        mask = (
            (yy >= top[:, None, None])
            & (yy < (top + eh)[:, None, None])
            & (xx >= left[:, None, None])
            & (xx < (left + ew)[:, None, None])
            & active[:, None, None]
        )
        return mask[:, None]


class PseudoIdentitySampler:
    """Batches of ``P`` pseudo identities x ``num_instances`` images (SpCL's sampler).

    Identities are visited in a random order, ``P = batch_size //
    num_instances`` per batch. The images of an identity are drawn from a
    shuffled pool of its not yet used images, preferring, when camera ids
    are known, cameras not yet among its instances in the batch; an empty
    pool is refilled. So the instances of one identity come from different
    cameras where possible, and repeated visits walk through all its
    images. Identities with fewer images than ``num_instances`` repeat some.

    Parameters
    ----------
    labels : ndarray of shape (n_samples,)
        Pseudo labels; negative labels (outliers) are never sampled.
    camids : ndarray of shape (n_samples,) or None
        Camera ids (``-1`` = unknown).
    batch_size, num_instances : int
    random_state : numpy.random.RandomState
    """

    def __init__(self, labels, camids, batch_size, num_instances, random_state):
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.rng = random_state
        labels = np.asarray(labels)
        clustered = np.flatnonzero(labels >= 0)
        order = np.argsort(labels[clustered], kind="stable")
        sorted_idx = clustered[order]
        ids, starts = np.unique(labels[sorted_idx], return_index=True)
        self.identities = ids
        self.members = np.split(sorted_idx, starts[1:]) if ids.size else []
        self.camids = camids
        self._pools = [[] for _ in self.members]  # unused images of each identity
        self._order = np.empty(0, dtype=np.int64)
        self._pos = 0

    @property
    def n_samples(self):
        return int(sum(m.size for m in self.members))

    def _take(self, k):
        """``num_instances`` images of identity ``k``: new cameras first, then unused images."""
        out = []
        for _ in range(self.num_instances):
            pool = self._pools[k]
            if not pool:
                pool = self._pools[k] = self.members[k][
                    self.rng.permutation(self.members[k].size)
                ].tolist()
            if self.camids is not None and out:
                used = set(self.camids[out].tolist())
                pick = next((i for i, j in enumerate(pool) if self.camids[j] not in used), None)
                if pick is None:
                    # No unused image from a new camera: reuse one before repeating a camera.
                    others = self.members[k][~np.isin(self.camids[self.members[k]], list(used))]
                    if others.size:
                        out.append(int(others[self.rng.randint(others.size)]))
                        continue
                    pick = 0
                out.append(pool.pop(pick))
            else:
                out.append(pool.pop(0))
        return np.asarray(out, dtype=np.int64)

    def _next_identity(self, in_batch):
        """The next identity of the shuffled order; a new order puts ``in_batch`` last."""
        if self._pos >= self._order.size:
            order = self.rng.permutation(len(self.members))
            if in_batch:
                order = order[np.argsort(np.isin(order, list(in_batch)), kind="stable")]
            self._order, self._pos = order, 0
        k = int(self._order[self._pos])
        self._pos += 1
        return k

    def batches(self, n_batches):
        """``n_batches`` index arrays of ``batch_size`` samples.

        Identities come in a random order; each brings ``num_instances``
        images, except single-image identities (SpCL's un-clustered
        instances), which bring their one image.

        The sizes of each batch's consecutive identity groups are kept in
        ``group_sizes`` (several processes share a batch by whole groups).
        """
        self.group_sizes = []
        if not self.members:
            return []
        out = []
        for _ in range(int(n_batches)):
            parts, size, in_batch = [], 0, set()
            while size < self.batch_size:
                k = self._next_identity(in_batch)
                in_batch.add(k)
                take = self._take(k) if self.members[k].size > 1 else self.members[k]
                parts.append(take)
                size += take.size
            out.append(np.concatenate(parts)[: self.batch_size])
            sizes = [p.size for p in parts]
            sizes[-1] -= size - out[-1].size  # the last group, cut to the batch size
            self.group_sizes.append(sizes)
        return out

    def default_n_batches(self):
        """Batches for one pass over the sampled images."""
        return max(1, int(np.ceil(self.n_samples / self.batch_size)))


def check_image_size(image_size):
    """Validate ``image_size`` = (height, width) (at least 8 x 8) and return it as ints."""
    return _check_size(image_size, name="image_size", minimum=(8, 8))
