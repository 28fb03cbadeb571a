"""``ucal export``, ``ucal index`` and ``ucal search``: from a run folder to answers by image."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")

from ucal.cli import main  # noqa: E402
from ucal.datasets import make_persons, save_market1501  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """The commands embed with tiny models: on one torch thread."""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder (model.joblib) and a Market-style folder of the same people."""
    import joblib

    from ucal.reid import UCALReID

    root = tmp_path_factory.mktemp("deploy")
    data = make_persons(n_identities=6, n_test_identities=4, n_images_per_camera=(3, 4),
                        image_size=(32, 16), random_state=0)
    save_market1501(data, root / "market", image_format="png")
    model = UCALReID(backbone="tiny", pretrained=False, image_size=(32, 16), epochs=1,
                     supervised=True, batch_size=16, iters_per_epoch=2, validation_size=0,
                     mixed_precision=False, random_state=0).fit(data.train, data.train.pids)
    (root / "run").mkdir()
    joblib.dump(model, root / "run" / "model.joblib")
    market = root / "market" / "Market-1501-v15.09.15"
    return root, model, market


PATTERN = r"(?P<pid>-?\d+)_c(?P<camid>\d+)"


def test_index_then_search_gives_the_brute_force_ranking(run, capsys):
    root, model, market = run
    gallery = market / "bounding_box_test"
    out = root / "gallery_index"
    assert main(["index", str(root / "run"), str(gallery), "--out", str(out),
                 "--pattern", PATTERN, "--backend", "numpy", "-q"]) == 0
    capsys.readouterr()
    queries = sorted((market / "query").iterdir())[:3]
    assert main(["search", str(out), *map(str, queries), "--top", "5", "--json", "-q"]) == 0
    results = json.loads(capsys.readouterr().out)
    g_paths = sorted(str(p) for p in gallery.rglob("*.png"))
    g = model.transform(g_paths)
    q = model.transform([str(p) for p in queries])
    expected = np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :5]
    for result, row in zip(results, expected):
        assert [m["image"] for m in result["matches"]] == [os.path.abspath(g_paths[k]) for k in row]
        assert all("camera" in m and "id" in m for m in result["matches"])
    # across cameras: no match from the query's own camera
    assert main(["search", str(out), str(queries[0]), "--camera", "0", "--json", "-q"]) == 0
    assert all(m["camera"] != 0 for m in json.loads(capsys.readouterr().out)[0]["matches"])


def test_export_writes_the_model_beside_the_run(run, capsys):
    root, model, _ = run
    assert main(["export", str(root / "run"), "--format", "torchscript", "-q"]) == 0
    assert (root / "run" / "model.pt").is_file()
    info = json.loads((root / "run" / "model.pt.json").read_text())
    assert info["input"]["height"] == 32 and "model.pt" in capsys.readouterr().out


def test_a_gallery_of_another_model_is_refused(run, tmp_path, capsys):
    import joblib

    root, model, market = run
    out = tmp_path / "index"
    assert main(["index", str(root / "run"), str(market / "bounding_box_test"), "--out",
                 str(out), "-q"]) == 0
    other = model.__class__(**{**model.get_params(), "random_state": 1}).fit(
        np.zeros((8, 32, 16, 3), np.uint8), y=np.arange(8) // 2)
    joblib.dump(other, tmp_path / "other.joblib")
    query = next((market / "query").iterdir())
    assert main(["search", str(out), str(query), "--model", str(tmp_path / "other.joblib"),
                 "-q"]) == 1
    assert "another model" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["index", "{root}/nothing", "{root}", "--out", "{root}/x"], "No model at"),
    (["index", "{root}/run", "{root}/empty", "--out", "{root}/x"], "holds no image"),
    (["search", "{root}/no_index", "{root}/q.png"], "No gallery index"),
])
def test_bad_input_gets_one_clear_line(run, capsys, args, message):
    root, _, _ = run
    (root / "empty").mkdir(exist_ok=True)
    assert main([a.format(root=root) for a in args] + ["-q"]) == 1
    assert message in capsys.readouterr().err


def test_search_serve_shows_the_page_until_interrupted(run, tmp_path, capsys, monkeypatch):
    import time
    import urllib.request

    root, model, market = run
    out = tmp_path / "index"
    assert main(["index", str(root / "run"), str(market / "bounding_box_test"), "--out",
                 str(out), "-q"]) == 0
    seen = {}

    def sleep(seconds):  # the page is up: read its state, then "press Ctrl-C"
        url = capsys.readouterr().err.split()[-1]
        with urllib.request.urlopen(url.replace("/?", "/api/state?")) as reply:
            seen.update(json.loads(reply.read()))
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", sleep)
    query = sorted((market / "query").iterdir())[0]
    assert main(["search", str(out), str(query), "--top", "4", "--serve", "-q"]) == 0
    assert seen["mode"] == "matches" and len(seen["results"][0]["matches"]) == 4
