"""``load_dataset``: every dataset of ucal.datasets by name."""

import numpy as np
import pytest

from ucal.datasets import (
    DATASET_NAMES,
    ReIDDataset,
    load_dataset,
    load_image_folder,
    load_market1501,
    make_persons,
    save_market1501,
)

SMALL = dict(n_identities=4, n_test_identities=2, n_images_per_camera=(1, 2),
             image_size=(32, 16))


def test_the_registry_names():
    assert DATASET_NAMES == ("market1501", "dukemtmc", "msmt17", "folder", "synthetic")
    import ucal.datasets

    assert "load_dataset" in ucal.datasets.__all__
    assert "DATASET_NAMES" in ucal.datasets.__all__


def test_synthetic_through_the_registry_is_make_persons():
    data = load_dataset("synthetic", random_state=3, **SMALL)
    direct = make_persons(random_state=3, **SMALL)
    assert isinstance(data, ReIDDataset)
    for split in ("train", "query", "gallery"):
        a, b = getattr(data, split), getattr(direct, split)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.pids, b.pids)
        np.testing.assert_array_equal(a.camids, b.camids)


def test_market_layout_through_the_registry(tmp_path):
    save_market1501(make_persons(random_state=0, **SMALL), tmp_path, image_format="png")
    data = load_dataset("market1501", tmp_path)
    direct = load_market1501(tmp_path)
    assert data.train.images == direct.train.images
    np.testing.assert_array_equal(data.query.pids, direct.query.pids)
    # every loader of a Market-style layout reads its own folder name only
    with pytest.raises(FileNotFoundError, match="DukeMTMC"):
        load_dataset("dukemtmc", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="MSMT17"):
        load_dataset("msmt17", tmp_path)


def test_folder_through_the_registry_passes_the_pattern(tmp_path):
    from PIL import Image

    for person in ("alice", "bob"):
        (tmp_path / person).mkdir()
        for cam in (1, 2):
            Image.new("RGB", (16, 32)).save(tmp_path / person / f"cam{cam}_001.png")
    data = load_dataset("folder", tmp_path, pattern=r"cam(?P<camid>\d+)_")
    direct = load_image_folder(tmp_path, pattern=r"cam(?P<camid>\d+)_")
    assert data.train.camids.tolist() == direct.train.camids.tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize("name", ["cifar10", "Market1501", "", "market-1501"])
def test_an_unknown_name_lists_the_known_ones(name):
    with pytest.raises(ValueError, match="Unknown dataset") as info:
        load_dataset(name, "data")
    for known in DATASET_NAMES:
        assert repr(known) in str(info.value)


@pytest.mark.parametrize("name", [None, 3, ("market1501",)])
def test_a_name_must_be_a_string(name):
    with pytest.raises(TypeError, match="must be a str"):
        load_dataset(name)


@pytest.mark.parametrize("name", ["market1501", "dukemtmc", "msmt17", "folder"])
def test_a_dataset_on_disk_needs_a_root(name):
    with pytest.raises(ValueError, match=f"'{name}' dataset needs root"):
        load_dataset(name)


def test_synthetic_takes_no_root():
    with pytest.raises(ValueError, match="made in memory: it takes no root"):
        load_dataset("synthetic", "data")


def test_an_unknown_keyword_names_the_loader_and_what_it_takes():
    with pytest.raises(TypeError, match="unexpected keyword argument 'pattern'.*load_market1501"):
        load_dataset("market1501", "data", pattern="x")
    with pytest.raises(TypeError, match="'n_people'.*make_persons takes n_identities"):
        load_dataset("synthetic", n_people=3)
    with pytest.raises(TypeError, match="load_msmt17 takes combine_train_val"):
        load_dataset("msmt17", "data", combine=False)
