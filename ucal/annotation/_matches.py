"""The search results page: each query image beside its best gallery matches.

``ucal search --serve`` shows its results on the annotation page's stack
(:class:`~ucal.annotation.AnnotationServer`): the page asks ``/api/state``
once and draws the images by index; nothing can be posted.
"""

from ._controller import AnnotationController, RequestError
from ._server import AnnotationServer

__all__ = ["MatchesController", "serve_matches"]


class MatchesController(AnnotationController):
    """Read-only state of the results page (``mode: "matches"``).

    ``results`` is a list of ``{"query": path, "matches": [{"rank", "similarity",
    "image": path, "camera"?, "id"?}]}`` (``ucal search --json``'s form); the
    images are numbered in ``images`` (queries first, then the matches' gallery
    images), which the server serves by index.
    """

    def __init__(self, results, top, n_gallery):
        self.images = []
        numbers = {}

        def number(path):
            if path not in numbers:
                numbers[path] = len(self.images)
                self.images.append(path)
            return numbers[path]

        self._state = {
            "mode": "matches", "top": int(top), "n_gallery": int(n_gallery), "version": 1,
            "results": [
                {"query": number(r["query"]), "name": r["query"],
                 "matches": [{**{k: v for k, v in m.items() if k != "image"},
                              "image": number(m["image"]), "name": m["image"]}
                             for m in r["matches"]]}
                for r in results
            ],
        }

    def state(self, user=None):
        return self._state

    def post(self, action, payload, user=None):
        raise RequestError(404, "The search results page is read-only.")


def serve_matches(results, top, n_gallery, *, host="127.0.0.1", port=0):
    """Start a server showing ``results``; returns the running :class:`AnnotationServer`."""
    controller = MatchesController(results, top, n_gallery)
    return AnnotationServer(controller, controller.images, host=host, port=port)
