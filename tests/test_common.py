"""scikit-learn's estimator checks for every public estimator that needs no torch."""

from sklearn.cluster import KMeans
from sklearn.utils.estimator_checks import parametrize_with_checks

from ucal import ClusteringCalibrator, MPPSMerger, SelfPacedDBSCAN, SNPSSplitter
from ucal.search import GalleryIndex


def _tiny_clusterer():
    # The checks fit many times on a few dozen samples: a fast, deterministic clusterer.
    return KMeans(n_clusters=3, n_init=1, random_state=0)


ESTIMATORS = [
    SelfPacedDBSCAN(k1=10, k2=3, min_samples=3),
    # k_max=2 makes SNPS split even the small clusters of the checks' data.
    SNPSSplitter(clusterer=_tiny_clusterer(), k_max=2, random_state=0),
    SNPSSplitter(clusterer=SelfPacedDBSCAN(k1=10, k2=3, min_samples=3), k_max=2, random_state=0),
    MPPSMerger(clusterer=_tiny_clusterer(), max_merge_ratio=0.5),
    MPPSMerger(clusterer=SNPSSplitter(clusterer=_tiny_clusterer(), k_max=2, random_state=0)),
    ClusteringCalibrator(
        _tiny_clusterer(), param_grid={"n_clusters": [2, 3]}, n_queries=20, random_state=0
    ),
    GalleryIndex(backend="numpy"),
]


# No expected failure: an all-zero row (check_estimators_dtypes makes one) is
# noise at cosine distance 1 from everything, as in scikit-learn.
@parametrize_with_checks(ESTIMATORS)
def test_sklearn_compatible(estimator, check):
    check(estimator)
