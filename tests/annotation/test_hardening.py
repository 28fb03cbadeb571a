"""The page's server under malformed requests, rebinding and idle connections (issue 13)."""

import json
import logging
import socket
import threading
import time

import numpy as np
import pytest

from ucal.annotation import AnnotationController, AnnotationServer, ReviewSession
from ucal.annotation import _server as server_module
from ucal.oracles import LabelMemory

from .test_web_oracle import Client


class Echo(AnnotationController):
    def state(self):
        return {"ok": True}

    def post(self, action, payload):
        return {"action": action}


@pytest.fixture
def server():
    with AnnotationServer(Echo(), np.zeros((3, 8, 4, 3), dtype=np.uint8)) as server:
        yield server


def _raw(server, data, *, timeout=5):
    """Send raw bytes; return what the server answers before closing (b"" for nothing)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


@pytest.mark.parametrize(
    "request_line, status",
    [
        (b"GET /a b HTTP/1.1", b"400"),  # a space in the path
        (b"GET /" + b"x" * 70_000 + b" HTTP/1.1", b"414"),  # over 64 KiB
        (b"GET / HTTP/9.9", b"505"),  # a bad version
        (b"GET / NOTHTTP", b"400"),
    ],
)
def test_a_malformed_request_line_gets_an_answer_and_no_traceback(server, caplog, request_line,
                                                                  status):
    with caplog.at_level(logging.DEBUG):
        reply = _raw(server, request_line + b"\r\nHost: 127.0.0.1\r\n\r\n")
        time.sleep(0.1)
    # an answer (http.server replies to a request it cannot parse as HTTP/1.x
    # without a status line: the error page alone)
    assert reply.split(b" ")[1] == status or b"Error code: " + status in reply, reply[:100]
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)
    assert Client(server.url).get("/api/state")[0] == 200  # still serving


def test_deeply_nested_json_is_a_400_not_a_500(server):
    body = b"[" * 100_000 + b"]" * 100_000
    status, _, reply = Client(server.url).raw(
        "POST", f"/api/x?token={server.token}", body=body[: 64 * 1024 - 1],
        headers={"Content-Type": "application/json"},
    )
    assert status == 400 and b"not valid JSON" in reply
    nested = b'{"a":' * 20_000 + b"1" + b"}" * 20_000
    status, _, _ = Client(server.url).raw(
        "POST", f"/api/x?token={server.token}", body=nested[: 64 * 1024],
        headers={"Content-Type": "application/json"},
    )
    assert status == 400


def test_the_token_is_never_logged_wherever_it_is_put(server, caplog):
    client = Client(server.url)
    with caplog.at_level(logging.DEBUG, logger="ucal.annotation._server"):
        client.raw("GET", f"/;token={server.token}?token={server.token}")
        client.raw("GET", f"/{server.token}")
        client.raw("GET", f"/api/state?token={server.token}")
        time.sleep(0.1)
    assert caplog.records and server.token not in caplog.text


@pytest.mark.parametrize("host, allowed", [
    ("evil.example:80", False), ("127.0.0.1.evil.example", False),
    ("localhost", True), ("127.0.0.1:{port}", True), ("[::1]:{port}", True),
])
def test_a_loopback_server_refuses_other_host_names(server, host, allowed):
    status, _, _ = Client(server.url).raw(
        "GET", f"/api/state?token={server.token}", headers={"Host": host.format(port=server.port)}
    )
    assert (status == 200) == allowed and (allowed or status == 421)


def test_idle_connections_are_closed(server, monkeypatch):
    assert 0 < server_module._RequestHandler.timeout <= 60  # the default drops idle ones
    monkeypatch.setattr(server_module._RequestHandler, "timeout", 0.3)
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
    try:
        time.sleep(1.0)
        before = threading.active_count()
        for sock in socks:
            sock.settimeout(2)
            assert sock.recv(1) == b""  # the server hung up
    finally:
        for sock in socks:
            sock.close()
    assert before < 20 + 5  # no thread left per idle connection


def test_the_page_never_sees_absolute_paths(tmp_path):
    path = tmp_path / "secret-folder" / "answers.jsonl"
    path.parent.mkdir()
    LabelMemory(path).record([[0, 1]], [True])
    with ReviewSession(str(path), np.zeros((2, 8, 4, 3), np.uint8)) as session:
        client = Client(session.url)
        state = client.state()
        assert state["memory"]["path"] == "answers.jsonl"
        assert "secret-folder" not in json.dumps(state)
    store = server_module.ImageStore([str(tmp_path / "gone.png"), str(tmp_path / "gone.png")])
    with AnnotationServer(Echo(), store) as server:
        status, _, body = Client(server.url).get("/img/1")
        assert status == 404 and str(tmp_path).encode() not in body


def test_a_server_on_another_loopback_address_answers_to_its_own_url():
    with AnnotationServer(Echo(), np.zeros((3, 8, 4, 3), dtype=np.uint8),
                          host="127.0.0.2") as server:
        assert Client(server.url).get("/api/state")[0] == 200
