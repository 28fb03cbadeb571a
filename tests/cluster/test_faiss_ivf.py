"""faiss's inverted files (IVFSearch): codes, exact rescoring,
the GPU wiring, and the refusals (faiss is optional: the faiss-free tests run
everywhere)."""

import numpy as np
import pytest

import ucal.cluster._faiss as faiss_module
import ucal.cluster._search as search_module
from ucal.cluster import ExactSearch, IVFSearch
from ucal.cluster._faiss import code_layout, gpu_of, on_device, pq_layout, rescore
from ucal.cluster._knn import UnitRows
from ucal.cluster._search import resolve_search

from .._helpers import clustered


def _recall(approx, exact):
    return np.mean([np.intersect1d(a, e).size / e.size for a, e in zip(approx, exact)])


def _exact_pair_sims(X, idx):
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    return np.einsum("ijd,id->ij", Xn[idx], Xn)


# ------------------------------------------------------------------ without faiss


def test_rescore_keeps_the_most_similar_candidates_in_order():
    X = clustered(200, 10, 16, 0.5, seed=0)[0]
    rows = UnitRows(X)
    rng = np.random.default_rng(0)
    cand = np.stack([rng.permutation(200)[:12] for _ in range(200)])
    cand[:5, -3:] = -1  # rows with fewer candidates
    idx, sim = rescore(rows, cand, 6)
    full = _exact_pair_sims(X, np.where(cand < 0, 0, cand))
    full[cand < 0] = -np.inf
    for i in range(200):
        best = np.argsort(-full[i], kind="stable")[:6]
        np.testing.assert_array_equal(idx[i], cand[i, best])
        np.testing.assert_allclose(sim[i], full[i, best], rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(sim, axis=1) <= 1e-7)


def test_rescore_marks_rows_with_too_few_candidates():
    X = clustered(50, 5, 8, 0.5, seed=1)[0]
    cand = np.full((50, 4), -1)
    cand[:, 0] = np.arange(50)[::-1]
    idx, sim = rescore(UnitRows(X), cand, 3)
    np.testing.assert_array_equal(idx[:, 0], np.arange(50)[::-1])
    assert np.all(idx[:, 1:] == -1) and np.all(np.isneginf(sim[:, 1:]))


@pytest.mark.parametrize("dim, expected", [(152, (32, 160)), (163, (40, 200)), (2048, (64, 2048)),
                                           (16, (4, 16)), (7, (2, 8)), (1, (1, 1))])
def test_pq_layout_pads_to_sub_vectors_of_at_least_four_dimensions(dim, expected):
    count, padded = pq_layout(dim)
    assert (count, padded) == expected
    assert padded % count == 0 and padded >= dim and padded // count >= 4 - (dim < 4) * 3


@pytest.mark.parametrize("dim, expected", [(152, (76, 152)), (163, (82, 164)), (1, (1, 2))])
def test_fastscan_codes_two_dimensions_each(dim, expected):
    assert code_layout(dim, "fastscan") == expected
    assert code_layout(dim, "pq") == pq_layout(dim)
    assert code_layout(dim, "flat") == (0, dim)


def test_auto_on_an_accelerator_stays_exact_on_it(monkeypatch):
    # faiss's GPU index is not measured here: "auto" does not pick it.
    monkeypatch.setattr(search_module, "AUTO_EXACT_MAX_SAMPLES", 10)
    monkeypatch.setattr(search_module, "_has_faiss", lambda: True)
    chosen = resolve_search("auto", 100, device="cuda:1")
    assert isinstance(chosen, ExactSearch) and (chosen.backend, chosen.device) == ("torch", "cuda:1")
    assert isinstance(resolve_search("auto", 100, device="cpu"), IVFSearch)


class _FakeGpuFaiss:
    """The calls of faiss's GPU build that gpu_of and on_device make."""

    def __init__(self, n_gpus):
        self.n_gpus, self.moved = n_gpus, []

    def get_num_gpus(self):
        return self.n_gpus

    def StandardGpuResources(self):  # noqa: N802 (faiss's names)
        return object()

    class GpuClonerOptions:
        useFloat16 = False

    def index_cpu_to_gpu(self, resources, gpu, index, options):
        self.moved.append((resources, gpu, index, options.useFloat16))
        return ("on gpu", gpu, index)


