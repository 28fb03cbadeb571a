"""Containers, image reading and loaders of ucal.datasets, on tiny fixture trees."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ucal.datasets import (
    ReIDDataset,
    ReIDSplit,
    load_dukemtmc,
    load_image_folder,
    load_images,
    load_market1501,
    load_msmt17,
    read_image,
)


def _write_jpg(path, color=(10, 20, 30), size=(64, 128)):
    """A small solid image; ``size`` is (width, height) as Pillow wants."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="PNG" if path.suffix == ".png" else "JPEG")
    return path


# --- Market-1501 / DukeMTMC-reID ------------------------------------------------

MARKET_FILES = {
    "bounding_box_train": [
        "0002_c1s1_000451_03.jpg",
        "0002_c2s1_000551_01.jpg",
        "0007_c6s2_000001_01.jpg",
        "0007_c3s1_000101_02.jpg",
    ],
    "query": ["0002_c3s1_001051_00.jpg", "0007_c1s1_000151_00.jpg"],
    "bounding_box_test": [
        "0000_c1s1_000151_01.jpg",  # distractor: kept
        "-1_c1s1_000401_03.jpg",  # junk: dropped
        "-1_c5s1_000401_03.jpg",  # junk: dropped
        "0002_c5s1_001151_04.jpg",
        "0007_c2s1_000001_01.jpg",
        "0007_c1s1_000201_01.jpg",
    ],
}


def _market_tree(base, folder="Market-1501-v15.09.15", files=MARKET_FILES):
    root = base / folder
    for sub, names in files.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        for name in names:
            _write_jpg(root / sub / name)
    return root


def test_market1501_counts_pids_camids(tmp_path):
    root = _market_tree(tmp_path)
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")  # ignored
    (root / "gt_bbox").mkdir()  # extra folders of the release are ignored
    data = load_market1501(root)
    assert isinstance(data, ReIDDataset)
    assert data.name == "market1501"
    assert [len(data.train), len(data.query), len(data.gallery)] == [4, 2, 4]
    # Sorted by file name: 0002_c1, 0002_c2, 0007_c3, 0007_c6.
    assert data.train.pids.tolist() == [2, 2, 7, 7]
    assert data.train.camids.tolist() == [0, 1, 2, 5]
    assert data.query.pids.tolist() == [2, 7]
    assert data.query.camids.tolist() == [2, 0]
    assert -1 not in data.gallery.pids
    assert data.gallery.pids.tolist() == [0, 2, 7, 7]  # distractor pid 0 kept
    assert data.gallery.camids.tolist() == [0, 4, 0, 1]
    assert data.train.pids.dtype == np.int64 and data.train.camids.dtype == np.int64
    assert all(isinstance(p, str) and os.path.isfile(p) for p in data.gallery.images)
    names = [os.path.basename(p) for p in data.train.images]
    assert names == sorted(MARKET_FILES["bounding_box_train"])


def test_market1501_root_or_parent_give_the_same(tmp_path):
    root = _market_tree(tmp_path)
    a, b = load_market1501(root), load_market1501(tmp_path)
    for split in ("train", "query", "gallery"):
        assert getattr(a, split).images == getattr(b, split).images
        np.testing.assert_array_equal(getattr(a, split).pids, getattr(b, split).pids)


def test_market1501_accepts_pathlib_and_tilde(tmp_path, monkeypatch):
    _market_tree(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert len(load_market1501(Path(tmp_path)).train) == 4
    assert len(load_market1501("~").train) == 4


def test_market1501_wrong_root_says_what_was_looked_for_and_found(tmp_path):
    (tmp_path / "some_other_folder").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError) as info:
        load_market1501(tmp_path)
    message = str(info.value)
    for expected in ("bounding_box_train", "query", "bounding_box_test",
                     "Market-1501-v15.09.15", "some_other_folder/", "notes.txt"):
        assert expected in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_market1501(tmp_path / "missing")


