"""The server talks to its controller through the public interface only."""

import numpy as np
import pytest

from ucal.annotation import (
    AnnotationController,
    AnnotationServer,
    ImageStore,
    RequestError,
    ReviewSession,
    WebOracle,
)

from .test_web_oracle import Client


class Recorder(AnnotationController):
    """A controller of its own: counts, refuses ``nope``, fails on ``crash``."""

    def __init__(self):
        self.calls = []

    def state(self):
        self.calls.append(("state",))
        return {"mode": "recorder", "n_calls": len(self.calls)}

    def post(self, action, payload):
        self.calls.append((action, payload))
        if action == "nope":
            raise RequestError(409, "Not now.")
        if action == "crash":
            raise RuntimeError("a bug")
        return {"action": action, "payload": payload}


@pytest.fixture
def images():
    return np.zeros((3, 8, 4, 3), dtype=np.uint8)


def test_a_controller_of_its_own_is_served(images):
    controller = Recorder()
    with AnnotationServer(controller, images) as server:
        client = Client(server.url)
        assert client.state() == {"mode": "recorder", "n_calls": 1}
        assert client.post("hello", {"x": 1}) == (200, {"action": "hello", "payload": {"x": 1}})
        assert client.post("nope", {}) == (409, {"error": "Not now."})
        status, reply = client.post("crash", {})
        # the type only: messages may hold paths; the traceback goes to the log
        assert status == 500 and "RuntimeError" in reply["error"]
        assert "a bug" not in reply["error"]
        assert client.post("hello", {}, token=False)[0] == 403
        assert client.get("/img/2")[0] == 200 and client.get("/img/3")[0] == 404
    assert controller.calls == [("state",), ("hello", {"x": 1}), ("nope", {}), ("crash", {})]
    assert isinstance(server.images, ImageStore)


def test_the_built_in_controllers_implement_the_interface(images):
    assert issubclass(WebOracle, AnnotationController)
    with WebOracle(images, verbose=0) as oracle:
        assert oracle.state()["mode"] == "oracle"
        with pytest.raises(RequestError, match="No such endpoint") as info:
            oracle.post("delete", {})
        assert info.value.status == 404
    with ReviewSession(_memory(), images) as s:
        assert isinstance(s.review, AnnotationController)
        assert s.review.state()["mode"] == "review"


def _memory():
    from ucal.oracles import LabelMemory

    return LabelMemory()


def test_a_controller_needs_state_and_post(images):
    class OnlyState:
        def state(self):
            return {}

    with pytest.raises(TypeError, match="OnlyState has no post"):
        AnnotationServer(OnlyState(), images)
    with pytest.raises(TypeError, match=r"has no state\(\) and no post\(\)"):
        AnnotationServer(object(), images)
    with pytest.raises(TypeError):
        AnnotationController()  # abstract


@pytest.mark.parametrize("port", [-1, 65536, "80", True])
def test_the_port_is_checked(images, port):
    with pytest.raises(ValueError, match="port"):
        AnnotationServer(Recorder(), images, port=port)


def test_the_host_is_checked(images):
    with pytest.raises(TypeError, match="host"):
        AnnotationServer(Recorder(), images, host="")
