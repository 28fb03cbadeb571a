"""Image inputs, batched augmentations and the pseudo-identity sampler."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from ucal.datasets import ReIDDataset, ReIDSplit  # noqa: E402
from ucal.reid._data import (  # noqa: E402
    BatchAugmenter,
    PseudoIdentitySampler,
    as_image_source,
    check_image_size,
    iter_batches,
)


def _images(n=6, h=32, w=16, seed=0):
    return np.random.RandomState(seed).randint(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def test_array_source_loads_batches_in_order():
    X = _images()
    source = as_image_source(X, (32, 16))
    batch = source.load([3, 1])
    assert batch.dtype == torch.uint8 and batch.shape == (2, 3, 32, 16)
    np.testing.assert_array_equal(batch[0].permute(1, 2, 0).numpy(), X[3])


def test_array_source_resizes():
    source = as_image_source(_images(h=64, w=32), (32, 16))
    assert source.load([0, 1]).shape == (2, 3, 32, 16)


def test_paths_and_split_sources(tmp_path):
    X = _images(3)
    paths = []
    for i, im in enumerate(X):
        path = tmp_path / f"{i}.png"
        Image.fromarray(im).save(path)
        paths.append(str(path))
    source = as_image_source(paths, (32, 16))
    np.testing.assert_array_equal(source.load([2])[0].permute(1, 2, 0).numpy(), X[2])
    split = ReIDSplit(paths, [1, 1, 2], [0, 1, 0])
    from_split = as_image_source(split, (32, 16))
    np.testing.assert_array_equal(from_split.camids, [0, 1, 0])
    # Worker processes decode the same pixels.
    batches = [np.array([0, 2]), np.array([1])]
    loaded = list(iter_batches(from_split, batches, num_workers=1))
    np.testing.assert_array_equal(loaded[0][1].numpy(), source.load([0, 2]).numpy())


def test_split_without_cameras_gives_no_camids():
    split = ReIDSplit(_images(4), [1, 1, 2, 2])
    assert as_image_source(split, (32, 16)).camids is None


def test_torch_dataset_source_accepts_tensors_pil_and_tuples():
    X = _images(2)

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            if i == 0:
                return torch.from_numpy(X[0]).permute(2, 0, 1).float() / 255, 5
            return Image.fromarray(X[1])

    source = as_image_source(DS(), (32, 16))
    batch = source.load([0, 1])
    np.testing.assert_array_equal(batch[1].permute(1, 2, 0).numpy(), X[1])
    assert np.abs(batch[0].permute(1, 2, 0).numpy().astype(int) - X[0]).max() <= 1


@pytest.mark.parametrize(
    "X, error, match",
    [
        (np.zeros((0, 32, 16, 3), np.uint8), ValueError, "empty"),
        ([], ValueError, "empty"),
        (np.zeros((2, 32, 16, 3), np.float32), TypeError, "uint8"),
        (np.zeros((2, 32, 16), np.uint8), ValueError, "shape"),
        (np.zeros((2, 32, 16, 4), np.uint8), ValueError, "shape"),
        ("images/", TypeError, "single path"),
        (torch.zeros(2, 3, 32, 16), TypeError, "Tensor"),
        (12, TypeError, "list of image paths"),
    ],
)
def test_bad_inputs_are_clear_errors(X, error, match):
    with pytest.raises(error, match=match):
        as_image_source(X, (32, 16))


def test_missing_files_and_whole_dataset_are_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="do not exist"):
        as_image_source([str(tmp_path / "nope.jpg")], (32, 16))
    split = ReIDSplit(_images(2), [1, 2])
    with pytest.raises(TypeError, match="dataset.train"):
        as_image_source(ReIDDataset(split, split, split), (32, 16))


def test_dataset_with_bad_items_fails_early():
    class Bad(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return "not an image"

    with pytest.raises(TypeError, match=r"X\[0\]"):
        as_image_source(Bad(), (32, 16))


@pytest.mark.parametrize("size", [(32,), (32, 4), "big", (32.0, 16)])
def test_check_image_size(size):
    with pytest.raises(ValueError, match="image_size"):
        check_image_size(size)


def _normalised(batch):
    mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]
    return (batch.float() / 255 - mean) / std


def test_eval_mode_only_normalises():
    batch = torch.from_numpy(_images(4)).permute(0, 3, 1, 2)
    out = BatchAugmenter()(batch, train=False)
    torch.testing.assert_close(out, _normalised(batch))


def test_flip_always_and_never():
    batch = torch.from_numpy(_images(4)).permute(0, 3, 1, 2)
    always = BatchAugmenter(flip_prob=1.0, pad=0, erasing_prob=0.0)(batch)
    torch.testing.assert_close(always, _normalised(batch).flip(-1))
    never = BatchAugmenter(flip_prob=0.0, pad=0, erasing_prob=0.0)(batch)
    torch.testing.assert_close(never, _normalised(batch))


def test_pad_and_crop_shifts_content_and_pads_with_black():
    gen = torch.Generator().manual_seed(0)
    batch = torch.full((64, 3, 32, 16), 255, dtype=torch.uint8)
    out = BatchAugmenter(flip_prob=0.0, pad=4, erasing_prob=0.0, generator=gen)(batch)
    assert out.shape == batch.shape
    black = _normalised(torch.zeros(1, 3, 1, 1, dtype=torch.uint8))[0, :, 0, 0]
    is_black = torch.isclose(out, black[None, :, None, None]).all(dim=1)
    per_image = is_black.flatten(1).sum(dim=1)
    # Some crops are shifted (black border), none loses more than 4 rows + 4 columns.
    assert (per_image > 0).any()
    assert per_image.max() <= 4 * 16 + 4 * 32


def test_random_erasing_area_and_rate():
    gen = torch.Generator().manual_seed(0)
    batch = torch.full((400, 3, 32, 16), 255, dtype=torch.uint8)
    out = BatchAugmenter(flip_prob=0.0, pad=0, erasing_prob=0.5, generator=gen)(batch)
    erased = (out == 0).all(dim=1).flatten(1).float().mean(dim=1)
    rate = (erased > 0).float().mean().item()
    assert 0.35 < rate < 0.6  # 0.5, minus the rare draws that never fit
    assert erased.max() <= 0.4 + 0.05
    assert erased[erased > 0].min() >= 0.02 - 0.01


def test_augmenter_is_repeatable_with_a_seeded_generator():
    batch = torch.from_numpy(_images(8)).permute(0, 3, 1, 2)
    a = BatchAugmenter(generator=torch.Generator().manual_seed(5))(batch)
    b = BatchAugmenter(generator=torch.Generator().manual_seed(5))(batch)
    torch.testing.assert_close(a, b)


def test_sampler_batches_identities_and_cameras():
    labels = np.repeat(np.arange(10), 8)
    labels[::7] = -1  # outliers are never drawn
    camids = np.tile(np.arange(4), 20)
    sampler = PseudoIdentitySampler(labels, camids, 16, 4, np.random.RandomState(0))
    batches = sampler.batches(20)
    assert len(batches) == 20
    for batch in batches:
        assert batch.shape == (16,)
        assert (labels[batch] >= 0).all()
        ids, counts = np.unique(labels[batch], return_counts=True)
        assert set(counts) == {4}
        for k in ids:
            # every identity has images in 4 cameras: its 4 instances use 4 cameras
            assert len(set(camids[batch[labels[batch] == k]])) == 4
    seen = np.unique(np.concatenate(batches))
    assert seen.size == (labels >= 0).sum()  # 20 batches cover every clustered image


def test_sampler_small_clusters_repeat_and_default_length():
    labels = np.array([0, 0, 1, 1, 1, -1, 2, 2])
    sampler = PseudoIdentitySampler(labels, None, 8, 4, np.random.RandomState(0))
    assert sampler.default_n_batches() == 1
    (batch,) = sampler.batches(1)
    assert batch.shape == (8,)
    assert 5 not in batch
    empty = PseudoIdentitySampler(np.full(5, -1), None, 8, 4, np.random.RandomState(0))
    assert empty.batches(3) == []


def test_sampler_single_image_identities_bring_one_image():
    # SpCL's un-clustered instances: classes of one image, drawn once per visit.
    labels = np.concatenate([np.repeat([0, 1], 6), np.arange(2, 14)])
    sampler = PseudoIdentitySampler(labels, None, 16, 4, np.random.RandomState(0))
    assert sampler.default_n_batches() == 2
    for batch in sampler.batches(6):
        assert batch.shape == (16,)
        ids, counts = np.unique(labels[batch], return_counts=True)
        assert all(c == 1 for k, c in zip(ids, counts) if k >= 2)
        # a cluster brings num_instances images (fewer only when the batch ends)
        assert all(c <= 4 for k, c in zip(ids, counts) if k < 2)
        assert len(ids) == len(set(ids))