def test_market1501_incomplete_layout_lists_the_dataset_folder(tmp_path):
    files = {k: v for k, v in MARKET_FILES.items() if k != "query"}
    _market_tree(tmp_path, files=files)
    with pytest.raises(FileNotFoundError) as info:
        load_market1501(tmp_path)
    message = str(info.value)
    assert "'query'" in message
    # The dataset folder's content is listed, so the missing piece shows.
    assert "bounding_box_test/" in message and "bounding_box_train/" in message


def test_market1501_unparsable_image_names_warn(tmp_path):
    root = _market_tree(tmp_path)
    _write_jpg(root / "query" / "holiday.jpg")
    with pytest.warns(UserWarning, match=r"1 image file.*holiday\.jpg"):
        data = load_market1501(root)
    assert len(data.query) == 2


def test_market1501_rejects_camera_zero(tmp_path):
    root = _market_tree(tmp_path)
    _write_jpg(root / "query" / "0003_c0s1_000001_00.jpg")
    with pytest.raises(ValueError, match=r"c0.*0003_c0s1_000001_00\.jpg"):
        load_market1501(root)


def test_dukemtmc_layout(tmp_path):
    files = {
        "bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c8_f0000001.jpg"],
        "query": ["0005_c2_f0046985.jpg"],
        "bounding_box_test": ["0005_c7_f0047000.jpg", "0000_c1_f0000002.jpg", "-1_c3_f0000003.jpg"],
    }
    _market_tree(tmp_path, folder="DukeMTMC-reID", files=files)
    data = load_dukemtmc(tmp_path)
    assert data.name == "dukemtmc"
    assert data.train.camids.tolist() == [1, 7]
    assert data.query.pids.tolist() == [5] and data.query.camids.tolist() == [1]
    assert data.gallery.pids.tolist() == [0, 5] and data.gallery.camids.tolist() == [0, 6]
    with pytest.raises(FileNotFoundError, match="DukeMTMC-reID"):
        load_market1501(tmp_path)  # a Duke tree is not a Market tree
    with pytest.raises(FileNotFoundError, match="DukeMTMC-reID"):
        load_dukemtmc(tmp_path / "DukeMTMC-reID" / "query")


# --- MSMT17 -------------------------------------------------------------------------

MSMT_LISTS = {
    "train": [
        "0000/0000_000_01_0303morning_0015_0.jpg 0",
        "0000/0000_001_05_0303morning_0016_0.jpg 0",
        "0001/0001_002_15_0303noon_0100_1.jpg 1",
    ],
    "val": ["0002/0002_000_03_0303afternoon_0005_0.jpg 2"],
    "query": ["0000/0000_010_02_0303noon_0200_0.jpg 0"],
    "gallery": ["0000/0000_011_04_0303noon_0210_0.jpg 0", "0003/0003_012_09_0303noon_0220_1.jpg 3"],
}


def _msmt_tree(base, version="MSMT17_V1", lists=MSMT_LISTS):
    root = base / version
    v1 = version == "MSMT17_V1"
    train_dir, test_dir = ("train", "test") if v1 else ("mask_train_v2", "mask_test_v2")
    for split, lines in lists.items():
        folder = train_dir if split in ("train", "val") else test_dir
        for line in lines:
            _write_jpg(root / folder / line.split()[0])
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / f"list_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("version", ["MSMT17_V1", "MSMT17_V2"])
def test_msmt17_versions(tmp_path, version):
    root = _msmt_tree(tmp_path, version)
    data = load_msmt17(tmp_path)
    assert data.name == "msmt17"
    assert [len(data.train), len(data.query), len(data.gallery)] == [4, 1, 2]
    # Sorted by path; camera = third underscore field - 1; pid 0 is a real person.
    assert data.train.pids.tolist() == [0, 0, 1, 2]
    assert data.train.camids.tolist() == [0, 4, 14, 2]
    assert data.query.camids.tolist() == [1]
    assert data.gallery.pids.tolist() == [0, 3] and data.gallery.camids.tolist() == [3, 8]
    assert all(os.path.isfile(p) for p in data.train.images + data.gallery.images)
    only_train = load_msmt17(root, combine_train_val=False)
    assert len(only_train.train) == 3 and 2 not in only_train.train.pids