class _Index:
    nprobe = 4096


def test_gpu_of_names_the_gpu_or_says_what_is_wrong():
    fake = _FakeGpuFaiss(2)
    assert gpu_of(fake, None) is None and gpu_of(fake, "cpu") is None
    assert gpu_of(fake, "cuda") == 0 and gpu_of(fake, "cuda:1") == 1
    for bad in ("mps", "cuda:x", "gpu:0"):
        with pytest.raises(ValueError, match="CUDA device"):
            gpu_of(fake, bad)
    with pytest.raises(RuntimeError, match="sees 2 GPU"):
        gpu_of(fake, "cuda:2")


def test_on_device_moves_the_index_to_the_gpu_with_its_probes(monkeypatch):
    monkeypatch.setattr(faiss_module, "_GPU_RESOURCES", {})
    fake = _FakeGpuFaiss(2)
    assert on_device(fake, "index", None) == "index"
    index = _Index()
    assert on_device(fake, index, 1) == ("on gpu", 1, index)
    assert index.nprobe == 2048  # faiss's GPU limit, set before the copy
    on_device(fake, "other", 0)
    on_device(fake, "again", 1)
    assert fake.moved[0][0] is fake.moved[2][0] and fake.moved[0][0] is not fake.moved[1][0]
    assert all(m[3] for m in fake.moved)  # float16 PQ tables


def test_a_faiss_without_gpus_says_what_to_install():
    with pytest.raises(RuntimeError, match="faiss-gpu"):
        gpu_of(_FakeGpuFaiss(0), "cuda")


# ------------------------------------------------------------------ with faiss


@pytest.fixture
def faiss():
    return pytest.importorskip("faiss", reason="faiss-cpu is an optional extra")


def _features():
    # ReLU-like features that all share one direction, as embeddings do.
    X, labels = clustered(3000, 150, 24, 0.5, seed=7)
    W = np.random.default_rng(0).normal(size=(24, 96))
    return np.maximum(X @ W, 0) + 0.01, labels


@pytest.mark.parametrize("encoding", ["flat", "fp16", "sq8", "pq", "fastscan"])
def test_faiss_ivf_codes_find_neighbours_with_exact_similarities(faiss, encoding):
    X, _ = _features()
    exact_idx, _ = ExactSearch().kneighbors(X, 15)
    idx, sim = IVFSearch(n_probe=8, n_lists=60, encoding=encoding, refine=2,
                         random_state=0).kneighbors(X, 15)
    assert np.all(idx[:, 0] == np.arange(X.shape[0]))
    assert _recall(idx, exact_idx) > (0.8 if encoding == "pq" else 0.9)
    # Whatever the codes, the similarities handed on are exact and sorted.
    np.testing.assert_allclose(sim[:, 1:], _exact_pair_sims(X, idx)[:, 1:], atol=1e-5)
    assert np.all(np.diff(sim, axis=1) <= 1e-6)


def test_faiss_ivf_recall_grows_with_probes_and_refine(faiss):
    X, _ = _features()
    exact_idx, _ = ExactSearch().kneighbors(X, 15)

    def recall(**kw):
        search = IVFSearch(n_lists=100, n_components=8, encoding="flat", random_state=0,
                           **{"refine": 1, **kw})
        return _recall(search.kneighbors(X, 15)[0], exact_idx)

    few, many = recall(n_probe=1), recall(n_probe=20)
    assert few < many
    # Lists made in 8 principal directions rank some candidates wrongly;
    # rescoring more of them in all dimensions recovers neighbours.
    assert recall(n_probe=20, refine=3) > many


def test_fastscan_re_ranks_its_coarse_codes(faiss, monkeypatch):
    # Without the float32 re-ranking, the 4-bit codes alone find fewer neighbours.
    X, _ = _features()
    exact_idx, _ = ExactSearch().kneighbors(X, 15)

    def recall():
        search = IVFSearch(n_probe=8, n_lists=60, encoding="fastscan",
                           random_state=0)
        return _recall(search.kneighbors(X, 15)[0], exact_idx)

    re_ranked = recall()
    monkeypatch.setattr(faiss_module, "FASTSCAN_K_FACTOR", 1)
    assert recall() < re_ranked


