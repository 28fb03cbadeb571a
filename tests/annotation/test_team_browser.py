"""A team on the annotation page in a real browser: two annotators at once, then the reviewer.

Needs Debian's ``chromium``, as ``test_web_browser.py`` (whose fixtures
these tests share).
"""

import time

import numpy as np
import pytest

from ucal.annotation import TeamOracle
from ucal.oracles import LabelMemory, export_answers, export_labels, import_answers

from .test_web_browser import (  # noqa: F401 - fixtures
    ARTIFACTS,
    BUTTON,
    _pairs_with_truth,
    browser,
    new_page,
    persons,
)
from .test_web_oracle import Call, Client, memory_lines

pytestmark = pytest.mark.browser


def _open(chromium, url):
    page = new_page(chromium)
    page.goto(url)
    return page


def _answer_my_pairs(page, n_pairs, truth_of, flip=()):
    """Answer the ``n_pairs`` pairs on this person's page by clicking; wrong on ``flip``."""
    from playwright.sync_api import expect

    done = set()
    for _ in range(n_pairs):
        expect(page.locator("#ask")).to_be_visible()
        deadline = time.monotonic() + 10
        while True:  # the page shows the next pair once the answer is saved
            # both sides in one read: the page may re-render between two reads
            left, right = page.evaluate(
                "['left', 'right'].map((s) => +document.getElementById('img-' + s).dataset.index)"
            )
            key = (min(left, right), max(left, right))
            if key not in done:
                break
            assert time.monotonic() < deadline, "the page did not move on"
            page.wait_for_timeout(50)
        same = truth_of(*key) != (key in flip)
        page.click(BUTTON[int(same)])
        done.add(key)
    expect(page.locator("#ask")).to_be_hidden()
    return done


def test_two_annotators_answer_one_run_then_the_reviewer_settles_a_tie(  # noqa: F811
    browser, persons, tmp_path  # noqa: F811 - the shared fixtures
):
    from playwright.sync_api import expect

    path = tmp_path / "team.jsonl"
    pairs, truth = _pairs_with_truth(persons, 10)
    pids = persons.pids

    def truth_of(i, j):
        return bool(pids[i] == pids[j])

    with TeamOracle(persons, ["ann", "bob"], reviewer="rev", label_memory=path,
                    double_fraction=0.4, tie_breaker="reviewer", random_state=0,
                    verbose=0) as oracle:
        call = Call(oracle, pairs)
        ann = _open(browser, oracle.urls["ann"])
        bob = _open(browser, oracle.urls["bob"])
        expect(ann.locator("#team-who")).to_contain_text("You answer as ann")
        expect(bob.locator("#team-who")).to_contain_text("You answer as bob")
        mine = {
            name: {(min(p["left"]["index"], p["right"]["index"]),
                    max(p["left"]["index"], p["right"]["index"]))
                   for p in Client(oracle.urls[name]).state()["batch"]["pairs"]}
            for name in ("ann", "bob")
        }
        both = mine["ann"] & mine["bob"]
        assert len(both) == 4 and mine["ann"] | mine["bob"] == {tuple(sorted(p)) for p in pairs}
        disputed = sorted(both)[0]
        # the two answer at the same time, each on their own page; bob errs on one shared pair
        answered_ann = _answer_my_pairs(ann, len(mine["ann"]), truth_of)
        answered_bob = _answer_my_pairs(bob, len(mine["bob"]), truth_of, flip={disputed})
        assert answered_ann == mine["ann"] and answered_bob == mine["bob"]
        expect(ann.locator("#team-agreement")).to_contain_text("75%")  # 3 of 4 shared pairs
        assert call.thread.is_alive()  # the tie waits for the reviewer

        rev = _open(browser, oracle.urls["rev"])
        expect(rev.locator("#team-who")).to_contain_text("You review as rev")
        conflict = rev.locator("#conflicts .conflict.disagreement")
        expect(conflict).to_have_count(1)
        expect(conflict.locator(".conflict-text")).to_contain_text("A tie: your answer decides")
        expect(conflict.locator(".conflict-text")).to_contain_text("ann says")
        ARTIFACTS.mkdir(exist_ok=True)
        rev.screenshot(path=str(ARTIFACTS / "web_team_review.png"), full_page=True)
        right = "Same person" if truth_of(*disputed) else "Different"
        conflict.get_by_role("button", name=right).first.click()
        expect(rev.locator("#conflicts-section")).to_be_hidden()
        call.join()
        assert call.error is None
        assert call.result.tolist() == truth.tolist()
        for page in (ann, bob, rev):
            assert page.problems == []
            page.context.close()

    lines = memory_lines(path)
    assert len(lines) == 10 + 4 + 1  # every pair, the 4 shared ones twice, one review
    people = [(line["i"], line["j"], line["annotator"]) for line in lines]
    assert len(set(people)) == len(people)  # no pair answered twice by one person
    assert all(line["seconds"] >= 0 for line in lines if line["source"] == "web")

    # the final labels go out and come back; the answers move to another tool and back
    labels = np.unique(pids, return_inverse=True)[1]
    export_labels(labels, tmp_path / "labels.csv")
    rows = (tmp_path / "labels.csv").read_text().splitlines()[1:]
    assert [int(row.split(",")[1]) for row in rows] == labels.tolist()
    memory = LabelMemory(path, resolution="majority")
    export_answers(memory, tmp_path / "answers.json", format="label-studio")
    back = LabelMemory(resolution="majority")
    import_answers(tmp_path / "answers.json", back)
    assert back.lookup(pairs).tolist() == memory.lookup(pairs).tolist() == truth.tolist()
