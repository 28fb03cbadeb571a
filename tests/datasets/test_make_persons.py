"""make_persons: protocol, determinism, difficulty; save_market1501 round trips."""

import os

import numpy as np
import pytest

from ucal.datasets import (
    ReIDDataset,
    ReIDSplit,
    load_image_folder,
    load_images,
    load_market1501,
    make_persons,
    save_market1501,
)
from ucal.metrics import pairwise_precision_recall_fscore


@pytest.fixture(scope="module")
def small():
    return make_persons(n_identities=12, n_test_identities=6, n_cameras=3, random_state=0)


def test_shapes_dtypes_and_counts(small):
    assert isinstance(small, ReIDDataset)
    for split in (small.train, small.query, small.gallery):
        assert isinstance(split, ReIDSplit) and split.in_memory
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == (128, 64, 3)
        assert split.pids.dtype == np.int64 and split.camids.dtype == np.int64
    # Train: every identity in every camera, 5 to 8 images each.
    counts = np.zeros((12, 3), int)
    np.add.at(counts, (small.train.pids - 1, small.train.camids), 1)
    assert counts.min() >= 5 and counts.max() <= 8
    assert small.train.n_identities == 12 and small.train.n_cameras == 3
    # Test: 1 query and 2 gallery images per identity and camera.
    assert len(small.query) == 6 * 3 and len(small.gallery) == 6 * 3 * 2
    assert sorted(set(small.train.pids)) == list(range(1, 13))
    assert sorted(set(small.query.pids)) == list(range(13, 19))


def test_images_are_not_blank(small):
    images = small.train.images.astype(float)
    assert images.std() > 20  # people on backgrounds, not a constant
    # No two images are identical (pose, framing, noise vary per image).
    flat = small.train.images.reshape(len(small.train), -1)
    assert len(np.unique(flat, axis=0)) == len(flat)


def test_order_is_pid_then_camera(small):
    for split in (small.train, small.query, small.gallery):
        key = split.pids * 100 + split.camids
        assert (np.diff(key) >= 0).all()


def test_protocol_disjoint_ids_and_cross_camera_matches(small):
    assert not set(small.train.pids) & set(small.query.pids)
    assert not set(small.train.pids) & set(small.gallery.pids)
    assert set(small.query.pids) == set(small.gallery.pids)
    for _, pid, camid in small.query:
        other_camera = (small.gallery.pids == pid) & (small.gallery.camids != camid)
        assert other_camera.sum() >= 2  # n_gallery_per_camera * (n_cameras - 1) = 4


def test_determinism(small):
    again = make_persons(n_identities=12, n_test_identities=6, n_cameras=3, random_state=0)
    for name in ("train", "query", "gallery"):
        a, b = getattr(small, name), getattr(again, name)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.pids, b.pids)
        np.testing.assert_array_equal(a.camids, b.camids)
    other = make_persons(n_identities=12, n_test_identities=6, n_cameras=3, random_state=1)
    assert not np.array_equal(other.query.images, small.query.images)
    rs = np.random.RandomState(0)
    assert len(make_persons(n_identities=2, n_test_identities=1, random_state=rs).train) > 0


def test_options():
    data = make_persons(
        n_identities=3,
        n_test_identities=2,
        n_cameras=2,
        n_images_per_camera=2,
        n_query_per_camera=2,
        n_gallery_per_camera=3,
        n_distractors=5,
        image_size=(64, 32),
        random_state=3,
    )
    assert data.train.images.shape == (3 * 2 * 2, 64, 32, 3)
    assert len(data.query) == 2 * 2 * 2
    assert len(data.gallery) == 2 * 2 * 3 + 5
    assert (data.gallery.pids == 0).sum() == 5
    assert 0 not in data.query.pids and 0 not in data.train.pids
    no_test = make_persons(n_identities=2, n_test_identities=0, random_state=0)
    assert len(no_test.query) == 0 and no_test.query.images.shape == (0, 128, 64, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_cameras=1), "n_cameras"),
        (dict(n_identities=0), "n_identities"),
        (dict(image_size=(8, 8)), "at least"),
        (dict(image_size=(64,)), "image_size"),
        (dict(n_images_per_camera=(5, 3)), "low <= high"),
        (dict(n_images_per_camera=(2, 3.5)), "pair"),
        (dict(hard_negative_rate=1.5), "hard_negative_rate"),
        (dict(random_state="seed"), "random_state"),
    ],
)
def test_invalid_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_persons(**kwargs)


def test_camera_shift_changes_the_look_of_cameras():
    # With a strong shift the per-camera mean colours drift apart more
    # than without it (the identities and poses are the same draws).
    def camera_spread(shift):
        data = make_persons(
            n_identities=10, n_test_identities=0, camera_shift=shift, random_state=5
        )
        train = data.train
        means = np.stack([train.images[train.camids == c].mean(axis=(0, 1, 2)) for c in range(4)])
        return np.ptp(means, axis=0).mean()

    assert camera_spread(2.0) > camera_spread(0.0) + 5


