"""Re-id evaluation (CMC, mAP, mINP), re-ranking, clustering quality and labeling cost."""

from ._clustering import labeling_cost, pairwise_precision_recall_fscore
from ._reid import evaluate_features, evaluate_reid
from ._rerank import rerank

__all__ = [
    "evaluate_features",
    "evaluate_reid",
    "labeling_cost",
    "pairwise_precision_recall_fscore",
    "rerank",
]