def test_msmt17_without_val_list(tmp_path):
    root = _msmt_tree(tmp_path)
    (root / "list_val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"list_val\.txt.*combine_train_val"):
        load_msmt17(root)
    assert len(load_msmt17(root, combine_train_val=False).train) == 3


def test_msmt17_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_msmt17(tmp_path)
    assert "list_train.txt" in str(info.value) and "mask_train_v2" in str(info.value)
    _msmt_tree(tmp_path, "MSMT17_V1")
    _msmt_tree(tmp_path, "MSMT17_V2")
    with pytest.raises(ValueError, match="several versions"):
        load_msmt17(tmp_path)
    assert len(load_msmt17(tmp_path / "MSMT17_V2").train) == 4
    with pytest.raises(TypeError, match="combine_train_val"):
        load_msmt17(tmp_path / "MSMT17_V2", combine_train_val="yes")


def test_msmt17_bad_list_line_and_mismatched_folder(tmp_path):
    root = _msmt_tree(tmp_path)
    (root / "list_query.txt").write_text("0000/0000_010_02_0303noon_0200_0.jpg 0\nbroken_line\n")
    with pytest.raises(ValueError, match=r"list_query\.txt, line 2"):
        load_msmt17(root)
    (root / "list_query.txt").write_text("9999/9999_010_02_0303noon_0200_0.jpg 9999\n")
    with pytest.raises(FileNotFoundError, match="9999_010_02"):
        load_msmt17(root)


# --- reading images ------------------------------------------------------------------


def test_read_image_converts_to_rgb_uint8(tmp_path):
    Image.new("L", (8, 16), 77).save(tmp_path / "gray.png")
    Image.new("RGBA", (8, 16), (1, 2, 3, 0)).save(tmp_path / "alpha.png")
    gray, alpha = read_image(tmp_path / "gray.png"), read_image(str(tmp_path / "alpha.png"))
    assert gray.shape == (16, 8, 3) and gray.dtype == np.uint8
    assert (gray == 77).all()
    assert alpha[0, 0].tolist() == [1, 2, 3]


def test_read_image_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        read_image(missing)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not a jpeg at all")
    with pytest.raises(OSError, match=re.escape(str(garbage))):
        read_image(garbage)
    truncated = tmp_path / "truncated.jpg"
    _write_jpg(tmp_path / "full.jpg", size=(64, 128))
    data = (tmp_path / "full.jpg").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=re.escape(str(truncated))):
        read_image(truncated)


def test_load_images_from_paths_split_and_array(tmp_path):
    paths = [_write_jpg(tmp_path / f"{i}.png", color=(i, 0, 0), size=(32, 64)) for i in range(3)]
    stacked = load_images(paths)
    assert stacked.shape == (3, 64, 32, 3) and stacked.dtype == np.uint8
    assert stacked[:, 0, 0, 0].tolist() == [0, 1, 2]  # input order kept
    split = ReIDSplit(paths, [1, 1, 2])
    assert np.array_equal(load_images(split), stacked)
    resized = load_images(split, size=(16, 8))
    assert resized.shape == (3, 16, 8, 3)
    # In-memory images come back as they are, or resized.
    assert load_images(stacked) is stacked
    assert load_images(ReIDSplit(stacked, [0, 0, 1]), size=(8, 4)).shape == (3, 8, 4, 3)
    assert load_images([], size=(8, 4)).shape == (0, 8, 4, 3)


