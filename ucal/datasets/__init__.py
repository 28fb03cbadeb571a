"""Re-id datasets: containers, loaders for public benchmarks and your own data, synthetic persons.

:func:`load_dataset` loads any of them by name (``DATASET_NAMES``).
Nothing here imports torch: images are file paths or uint8 NumPy arrays.
"""

from ._base import ReIDDataset, ReIDSplit
from ._folder import load_image_folder
from ._io import load_images, read_image
from ._public import load_dukemtmc, load_market1501, load_msmt17
from ._registry import DATASET_NAMES, load_dataset
from ._synthetic import make_persons, save_market1501

__all__ = [
    "DATASET_NAMES",
    "ReIDDataset",
    "ReIDSplit",
    "load_dataset",
    "load_dukemtmc",
    "load_image_folder",
    "load_images",
    "load_market1501",
    "load_msmt17",
    "make_persons",
    "read_image",
    "save_market1501",
]
