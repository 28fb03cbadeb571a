"""The trainer under degenerate epochs, changed data and damaged checkpoints (issue 13)."""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sklearn.base import BaseEstimator, ClusterMixin  # noqa: E402

from ucal.metrics import pairwise_precision_recall_fscore  # noqa: E402
from ucal.reid import UCALReID  # noqa: E402

SIZE = (32, 16)


class AllNoise(ClusterMixin, BaseEstimator):
    """A clusterer that leaves every sample un-clustered."""

    def fit(self, X, y=None):
        self.labels_ = np.full(len(X), -1)
        return self


def _model(**params):
    defaults = dict(
        backbone="tiny", pretrained=False, image_size=SIZE, epochs=2, warmup_epochs=0,
        batch_size=16, iters_per_epoch=2, inference_batch_size=64, validation_size=0,
        random_state=0,
    )
    defaults.update(params)
    return UCALReID(**defaults)


def test_pairwise_scores_of_a_clustering_with_nothing_clustered_are_zeros():
    assert pairwise_precision_recall_fscore([0, 0, 1, 1], [-1, -1, -1, -1]) == (0.0, 0.0, 0.0)


def test_an_epoch_that_clusters_nothing_does_not_crash_a_fit_with_y(data, tmp_path):
    model = _model(clusterer=AllNoise(), checkpoint_dir=str(tmp_path / "run"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.fit(data.train, data.train.pids)
        assert [r["n_clusters"] for r in model.history_] == [0, 0]
        # and resuming past that epoch works too
        model.set_params(epochs=3).fit(data.train, data.train.pids, resume=True)
    assert len(model.history_) == 3


# ----------------------------------------------------- resume checks its data (5)
def _fit_run(data, run, images=None, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return _model(checkpoint_dir=str(run), **params).fit(
            data.train if images is None else images, resume=True
        )


@pytest.mark.parametrize("change", ["flipped", "other images", "reordered"])
def test_resume_refuses_other_images_of_the_same_count(data, tmp_path, change):
    images = data.train.images
    _fit_run(data, tmp_path / "run", images, epochs=1)
    other = {
        "flipped": images[:, :, ::-1],
        "other images": np.roll(images, 1, axis=2),  # shifted pixels, same count
        "reordered": images[::-1],
    }[change]
    with pytest.raises(ValueError, match="data: the training images are not the ones"):
        _fit_run(data, tmp_path / "run", np.ascontiguousarray(other), epochs=2)
    _fit_run(data, tmp_path / "run", images, epochs=2)  # the same images resume


def test_checkpoints_without_a_data_digest_still_resume(data, tmp_path):
    from ucal.reid._run_dir import load_checkpoint, save_checkpoint

    run = tmp_path / "run"
    _fit_run(data, run, epochs=1)
    path = run / "checkpoint.pt"
    state = load_checkpoint(path)
    del state["fingerprint"]["data"]  # as written before the digest existed
    torch.save(state, path)  # and in the old format, without a checksum line
    assert len(_fit_run(data, run, epochs=2).history_) == 2
    save_checkpoint(state, path)


# ------------------------------------------------------ damaged checkpoints (6)
def _damage(path, offset=-4096):
    raw = bytearray(path.read_bytes())
    start = len(raw) + offset if offset < 0 else offset
    raw[start:start + 4096] = b"\xff" * min(4096, len(raw) - start)
    path.write_bytes(bytes(raw))


def test_a_damaged_checkpoint_is_named_and_the_previous_one_is_used(data, tmp_path):
    run = tmp_path / "run"
    _fit_run(data, run, epochs=2)
    assert (run / "checkpoint.prev.pt").is_file()
    _damage(run / "checkpoint.pt", offset=len((run / "checkpoint.pt").read_bytes()) // 2)
    with pytest.warns(UserWarning, match=r"checkpoint\.pt' is damaged.*previous checkpoint"):
        model = _model(checkpoint_dir=str(run), epochs=3).fit(data.train, resume=True)
    # resumed from epoch 1: epochs 2 and 3 trained again, no NaN anywhere
    assert [r["epoch"] for r in model.history_] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in model.history_)
    # the damaged file was overwritten, never rotated over the sound fallback
    from ucal.reid._run_dir import load_checkpoint

    assert load_checkpoint(run / "checkpoint.prev.pt")["epoch"] == 2
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 3


@pytest.mark.parametrize("where", ["start", "end"])
def test_no_sound_checkpoint_left_is_an_error_naming_the_files(data, tmp_path, where):
    from ucal.reid._run_dir import DamagedCheckpointError

    run = tmp_path / "run"
    _fit_run(data, run, epochs=1)
    _damage(run / "checkpoint.pt", offset=0 if where == "start" else -4096)
    with pytest.raises(DamagedCheckpointError, match=r"checkpoint\.pt.*(damaged|cannot be read)"):
        _model(checkpoint_dir=str(run), epochs=2).fit(data.train, resume=True)


def test_a_truncated_old_format_checkpoint_names_its_file(tmp_path):
    from ucal.reid._run_dir import DamagedCheckpointError, load_checkpoint

    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DamagedCheckpointError, match="checkpoint.pt' cannot be read"):
        load_checkpoint(path)


# ------------------------------------------------------------- bad images (10)
class _Tensors(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


@pytest.mark.parametrize(
    "value, match",
    [(float("nan"), "NaN or infinite"), (255.0, r"\[0, 1\].*divide 0-255 pixels by 255")],
)
def test_float_image_tensors_with_nan_or_0_255_values_are_refused(value, match):
    images = [torch.rand(3, 32, 16) for _ in range(20)]
    images[0][0, 0, 0] = value
    with pytest.raises(ValueError, match=match):
        _model(epochs=1).fit(_Tensors(images))


# ------------------------------------------------- unwritable answers file (3)
def test_fit_finds_an_unwritable_answers_file_before_the_oracle_is_asked(data, tmp_path):
    calls = []

    def oracle(pairs):
        calls.append(len(pairs))
        return np.ones(len(pairs), dtype=bool)

    path = tmp_path / "no-such-folder" / "answers.jsonl"
    # the held-out answers' file, next to it, is the first one asked into
    with pytest.raises(OSError, match=r"no-such-folder/answers\.validation\.jsonl"):
        _model(validation_size=5).fit(data.train, oracle=oracle, label_memory=str(path))
    assert calls == []


def test_nan_in_y_is_refused_by_the_trainer(data):
    y = data.train.pids.astype(float)
    y[3] = np.nan
    with pytest.raises(ValueError, match="y holds NaN"):
        _model().fit(data.train, y)
