"""The team's annotation page over HTTP: own links, own pairs, ties, the reviewer."""

import time

import numpy as np
import pytest

from ucal.annotation import TeamOracle
from ucal.oracles import LabelMemory

from .test_web_oracle import Call, Client, memory_lines


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(12, 16, 8, 3), dtype=np.uint8)


def wait_for_pairs(client, timeout=10):
    """The person's state once the batch has pairs for them (None after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.state()
        if state["batch"] is not None and state["batch"]["n_pairs"]:
            return state
        time.sleep(0.02)
    raise AssertionError("no pair appeared")


def wait_for_team_batch(oracle, timeout=10):
    """The team oracle's open batch, once the call has shared it out."""
    deadline = time.monotonic() + timeout
    while oracle._batch is None:
        assert time.monotonic() < deadline, "no batch appeared"
        time.sleep(0.02)
    return oracle._batch


def answer_all(client, answer_of, seconds=1.5):
    """Answer every open pair of the person's batch with ``answer_of(left, right)``."""
    state = client.state()
    for pair in state["batch"]["pairs"] if state["batch"] else []:
        if pair["answer"] is None:
            status, reply = client.post("answer", {
                "pair_id": pair["id"], "answer": answer_of(pair["left"]["index"],
                                                           pair["right"]["index"]),
                "seconds": seconds,
            })
            assert status == 200, reply
    return client.state()


def test_every_annotator_gets_own_pairs_and_the_double_fraction(images, tmp_path):
    path = tmp_path / "team.jsonl"
    pairs = [[i, i + 1] for i in range(10)]
    with TeamOracle(images, ["ann", "bob"], label_memory=path, double_fraction=0.3,
                    random_state=0, verbose=0) as oracle:
        call = Call(oracle, pairs)
        ann, bob = Client(oracle.urls["ann"]), Client(oracle.urls["bob"])
        mine = {name: wait_for_pairs(c)["batch"] for name, c in (("ann", ann), ("bob", bob))}
        ids = {name: {p["id"] for p in batch["pairs"]} for name, batch in mine.items()}
        assert ids["ann"] | ids["bob"] == set(range(10))
        assert len(ids["ann"] & ids["bob"]) == 3  # round(0.3 * 10) pairs put to both
        assert abs(len(ids["ann"]) - len(ids["bob"])) <= 1  # balanced
        # one person cannot answer the other's pair
        only_bob = sorted(ids["bob"] - ids["ann"])[0]
        status, reply = ann.post("answer", {"pair_id": only_bob, "answer": "same"})
        assert status == 403 and "someone else" in reply["error"]
        # the overview answers nothing, the annotators record no review
        status, _ = Client(oracle.url).post("answer", {"pair_id": only_bob, "answer": "same"})
        assert status == 403
        assert ann.post("correct", {"i": 0, "j": 1, "answer": "same"})[0] == 403
        for client in (ann, bob):  # everyone agrees: "same"
            answer_all(client, lambda i, j: "same")
        answers = call.join().result
    assert answers.tolist() == [1] * 10
    lines = memory_lines(path)
    assert len(lines) == 13  # 10 pairs, 3 of them twice
    assert {line["annotator"] for line in lines} == {"ann", "bob"}
    assert all(line["seconds"] == 1.5 and line["source"] == "web" for line in lines)
    # nobody answered a pair twice
    assert len({(line["i"], line["j"], line["annotator"]) for line in lines}) == len(lines)
    agreement = oracle.agreement()
    assert agreement["pairs"][0]["n_common"] == 3 and agreement["pairs"][0]["agreement"] == 1.0


def test_a_tie_goes_to_the_third_annotator(images):
    with TeamOracle(images, ["ann", "bob", "cat"], double_fraction=1.0, random_state=0,
                    verbose=0) as oracle:
        call = Call(oracle, [[0, 1]])
        clients = {name: Client(url) for name, url in oracle.urls.items()}
        first = list(wait_for_team_batch(oracle).assigned[0])
        assert len(first) == 2
        third = ({"ann", "bob", "cat"} - set(first)).pop()
        assert clients[third].state()["batch"]["n_pairs"] == 0
        answer_all(clients[first[0]], lambda i, j: "same")
        answer_all(clients[first[1]], lambda i, j: "different")
        # the tie is put to the third person, and only then is the batch over
        state = wait_for_pairs(clients[third])
        assert state["batch"]["n_pairs"] == 1 and call.thread.is_alive()
        answer_all(clients[third], lambda i, j: "different")
        assert call.join().result.tolist() == [0]
        state = clients[third].state()
    # the third answer is a tie-break: kept, but left out of the agreement (it is asked
    # only where someone erred)
    assert [r.source for r in oracle.label_memory if r.annotator == third] == ["tiebreak"]
    assert state["team"]["agreement"]["overall"]["n_common"] == 1


