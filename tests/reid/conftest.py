import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every re-id test runs its tiny models on one torch thread."""
