"""WebOracle over HTTP: token, routes, path traversal, answers, memory, threads.

The browser itself is exercised in ``test_web_browser.py``; here the page's
API is called directly with ``urllib`` / ``http.client``.
"""

import http.client
import io
import json
import logging
import os
import pickle
import threading
import time
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from ucal.annotation import ReviewSession, serve_review
from ucal.datasets import ReIDSplit
from ucal.oracles import LabelMemory, OracleError, WebOracle

N_IMAGES = 12


# -- helpers -----------------------------------------------------------------


class Client:
    """Talk to an annotation server the way the page does (or must not)."""

    def __init__(self, url):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.token = parts.query.split("token=", 1)[1]

    def raw(self, method, target, body=None, headers=None):
        """Send ``target`` verbatim (no normalisation): status, headers, body."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request(method, target, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def get(self, path, *, token=True):
        target = path + (f"?token={self.token}" if token else "")
        return self.raw("GET", target)

    def state(self):
        status, _, body = self.get("/api/state")
        assert status == 200, body
        return json.loads(body)

    def post(self, name, payload, *, token=True, content_type="application/json"):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        target = f"/api/{name}" + (f"?token={self.token}" if token else "")
        status, _, reply = self.raw(
            "POST", target, body=body, headers={"Content-Type": content_type}
        )
        return status, json.loads(reply) if reply else None

    def answer(self, pair_id, answer):
        status, reply = self.post("answer", {"pair_id": pair_id, "answer": answer})
        assert status == 200, reply
        return reply


class Call:
    """``oracle(pairs)`` (or any blocking call) in a thread, result kept."""

    def __init__(self, func, *args):
        self.result = self.error = None
        self.thread = threading.Thread(target=self._run, args=(func, *args), daemon=True)
        self.thread.start()

    def _run(self, func, *args):
        try:
            self.result = func(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def join(self, timeout=10):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the oracle call did not return"
        return self


def wait_for_batch(client, timeout=10):
    """State of the server once a batch is waiting for answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.state()
        if state["batch"] is not None:
            return state
        time.sleep(0.02)
    raise AssertionError("no batch appeared")


def memory_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(N_IMAGES, 32, 16, 3), dtype=np.uint8)


@pytest.fixture
def memory_path(tmp_path):
    return str(tmp_path / "answers.jsonl")


@pytest.fixture
def oracle(images, memory_path):
    with WebOracle(images, label_memory=LabelMemory(memory_path), verbose=0) as oracle:
        yield oracle


@pytest.fixture
def client(oracle):
    return Client(oracle.url)


# -- the server: binding, token, routes --------------------------------------


def test_binds_to_loopback_with_a_long_random_token(images):
    with WebOracle(images, verbose=0) as first, WebOracle(images, verbose=0) as second:
        for oracle in (first, second):
            parts = urlsplit(oracle.url)
            assert parts.hostname == "127.0.0.1"
            assert parts.port > 0
            assert len(Client(oracle.url).token) >= 32
            assert Client(oracle.url).token not in repr(oracle)
        assert Client(first.url).token != Client(second.url).token


def test_binding_elsewhere_warns_and_works(images):
    with pytest.warns(UserWarning, match="anyone who can reach this machine"):
        oracle = WebOracle(images, host="0.0.0.0", verbose=0)
    with oracle:
        assert urlsplit(oracle.url).hostname == "127.0.0.1"
        assert Client(oracle.url).state()["mode"] == "oracle"


ROUTES = ["/", "/index.html", "/app.js", "/style.css", "/img/0", "/img/999", "/api/state",
          "/no/such/thing", "/../pyproject.toml"]


@pytest.mark.parametrize("path", ROUTES)
def test_every_route_refuses_a_missing_or_wrong_token(client, path):
    wrong = "x" * len(client.token)
    for target in (
        path,
        f"{path}?token=",
        f"{path}?token={wrong}",
        f"{path}?token={client.token[:-1]}",
        f"{path}?token={wrong}&token={client.token}",  # ambiguous: refused
        f"{path}?TOKEN={client.token}",
    ):
        status, headers, body = client.raw("GET", target)
        assert status == 403, target
        assert b"token" in body.lower()
        assert headers["Content-Type"].startswith("application/json")


def test_post_and_other_methods_without_token_change_nothing(oracle, client, memory_path):
    call = Call(oracle, [[0, 1]])
    state = wait_for_batch(client)
    pair_id = state["batch"]["pairs"][0]["id"]
    for name in ("answer", "undo"):
        status, _ = client.post(name, {"pair_id": pair_id, "answer": "same"}, token=False)
        assert status == 403
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        assert client.raw(method, "/api/answer")[0] == 403
        assert client.raw(method, f"/api/answer?token={client.token}")[0] == 405
    assert client.state()["batch"]["n_answered"] == 0
    assert memory_lines(memory_path) == []
    client.answer(pair_id, "same")
    assert call.join().result.tolist() == [1]


