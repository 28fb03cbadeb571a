"""scikit-learn's estimator checks for every public estimator that needs no torch."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from ucal import SelfPacedDBSCAN

# An all-zero row has no direction, so cosine similarity (and the Jaccard
# distance built on it) is undefined: ucal refuses it with a ValueError by
# design. This check feeds random integer data in {0, 1, 2} that contains
# such rows; the dtypes themselves are tested in test_self_paced.py.
_ZERO_ROW_REASON = "random integer data contains all-zero rows, which ucal rejects by design"


def _estimators():
    # Small, fast settings: the checks fit many times on tiny data.
    return [SelfPacedDBSCAN(k1=10, k2=3, min_samples=3)]


def _expected_failed_checks(estimator):
    return {"check_estimators_dtypes": _ZERO_ROW_REASON}


@parametrize_with_checks(_estimators(), expected_failed_checks=_expected_failed_checks)
def test_sklearn_compatible(estimator, check):
    check(estimator)