def test_load_images_errors(tmp_path):
    a = _write_jpg(tmp_path / "a.png", size=(32, 64))
    b = _write_jpg(tmp_path / "b.png", size=(30, 64))
    with pytest.raises(ValueError, match=r"differ in size.*size="):
        load_images([a, b])
    assert load_images([a, b], size=(64, 32)).shape == (2, 64, 32, 3)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(OSError, match=re.escape(str(bad))):
        load_images([a, bad], size=(64, 32))
    with pytest.raises(TypeError, match="single path"):
        load_images(str(a))
    with pytest.raises(ValueError, match="uint8"):
        load_images(np.zeros((2, 8, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="empty"):
        load_images([])


def test_loaded_dataset_images_are_readable(tmp_path):
    data = load_market1501(_market_tree(tmp_path))
    images = load_images(data.query)
    assert images.shape == (2, 128, 64, 3)
    # JPEG of a solid colour decodes to about that colour.
    assert np.abs(images.astype(int) - [10, 20, 30]).max() <= 3


# --- ReIDSplit / ReIDDataset -----------------------------------------------------------


def test_split_with_paths():
    paths = [Path("a.jpg"), "b.jpg", "c.jpg"]
    split = ReIDSplit(paths, pids=[3, 3, 4], camids=[0, 1, 1], name="train")
    assert split.images == ["a.jpg", "b.jpg", "c.jpg"]
    assert all(type(p) is str for p in ReIDSplit(np.array(["x", "y"]), [1, 2]).images)
    assert len(split) == 3 and not split.in_memory
    assert split[0] == ("a.jpg", 3, 0)
    assert split[-1] == ("c.jpg", 4, 1)
    assert isinstance(split[1][1], int) and isinstance(split[1][2], int)
    assert list(split) == [("a.jpg", 3, 0), ("b.jpg", 3, 1), ("c.jpg", 4, 1)]
    assert split.n_identities == 2 and split.n_cameras == 2
    sub = split[1:]
    assert isinstance(sub, ReIDSplit) and sub.images == ["b.jpg", "c.jpg"] and sub.name == "train"
    assert split[np.array([2, 0])].pids.tolist() == [4, 3]
    assert split[split.pids == 3].images == ["a.jpg", "b.jpg"]
    assert len(split[[]]) == 0
    assert repr(split) == "ReIDSplit('train', 3 images (paths), 2 identities, 2 cameras)"
    with pytest.raises(IndexError, match="out of range"):
        split[3]


def test_split_with_array_and_unknown_cameras():
    images = np.arange(2 * 4 * 2 * 3, dtype=np.uint8).reshape(2, 4, 2, 3)
    split = ReIDSplit(images, np.array([5, 6], dtype=np.int32))
    assert split.in_memory
    assert split.camids.tolist() == [-1, -1] and split.camids.dtype == np.int64
    assert split.pids.dtype == np.int64
    assert split.n_cameras == 0
    image, pid, camid = split[1]
    assert np.array_equal(image, images[1]) and (pid, camid) == (6, -1)
    assert split[[1]].images.shape == (1, 4, 2, 3)
    assert repr(split) == "ReIDSplit('', 2 images (in memory, 4x2), 2 identities, no cameras)"


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(images=["a", "b"], pids=[1]), ValueError, "pids has 1 entries but .* 2 images"),
        (dict(images=["a"], pids=[1], camids=[0, 1]), ValueError, "camids has 2 entries"),
        (dict(images=["a"], pids=[1.5]), TypeError, "pids must contain integers"),
        (dict(images=["a"], pids=[[1]]), ValueError, "pids must be 1-D"),
        (dict(images=["a"], pids=[1], camids=[-2]), ValueError, "camids must be >= 0"),
        (dict(images=np.zeros((2, 4, 4), np.uint8), pids=[1, 2]), ValueError, r"shape \(n_images"),
        (dict(images=np.zeros((2, 4, 4, 3)), pids=[1, 2]), TypeError, "dtype uint8"),
        (dict(images="a.jpg", pids=[1]), TypeError, "single path"),
        (dict(images=[1, 2], pids=[1, 2]), TypeError, "not a path"),
        (dict(images=["a"], pids=[1], name=3), TypeError, "name must be a str"),
    ],
)
def test_split_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        ReIDSplit(**kwargs)