def test_page_files_carry_the_token_and_security_headers(client):
    status, headers, body = client.get("/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert "{{token}}" not in page
    assert f'src="app.js?token={client.token}"' in page
    assert f'href="style.css?token={client.token}"' in page
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Content-Type-Options"] == "nosniff"
    for path, kind in (("/app.js", "text/javascript"), ("/style.css", "text/css")):
        status, headers, body = client.get(path)
        assert status == 200 and headers["Content-Type"].startswith(kind) and body
    # no external resource: the page works offline
    for path in ("/", "/app.js", "/style.css"):
        text = client.get(path)[2].decode()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text


def test_images_are_served_by_index_only(client, images):
    status, headers, body = client.get("/img/3")
    assert status == 200 and headers["Content-Type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(body))), images[3])
    for path in (f"/img/{N_IMAGES}", "/img/-1", "/img/1.5", "/img/abc", "/img/", "/img/0x1",
                 "/img/99999999999999", "/img/3/"):
        assert client.get(path)[0] == 404, path


TRAVERSALS = [
    "/../pyproject.toml",
    "/..%2fpyproject.toml",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/img/../../../../etc/passwd",
    "/img/..%2f..%2f..%2fetc%2fpasswd",
    "/img/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/img/0/../../../_web.py",
    "/web/app.js",
    "/_web.py",
    "/static/../_web_server.py",
    "/app.js/../../_web.py",
    # where the page's files and the server's code are today
    "/img/0/../../../_oracle.py",
    "/static/app.js",
    "/static/index.html",
    "/_oracle.py",
    "/static/../_server.py",
    "/app.js/../../_server.py",
    "/annotation/_controller.py",
    "//etc/passwd",
    "/etc/passwd",
    "/img/secret.txt",
    "/img/..\\..\\secret.txt",
    "/api/../../secret.txt",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_reaches_no_file(tmp_path, path):
    # Images given as files: a secret file sits right next to them.
    folder = tmp_path / "images"
    folder.mkdir()
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    (folder / "secret.txt").write_text("TOP SECRET")
    paths = []
    for k in range(3):
        paths.append(str(folder / f"{k}.png"))
        Image.new("RGB", (16, 32), (80 * k, 10, 10)).save(paths[-1])
    with WebOracle(paths, verbose=0) as oracle:
        client = Client(oracle.url)
        status, _, body = client.get(path)
        assert status == 404
        assert b"SECRET" not in body and b"import" not in body and b"root:" not in body
        assert client.get(path, token=False)[0] == 403
        # the images themselves: re-encoded pixels, by index
        status, headers, body = client.get("/img/2")
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        pixel = np.asarray(Image.open(io.BytesIO(body)))[16, 8]
        assert abs(int(pixel[0]) - 160) < 8


# -- answering a batch ----------------------------------------------------------


def test_each_answer_is_written_to_the_memory_file_before_the_batch_returns(
    oracle, client, memory_path
):
    pairs = np.array([[0, 1], [2, 3], [4, 5]])
    call = Call(oracle, pairs)
    state = wait_for_batch(client)
    batch = state["batch"]
    assert batch["n_pairs"] == 3 and batch["n_answered"] == 0
    assert [[p["left"]["index"], p["right"]["index"]] for p in batch["pairs"]] == pairs.tolist()
    ids = [p["id"] for p in batch["pairs"]]

    reply = client.answer(ids[0], "same")
    # on disk at once, while the caller is still waiting
    assert [(r["i"], r["j"], r["same"], r["source"]) for r in memory_lines(memory_path)] == [
        (0, 1, True, "web")
    ]
    assert reply["batch"]["n_answered"] == 1 and call.thread.is_alive()
    client.answer(ids[1], "different")
    assert len(memory_lines(memory_path)) == 2 and call.thread.is_alive()
    client.answer(ids[2], "unsure")
    call.join()
    assert call.error is None
    assert call.result.dtype == np.int8
    assert call.result.tolist() == [1, 0, -1]
    # "not sure" is recorded as such: the pair stays unknown
    last = memory_lines(memory_path)[-1]
    assert len(memory_lines(memory_path)) == 3
    assert (last["i"], last["j"], last["same"], last["unsure"], last["source"]) == (
        4, 5, None, True, "web"
    )
    assert oracle.label_memory.lookup(pairs).tolist() == [1, 0, -1]
    assert LabelMemory(memory_path).lookup(pairs).tolist() == [1, 0, -1]
    after = client.state()
    assert after["batch"] is None
    assert after["n_queries"] == 3 and after["n_batches"] == 1 and oracle.n_queries == 3
    assert after["last_batch"] == {"number": 1, "n_pairs": 3, "n_answered": 3,
                                   "outcome": "answered"}
    assert after["cost"] == pytest.approx(3 / (N_IMAGES * (N_IMAGES - 1) / 2))


def test_duplicate_and_reversed_pairs_are_asked_once(oracle, client):
    call = Call(oracle, [[0, 1], [1, 0], [2, 3], [0, 1]])
    batch = wait_for_batch(client)["batch"]
    assert batch["n_pairs"] == 2
    client.answer(batch["pairs"][0]["id"], "different")
    client.answer(batch["pairs"][1]["id"], "same")
    assert call.join().result.tolist() == [0, 0, 1, 0]


def test_changing_an_answer_keeps_both_and_the_latest_wins(oracle, client, memory_path):
    call = Call(oracle, [[0, 1], [2, 3]])
    first, second = (p["id"] for p in wait_for_batch(client)["batch"]["pairs"])
    client.answer(first, "same")
    client.answer(first, "same")  # same answer again: nothing new
    client.answer(first, "different")
    assert [r["same"] for r in memory_lines(memory_path)] == [True, False]
    assert oracle.label_memory.n_contradictions_ == 1
    client.answer(second, "same")
    assert call.join().result.tolist() == [0, 1]


def test_pairs_the_memory_knows_are_not_asked(images, memory_path):
    memory = LabelMemory(memory_path)
    memory.record([[0, 1], [1, 2]], [True, True])
    with WebOracle(images, label_memory=memory, verbose=0) as oracle:
        client = Client(oracle.url)
        call = Call(oracle, [[0, 2], [5, 6], [2, 1]])
        batch = wait_for_batch(client)["batch"]
        assert [(p["left"]["index"], p["right"]["index"]) for p in batch["pairs"]] == [(5, 6)]
        client.answer(batch["pairs"][0]["id"], "different")
        assert call.join().result.tolist() == [1, 0, 1]
        assert oracle.n_queries == 1
        # everything known: no page needed at all
        assert oracle([[0, 1], [6, 5]]).tolist() == [1, 0]
        assert oracle(np.empty((0, 2), dtype=int)).shape == (0,)


JSON = "application/json"
# (body built from the waiting pair's id, content type, expected status)
MALFORMED = {
    "bad-json": (lambda pid: b"{not json", JSON, 400),
    "not-utf8": (lambda pid: b"\xff\xfe", JSON, 400),
    "a-list": (lambda pid: [pid, "same"], JSON, 400),
    "null": (lambda pid: None, JSON, 400),
    "no-id": (lambda pid: {"answer": "same"}, JSON, 400),
    "id-as-text": (lambda pid: {"pair_id": str(pid), "answer": "same"}, JSON, 400),
    "id-as-float": (lambda pid: {"pair_id": float(pid), "answer": "same"}, JSON, 400),
    "id-as-bool": (lambda pid: {"pair_id": True, "answer": "same"}, JSON, 400),
    "id-null": (lambda pid: {"pair_id": None, "answer": "same"}, JSON, 400),
    "no-answer": (lambda pid: {"pair_id": pid}, JSON, 400),
    "answer-yes": (lambda pid: {"pair_id": pid, "answer": "yes"}, JSON, 400),
    "answer-int": (lambda pid: {"pair_id": pid, "answer": 1}, JSON, 400),
    "answer-list": (lambda pid: {"pair_id": pid, "answer": ["same"]}, JSON, 400),
    "pair-not-in-batch": (lambda pid: {"pair_id": pid + 9999, "answer": "same"}, JSON, 404),
    "negative-id": (lambda pid: {"pair_id": -1, "answer": "same"}, JSON, 404),
    "text-plain": (lambda pid: {"pair_id": pid, "answer": "same"}, "text/plain", 415),
    "form": (lambda pid: {"pair_id": pid, "answer": "same"},
             "application/x-www-form-urlencoded", 415),
}


@pytest.mark.parametrize("build, content_type, expected", MALFORMED.values(), ids=MALFORMED)
def test_malformed_answers_get_4xx_and_change_nothing(
    oracle, client, memory_path, build, content_type, expected
):
    call = Call(oracle, [[0, 1]])
    before = wait_for_batch(client)
    pair_id = before["batch"]["pairs"][0]["id"]
    status, reply = client.post("answer", build(pair_id), content_type=content_type)
    assert status == expected
    assert "error" in reply
    after = client.state()
    assert after["version"] == before["version"]
    assert after["batch"] == before["batch"]
    assert memory_lines(memory_path) == []
    client.answer(pair_id, "same")
    assert call.join().result.tolist() == [1]


def test_oversized_and_unknown_posts_are_refused(oracle, client):
    call = Call(oracle, [[0, 1]])
    before = wait_for_batch(client)
    status, reply = client.post("answer", b"{" + b" " * 70_000 + b"}")
    assert status == 413
    assert client.post("forget_everything", {})[0] == 404
    assert client.post("state", {})[0] == 404
    assert client.get("/api/answer")[0] == 404
    assert client.state()["version"] == before["version"]
    client.answer(before["batch"]["pairs"][0]["id"], "unsure")
    assert call.join().result.tolist() == [-1]


def test_answers_for_a_finished_batch_or_no_batch_are_refused(oracle, client, memory_path):
    status, _ = client.post("answer", {"pair_id": 0, "answer": "same"})
    assert status == 404  # no batch yet, no such pair
    call = Call(oracle, [[0, 1]])
    old_id = wait_for_batch(client)["batch"]["pairs"][0]["id"]
    client.answer(old_id, "same")
    call.join()
    status, reply = client.post("answer", {"pair_id": old_id, "answer": "different"})
    assert status == 409 and "over" in reply["error"]
    call = Call(oracle, [[2, 3]])
    batch = wait_for_batch(client)["batch"]
    assert batch["pairs"][0]["id"] != old_id
    status, _ = client.post("answer", {"pair_id": old_id, "answer": "different"})
    assert status == 409
    assert client.post("undo", {"pair_id": old_id})[0] == 409
    assert client.state()["batch"]["n_answered"] == 0
    assert [r["same"] for r in memory_lines(memory_path)] == [True]
    client.answer(batch["pairs"][0]["id"], "same")
    assert call.join().result.tolist() == [1]


def test_undo_reverts_the_last_answer_only(oracle, client, memory_path, caplog):
    call = Call(oracle, [[0, 1], [2, 3], [4, 5]])
    a, b, c = (p["id"] for p in wait_for_batch(client)["batch"]["pairs"])
    assert client.post("undo", {"pair_id": a}) == (409, {"error": "Nothing to undo in this batch."})
    client.answer(a, "same")
    client.answer(b, "different")
    state = client.state()
    assert state["batch"]["undo_pair_id"] == b
    status, reply = client.post("undo", {"pair_id": a})  # not the last answer
    assert status == 409 and client.state()["version"] == state["version"]
    with caplog.at_level(logging.WARNING, logger="ucal.annotation._oracle"):
        status, reply = client.post("undo", {"pair_id": b})
    assert status == 200
    answers = {p["id"]: p["answer"] for p in reply["batch"]["pairs"]}
    assert answers == {a: "same", b: None, c: None}
    assert reply["batch"]["n_answered"] == 1 and reply["batch"]["undo_pair_id"] == a
    if hasattr(oracle.label_memory, "retract"):
        assert oracle.label_memory.lookup([[2, 3]]).tolist() == [-1]
    else:
        # Until the memory can retract, the undone answer is superseded by the next one.
        assert "cannot retract" in caplog.text
    client.answer(b, "same")  # the new answer wins over the undone one
    assert oracle.label_memory.lookup([[2, 3]]).tolist() == [1]
    assert LabelMemory(memory_path).lookup([[2, 3]]).tolist() == [1]
    # undo back to an earlier answer of the same pair
    client.answer(b, "different")
    client.post("undo", {"pair_id": b})
    assert oracle.label_memory.lookup([[2, 3]]).tolist() == [1]
    assert memory_lines(memory_path)[-1]["source"] == "undo"
    client.answer(c, "unsure")
    assert call.join().result.tolist() == [1, 1, -1]


def test_unsure_through_the_memory_is_recorded_once_and_asked_again_once(
    oracle, client, memory_path
):
    memory = oracle.label_memory  # as a refiner does: the oracle and the memory share it

    def ask_and_answer(pairs, answers):
        call = Call(lambda: memory._ask(pairs, oracle))
        batch = wait_for_batch(client)["batch"]
        shown = [(p["left"]["index"], p["right"]["index"]) for p in batch["pairs"]]
        for pair, answer in zip(batch["pairs"], answers):
            client.answer(pair["id"], answer)
        call.join()
        assert call.error is None
        return shown, call.result

    shown, result = ask_and_answer([[0, 1], [2, 3]], ["unsure", "same"])
    assert shown == [(0, 1), (2, 3)] and result.answers.tolist() == [-1, 1]
    # one "not sure" answer, one record (the page's), not one more from the memory
    assert [(r["i"], r["j"], r["same"], r.get("unsure"), r["source"])
            for r in memory_lines(memory_path)] == [
        (0, 1, None, True, "web"), (2, 3, True, None, "web")
    ]
    shown, result = ask_and_answer([[0, 1], [2, 3]], ["unsure"])
    assert shown == [(0, 1)] and result.answers.tolist() == [-1, 1]
    assert len(memory_lines(memory_path)) == 3 and memory.n_unsure_ == 1
    # twice "not sure": no batch any more, neither through the memory nor directly
    result = memory._ask([[0, 1], [2, 3]], oracle)
    assert result.answers.tolist() == [-1, 1] and result.n_unsure_skipped == 1
    assert oracle([[1, 0], [3, 2]]).tolist() == [-1, 1]
    assert client.state()["n_batches"] == 2 and oracle.n_queries == 3
    assert len(memory_lines(memory_path)) == 3
    assert LabelMemory(memory_path)._unsure_counts([[0, 1]]).tolist() == [2]


def test_changing_to_unsure_and_undoing_unsure_keep_the_memory_right(
    oracle, client, memory_path
):
    memory = oracle.label_memory
    call = Call(oracle, [[0, 1], [2, 3], [4, 5]])  # (4, 5) keeps the batch open
    a, b, c = (p["id"] for p in wait_for_batch(client)["batch"]["pairs"])
    client.answer(a, "same")
    client.answer(a, "unsure")  # "not sure" after all: the "same" is taken back
    assert memory.lookup([[0, 1]]).tolist() == [-1]
    assert memory._unsure_counts([[0, 1]]).tolist() == [1]
    client.post("undo", {"pair_id": a})  # back to "same"
    assert memory.lookup([[0, 1]]).tolist() == [1] and memory.n_unsure_ == 0
    client.answer(b, "unsure")
    assert memory._unsure_counts([[2, 3]]).tolist() == [1]
    client.post("undo", {"pair_id": b})  # the "not sure" is withdrawn
    assert memory._unsure_counts([[2, 3]]).tolist() == [0]
    client.answer(b, "different")
    client.answer(c, "same")
    assert call.join().result.tolist() == [1, 0, 1]
    lines = memory_lines(memory_path)
    assert [(r["same"], r.get("unsure", False), r["source"]) for r in lines] == [
        (True, False, "web"),  # a: same
        (None, False, "web"), (None, True, "web"),  # a: same -> not sure
        (True, False, "undo"),  # a: back to same
        (None, True, "web"),  # b: not sure
        (None, False, "undo"),  # b: undone
        (False, False, "web"),  # b: different
        (True, False, "web"),  # c
    ]
    reopened = LabelMemory(memory_path)
    assert reopened.lookup([[0, 1], [2, 3]]).tolist() == [1, 0] and reopened.n_unsure_ == 0


def test_record_failure_is_a_5xx_and_keeps_the_pair_open(images, caplog):
    class BrokenDisk(LabelMemory):
        full = True

        def record(self, pairs, answers, *, source="oracle"):
            if self.full:
                raise OSError(28, "No space left on device", "/secret/folder/answers.jsonl")
            return super().record(pairs, answers, source=source)

    memory = BrokenDisk()
    with WebOracle(images, label_memory=memory, verbose=0) as oracle:
        client = Client(oracle.url)
        call = Call(oracle, [[0, 1]])
        pair_id = wait_for_batch(client)["batch"]["pairs"][0]["id"]
        with caplog.at_level(logging.CRITICAL, logger="ucal.annotation._server"):
            for answer in ("same", "unsure"):  # "not sure" is an answer to keep, too
                status, reply = client.post("answer", {"pair_id": pair_id, "answer": answer})
                assert status == 500 and "No space left" in reply["error"]
                assert "/secret" not in reply["error"]  # no path reaches the page
        assert client.state()["batch"]["n_answered"] == 0
        memory.full = False  # space freed: the same answer now goes through
        client.answer(pair_id, "unsure")
        assert call.join().result.tolist() == [-1]
    assert [(r.i, r.j, r.unsure, r.source) for r in memory] == [(0, 1, True, "web")]


# -- the oracle call and threads ---------------------------------------------


def test_concurrent_answers_from_many_threads(images, memory_path):
    rng = np.random.default_rng(1)
    pairs = np.array([[i, j] for i in range(N_IMAGES) for j in range(i + 1, N_IMAGES)])[:24]
    truth = rng.integers(0, 2, len(pairs))
    with WebOracle(images, label_memory=memory_path, verbose=0) as oracle:
        client = Client(oracle.url)
        call = Call(oracle, pairs)
        batch = wait_for_batch(client)["batch"]
        workers = [
            threading.Thread(
                target=client.answer,
                args=(p["id"], "same" if truth[k] else "different"),
            )
            for k, p in enumerate(batch["pairs"])
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(10)
        assert call.join().result.tolist() == truth.tolist()
    lines = memory_lines(memory_path)
    assert len(lines) == len(pairs)
    assert sorted((r["i"], r["j"], r["same"]) for r in lines) == sorted(
        (int(i), int(j), bool(t)) for (i, j), t in zip(pairs, truth)
    )


def test_one_batch_at_a_time(oracle, client):
    first = Call(oracle, [[0, 1]])
    pair_id = wait_for_batch(client)["batch"]["pairs"][0]["id"]
    second = Call(oracle, [[2, 3]]).join()
    assert isinstance(second.error, RuntimeError) and "one batch at a time" in str(second.error)
    client.answer(pair_id, "same")
    assert first.join().result.tolist() == [1]


def test_timeout_raises_and_keeps_given_answers(images, memory_path):
    memory = LabelMemory(memory_path)
    with WebOracle(images, label_memory=memory, timeout=1.0, verbose=0) as oracle:
        client = Client(oracle.url)
        call = Call(oracle, [[0, 1], [2, 3]])
        pair_id = wait_for_batch(client)["batch"]["pairs"][0]["id"]
        client.answer(pair_id, "different")
        call.join()
        assert isinstance(call.error, TimeoutError)
        assert "1 of its 2 pairs were answered" in str(call.error)
        assert memory_path in str(call.error)
        assert call.error.answers.tolist() == [0, -1]
        assert client.state()["last_batch"]["outcome"] == "timed out"
        assert client.post("answer", {"pair_id": pair_id + 1, "answer": "same"})[0] == 409
    assert LabelMemory(memory_path).lookup([[0, 1], [2, 3]]).tolist() == [0, -1]


def test_close_while_waiting_raises_and_stops_the_server(images):
    oracle = WebOracle(images, verbose=0)
    client = Client(oracle.url)
    call = Call(oracle, [[0, 1]])
    wait_for_batch(client)
    oracle.close()
    call.join()
    assert isinstance(call.error, RuntimeError) and "closed" in str(call.error)
    with pytest.raises(OSError):
        client.get("/api/state")
    with pytest.raises(RuntimeError, match="closed"):
        oracle([[0, 1]])
    oracle.close()  # idempotent


def test_memory_ask_through_the_web_oracle_and_a_restart(images, memory_path):
    """A killed process loses nothing: a new oracle on the same file asks only the rest."""
    pairs = [[0, 1], [2, 3], [4, 5]]
    memory = LabelMemory(memory_path)
    first = WebOracle(images, label_memory=memory, verbose=0)
    client = Client(first.url)
    call = Call(memory.ask, pairs, first)
    batch = wait_for_batch(client)["batch"]
    client.answer(batch["pairs"][0]["id"], "same")
    client.answer(batch["pairs"][1]["id"], "different")
    first.close()  # the process "dies" with one pair open
    call.join()
    assert isinstance(call.error, OracleError)

    restarted = LabelMemory(memory_path)
    assert restarted.lookup(pairs).tolist() == [1, 0, -1]
    with WebOracle(images, label_memory=restarted, verbose=0) as second:
        client = Client(second.url)
        call = Call(restarted.ask, pairs, second)
        batch = wait_for_batch(client)["batch"]
        assert [(p["left"]["index"], p["right"]["index"]) for p in batch["pairs"]] == [(4, 5)]
        client.answer(batch["pairs"][0]["id"], "same")
        assert call.join().result.tolist() == [1, 0, 1]
    assert restarted.n_queries == 1
    # the refiner's own record of the web answers added no duplicate
    assert len(memory_lines(memory_path)) == 3


def test_context_shows_other_members_of_each_group(images):
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, -1, 2, 2])
    with WebOracle(images, n_context=3, verbose=0) as oracle:
        client = Client(oracle.url)
        oracle.set_context(labels)
        call = Call(oracle, [[0, 6], [9, 10], [1, 2]])
        pairs = wait_for_batch(client)["batch"]["pairs"]
        left, right = pairs[0]["left"], pairs[0]["right"]
        assert left["group_size"] == 6 and len(left["context"]) == 3
        assert set(left["context"]) <= {1, 2, 3, 4, 5}
        assert right["group_size"] == 3 and sorted(right["context"]) == [7, 8]
        assert pairs[1]["left"] == {"index": 9, "camera": None, "group_size": None, "context": []}
        assert pairs[1]["right"]["context"] == [11]
        # both in one group: neither side shows the pair itself
        same = pairs[2]
        for side in (same["left"], same["right"]):
            assert not {1, 2} & set(side["context"]) and len(side["context"]) == 3
        for p in pairs:
            client.answer(p["id"], "unsure")
        call.join()
        with pytest.raises(ValueError, match="one label per sample"):
            oracle.set_context(labels[:-1])
        with pytest.raises(TypeError, match="integer"):
            oracle.set_context(labels.astype(float))


def test_reid_split_cameras_are_shown_and_identities_never(images):
    split = ReIDSplit(images, pids=np.arange(N_IMAGES) + 1000, camids=np.arange(N_IMAGES) % 3)
    with WebOracle(split, verbose=0) as oracle:
        client = Client(oracle.url)
        call = Call(oracle, [[4, 5]])
        state = wait_for_batch(client)
        pair = state["batch"]["pairs"][0]
        assert pair["left"]["camera"] == 1 and pair["right"]["camera"] == 2
        assert "1004" not in json.dumps(state) and "pid" not in json.dumps(state)
        client.answer(pair["id"], "same")
        call.join()


@pytest.mark.parametrize(
    "pairs, error, match",
    [
        ([[0, N_IMAGES]], ValueError, "only 12 samples"),
        ([[3, 3]], ValueError, "two different samples"),
        ([[0.0, 1.0]], TypeError, "integer"),
        ([0, 1], ValueError, "shape"),
    ],
)
def test_invalid_pairs_are_refused_before_any_batch(oracle, client, pairs, error, match):
    with pytest.raises(error, match=match):
        oracle(pairs)
    assert client.state()["batch"] is None and oracle.n_queries == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"port": -1}, "port"),
        ({"port": 70000}, "port"),
        ({"n_context": -1}, "n_context"),
        ({"timeout": 0}, "timeout"),
        ({"label_memory": 3}, "label_memory"),
        ({"host": ""}, "host"),
    ],
)
def test_invalid_parameters(images, kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        WebOracle(images, verbose=0, **kwargs)


@pytest.mark.parametrize(
    "bad, error",
    [
        (np.zeros((3, 8, 4, 3), dtype=np.float32), TypeError),
        (np.zeros((3, 8, 4, 2), dtype=np.uint8), ValueError),
        ("folder/", TypeError),
        (5, TypeError),
        ([1, 2, 3], TypeError),
    ],
)
def test_invalid_images(bad, error):
    with pytest.raises(error, match="images"):
        WebOracle(bad, verbose=0)


def test_the_url_is_shown_on_the_terminal_never_in_the_log(images, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="ucal.annotation._oracle"):
        oracle = WebOracle(images, verbose=1)
    with oracle:
        # the full address (with its token) on stderr; the log only without it
        assert oracle.url in capsys.readouterr().err
        assert oracle.url.split("?")[0] in caplog.text and "token=<hidden>" in caplog.text
        assert oracle._server.token not in caplog.text
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ucal.annotation._oracle"):
            # No page has asked for the state yet: the user is told where to go.
            call = Call(oracle, [[0, 1]])
            deadline = time.monotonic() + 10
            while "waiting for 1 answers" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.01)
        assert "waiting for 1 answers" in caplog.text
        assert oracle._server.token not in caplog.text
        assert oracle.url in capsys.readouterr().err
        client = Client(oracle.url)
        pair_id = wait_for_batch(client)["batch"]["pairs"][0]["id"]
        client.answer(pair_id, "same")
        call.join()


