"""Re-id datasets: containers, loaders for public benchmarks and your own data, synthetic persons.

Nothing here imports torch: images are file paths or uint8 NumPy arrays.
"""

from ._base import ReIDDataset, ReIDSplit
from ._folder import load_image_folder
from ._io import load_images, read_image
from ._public import load_dukemtmc, load_market1501, load_msmt17
from ._synthetic import make_persons, save_market1501

__all__ = [
    "ReIDDataset",
    "ReIDSplit",
    "load_dukemtmc",
    "load_image_folder",
    "load_images",
    "load_market1501",
    "load_msmt17",
    "make_persons",
    "read_image",
    "save_market1501",
]