def test_the_reviewer_settles_a_tie_on_the_review_page(images, tmp_path):
    path = tmp_path / "team.jsonl"
    with TeamOracle(images, ["ann", "bob"], reviewer="rev", label_memory=path,
                    double_fraction=1.0, random_state=0, verbose=0) as oracle:
        call = Call(oracle, [[2, 3], [4, 5]])
        ann, bob, rev = (Client(oracle.urls[n]) for n in ("ann", "bob", "rev"))
        wait_for_pairs(ann), wait_for_pairs(bob)
        answer_all(ann, lambda i, j: "same")
        answer_all(bob, lambda i, j: "same" if i == 4 else "different")
        time.sleep(0.2)
        assert call.thread.is_alive()  # (2, 3) is tied: it waits for the reviewer
        review = rev.state()
        assert review["mode"] == "review" and review["team"]["role"] == "reviewer"
        tie = review["conflicts"][0]
        assert (tie["kind"], tie["i"], tie["j"], tie["tied"]) == ("disagreement", 2, 3, True)
        assert sorted(v["annotator"] for v in tie["votes"]) == ["ann", "bob"]
        # the reviewer does not answer batches
        assert rev.post("answer", {"pair_id": 0, "answer": "same"})[0] == 403
        status, reply = rev.post("correct", {"i": 2, "j": 3, "answer": "different"})
        assert status == 200 and reply["conflicts"] == []
        assert call.join().result.tolist() == [0, 1]
    last = memory_lines(path)[-1]
    assert (last["source"], last["annotator"], last["same"]) == ("correction", "rev", False)
    reopened = LabelMemory(path, resolution="majority")
    assert reopened.lookup([[2, 3], [4, 5]]).tolist() == [0, 1]


def test_without_anyone_to_break_it_a_tie_is_not_sure(images):
    with TeamOracle(images, ["ann", "bob"], double_fraction=1.0, random_state=1,
                    verbose=0) as oracle:
        call = Call(oracle, [[0, 1]])
        ann, bob = Client(oracle.urls["ann"]), Client(oracle.urls["bob"])
        wait_for_pairs(ann), wait_for_pairs(bob)
        answer_all(ann, lambda i, j: "same")
        answer_all(bob, lambda i, j: "different")
        assert call.join().result.tolist() == [-1]
        # a tie is never asked again: it waits in the conflicts for a reviewer
        assert oracle([[0, 1]]).tolist() == [-1]
        assert oracle.label_memory.conflicts()[0]["tied"]


def test_undo_takes_back_only_the_persons_own_vote(images):
    with TeamOracle(images, ["ann", "bob"], double_fraction=1.0, random_state=0,
                    verbose=0) as oracle:
        call = Call(oracle, [[0, 1]])
        ann, bob = Client(oracle.urls["ann"]), Client(oracle.urls["bob"])
        wait_for_pairs(ann), wait_for_pairs(bob)
        answer_all(bob, lambda i, j: "same")
        state = answer_all(ann, lambda i, j: "different")
        if call.thread.is_alive():
            pair_id = state["batch"]["undo_pair_id"]
            assert ann.post("undo", {"pair_id": pair_id})[0] == 200
            votes = oracle.label_memory._votes[(0, 1)]
            assert votes == {"bob": True}
            answer_all(ann, lambda i, j: "same")
        assert call.join().result.tolist() in ([1], [-1])


def test_bad_team_arguments_are_refused(images):
    with pytest.raises(ValueError, match="unique"):
        TeamOracle(images, ["ann", "ann"], verbose=0)
    with pytest.raises(ValueError, match="cannot also be an annotator"):
        TeamOracle(images, ["ann", "bob"], reviewer="ann", verbose=0)
    with pytest.raises(ValueError, match="needs a reviewer"):
        TeamOracle(images, ["ann", "bob"], tie_breaker="reviewer", verbose=0)
    with pytest.raises(ValueError, match="at least two annotators"):
        TeamOracle(images, ["ann"], double_fraction=0.5, verbose=0)
    with pytest.raises(ValueError, match="resolution='majority'"):
        TeamOracle(images, ["ann", "bob"], label_memory=LabelMemory(), verbose=0)


def test_seconds_are_checked(images):
    with TeamOracle(images, ["ann", "bob"], random_state=0, verbose=0) as oracle:
        call = Call(oracle, [[0, 1]])
        clients = [Client(url) for url in oracle.urls.values()]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            owner = [c for c in clients if c.state()["batch"] and c.state()["batch"]["n_pairs"]]
            if owner:
                break
            time.sleep(0.02)
        pair_id = owner[0].state()["batch"]["pairs"][0]["id"]
        status, reply = owner[0].post("answer", {"pair_id": pair_id, "answer": "same",
                                                 "seconds": -1})
        assert status == 400 and "seconds" in reply["error"]
        assert len(oracle.label_memory) == 0
        oracle.close()
        call.join()
    assert isinstance(call.error, RuntimeError)


def test_a_tie_made_by_an_undo_goes_to_the_third_annotator(images):
    with TeamOracle(images, ["ann", "bob", "cat"], double_fraction=1.0, random_state=0,
                    verbose=0) as oracle:
        call = Call(oracle, [[0, 1], [2, 3]])
        clients = {name: Client(url) for name, url in oracle.urls.items()}
        batch = wait_for_team_batch(oracle)
        first, second = batch.assigned[0]  # the two people given pair (0, 1)
        a, b = clients[first], clients[second]
        pair_id = batch.first_id
        assert a.answer(pair_id, "same") and a.answer(pair_id, "different")
        assert b.answer(pair_id, "different")
        third = ({"ann", "bob", "cat"} - {first, second}).pop()
        assert third not in batch.assigned[0]  # they agree: nobody else is needed
        status, _ = a.post("undo", {"pair_id": pair_id})  # back to "same": a tie
        assert status == 200
        assert third in batch.assigned[0]
        # the other pair: answered alike, so only the tie is left
        for name in batch.assigned[1]:
            clients[name].answer(pair_id + 1, "same")
        assert call.thread.is_alive()
        clients[third].answer(pair_id, "different")
        assert call.join().result.tolist() == [0, 1]
