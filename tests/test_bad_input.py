"""Clear errors instead of silent acceptance (issue 13, items 10 and 11, torch-free part)."""

import warnings

import numpy as np
import pytest

from ucal import MPPSMerger, SelfPacedDBSCAN, SNPSSplitter
from ucal.cluster._knn import l2_normalize
from ucal.metrics import pair_verification_scores


def _blobs(seed=0, n_per=12, k=6, d=16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    X = np.repeat(centres, n_per, axis=0) + 0.05 * rng.normal(size=(k * n_per, d))
    return X, np.repeat(np.arange(k), n_per)


@pytest.mark.parametrize("scale", [1e19, 1e30, 1e-300, 1e300])
def test_features_of_any_finite_scale_cluster_as_at_unit_scale(scale):
    X, _ = _blobs()
    expected = SelfPacedDBSCAN(k1=10).fit(X).labels_
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "all-zero rows" warning for tiny features
        found = SelfPacedDBSCAN(k1=10).fit(X * scale).labels_
    np.testing.assert_array_equal(found, expected)


def test_l2_normalize_keeps_direction_at_extreme_scales_and_true_zero_rows():
    X = np.array([[3e19, 4e19], [3e-300, 4e-300], [0.0, 0.0], [-1e300, 0.0]])
    out = l2_normalize(X, zero_rows="keep")
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.6, 0.8], [0, 0], [-1, 0]], rtol=1e-6)
    with pytest.raises(ValueError, match="1 all-zero row.*index 2"):
        l2_normalize(X)


def test_verification_scores_do_not_overflow():
    X, y = _blobs()
    pairs = np.array([[0, 1], [0, 20], [13, 14], [13, 40]])
    same = y[pairs[:, 0]] == y[pairs[:, 1]]
    assert pair_verification_scores(X * 1e20, pairs, same)["auc"] == 1.0


@pytest.mark.parametrize("Refiner", [SNPSSplitter, MPPSMerger])
def test_nan_in_y_is_refused_by_the_refiners(Refiner):
    X, y = _blobs()
    y = y.astype(float)
    y[7] = np.nan
    with pytest.raises(ValueError, match="y holds NaN \\(first at index 7\\)"):
        Refiner().fit(X, y)


def test_labels_of_the_wrong_shape_are_named_labels_not_y():
    X, y = _blobs()
    with pytest.raises(ValueError, match="^labels must be 1D"):
        SNPSSplitter().fit(X, y, labels=np.zeros((len(X), 2), dtype=int))
    with pytest.raises(ValueError, match="^labels has 5 entries"):
        SNPSSplitter().fit(X, y, labels=np.zeros(5, dtype=int))
    # a column vector is still fine
    SNPSSplitter().fit(X, y, labels=y.reshape(-1, 1))
