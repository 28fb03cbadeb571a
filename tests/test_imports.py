"""``import ucal`` stays light: torch is loaded only by ``ucal.reid``."""

import subprocess
import sys

import pytest


def _modules_after(code):
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "statement",
    [
        "import ucal",
        "from ucal import SelfPacedDBSCAN, SNPSSplitter, MPPSMerger",
        "import ucal.cluster, ucal.active, ucal.oracles, ucal.metrics, ucal.datasets",
        "import ucal.cli",
        "import ucal.annotation",
        "from ucal.oracles import WebOracle",
    ],
)
def test_light_imports_do_not_load_torch(statement):
    loaded = _modules_after(statement)
    assert "torch" not in loaded
    assert "torchvision" not in loaded
    assert "faiss" not in loaded  # optional, and loaded only by a search that uses it


def test_oracles_load_the_web_oracle_and_its_server_lazily():
    loaded = _modules_after("import ucal.oracles, ucal.cli")
    assert "ucal.annotation" not in loaded
    assert "http.server" not in loaded
    loaded = _modules_after(
        "import ucal.oracles, ucal.annotation\n"
        "assert ucal.oracles.WebOracle is ucal.annotation.WebOracle"
    )
    assert "ucal.annotation._server" in loaded
    assert "torch" not in loaded


def test_reid_is_lazy_attribute():
    loaded = _modules_after("import ucal; ucal.UCALReID")
    assert "torch" in loaded


def test_unknown_attribute_raises():
    import ucal

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ucal.nope  # noqa: B018
    assert "SelfPacedDBSCAN" in dir(ucal)
