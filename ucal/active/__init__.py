"""Oracle-driven refinement of a clustering: SNPS (split), MPPS (merge), calibration.

Both are scikit-learn estimators that need no torch; they compose by
nesting, sharing one label memory::

    MPPSMerger(clusterer=SNPSSplitter(clusterer=SelfPacedDBSCAN()))
"""

from ._base import BaseRefiner
from ._calibration import ClusteringCalibrator, near_neighbour_pairs
from ._constraints import AnswerConstraints
from ._mpps import MPPSMerger
from ._snps import SNPSSplitter

__all__ = [
    "AnswerConstraints",
    "BaseRefiner",
    "ClusteringCalibrator",
    "MPPSMerger",
    "SNPSSplitter",
    "near_neighbour_pairs",
]