def test_fastscan_on_few_rows_falls_back_to_flat_lists(faiss):
    # 4-bit codes need 16 training rows; 12 rows are searched with flat lists.
    X = clustered(12, 3, 8, 0.3, seed=0)[0]
    idx, sim = IVFSearch(encoding="fastscan", random_state=0).kneighbors(X, 5)
    exact_idx, _ = ExactSearch().kneighbors(X, 5)
    assert idx.shape == (12, 5) and _recall(idx, exact_idx) >= 0.9
    np.testing.assert_allclose(sim[:, 1:], _exact_pair_sims(X, idx)[:, 1:], atol=1e-5)


def test_fastscan_is_seeded_by_random_state(faiss):
    X, _ = _features()

    def run(seed):
        return IVFSearch(n_probe=4, n_lists=60, encoding="fastscan",
                         random_state=seed).kneighbors(X, 10)[0]

    np.testing.assert_array_equal(run(0), run(0))


def test_fastscan_on_a_gpu_is_refused_before_any_work(faiss, monkeypatch):
    monkeypatch.setattr(search_module, "import_faiss", lambda *a, **k: pytest.fail("worked"))
    monkeypatch.setattr(search_module, "training_sample", lambda *a, **k: pytest.fail("worked"))
    with pytest.raises(ValueError, match="fastscan.*CPU only"):
        IVFSearch(encoding="fastscan", device="cuda").kneighbors(
            _features()[0][:300], 5)


def test_faiss_ivf_on_a_cuda_device_without_a_gpu_build_refuses(faiss):
    if faiss_module.gpu_count(faiss) > 0:
        pytest.skip("this faiss has GPUs")
    X, _ = _features()
    with pytest.raises(RuntimeError, match="GPU build"):
        IVFSearch(device="cuda").kneighbors(X[:200], 5)
    with pytest.raises(RuntimeError, match="GPU build"):
        ExactSearch("faiss", device="cuda").kneighbors(X[:200], 5)


def test_faiss_ivf_threads_follow_n_jobs(faiss):
    before = faiss.omp_get_max_threads()
    try:
        IVFSearch(n_probe=4, n_lists=20, n_jobs=1, random_state=0).kneighbors(
            _features()[0][:500], 5)
        assert faiss.omp_get_max_threads() == 1
    finally:
        faiss.omp_set_num_threads(before)


@pytest.mark.parametrize("encoding", ["pq", "fastscan"])
def test_faiss_ivf_pq_on_few_rows_and_odd_dimensions(faiss, encoding):
    # 200 rows: fewer than a product quantiser's 256 centroids (fewer bits);
    # 37 dimensions: padded to whole sub-vectors.
    X = clustered(200, 10, 37, 0.4, seed=3)[0]
    exact_idx, _ = ExactSearch().kneighbors(X, 8)
    idx, sim = IVFSearch(n_probe=8, encoding=encoding, n_components=None,
                         refine=3, random_state=0).kneighbors(X, 8)
    assert _recall(idx, exact_idx) > 0.9
    np.testing.assert_allclose(sim[:, 1:], _exact_pair_sims(X, idx)[:, 1:], atol=1e-5)


@pytest.mark.parametrize("store", ["float16", "memmap"])
def test_faiss_ivf_reads_float16_and_memory_mapped_rows(faiss, tmp_path, store):
    X, _ = _features()
    search = IVFSearch(n_probe=8, n_lists=60, encoding="flat", refine=2, random_state=0)
    ref_idx, ref_sim = search.kneighbors(X.astype(np.float16).astype(np.float64), 10)
    if store == "float16":
        data = X.astype(np.float16)
    else:
        np.save(tmp_path / "X.npy", X.astype(np.float16))
        data = np.load(tmp_path / "X.npy", mmap_mode="r")
    idx, sim = search.kneighbors(data, 10)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sim, ref_sim, atol=1e-5)


def test_faiss_ivf_with_fewer_rows_than_neighbours(faiss):
    X = clustered(6, 2, 8, 0.3, seed=0)[0]
    idx, sim = IVFSearch(random_state=0).kneighbors(X, 10)
    assert idx.shape == (6, 6)
    assert np.all(idx[:, 0] == np.arange(6))
    assert all(sorted(row) == list(range(6)) for row in idx)  # every row found every row
    assert np.all(np.isfinite(sim))