def _generic_features(images):
    """Torch-free features: 16x8 downsampled pixels and stripe colour histograms."""
    n, H, W, _ = images.shape
    small = images.reshape(n, 16, H // 16, 8, W // 8, 3).mean(axis=(2, 4), dtype=np.float32)
    small = small.reshape(n, -1) / 255.0
    q = images >> 6  # 4 levels per channel
    code = (q[..., 0] << 4) | (q[..., 1] << 2) | q[..., 2]
    hists = []
    for band in np.array_split(code, 4, axis=1):
        flat = band.reshape(n, -1).astype(np.int64) + 64 * np.arange(n)[:, None]
        h = np.bincount(flat.ravel(), minlength=64 * n).reshape(n, 64).astype(np.float32)
        hists.append(np.sqrt(h / h.sum(axis=1, keepdims=True)))
    features = np.hstack([0.5 * small] + hists)
    features -= features.mean(axis=0)
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def _cluster(features):
    try:
        from ucal.cluster import SelfPacedDBSCAN
    except ImportError:  # the cluster module is built in parallel
        from sklearn.cluster import DBSCAN

        return DBSCAN(eps=0.3, min_samples=4, metric="cosine").fit_predict(features)
    clusterer = SelfPacedDBSCAN(eps=0.6, min_samples=4, k1=20, k2=6, self_paced=False)
    return clusterer.fit(features).labels_


def test_generic_features_make_impure_and_fragmented_clusters():
    """The data is hard: unsupervised clustering errs both ways, as on real re-id."""
    data = make_persons(n_identities=30, n_test_identities=0, random_state=0)
    pids = data.train.pids
    labels = _cluster(_generic_features(data.train.images))
    clusters = [k for k in np.unique(labels) if k >= 0]
    assert len(clusters) >= 5
    impure = [k for k in clusters if np.unique(pids[labels == k]).size > 1]
    fragmented = [
        p for p in np.unique(pids) if np.unique(labels[(pids == p) & (labels >= 0)]).size > 1
    ]
    assert len(impure) >= 1, "every cluster holds one identity: the data is too easy"
    assert len(fragmented) >= 1, "no identity is split over clusters: the data is too easy"
    precision, recall, _ = pairwise_precision_recall_fscore(pids, labels)
    assert precision < 0.9 and recall < 0.9


def test_identity_is_learnable_across_cameras():
    """A supervised linear projection learnt on train identities transfers
    to the disjoint test identities across cameras: the identity signal
    survives the camera shift (it is not noise), yet raw features miss it."""
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    data = make_persons(n_identities=40, n_test_identities=20, random_state=0)
    X = _generic_features(data.train.images)
    pca = PCA(n_components=60, random_state=0).fit(X)
    lda = LinearDiscriminantAnalysis(n_components=30).fit(pca.transform(X), data.train.pids)

    def project(images, learnt):
        f = _generic_features(images)
        if learnt:
            f = lda.transform(pca.transform(f))
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    def cross_camera_rank1(learnt):
        q, g = project(data.query.images, learnt), project(data.gallery.images, learnt)
        hits = []
        for i, (_, pid, camid) in enumerate(data.query):
            keep = ~((data.gallery.pids == pid) & (data.gallery.camids == camid))
            best = np.argmax(g[keep] @ q[i])
            hits.append(data.gallery.pids[keep][best] == pid)
        return np.mean(hits)

    raw, learnt = cross_camera_rank1(False), cross_camera_rank1(True)
    chance = 1 / data.query.n_identities
    assert learnt > raw + 0.2
    assert learnt > 10 * chance


@pytest.mark.parametrize("image_format", ["png", "jpg"])
def test_save_market1501_round_trip(small, tmp_path, image_format):
    path = save_market1501(small, tmp_path, image_format=image_format)
    assert path == str(tmp_path / "Market-1501-v15.09.15")
    back = load_market1501(tmp_path)
    for name in ("train", "query", "gallery"):
        a, b = getattr(small, name), getattr(back, name)
        assert len(a) == len(b)
        # make_persons orders by pid then camera, so file-name order matches.
        np.testing.assert_array_equal(a.pids, b.pids)
        np.testing.assert_array_equal(a.camids, b.camids)
    first = os.path.basename(back.train.images[0])
    assert first == f"0001_c1s1_000000_00.{image_format}"
    pixels = load_images(back.query)
    if image_format == "png":
        np.testing.assert_array_equal(pixels, small.query.images)
    else:  # JPEG at quality 95 is lossy, but close
        diff = np.abs(pixels.astype(int) - small.query.images.astype(int))
        assert diff.mean() < 4.0
        mean_colours = pixels.mean(axis=(1, 2)), small.query.images.mean(axis=(1, 2))
        assert np.abs(mean_colours[0] - mean_colours[1]).max() < 2


def test_save_market1501_with_distractors_and_overwrite(tmp_path):
    data = make_persons(n_identities=2, n_test_identities=2, n_distractors=3, random_state=0)
    save_market1501(data, tmp_path, image_format="png")
    back = load_market1501(tmp_path)
    np.testing.assert_array_equal(back.gallery.pids, data.gallery.pids)
    assert (back.gallery.pids == 0).sum() == 3
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_market1501(data, tmp_path)
    smaller = make_persons(n_identities=1, n_test_identities=1, random_state=1)
    save_market1501(smaller, tmp_path, overwrite=True)
    assert len(load_market1501(tmp_path).gallery) == len(smaller.gallery)


def test_save_market1501_converts_path_datasets_and_needs_cameras(tmp_path):
    data = make_persons(n_identities=2, n_test_identities=1, random_state=0)
    save_market1501(data, tmp_path / "a", image_format="png")
    on_disk = load_market1501(tmp_path / "a")  # path-based: images are read
    save_market1501(on_disk, tmp_path / "b", image_format="png")
    again = load_market1501(tmp_path / "b")
    np.testing.assert_array_equal(again.train.pids, data.train.pids)
    query_folder = tmp_path / "b" / "Market-1501-v15.09.15" / "query"
    no_cams = load_image_folder(query_folder, pattern=r"(?P<pid>\d+)_")
    no_cams = ReIDDataset(no_cams.train, no_cams.train, no_cams.train)
    with pytest.raises(ValueError, match="unknown camera"):
        save_market1501(no_cams, tmp_path / "c")
    with pytest.raises(ValueError, match="image_format"):
        save_market1501(data, tmp_path / "d", image_format="gif")
