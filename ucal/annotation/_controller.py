"""What the annotation server asks of the object that owns the page's state.

The server (:class:`~ucal.annotation.AnnotationServer`) knows nothing about
oracles or label memories. It answers ``GET /api/state`` with
:meth:`AnnotationController.state` and ``POST /api/<action>`` with
:meth:`AnnotationController.post`; a controller refuses a request by
raising :class:`RequestError`, which the server turns into a 4xx JSON reply.
"""

import abc

__all__ = ["AnnotationController", "RequestError"]

# The answers a person can give on the page, and the oracle codes they stand for.
ANSWER_CODES = {"same": 1, "different": 0, "unsure": -1}


class RequestError(Exception):
    """A refused request: the server replies ``status`` with ``message``.

    A controller raises it from :meth:`AnnotationController.post` (or
    :meth:`AnnotationController.state`) *before* it changes anything, so
    that a refused request leaves the state as it was.

    Parameters
    ----------
    status : int
        The HTTP status of the reply, a 4xx code (``400`` malformed,
        ``404`` unknown, ``409`` conflict with the current state).
    message : str
        What was wrong, shown to the person on the page.

    Attributes
    ----------
    status : int
        The HTTP status of the reply.
    message : str
        The message of the reply (``{"error": message}``).

    Examples
    --------
    >>> from ucal.annotation import RequestError
    >>> error = RequestError(409, "This batch is over.")
    >>> error.status, error.message
    (409, 'This batch is over.')
    """

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class AnnotationController(abc.ABC):
    """The state behind an annotation page, as the server sees it.

    Subclasses implement :meth:`state` and :meth:`post`. The server calls
    them from its request threads, so a controller does its own locking.
    :class:`~ucal.annotation.WebOracle` (the questions of a refiner) and
    the review of a label memory (:func:`~ucal.annotation.serve_review`)
    are the two controllers of ucal; the page's script shows what
    ``state()["mode"]`` names (``"oracle"`` or ``"review"``).

    See Also
    --------
    AnnotationServer : Serves the page and forwards its API calls here.
    RequestError : How a controller refuses a request.

    Examples
    --------
    >>> from ucal.annotation import AnnotationController, RequestError
    >>> class Counter(AnnotationController):
    ...     def __init__(self):
    ...         self.count = 0
    ...     def state(self):
    ...         return {"mode": "counter", "count": self.count}
    ...     def post(self, action, payload):
    ...         if action != "add":
    ...             raise RequestError(404, f"No such endpoint: POST /api/{action}.")
    ...         self.count += 1
    ...         return self.state()
    >>> Counter().post("add", {})
    {'mode': 'counter', 'count': 1}
    """

    @abc.abstractmethod
    def state(self):
        """The page's view of the state (``GET /api/state``).

        Returns
        -------
        state : dict
            A JSON-serialisable dict; its ``"mode"`` tells the page what to
            show.
        """

    @abc.abstractmethod
    def post(self, action, payload):
        """Carry out an action of the page (``POST /api/<action>``).

        Parameters
        ----------
        action : str
            The last part of the path: lower-case letters and ``_``.
        payload : dict
            The request's JSON object (at most 64 KiB), not yet validated.

        Returns
        -------
        reply : dict
            A JSON-serialisable dict sent back to the page.

        Raises
        ------
        RequestError
            To refuse the request (unknown action, malformed payload,
            conflict with the state), before anything changed.
        """


def require_int(payload, key):
    """``payload[key]`` as an int (not a bool, not a float), else 400."""
    if key not in payload:
        raise RequestError(400, f"Missing field {key!r}.")
    value = payload[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, f"Field {key!r} must be an integer, got {value!r}.")
    return value


def require_choice(payload, key, choices):
    """``payload[key]`` if it is one of ``choices``, else 400."""
    if key not in payload:
        raise RequestError(400, f"Missing field {key!r}.")
    value = payload[key]
    if not isinstance(value, str) or value not in choices:
        raise RequestError(
            400, f"Field {key!r} must be one of {sorted(choices)}, got {value!r}."
        )
    return value
