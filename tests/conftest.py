"""Fixtures shared by the whole suite."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on one torch thread: OpenMP threads spin against the other
    test worker on a shared 2-core CPU (and results do not depend on the count)."""
    torch = pytest.importorskip("torch")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def rng():
    """A fresh, seeded generator per test."""
    return np.random.default_rng(0)
