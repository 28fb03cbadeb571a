"""GalleryIndex: search equals a brute-force ranking, filters, re-ranking, save/load, errors."""

import numpy as np
import pytest

from ucal.search import GalleryIndex


def _data(n=300, n_q=12, dim=16, seed=0):
    rng = np.random.RandomState(seed)
    G = rng.randn(n, dim).astype(np.float32)
    Q = rng.randn(n_q, dim).astype(np.float32)
    return G, Q, rng.randint(0, 4, n), rng.randint(0, 30, n), rng


def _brute(G, Q, k, excluded=None):
    G = G / np.linalg.norm(G, axis=1, keepdims=True)
    Q = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    sims = Q @ G.T
    if excluded is not None:
        sims = np.where(excluded, -np.inf, sims)
    order = np.lexsort((np.tile(np.arange(G.shape[0]), (Q.shape[0], 1)), -sims), axis=1)
    return np.take_along_axis(sims, order, 1)[:, :k], order[:, :k]


def _backends():
    out = ["numpy"]
    try:
        import faiss  # noqa: F401
        out += ["faiss", "faiss-ivf"]
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("backend", _backends())
def test_search_equals_a_brute_force_ranking(backend):
    G, Q, cams, ids, _ = _data()
    # n_probe over the number of lists: the inverted file scans everything, so exact
    index = GalleryIndex(backend, n_probe=10_000).fit(G)
    sims, idx = index.kneighbors(Q, 7)
    ref_s, ref_i = _brute(G, Q, 7)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(sims, ref_s, atol=1e-5)


@pytest.mark.parametrize("backend", _backends())
def test_camera_filters_across_cameras_and_by_the_protocol(backend):
    G, Q, cams, ids, rng = _data()
    q_cams, q_ids = rng.randint(0, 4, len(Q)), rng.randint(0, 30, len(Q))
    index = GalleryIndex(backend, n_probe=10_000).fit(G, ids=ids, cameras=cams)
    _, idx = index.kneighbors(Q, 9, cameras=q_cams)
    np.testing.assert_array_equal(idx, _brute(G, Q, 9, q_cams[:, None] == cams[None, :])[1])
    assert not (cams[idx] == q_cams[:, None]).any()
    _, idx = index.kneighbors(Q, 9, cameras=q_cams, ids=q_ids)
    protocol = (q_cams[:, None] == cams[None, :]) & (q_ids[:, None] == ids[None, :])
    np.testing.assert_array_equal(idx, _brute(G, Q, 9, protocol)[1])


def test_fewer_matches_than_asked_are_marked():
    G = np.eye(3, dtype=np.float32)
    index = GalleryIndex("numpy").fit(G, cameras=[0, 0, 1])
    sims, idx = index.kneighbors(G[:1], 3, cameras=[0])
    assert idx.tolist() == [[2, -1, -1]] and np.isneginf(sims[0, 1:]).all()


def test_reranking_reorders_the_candidates_only():
    G, Q, *_ = _data(n=200)
    plain = GalleryIndex("numpy").fit(G)
    reranked = GalleryIndex("numpy", rerank=True, rerank_depth=30).fit(G)
    _, top30 = plain.kneighbors(Q, 30)
    sims, idx = reranked.kneighbors(Q, 30)
    for a, b in zip(top30, idx):
        assert sorted(a) == sorted(b)  # the same candidates...
    assert not np.array_equal(top30, idx)  # ...in another order
    assert (np.diff(sims, axis=1) <= 1e-6).all()


@pytest.mark.parametrize("backend", _backends())
def test_save_and_load_give_the_same_answers(tmp_path, backend):
    G, Q, cams, ids, _ = _data()
    index = GalleryIndex(backend, n_probe=3).fit(G, ids=ids, cameras=cams,
                                                 names=[f"g{k}.jpg" for k in range(len(G))],
                                                 fingerprint="abc")
    index.save(tmp_path / "gallery")
    loaded = GalleryIndex.load(tmp_path / "gallery")
    assert loaded.backend_ == index.backend_ and loaded.names_[5] == "g5.jpg"
    for a, b in zip(index.kneighbors(Q, 5, cameras=cams[:12]),
                    loaded.kneighbors(Q, 5, cameras=cams[:12])):
        np.testing.assert_array_equal(a, b)


def test_bad_input_gets_a_clear_error(tmp_path):
    G, Q, cams, *_ = _data()
    with pytest.raises(ValueError, match="gallery is empty"):
        GalleryIndex().fit(np.empty((0, 4)))
    index = GalleryIndex("numpy").fit(G, fingerprint="model-a")
    with pytest.raises(ValueError, match="another model"):
        index.kneighbors(Q, 3, fingerprint="model-b")
    with pytest.raises(ValueError, match="16 dimensions and the gallery's|dimensions"):
        index.kneighbors(Q[:, :8], 3)
    with pytest.raises(ValueError, match="without cameras"):
        index.kneighbors(Q, 3, cameras=np.zeros(len(Q), int))
    with pytest.raises(ValueError, match="NaN|infinity"):
        index.kneighbors(np.full((1, 16), np.nan), 3)
    with pytest.raises(ValueError, match="n_neighbors"):
        index.kneighbors(Q, 0)
    with pytest.raises(FileNotFoundError, match="No gallery index"):
        GalleryIndex.load(tmp_path / "nothing")
    with pytest.raises(ValueError, match="one entry per image"):
        GalleryIndex().fit(G, cameras=[0, 1])


@pytest.mark.parametrize("backend", _backends())
def test_ties_go_to_the_lower_index_on_every_backend(backend):
    G = np.tile(np.eye(4, dtype=np.float32), (50, 1))  # every image copied 50 times
    index = GalleryIndex(backend, n_probe=10_000).fit(G)
    assert index.kneighbors(np.array([[1, 0, 0, 0]], np.float32), 5)[1].tolist() == [
        [0, 4, 8, 12, 16]]


def test_reranking_a_gallery_smaller_than_its_depth():
    G, Q, *_ = _data(n=50)
    sims, idx = GalleryIndex("numpy", rerank=True).fit(G).kneighbors(Q[:2], 5)
    assert idx.shape == (2, 5) and (idx >= 0).all()


def test_a_tiny_gallery_gets_an_inverted_file_and_probes_can_change_after_fit():
    pytest.importorskip("faiss")
    G, Q, *_ = _data(n=10)
    index = GalleryIndex("faiss-ivf").fit(G)
    assert index.kneighbors(Q, 3)[1].shape == (len(Q), 3)
    G, Q, *_ = _data(n=4000)
    index = GalleryIndex("faiss-ivf", n_probe=1).fit(G)
    few = index.kneighbors(Q, 10)[1]
    index.set_params(n_probe=10_000)
    np.testing.assert_array_equal(index.kneighbors(Q, 10)[1], _brute(G, Q, 10)[1])
    assert not np.array_equal(few, _brute(G, Q, 10)[1])
