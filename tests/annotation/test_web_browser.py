"""The annotation page in a real browser: headless Chromium driven by Playwright.

Needs Debian's ``chromium`` package (``.ci/run`` installs it). Without it
these tests fail when the ``CI`` environment variable is set, and are
skipped with the reason otherwise.
"""

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from ucal.annotation import ReviewSession
from ucal.datasets import make_persons
from ucal.oracles import LabelMemory, WebOracle

from .test_web_oracle import Call, Client, memory_lines

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # tests/artifacts (git-ignored)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
KEY = {1: "s", 0: "d"}
BUTTON = {1: "#btn-same", 0: "#btn-different"}


def _chromium_path():
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _unavailable(reason):
    message = f"Browser tests need {reason} (Debian: apt-get install chromium)."
    if os.environ.get("CI"):
        pytest.fail(message + " CI must run them.", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright Python package")
    path = _chromium_path()
    if path is None:
        _unavailable("a Chromium executable")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def new_page(browser):
    """A page in a context of its own; its script errors collect in ``page.problems``."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    problems = []
    # A CSP violation or a script error shows up here.
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.problems = problems
    return page


@pytest.fixture
def page(browser):
    page = new_page(browser)
    yield page
    page.context.close()


@pytest.fixture(scope="module")
def persons():
    return make_persons(n_identities=6, n_test_identities=0, n_cameras=2, random_state=0).train


def _pairs_with_truth(split, n_pairs, seed=0):
    """Pairs of distinct images, about half of one person; truth from pids."""
    rng = np.random.default_rng(seed)
    pairs = []
    while len(pairs) < n_pairs:
        i = int(rng.integers(len(split)))
        same = np.flatnonzero(split.pids == split.pids[i])
        pool = same if len(pairs) % 2 == 0 else np.flatnonzero(split.pids != split.pids[i])
        j = int(rng.choice(pool[pool != i]))
        if {i, j} not in [set(p) for p in pairs]:
            pairs.append([i, j])
    pairs = np.array(pairs)
    return pairs, (split.pids[pairs[:, 0]] == split.pids[pairs[:, 1]]).astype(np.int8)


def _text(page, selector):
    return page.locator(selector).inner_text()



def wait_until(page, expression, timeout=10.0):
    """Poll ``expression`` from Python until it is truthy.

    ``page.wait_for_function`` polls inside the page with ``new Function``,
    which the page's Content Security Policy (``script-src 'self'``)
    forbids whenever the first check fails; ``page.evaluate`` runs through
    the DevTools protocol and is not subject to it.
    """
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s: {expression}")
        time.sleep(0.05)


def test_answer_a_batch_with_clicks_keys_undo_and_a_reload(page, persons, tmp_path):
    from playwright.sync_api import expect

    memory_path = str(tmp_path / "answers.jsonl")
    memory = LabelMemory(memory_path)
    pairs, truth = _pairs_with_truth(persons, 5)
    with WebOracle(persons, label_memory=memory, verbose=0) as oracle:
        # As a refiner does: through the memory, with the groups as context.
        call = Call(lambda: memory.ask(pairs, oracle, context=persons.pids))
        page.goto(oracle.url)
        expect(page.locator("#ask")).to_be_visible()
        position = page.locator("#pair-position")
        progress = page.locator("#progress-text")
        expect(position).to_have_text("(pair 1 of 5)")
        expect(progress).to_contain_text("0 / 5 answered in this batch")
        expect(progress).to_contain_text("total asked so far: 5 (cost")
        wait_until(page, "document.getElementById('img-left').naturalWidth > 0")
        assert page.get_attribute("#img-left", "src").startswith(f"/img/{pairs[0, 0]}?token=")
        assert page.get_attribute("#img-right", "src").startswith(f"/img/{pairs[0, 1]}?token=")
        assert page.locator("#ctx-left img").count() == oracle.n_context  # group context

        # pair 1 with a click, pair 2 with the keyboard -- wrongly, then undone
        page.click(BUTTON[truth[0]])
        expect(position).to_have_text("(pair 2 of 5)")
        page.keyboard.press(KEY[1 - truth[1]])
        expect(progress).to_contain_text("2 / 5 answered")
        assert len(memory_lines(memory_path)) == 2  # on disk already
        page.keyboard.press("u")
        expect(progress).to_contain_text("1 / 5 answered")
        expect(position).to_have_text("(pair 2 of 5)")
        assert Client(oracle.url).state()["batch"]["pairs"][1]["answer"] is None
        page.keyboard.press(KEY[truth[1]])
        expect(progress).to_contain_text("2 / 5 answered")
        page.keyboard.press("n")  # pair 3: not sure
        expect(progress).to_contain_text("3 / 5 answered")
        expect(position).to_have_text("(pair 4 of 5)")

        # a reload mid-batch resumes where it stopped
        page.reload()
        expect(progress).to_contain_text("3 / 5 answered")
        expect(position).to_have_text("(pair 4 of 5)")
        chips = page.locator("#strip .chip")
        expected = [{1: "same", 0: "different"}[truth[0]], {1: "same", 0: "different"}[truth[1]],
                    "unsure", "open", "open"]
        assert [chips.nth(k).get_attribute("class").split()[1] for k in range(5)] == expected
        wait_until(page, "document.getElementById('img-right').naturalWidth > 0")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web_oracle.png"), full_page=True)

        # arrows move between pairs and show the answer given
        page.keyboard.press("ArrowLeft")
        expect(position).to_have_text("(pair 3 of 5)")
        expect(page.locator("#current-answer")).to_contain_text("Not sure")
        expect(page.locator("#btn-unsure")).to_have_attribute("aria-pressed", "true")
        page.keyboard.press("ArrowRight")
        expect(position).to_have_text("(pair 4 of 5)")
        page.keyboard.press(KEY[truth[3]])
        expect(position).to_have_text("(pair 5 of 5)")
        page.click(BUTTON[truth[4]])

        call.join()
        assert call.error is None
        expected = truth.copy()
        expected[2] = -1
        assert call.result.tolist() == expected.tolist()
        expect(page.locator("#waiting")).to_be_visible()
        expect(page.locator("#ask")).to_be_hidden()
    known = np.flatnonzero(expected >= 0)
    assert LabelMemory(memory_path).lookup(pairs[known]).tolist() == truth[known].tolist()
    assert LabelMemory(memory_path).lookup(pairs[[2]]).tolist() == [-1]
    sources = {line["source"] for line in memory_lines(memory_path)}
    assert sources <= {"web", "undo"}
    assert page.problems == []


def test_context_and_pixel_art_scaling_are_visible(page, persons):
    from playwright.sync_api import expect

    with WebOracle(persons, n_context=2, verbose=0) as oracle:
        oracle.set_context(persons.pids)
        call = Call(oracle, [[0, 1]])
        page.goto(oracle.url)
        expect(page.locator("#ctx-left img")).to_have_count(2)
        wait_until(page, "document.getElementById('img-left').naturalWidth > 0")
        # a 128x64 crop is shown much larger than itself, without smoothing
        box = page.locator("#img-left").bounding_box()
        assert box["height"] >= 2 * persons.images.shape[1]
        expect(page.locator("#img-left")).to_have_class("pixelated")
        expect(page.locator("#ctx-title-left")).to_contain_text("group")
        page.click("#btn-unsure")
        assert call.join().result.tolist() == [-1]
    assert page.problems == []


def test_token_and_traversal_are_refused_in_the_browser(page, persons):
    with WebOracle(persons, verbose=0) as oracle:
        base = oracle.url.split("?")[0].rstrip("/")
        token = Client(oracle.url).token
        for url in (base + "/", f"{base}/?token=wrong", f"{base}/app.js", f"{base}/img/0"):
            response = page.goto(url)
            assert response.status == 403, url
            assert "token" in page.content().lower()
        for url in (
            f"{base}/img/..%2f..%2f..%2fetc%2fpasswd?token={token}",
            f"{base}/img/%2e%2e%2f_web.py?token={token}",
            f"{base}/img/%2e%2e%2f_oracle.py?token={token}",
            f"{base}/../../etc/passwd?token={token}",
            f"{base}/web/index.html?token={token}",
            f"{base}/static/index.html?token={token}",
        ):
            response = page.goto(url)
            assert response.status == 404, url
            assert "root:" not in page.content()
        page.goto(oracle.url)
        statuses = page.evaluate(
            """async (token) => {
                const post = (body, type) => fetch('/api/answer?token=' + token, {
                    method: 'POST', headers: {'Content-Type': type}, body: body});
                return [
                    (await fetch('/api/state')).status,
                    (await fetch('/api/state?token=' + token)).status,
                    (await post('{not json', 'application/json')).status,
                    (await post(JSON.stringify({pair_id: 0, answer: 'maybe'}), 'application/json')).status,
                    (await post(JSON.stringify({pair_id: 0, answer: 'same'}), 'text/plain')).status,
                    (await fetch('/img/99999?token=' + token)).status,
                ];
            }""",
            token,
        )
        assert statuses == [403, 200, 400, 400, 415, 404]
        assert Client(oracle.url).state()["version"] == 0  # nothing changed


def test_review_page_corrects_a_recorded_answer(page, persons, tmp_path):
    from playwright.sync_api import expect

    memory_path = str(tmp_path / "answers.jsonl")
    pairs, truth = _pairs_with_truth(persons, 3, seed=1)
    given = truth.copy()
    given[0] = 1 - given[0]  # the annotator's mistake, to be corrected
    LabelMemory(memory_path).record(pairs, given, source="web")
    session = ReviewSession(memory_path, persons)
    try:
        page.goto(session.url)
        records = page.locator("#records .record")
        expect(records).to_have_count(3)
        first = records.filter(has=page.locator(f"img[alt^='image #{min(pairs[0])}']")).first
        label = {1: "Same person", 0: "Different"}
        expect(first.locator(".verdict")).to_have_text(label[given[0]])
        first.get_by_role("button", name=label[truth[0]]).click()
        expect(first.locator(".verdict")).to_have_text(label[truth[0]])
        last = memory_lines(memory_path)[-1]
        assert (last["source"], last["same"]) == ("correction", bool(truth[0]))
        page.select_option("#filter", "changed")
        expect(records).to_have_count(1)
        wait_until(
            page, "[...document.querySelectorAll('#records img')].every(i => i.naturalWidth > 0)"
        )
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web_review.png"), full_page=True)
        page.click("#btn-finish")
        assert session.wait(5)
        expect(page.locator("#waiting-title")).to_have_text("Review finished")
    finally:
        session.close()
    assert LabelMemory(memory_path).lookup(pairs).tolist() == truth.tolist()
    assert page.problems == []


def test_review_page_shows_contradictions_first_and_settles_them(page, persons, tmp_path):
    from playwright.sync_api import expect

    memory_path = str(tmp_path / "answers.jsonl")
    pids = persons.pids
    a, b = np.flatnonzero(pids == pids[0])[:2]
    c = int(np.flatnonzero(pids != pids[0])[0])
    memory = LabelMemory(memory_path)
    # planted: a = b (right) and b = c (wrong), but a != c (right)
    memory.record([[a, b], [c, b], [a, c]], [True, True, False], source="web")
    memory.record([[2, 3]], [-1], source="web")
    session = ReviewSession(memory_path, persons)
    try:
        page.goto(session.url)
        section = page.locator("#conflicts-section")
        expect(section).to_be_visible()
        expect(page.locator("#conflicts-title")).to_have_text("Contradictions (1)")
        conflict = page.locator("#conflicts .conflict")
        expect(conflict).to_have_count(1)
        expect(conflict.locator(".conflict-text")).to_contain_text("One of these answers is wrong")
        expect(conflict.locator(".record")).to_have_count(3)
        # above the list of all pairs, whose contradicted pairs come first and are flagged
        assert section.bounding_box()["y"] < page.locator("#records").bounding_box()["y"]
        expect(page.locator("#records .record").first.locator(".flag")).to_have_text("contradiction")
        expect(page.locator("#records .record .flag")).to_have_count(3)
        unsure = page.locator("#records .record").last
        expect(unsure.locator(".verdict")).to_have_text("Not sure")
        wait_until(
            page, "[...document.querySelectorAll('#conflicts img')].every(i => i.naturalWidth > 0)"
        )
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web_review_conflicts.png"), full_page=True)
        # one click on the wrong pair's right answer
        wrong = conflict.locator(".record").filter(
            has=page.locator(f"img[alt^='image #{min(b, c)} ']")
        ).filter(has=page.locator(f"img[alt^='image #{max(b, c)} ']"))
        expect(wrong).to_have_count(1)
        wrong.get_by_role("button", name="Different").click()
        expect(section).to_be_hidden()
        expect(page.locator("#records .record .flag")).to_have_count(0)
        expect(page.locator("#progress-text")).to_contain_text("1 corrected")
    finally:
        session.close()
    last = memory_lines(memory_path)[-1]
    assert (last["i"], last["j"], last["same"], last["source"]) == (
        min(b, c), max(b, c), False, "correction"
    )
    assert LabelMemory(memory_path).conflicts() == []
    assert page.problems == []


def test_the_page_survives_the_oracle_going_away(page, persons):
    from playwright.sync_api import expect

    oracle = WebOracle(persons, verbose=0)
    page.goto(oracle.url)
    expect(page.locator("#waiting-title")).to_contain_text("Waiting for the first batch")
    oracle.close()
    expect(page.locator("#error")).to_contain_text("Cannot reach UCAL")
