"""The trainer's clustering searches on its own device when the user left it to "auto"."""

import pytest

torch = pytest.importorskip("torch")

from ucal import SelfPacedDBSCAN, UCALReID  # noqa: E402
from ucal.cluster import ExactSearch, IVFSearch  # noqa: E402
from ucal.reid._loop import _fresh_clusterer  # noqa: E402


def test_auto_search_moves_to_an_accelerator():
    est = UCALReID(clusterer=SelfPacedDBSCAN(k1=12))
    on_gpu = _fresh_clusterer(est, torch.device("cuda", 1))
    assert isinstance(on_gpu.search, ExactSearch)
    assert (on_gpu.search.backend, on_gpu.search.device) == ("torch", "cuda:1")
    assert on_gpu.k1 == 12 and est.clusterer.search == "auto"  # the user's object is untouched
    assert _fresh_clusterer(est, torch.device("cpu")).search == "auto"
    assert _fresh_clusterer(UCALReID(), torch.device("cuda")).search.backend == "torch"


def test_an_explicit_search_is_kept_on_an_accelerator():
    chosen = IVFSearch(n_probe=8)
    est = UCALReID(clusterer=SelfPacedDBSCAN(search=chosen))
    kept = _fresh_clusterer(est, torch.device("cuda")).search
    assert isinstance(kept, IVFSearch) and kept.n_probe == 8


def _protocol(seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, 24))
    g_ids = np.repeat(np.arange(12), 6)
    q_ids = np.arange(12)
    gallery = centres[g_ids] + 1.3 * rng.normal(size=(72, 24))
    query = centres[q_ids] + 1.3 * rng.normal(size=(12, 24))
    return query.astype(np.float32), gallery.astype(np.float32), q_ids, g_ids


def test_rerank_on_a_torch_device_equals_the_numpy_blocks():
    import numpy as np

    from ucal.metrics import evaluate_features

    q, g, q_ids, g_ids = _protocol()
    plain = evaluate_features(q, g, q_ids, g_ids, rerank={"k1": 8, "k2": 3})
    on_torch = evaluate_features(
        q, g, q_ids, g_ids,
        rerank={"k1": 8, "k2": 3, "search": ExactSearch("torch", device="cpu", block_rows=7)},
    )
    assert on_torch["mAP"] == pytest.approx(plain["mAP"], abs=1e-6)
    np.testing.assert_allclose(on_torch["cmc"], plain["cmc"], atol=1e-6)
    no_rerank = evaluate_features(q, g, q_ids, g_ids)
    assert plain["mAP"] != pytest.approx(no_rerank["mAP"], abs=1e-6)  # re-ranking did something


def test_rerank_refuses_an_approximate_search():
    from ucal.metrics import evaluate_features

    q, g, q_ids, g_ids = _protocol()
    with pytest.raises(ValueError, match="exact neighbours"):
        evaluate_features(q, g, q_ids, g_ids, rerank={"search": IVFSearch()})
    with pytest.raises(ValueError, match="metric='cosine'"):
        evaluate_features(q, g, q_ids, g_ids, metric="euclidean",
                          rerank={"search": ExactSearch("torch", device="cpu")})
