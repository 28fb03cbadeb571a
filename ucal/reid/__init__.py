"""The re-id trainer (needs PyTorch): :class:`UCALReID`.

Everything torch-related in ucal lives here, so that ``import ucal`` and
the clustering and refinement estimators never load torch.
"""

from ._estimator import UCALReID

__all__ = ["UCALReID"]
