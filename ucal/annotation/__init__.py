"""The annotation page: a person answers UCAL's questions in a browser.

A small HTTP server on this machine (standard library only) serves a page
of plain HTML, CSS and JavaScript, the dataset's images by index, and a
JSON API that an :class:`AnnotationController` answers:

- :class:`WebOracle` is an oracle (``oracle(pairs) -> answers``) whose
  batches of pairs a person answers on the page, every answer written to
  the label memory as it arrives;
- :class:`TeamOracle` is the same for a team: each person on their own
  link, a share of the pairs answered twice, agreement on every page, and
  a reviewer who settles disagreements;
- :func:`serve_review` (``ucal annotate``) and :class:`ReviewSession`
  list the answers of a label memory and record corrections.

:class:`NotebookOracle` asks the same questions in Jupyter (ipywidgets,
an optional extra, imported only when one is made).

:class:`AnnotationServer` and :class:`ImageStore` are the server and its
images, for other controllers. ``ucal.oracles.WebOracle`` is the same
class as :class:`WebOracle`. Nothing here imports torch.
"""

from ._controller import AnnotationController, RequestError
from ._notebook import NotebookOracle
from ._oracle import WebOracle
from ._review import ReviewSession, serve_review
from ._server import AnnotationServer, ImageStore
from ._team import TeamOracle

__all__ = [
    "AnnotationController",
    "AnnotationServer",
    "ImageStore",
    "NotebookOracle",
    "RequestError",
    "ReviewSession",
    "TeamOracle",
    "WebOracle",
    "serve_review",
]
