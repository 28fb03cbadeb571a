"""Re-id evaluation (CMC, mAP, mINP), re-ranking, clustering quality, pair verification and labeling cost."""

from ._clustering import labeling_cost, pairwise_precision_recall_fscore
from ._reid import evaluate_features, evaluate_reid
from ._rerank import rerank
from ._verification import pair_verification_scores

__all__ = [
    "evaluate_features",
    "evaluate_reid",
    "labeling_cost",
    "pair_verification_scores",
    "pairwise_precision_recall_fscore",
    "rerank",
]