def test_dataset_container_and_repr():
    train = ReIDSplit(["a", "b", "c"], [1, 1, 2], [0, 1, 0], name="train")
    query = ReIDSplit(np.zeros((1, 8, 4, 3), np.uint8), [9], [0], name="query")
    gallery = ReIDSplit(["g"], [9], name="gallery")
    data = ReIDDataset(train, query, gallery, name="toy")
    assert data.train is train and data.query is query and data.gallery is gallery
    lines = repr(data).splitlines()
    assert lines[0] == "ReIDDataset('toy')"
    assert lines[1].split() == "train: 3 images, 2 identities, 2 cameras (paths)".split()
    assert lines[2].split() == "query: 1 image, 1 identity, 1 camera (in memory, 8x4)".split()
    assert lines[3].split() == "gallery: 1 image, 1 identity, no cameras (paths)".split()
    with pytest.raises(TypeError, match="query must be a ReIDSplit"):
        ReIDDataset(train, ["q"], gallery)


# --- your own data: load_image_folder ---------------------------------------------------


def test_image_folder_pattern_with_query_gallery(tmp_path):
    for sub, names in {
        "train": ["0001_c1_a.jpg", "0001_c3_b.jpg", "0002_c3_a.jpg", "-1_c1_x.jpg"],
        "query": ["0005_c1_q.jpg"],
        "gallery": ["0005_c3_g.jpg", "0000_c1_d.jpg"],
    }.items():
        for name in names:
            _write_jpg(tmp_path / sub / name)
    data = load_image_folder(tmp_path, pattern=r"(?P<pid>-?\d+)_c(?P<camid>\d+)", name="mine")
    assert data.name == "mine"
    assert data.train.pids.tolist() == [1, 1, 2]  # junk -1 dropped
    # Cameras c1, c3 are numbered 0, 1 over all splits.
    assert data.train.camids.tolist() == [0, 1, 1]
    assert data.query.pids.tolist() == [5] and data.query.camids.tolist() == [0]
    assert data.gallery.pids.tolist() == [0, 5] and data.gallery.camids.tolist() == [0, 1]


def test_image_folder_subfolders_are_identities(tmp_path):
    for person in ["bob", "alice"]:
        for k in range(2):
            _write_jpg(tmp_path / person / f"{k}.jpg")
    _write_jpg(tmp_path / "alice" / "day2" / "cam7_0.jpg")  # nested folders belong to alice
    (tmp_path / "README.txt").write_text("not an image")
    data = load_image_folder(tmp_path)
    assert data.name == tmp_path.name
    # Text names are numbered in sorted order: alice -> 0, bob -> 1.
    assert data.train.pids.tolist() == [0, 0, 0, 1, 1]
    assert (data.train.camids == -1).all() and data.train.n_cameras == 0
    assert len(data.query) == 0 and len(data.gallery) == 0
    assert data.query.images == []


def test_image_folder_numeric_folders_keep_their_ids_and_camid_pattern(tmp_path):
    _write_jpg(tmp_path / "0012" / "cam2_x.jpg")
    _write_jpg(tmp_path / "0012" / "cam10_y.jpg")
    _write_jpg(tmp_path / "0003" / "cam1_z.jpg")
    data = load_image_folder(tmp_path, pattern=r"cam(?P<camid>\d+)_")
    assert data.train.pids.tolist() == [3, 12, 12]
    # Numeric camera labels are ordered numerically: 1 < 2 < 10.
    assert data.train.camids.tolist() == [0, 2, 1]


