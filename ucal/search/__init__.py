"""Search a gallery by image: :class:`GalleryIndex` (NumPy; faiss when installed).

Needs no torch: index the embeddings that :meth:`UCALReID.transform
<ucal.reid.UCALReID.transform>` or an exported model gives, save the index,
and search it anywhere.
"""

from ._gallery import GalleryIndex

__all__ = ["GalleryIndex"]
