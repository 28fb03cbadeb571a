"""Clustering of embeddings: the sparse k-reciprocal Jaccard distance, SpCL's
self-paced DBSCAN, and the neighbour searches behind them (exact and
approximate). Needs only NumPy, SciPy and scikit-learn (faiss and torch for
the backends that use them)."""

from ._jaccard import jaccard_distance
from ._search import ExactSearch, HNSWSearch, IVFSearch, NeighborSearch
from ._self_paced import SelfPacedDBSCAN

__all__ = [
    "ExactSearch",
    "HNSWSearch",
    "IVFSearch",
    "NeighborSearch",
    "SelfPacedDBSCAN",
    "jaccard_distance",
]
