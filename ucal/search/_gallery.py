"""A gallery of embeddings, indexed once and searched many times."""

import json
import logging
import numbers
import os

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from ucal.utils import atomic_write

__all__ = ["GalleryIndex"]

logger = logging.getLogger(__name__)

# Bytes of one block of query x gallery similarities (the NumPy path's working memory).
_BLOCK_BYTES = 256 * 1024 * 1024
# Version of the saved layout.
_FORMAT = 1


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


class GalleryIndex(BaseEstimator):
    """A searchable gallery: the nearest gallery images of each query, by cosine similarity.

    Fit it once on the gallery's embeddings (from :meth:`UCALReID.transform
    <ucal.reid.UCALReID.transform>` or an exported model), :meth:`save` it,
    :meth:`load` it elsewhere and search it with :meth:`kneighbors`.
    Needs NumPy only; faiss is used when installed.

    Parameters
    ----------
    backend : {"auto", "numpy", "faiss", "faiss-ivf"}, default="auto"
        ``"numpy"``: exact, blocked matrix products. ``"faiss"``: exact,
        faiss's flat inner-product index. ``"faiss-ivf"``: faiss's inverted
        file (approximate; ``n_probe`` lists are scanned). ``"auto"``: faiss
        flat when faiss is installed, else NumPy; always exact. Measured
        (``benchmarks/results/deploy.md``): at 1,000,000 gallery images of
        256 dimensions an exact query takes 55 ms (NumPy) to 90 ms (faiss;
        4 times NumPy's throughput on batches), the inverted file 1 ms at 64
        probes but with a recall@10 of 0.51 on that data: it is for
        galleries where you have measured that its recall suffices.
    n_probe : int, default=64
        Lists scanned per query by the inverted file.
    rerank : bool, default=False
        Re-rank each query's ``rerank_depth`` best candidates with the
        k-reciprocal re-ranking of the evaluation protocol
        (:func:`ucal.metrics.rerank`, k1 = 20, k2 = 6, lambda = 0.3),
        computed on those candidates.
    rerank_depth : int, default=100
        Candidates re-ranked per query.
    random_state : int or None, default=0
        Seed of the inverted file's k-means.

    Attributes
    ----------
    embeddings_ : ndarray of shape (n_gallery, dim), float32
        The gallery, L2-normalised.
    ids_ : ndarray of shape (n_gallery,) or None
        Identity of each gallery image, when given.
    cameras_ : ndarray of shape (n_gallery,) or None
        Camera of each gallery image, when given.
    names_ : list of str or None
        A name per gallery image (its file, say), when given.
    fingerprint_ : str or None
        The fingerprint of the model that made the embeddings, when given.
    backend_ : str
        The backend used.
    n_features_in_ : int
        Embedding size.

    Examples
    --------
    >>> import numpy as np
    >>> from ucal.search import GalleryIndex
    >>> gallery = np.eye(4, dtype=np.float32)
    >>> index = GalleryIndex().fit(gallery, cameras=[0, 0, 1, 1])
    >>> query = np.array([[1.0, 0.3, 0.2, 0.1]])
    >>> sims, idx = index.kneighbors(query, n_neighbors=2)
    >>> idx.tolist()
    [[0, 1]]
    >>> index.kneighbors(query, 2, cameras=[0])[1].tolist()  # across cameras
    [[2, 3]]
    """

    _parameter_constraints = {
        "backend": [StrOptions({"auto", "numpy", "faiss", "faiss-ivf"})],
        "n_probe": [Interval(numbers.Integral, 1, None, closed="left")],
        "rerank": ["boolean"],
        "rerank_depth": [Interval(numbers.Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, backend="auto", *, n_probe=64, rerank=False, rerank_depth=100,
                 random_state=0):
        self.backend = backend
        self.n_probe = n_probe
        self.rerank = rerank
        self.rerank_depth = rerank_depth
        self.random_state = random_state

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None, *, ids=None, cameras=None, names=None, fingerprint=None):
        """Index the gallery.

        Parameters
        ----------
        X : array-like of shape (n_gallery, dim)
            Gallery embeddings (normalised here).
        y : None
            Ignored (scikit-learn's signature); identities go in ``ids``.
        ids : array-like of shape (n_gallery,), default=None
            Identity of each image, when known (returned with the matches).
        cameras : array-like of shape (n_gallery,), default=None
            Camera of each image (for same-camera filtering).
        names : sequence of str, default=None
            A name per image (its file path, say).
        fingerprint : str, default=None
            The model's fingerprint (``info["fingerprint"]`` of
            :meth:`UCALReID.export <ucal.reid.UCALReID.export>`); queries
            that give another one are refused.

        Returns
        -------
        self : GalleryIndex
        """
        self._validate_params()
        if hasattr(X, "shape") and len(X.shape) == 2 and X.shape[0] == 0:
            raise ValueError("The gallery is empty: there is nothing to search.")
        X = _unit_rows(X, "the gallery embeddings", self, reset=True)
        n = X.shape[0]
        self.embeddings_ = X
        self.ids_ = _per_image(ids, n, "ids")
        self.cameras_ = _per_image(cameras, n, "cameras")
        if names is not None:
            names = [str(name) for name in names]
            if len(names) != n:
                raise ValueError(f"names has {len(names)} entries for {n} gallery images.")
        self.names_ = names
        self.fingerprint_ = fingerprint
        self.backend_ = self._resolve_backend(n)
        self._build()
        return self

    def _resolve_backend(self, n):
        faiss = _faiss()
        if self.backend == "auto":
            return "numpy" if faiss is None else "faiss"
        if self.backend.startswith("faiss") and faiss is None:
            raise ImportError(f"backend={self.backend!r} needs faiss: pip install faiss-cpu.")
        return self.backend

    def _build(self, index=None):
        self._index = None
        if self.backend_ == "numpy":
            return
        faiss = _faiss()
        if index is not None:
            self._index = index
        elif self.backend_ == "faiss":
            self._index = faiss.IndexFlatIP(self.n_features_in_)
            self._index.add(self.embeddings_)
        else:
            n = self.embeddings_.shape[0]
            # about 4 sqrt(n) lists, with the 39 training points per list faiss asks for
            n_lists = max(1, min(int(4 * np.sqrt(n)), n // 39))
            quantizer = faiss.IndexFlatIP(self.n_features_in_)
            index = faiss.IndexIVFFlat(quantizer, self.n_features_in_, n_lists,
                                       faiss.METRIC_INNER_PRODUCT)
            rng = np.random.RandomState(
                self.random_state if isinstance(self.random_state, numbers.Integral) else None)
            sample = self.embeddings_[rng.choice(n, min(n, 64 * n_lists), replace=False)]
            index.cp.seed = int(rng.randint(2**31 - 1))
            index.train(sample)
            index.add(self.embeddings_)
            self._index = index
        if self.backend_ == "faiss-ivf":
            self._index.nprobe = int(self.n_probe)

    # --------------------------------------------------------------- search
    def kneighbors(self, X, n_neighbors=10, *, cameras=None, ids=None, fingerprint=None):
        """The ``n_neighbors`` most similar gallery images of each query.

        Parameters
        ----------
        X : array-like of shape (n_queries, dim)
            Query embeddings (normalised here).
        n_neighbors : int, default=10
            Matches per query (fewer when the gallery has fewer).
        cameras : array-like of shape (n_queries,), default=None
            The queries' cameras. Without ``ids``: gallery images of the
            query's camera are left out (search across cameras). With
            ``ids``, as in the evaluation protocol: only gallery images of
            the same identity *and* camera are left out.
        ids : array-like of shape (n_queries,), default=None
            The queries' identities (for the protocol's filtering).
        fingerprint : str, default=None
            The model that made the query embeddings; refused when the
            gallery was indexed with another model's.

        Returns
        -------
        similarities : ndarray of shape (n_queries, n_neighbors), float32
            Cosine similarities (after re-ranking: ``1 -`` the re-ranked
            distance), best first; ``-inf`` where no match is left.
        indices : ndarray of shape (n_queries, n_neighbors), int64
            Gallery positions, ``-1`` where no match is left.
        """
        check_is_fitted(self, "embeddings_")
        if fingerprint is not None and self.fingerprint_ is not None and (
            fingerprint != self.fingerprint_
        ):
            raise ValueError(
                "The query embeddings come from another model than the gallery's (fingerprint "
                f"{fingerprint[:12]}... against {self.fingerprint_[:12]}...): index the gallery "
                "again with this model."
            )
        Q = _unit_rows(X, "the query embeddings")
        if Q.shape[1] != self.n_features_in_:
            raise ValueError(
                f"The query embeddings have {Q.shape[1]} dimensions and the gallery's "
                f"{self.n_features_in_}: they come from different models."
            )
        if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, numbers.Integral) or (
            n_neighbors < 1
        ):
            raise ValueError(f"n_neighbors must be an integer >= 1, got {n_neighbors!r}.")
        n_q = Q.shape[0]
        q_cams = _per_image(cameras, n_q, "cameras")
        q_ids = _per_image(ids, n_q, "ids")
        if q_ids is not None and (q_cams is None or self.ids_ is None or self.cameras_ is None):
            raise ValueError(
                "ids filters the protocol's way (same identity and camera): it needs the "
                "queries' cameras and the gallery's ids and cameras."
            )
        if q_cams is not None and self.cameras_ is None:
            raise ValueError("cameras was given, but the gallery was indexed without cameras.")
        n_gallery = self.embeddings_.shape[0]
        k = min(int(n_neighbors), n_gallery)
        depth = min(max(k, int(self.rerank_depth)), n_gallery) if self.rerank else k
        if self.backend_ == "faiss-ivf":
            self._index.nprobe = int(self.n_probe)  # set_params after fit counts too
        sims, idx = self._search(Q, depth, q_cams, q_ids)
        if self.rerank:
            sims, idx = self._rerank(Q, sims, idx)
        return sims[:, :k], idx[:, :k]

    def _excluded(self, q_cams, q_ids, rows):
        """Boolean (len(rows), n_gallery): gallery images each query must not see."""
        if q_cams is None:
            return None
        same_cam = q_cams[rows, None] == self.cameras_[None, :]
        if q_ids is None:
            return same_cam
        return same_cam & (q_ids[rows, None] == self.ids_[None, :])

    def _search(self, Q, k, q_cams, q_ids):
        n_q = Q.shape[0]
        sims = np.full((n_q, k), -np.inf, dtype=np.float32)
        idx = np.full((n_q, k), -1, dtype=np.int64)
        # NumPy holds a block of queries x gallery similarities; faiss only its top lists
        step = (max(1, min(n_q, _BLOCK_BYTES // (4 * self.embeddings_.shape[0])))
                if self._index is None else max(1, n_q))
        for start in range(0, n_q, step):
            rows = np.arange(start, min(start + step, n_q))
            if self._index is None:
                block = Q[rows] @ self.embeddings_.T
                excluded = self._excluded(q_cams, q_ids, rows)
                if excluded is not None:
                    block[excluded] = -np.inf
                top = _top_k(block, k)
                sims[rows] = np.take_along_axis(block, top, axis=1)
                idx[rows] = top
            else:
                s, i = self._search_faiss(Q[rows], k, q_cams, q_ids, rows)
                sims[rows], idx[rows] = s, i
        idx[~np.isfinite(sims)] = -1
        return sims, idx

    def _search_faiss(self, Q, k, q_cams, q_ids, rows):
        """faiss's top matches, asking for more until ``k`` survive the filtering."""
        n_gallery = self.embeddings_.shape[0]
        want = k
        while True:
            want = min(want, n_gallery)
            s, i = self._index.search(np.ascontiguousarray(Q), want)
            s = s.astype(np.float32)
            valid = i >= 0
            excluded = self._excluded(q_cams, q_ids, rows)
            if excluded is not None:
                hit = np.zeros_like(valid)
                hit[valid] = excluded[np.nonzero(valid)[0], i[valid]]
                valid &= ~hit
            if want >= n_gallery or (valid.sum(1) >= k).all():
                break
            want *= 4
        out_s = np.full((len(rows), k), -np.inf, dtype=np.float32)
        out_i = np.full((len(rows), k), -1, dtype=np.int64)
        for r in range(len(rows)):
            keep = np.flatnonzero(valid[r])
            keep = keep[np.lexsort((i[r, keep], -s[r, keep]))][:k]  # ties: lower index first
            out_s[r, :len(keep)], out_i[r, :len(keep)] = s[r, keep], i[r, keep]
        return out_s, out_i

    def _rerank(self, Q, sims, idx):
        """k-reciprocal re-ranking of each query's candidates, among themselves."""
        from ucal.metrics import rerank

        out_s = np.full_like(sims, -np.inf)
        out_i = np.full_like(idx, -1)
        for r in range(Q.shape[0]):
            cand = idx[r][idx[r] >= 0]
            if not len(cand):
                continue
            G = self.embeddings_[cand]
            q = Q[r:r + 1]
            # squared Euclidean distances of unit vectors (clipped: rounding makes -1e-7)
            q_g = np.clip(2.0 - 2.0 * (q @ G.T), 0.0, None)
            q_q = np.zeros((1, 1), dtype=np.float32)
            g_g = np.clip(2.0 - 2.0 * (G @ G.T), 0.0, None)
            dist = rerank(q_g, q_q, g_g, k1=min(20, len(cand)), k2=min(6, len(cand)))[0]
            order = np.argsort(dist, kind="stable")
            out_i[r, :len(cand)] = cand[order]
            out_s[r, :len(cand)] = 1.0 - dist[order]
        return out_s, out_i

    # ------------------------------------------------------------ save/load
    def save(self, path):
        """Write the index to the folder ``path`` (created; files replaced atomically).

        Parameters
        ----------
        path : str or path-like
            A folder: ``embeddings.npy``, ``meta.json``, and the ids,
            cameras, names and faiss inverted file when there are.
        """
        check_is_fitted(self, "embeddings_")
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        arrays = {"embeddings": self.embeddings_, "ids": self.ids_, "cameras": self.cameras_}
        for name, array in arrays.items():
            if array is not None:
                atomic_write(os.path.join(path, f"{name}.npy"),
                             lambda f, a=array: np.save(f, a, allow_pickle=False))
        if self.backend_ == "faiss-ivf":
            faiss = _faiss()
            data = faiss.serialize_index(self._index)
            atomic_write(os.path.join(path, "ivf.faiss"), lambda f: f.write(data.tobytes()))
        meta = {
            "ucal_gallery_index": _FORMAT, "params": self.get_params(),
            "backend": self.backend_, "n_gallery": int(self.embeddings_.shape[0]),
            "dim": int(self.n_features_in_), "fingerprint": self.fingerprint_,
            "names": self.names_, "has_ids": self.ids_ is not None,
            "has_cameras": self.cameras_ is not None,
        }
        payload = json.dumps(meta).encode("utf-8")
        atomic_write(os.path.join(path, "meta.json"), lambda f: f.write(payload))

    @classmethod
    def load(cls, path):
        """Read an index written by :meth:`save`.

        Parameters
        ----------
        path : str or path-like
            The folder.

        Returns
        -------
        index : GalleryIndex
        """
        path = os.fspath(path)
        meta_path = os.path.join(path, "meta.json")
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"No gallery index in {path!r} (no meta.json).")
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        if not isinstance(meta, dict) or meta.get("ucal_gallery_index") != _FORMAT:
            raise ValueError(f"{path!r} does not hold a ucal gallery index.")
        index = cls(**meta["params"])

        def array(name):
            return np.load(os.path.join(path, f"{name}.npy"), allow_pickle=False)

        index.embeddings_ = array("embeddings")
        if index.embeddings_.shape != (meta["n_gallery"], meta["dim"]):
            raise ValueError(f"{path!r}: embeddings.npy does not match meta.json.")
        index.ids_ = array("ids") if meta["has_ids"] else None
        index.cameras_ = array("cameras") if meta["has_cameras"] else None
        index.names_ = meta["names"]
        index.fingerprint_ = meta["fingerprint"]
        index.n_features_in_ = int(meta["dim"])
        index.backend_ = meta["backend"]
        if index.backend_.startswith("faiss") and _faiss() is None:
            logger.warning("The index was built with faiss, which is not installed here: "
                           "searching it exactly with NumPy.")
            index.backend_ = "numpy"
        stored = None
        if index.backend_ == "faiss-ivf":
            with open(os.path.join(path, "ivf.faiss"), "rb") as f:
                stored = _faiss().deserialize_index(np.frombuffer(f.read(), dtype=np.uint8))
        index._build(stored)
        return index


def _unit_rows(X, what, estimator=None, reset=False):
    """Validated float32 rows, L2-normalised (a zero row stays zero: similar to nothing)."""
    if estimator is not None:
        X = validate_data(estimator, X, dtype=np.float32, reset=reset)
    else:
        X = check_array(X, dtype=np.float32, input_name=what)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return np.ascontiguousarray(X / np.maximum(norms, np.finfo(np.float32).tiny))


def _per_image(values, n, name):
    if values is None:
        return None
    values = np.asarray(values)
    if values.shape != (n,):
        raise ValueError(f"{name} must have one entry per image ({n}), got shape {values.shape}.")
    return values


def _top_k(block, k):
    """Column indices of each row's k largest values, best first (ties: lower index)."""
    n = block.shape[1]
    if k >= n:
        return np.lexsort((np.tile(np.arange(n), (block.shape[0], 1)), -block), axis=1)
    out = np.empty((block.shape[0], k), dtype=np.int64)
    kth = -np.partition(-block, k - 1, axis=1)[:, k - 1]
    for r in range(block.shape[0]):
        # every column tied with the k-th value competes, so that ties go to the lower index
        candidates = np.flatnonzero(block[r] >= kth[r])
        order = np.lexsort((candidates, -block[r, candidates]))
        out[r] = candidates[order[:k]]
    return out
