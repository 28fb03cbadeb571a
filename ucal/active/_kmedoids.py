"""k-medoids engines for SNPS: FasterPAM (default) or scikit-learn-extra."""

import numpy as np

__all__ = ["check_engine", "kmedoids"]

_EXTRA_FIX = (
    "engine='sklearn_extra' needs scikit-learn-extra (pip install "
    "'ucal[sklearn-extra]'). scikit-learn-extra 0.3.0 is built against NumPy 1 "
    "and does not import beside NumPy 2: install it in an environment with "
    "'numpy<2', or use the default engine='fasterpam' (the kmedoids package), "
    "which gives the same PAM-quality medoids."
)


def check_engine(engine):
    """Fail early, with the fix, when the selected engine cannot be imported."""
    if engine == "sklearn_extra":
        try:
            from sklearn_extra.cluster import KMedoids  # noqa: F401
        except Exception as exc:  # ImportError, or a NumPy ABI error
            raise ImportError(f"{_EXTRA_FIX} (import failed with: {exc})") from exc


def kmedoids(diss, n_clusters, *, engine="fasterpam", seed=0):
    """k-medoids on a precomputed dissimilarity matrix.

    Parameters
    ----------
    diss : ndarray of shape (n, n)
        Symmetric dissimilarities, zero diagonal.
    n_clusters : int
        Number of medoids.
    engine : {"fasterpam", "sklearn_extra"}
        Implementation.
    seed : int
        Seed of the engine's own randomness.

    Returns
    -------
    labels : ndarray of shape (n,), dtype int64
        Index of each point's medoid in ``medoids``.
    medoids : ndarray of shape (n_clusters,), dtype int64
        Row indices of the medoids.
    """
    if engine == "fasterpam":
        import kmedoids as _kmedoids

        # BUILD initialisation: deterministic and close to the PAM optimum.
        result = _kmedoids.fasterpam(
            diss, n_clusters, init="build", random_state=seed, n_cpu=1
        )
        return result.labels.astype(np.int64), np.asarray(result.medoids, dtype=np.int64)
    from sklearn_extra.cluster import KMedoids

    model = KMedoids(
        n_clusters=n_clusters, metric="precomputed", method="pam", init="build",
        random_state=seed,
    ).fit(diss)
    return model.labels_.astype(np.int64), model.medoid_indices_.astype(np.int64)