def test_cannot_be_pickled(oracle):
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(oracle)


# -- reviewing a memory file (ucal annotate) --------------------------------------


def test_review_lists_answers_and_records_corrections(images, memory_path):
    memory = LabelMemory(memory_path)
    memory.record([[0, 1], [2, 3]], [True, False], source="web")
    session = ReviewSession(memory_path, images)
    try:
        client = Client(session.url)
        state = client.state()
        assert state["mode"] == "review"
        rows = {(r["i"], r["j"]): r for r in state["records"]}
        assert {k: (r["answer"], r["source"]) for k, r in rows.items()} == {
            (0, 1): ("same", "web"),
            (2, 3): ("different", "web"),
        }
        status, reply = client.post("correct", {"i": 1, "j": 0, "answer": "different"})
        assert status == 200
        assert reply["record"]["answer"] == "different" and reply["n_corrections"] == 1
        assert [h["answer"] for h in reply["record"]["history"]] == ["same", "different"]
        last = memory_lines(memory_path)[-1]
        assert (last["i"], last["j"], last["same"], last["source"]) == (0, 1, False, "correction")
        # unchanged answer: no new record
        client.post("correct", {"i": 2, "j": 3, "answer": "different"})
        assert len(memory_lines(memory_path)) == 3
        for payload, expected in (
            ({"i": 4, "j": 5, "answer": "same"}, 404),
            ({"i": 0, "j": 1, "answer": "unsure"}, 400),
            ({"i": "0", "j": 1, "answer": "same"}, 400),
            ({"i": 0, "answer": "same"}, 400),
        ):
            assert client.post("correct", payload)[0] == expected
        assert len(memory_lines(memory_path)) == 3
        assert client.get("/img/3")[0] == 200 and client.get("/img/3", token=False)[0] == 403
        assert client.post("correct", {"i": 0, "j": 1, "answer": "same"}, token=False)[0] == 403
        assert not session.wait(0.01)
        assert client.post("finish", {})[0] == 200
        assert session.wait(1)
    finally:
        session.close()
    assert LabelMemory(memory_path).lookup([[0, 1], [2, 3]]).tolist() == [0, 0]


