"""The re-id trainer (needs PyTorch): :class:`UCALReID`.

Everything torch-related in ucal lives here, so that ``import ucal`` and
the clustering and refinement estimators never load torch.
"""

from ._backbones import GeneralizedMeanPooling, save_weights
from ._callbacks import BestEpoch, Callback
from ._camera_proxies import CameraProxyMemory
from ._cluster_memory import ClusterMemory
from ._device import set_num_threads
from ._distributed import DistributedError
from ._pair_loss import PairSupervision
from ._pseudo_labels import DegenerateClusteringWarning
from ._estimator import UCALReID
from ._loop import TrainingLoop

__all__ = [
    "BestEpoch",
    "Callback",
    "CameraProxyMemory",
    "ClusterMemory",
    "DegenerateClusteringWarning",
    "DistributedError",
    "GeneralizedMeanPooling",
    "PairSupervision",
    "TrainingLoop",
    "UCALReID",
    "save_weights",
    "set_num_threads",
]
