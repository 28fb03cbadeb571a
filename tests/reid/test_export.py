"""UCALReID.export: ONNX and TorchScript models that give transform's embeddings."""

import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ucal.reid import UCALReID  # noqa: E402
from ucal.reid._export import read_export_info  # noqa: E402


@pytest.fixture(scope="module")
def model(data):
    return UCALReID(backbone="tiny", pretrained=False, image_size=(32, 16), epochs=1,
                    supervised=True, batch_size=16, iters_per_epoch=2, validation_size=0,
                    mixed_precision=False, pooling="gem", random_state=0).fit(
        data.train, data.train.pids)


def _images(data):
    from ucal.datasets import load_images

    return load_images(data.query, size=(32, 16))  # what a deployment decodes and resizes


def test_torchscript_gives_the_embeddings_of_transform(model, data, tmp_path):
    path = tmp_path / "model.pt"
    info = model.export(path, format="torchscript")
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        out = loaded(torch.from_numpy(_images(data))).numpy()
    np.testing.assert_allclose(out, model.transform(data.query), atol=1e-4)
    assert info == read_export_info(path)
    assert info["input"] == {**info["input"], "height": 32, "width": 16, "layout": "NHWC"}
    assert info["output"]["dim"] == out.shape[1]


def test_onnx_gives_the_embeddings_of_transform(model, data, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "model.onnx"
    info = model.export(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = _images(data)
    out = session.run(["embeddings"], {"images": images})[0]
    np.testing.assert_allclose(out, model.transform(data.query), atol=1e-4)
    # any batch size
    one = session.run(["embeddings"], {"images": images[:1]})[0]
    np.testing.assert_allclose(one, out[:1], atol=1e-5)
    assert json.loads((tmp_path / "model.onnx.json").read_text())["format"] == "onnx"
    assert info["fingerprint"] == model.export(tmp_path / "again.pt", "torchscript")["fingerprint"]


def test_the_fingerprint_tells_models_apart(model, data, tmp_path):
    other = UCALReID(backbone="tiny", pretrained=False, image_size=(32, 16), epochs=1,
                     supervised=True, batch_size=16, iters_per_epoch=2, validation_size=0,
                     mixed_precision=False, pooling="gem", random_state=1).fit(
        data.train, data.train.pids)
    a = model.export(tmp_path / "a.pt", "torchscript")["fingerprint"]
    b = other.export(tmp_path / "b.pt", "torchscript")["fingerprint"]
    assert a != b and len(a) == 64


def test_onnx_without_the_package_says_what_to_install(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"ucal\[export\]"):
        model.export(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_export_errors(model, tmp_path):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(ValueError, match="format must be one of"):
        model.export(tmp_path / "m.bin", format="tflite")
    with pytest.raises(NotFittedError):
        UCALReID().export(tmp_path / "m.onnx")
    with pytest.raises(FileNotFoundError, match="No export description"):
        read_export_info(tmp_path / "missing.onnx")


@pytest.mark.parametrize("format", ["torchscript", "onnx"])
def test_images_of_another_size_are_refused(model, data, tmp_path, format):
    path = tmp_path / ("m.pt" if format == "torchscript" else "m.onnx")
    model.export(path, format=format)
    wrong = np.zeros((2, 64, 32, 3), np.uint8)
    if format == "torchscript":
        with pytest.raises(Exception, match=r"expected uint8 images of shape \(batch, 32, 16, 3\)"):
            torch.jit.load(str(path))(torch.from_numpy(wrong))
    else:
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        with pytest.raises(Exception, match="(?i)invalid dimensions|dimension"):
            session.run(["embeddings"], {"images": wrong})
