"""Clustering of embeddings: exact sparse k-reciprocal Jaccard distance and
SpCL's self-paced DBSCAN. Needs only NumPy, SciPy and scikit-learn."""

from ._jaccard import jaccard_distance
from ._self_paced import SelfPacedDBSCAN

__all__ = ["SelfPacedDBSCAN", "jaccard_distance"]