def test_image_folder_loose_files_and_unmatched_names_warn(tmp_path):
    _write_jpg(tmp_path / "7" / "a.jpg")
    _write_jpg(tmp_path / "loose.jpg")
    with pytest.warns(UserWarning, match=r"loose\.jpg"):
        data = load_image_folder(tmp_path)
    assert data.train.pids.tolist() == [7]
    _write_jpg(tmp_path / "0008_c1.jpg")
    with pytest.warns(UserWarning, match=r"do not match the pattern.*a\.jpg"):
        data = load_image_folder(tmp_path, pattern=r"(?P<pid>\d+)_c(?P<camid>\d)")
    assert data.train.pids.tolist() == [8]


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nothing")
    _write_jpg(tmp_path / "query" / "0001_c1.jpg")
    with pytest.raises(ValueError, match="query folder but no gallery folder"):
        load_image_folder(tmp_path)
    _write_jpg(tmp_path / "gallery" / "0001_c2.jpg")
    with pytest.raises(ValueError, match="No image file .* matches the pattern"):
        load_image_folder(tmp_path, pattern=r"person(?P<pid>\d+)")
    with pytest.raises(ValueError, match="named group"):
        load_image_folder(tmp_path, pattern=r"(\d+)_c(\d)")
    with pytest.raises(ValueError, match="Invalid pattern"):
        load_image_folder(tmp_path, pattern=r"(?P<pid>\d+")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="No image file found"):
        load_image_folder(empty)


def test_image_folder_ignores_other_entries_with_a_warning(tmp_path):
    _write_jpg(tmp_path / "query" / "0001_c1.jpg")
    _write_jpg(tmp_path / "gallery" / "0001_c2.jpg")
    _write_jpg(tmp_path / "extra" / "0002_c1.jpg")
    with pytest.warns(UserWarning, match="ignored: \\['extra'\\]"):
        data = load_image_folder(tmp_path, pattern=r"(?P<pid>\d+)_c(?P<camid>\d)")
    assert len(data.train) == 0 and len(data.query) == 1 and len(data.gallery) == 1


def test_image_folder_from_csv(tmp_path):
    for name in ["img/a.jpg", "img/b.jpg", "img/c.jpg", "img/d.jpg", "img/e.jpg"]:
        _write_jpg(tmp_path / name)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(
        "path, pid, camid, split\n"
        "img/b.jpg,4,north,train\n"
        "img/a.jpg,4,south,\n"
        "img/c.jpg,9,north,query\n"
        "img/d.jpg,9,south,gallery\n"
        "img/e.jpg,-1,south,gallery\n"
    )
    data = load_image_folder(csv_path)
    assert data.name == "labels"
    assert [os.path.basename(p) for p in data.train.images] == ["a.jpg", "b.jpg"]
    assert data.train.pids.tolist() == [4, 4]
    assert data.train.camids.tolist() == [1, 0]  # north -> 0, south -> 1
    assert data.query.pids.tolist() == [9] and data.gallery.pids.tolist() == [9]
    assert os.path.isabs(data.train.images[0])
    # Without a camid column every camera is unknown.
    csv_path.write_text("path,pid\nimg/a.jpg,1\nimg/b.jpg,2\n")
    assert load_image_folder(csv_path).train.camids.tolist() == [-1, -1]


def test_image_folder_csv_errors(tmp_path):
    _write_jpg(tmp_path / "a.jpg")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\na.jpg,1\n")
    with pytest.raises(ValueError, match=r"'path' and 'pid'.*\['file', 'label'\]"):
        load_image_folder(bad)
    bad.write_text("path,pid\na.jpg,1\nmissing.jpg,2\n")
    with pytest.raises(FileNotFoundError, match=r"1 file.*missing\.jpg"):
        load_image_folder(bad)
    bad.write_text("path,pid,split\na.jpg,1,test\n")
    with pytest.raises(ValueError, match=r"line 2: split must be one of"):
        load_image_folder(bad)
    bad.write_text("path,pid\n")
    with pytest.raises(ValueError, match="no rows"):
        load_image_folder(bad)
    bad.write_text("path,pid\na.jpg,1\n")
    with pytest.raises(ValueError, match="pattern is not used"):
        load_image_folder(bad, pattern=r"(?P<pid>\d)")
    (tmp_path / "labels.txt").write_text("x")
    with pytest.raises(ValueError, match=r"\.csv"):
        load_image_folder(tmp_path / "labels.txt")
