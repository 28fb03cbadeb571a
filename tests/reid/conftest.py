import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every re-id test runs its tiny models on one torch thread."""


@pytest.fixture(scope="module")
def data():
    """Tiny synthetic persons (8 training identities) at 32x16, for trainer tests."""
    from ucal.datasets import make_persons

    return make_persons(
        n_identities=8,
        n_test_identities=3,
        n_images_per_camera=(3, 4),
        image_size=(32, 16),
        random_state=0,
    )
