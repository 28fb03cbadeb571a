"""Primitives shared by the subpackages: labels, validation, durable files.

Private to ucal (no public API): each primitive has exactly one home here,
so that the clustering, refinement, oracle and training code agree on
what a label, a feature matrix or an atomic write is.
"""

from ._files import atomic_write, fsync_dir
from ._labels import outliers_as_singletons, relabel
from ._validation import check_dense_2d, check_labels

__all__ = [
    "atomic_write",
    "check_dense_2d",
    "check_labels",
    "fsync_dir",
    "outliers_as_singletons",
    "relabel",
]
