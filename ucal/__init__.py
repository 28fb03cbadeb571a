"""ucal: Unsupervised Clustering Active Learning for person re-identification.

The clustering and refinement estimators (:class:`SelfPacedDBSCAN`,
:class:`SNPSSplitter`, :class:`MPPSMerger`) need only NumPy, SciPy and
scikit-learn. :class:`UCALReID`, the re-id trainer, needs PyTorch; it is
imported lazily so that ``import ucal`` never loads torch.
"""

import importlib

__version__ = "0.1.0"

# Public name -> module that defines it. Resolved on first access (PEP 562)
# so that the light estimators do not pay for torch.
_LAZY_ATTRS = {
    "SelfPacedDBSCAN": "ucal.cluster",
    "jaccard_distance": "ucal.cluster",
    "SNPSSplitter": "ucal.active",
    "MPPSMerger": "ucal.active",
    "ClusteringCalibrator": "ucal.active",
    "LabelMemory": "ucal.oracles",
    "LabelOracle": "ucal.oracles",
    "NoisyOracle": "ucal.oracles",
    "UCALReID": "ucal.reid",
}
_SUBMODULES = {
    "active", "annotation", "cli", "cluster", "datasets", "metrics", "oracles", "reid", "search"
}

__all__ = sorted(_LAZY_ATTRS) + ["__version__"]


def __getattr__(name):
    if name in _LAZY_ATTRS:
        module = importlib.import_module(_LAZY_ATTRS[name])
        value = getattr(module, name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"ucal.{name}")
    raise AttributeError(f"module 'ucal' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)
