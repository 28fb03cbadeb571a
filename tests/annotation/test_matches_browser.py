"""The search results page (``ucal search --serve``) in headless Chromium.

Needs Debian's ``chromium``, as ``test_web_browser.py`` (whose fixtures it uses).
"""

import json
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from ucal.annotation._matches import serve_matches

from .test_web_browser import (  # noqa: F401 - fixtures
    browser,
    new_page,
)

pytestmark = pytest.mark.browser


def _images(tmp_path, n):
    paths = []
    for k in range(n):
        path = tmp_path / f"{k:04d}_c{k % 3 + 1}s1_000001_00.png"
        Image.fromarray(np.full((32, 16, 3), 20 * k, np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_the_page_shows_each_query_beside_its_matches(browser, tmp_path):  # noqa: F811
    paths = _images(tmp_path, 6)
    results = [
        {"query": paths[0], "matches": [
            {"rank": 1, "similarity": 0.912, "image": paths[3], "camera": 1, "id": 7},
            {"rank": 2, "similarity": 0.5, "image": paths[4], "camera": 2, "id": 8}]},
        {"query": paths[1], "matches": [
            {"rank": 1, "similarity": 0.7, "image": paths[3], "camera": 1, "id": 7}]},
        {"query": paths[2], "matches": []},
    ]
    with serve_matches(results, top=2, n_gallery=4) as server:
        page = new_page(browser)
        page.goto(server.url)
        page.wait_for_selector("#matches:not([hidden]) .match-row")
        rows = page.locator(".match-row")
        assert rows.count() == 3
        assert rows.nth(0).locator("figure.match").count() == 3  # the query and two matches
        captions = rows.nth(0).locator("figcaption").all_inner_texts()
        assert captions[0] == "query" and captions[1].startswith("#1") and "0.912" in captions[1]
        assert "cam 1" in captions[1] and "id 7" in captions[1]
        assert "no match left" in rows.nth(2).inner_text()
        assert page.locator("#mode-title").inner_text() == "search"
        # every image loaded (the shared gallery image is served once, by index)
        loaded = ("Array.from(document.querySelectorAll('#matches img'))"
                  ".every(i => i.complete && i.naturalWidth > 0)")
        for _ in range(100):  # (wait_for_function evaluates strings, which the CSP forbids)
            if page.evaluate(loaded):
                break
            time.sleep(0.05)
        assert page.evaluate(loaded)
        assert page.locator("#matches img").count() == 6
        assert not page.problems, page.problems
        # read-only: nothing can be posted
        request = urllib.request.Request(
            server.url.replace("/?", "/api/answer?"), data=b"{}",
            headers={"Content-Type": "application/json"}, method="POST")
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(request)
        assert error.value.code == 404
        assert "read-only" in json.loads(error.value.read())["error"]