def test_review_refuses_a_dataset_that_does_not_match(images, memory_path):
    LabelMemory(memory_path).record([[0, 40]], [True])
    with pytest.raises(ValueError, match="sample 40.*only 12 images"):
        serve_review(memory_path, images, timeout=0.1)


def test_serve_review_returns_the_number_of_corrections(images, memory_path):
    LabelMemory(memory_path).record([[0, 1]], [True])
    assert serve_review(memory_path, images, timeout=0.1) == 0


def test_review_shows_contradictions_first_and_a_click_settles_them(images, memory_path):
    memory = LabelMemory(memory_path)
    memory.record([[0, 1], [2, 3]], [True, False], source="web")
    # planted: 4 = 5 = 6 but 4 != 6, and (7, 8) answered both ways
    memory.record([[4, 5], [5, 6], [4, 6], [7, 8]], [True, True, False, True], source="web")
    memory.record([[8, 7]], [False], source="mpps")
    memory.record([[9, 10]], [-1], source="web")
    session = ReviewSession(memory_path, images)
    try:
        client = Client(session.url)
        state = client.state()
        assert state["conflicts"] == [
            {"kind": "changed", "i": 7, "j": 8, "pairs": [[7, 8]]},
            {"kind": "transitive", "i": 4, "j": 6, "pairs": [[4, 6], [4, 5], [5, 6]],
             "path": [4, 5, 6]},
        ]
        records = state["records"]
        assert [(r["i"], r["j"]) for r in records[:4]] == [(7, 8), (4, 6), (4, 5), (5, 6)]
        assert [r["conflict"] for r in records] == [True] * 4 + [False] * 3
        assert [h["answer"] for h in records[0]["history"]] == ["same", "different"]
        assert (records[0]["answer"], records[0]["source"]) == ("different", "mpps")
        unsure = records[-1]
        assert (unsure["i"], unsure["j"], unsure["answer"]) == (9, 10, "unsure")
        assert state["memory"]["n_answers"] == 8
        # one click on the wrong "same" settles the transitive conflict
        status, reply = client.post("correct", {"i": 5, "j": 6, "answer": "different"})
        assert status == 200 and reply["record"]["answer"] == "different"
        assert [c["kind"] for c in reply["conflicts"]] == ["changed"]
        # pressing the current answer of a pair answered both ways confirms it
        status, reply = client.post("correct", {"i": 7, "j": 8, "answer": "different"})
        assert status == 200 and reply["conflicts"] == [] and reply["n_corrections"] == 2
        assert not reply["record"]["conflict"]
        # a confirmed pair is settled: pressing again records nothing
        client.post("correct", {"i": 7, "j": 8, "answer": "different"})
        # "not sure" pairs can be settled on the review page too
        status, reply = client.post("correct", {"i": 10, "j": 9, "answer": "same"})
        assert reply["record"]["answer"] == "same" and reply["n_corrections"] == 3
        state = client.state()
        assert state["conflicts"] == [] and not any(r["conflict"] for r in state["records"])
    finally:
        session.close()
    lines = memory_lines(memory_path)
    assert [(r["i"], r["j"], r["same"], r["source"]) for r in lines[-3:]] == [
        (5, 6, False, "correction"), (7, 8, False, "correction"), (9, 10, True, "correction")
    ]
    reopened = LabelMemory(memory_path)
    assert reopened.conflicts() == [] and reopened.n_unsure_ == 0
    assert reopened.lookup([[4, 6], [5, 6], [7, 8], [9, 10]]).tolist() == [0, 0, 0, 1]
