"""The local HTTP server behind the annotation page: token, routes, images.

Standard library only (``http.server``). The server knows nothing about
oracles or label memories: it serves the page, the dataset's images by
index, and forwards ``/api/*`` calls to an
:class:`~ucal.annotation.AnnotationController` that owns the state
(:class:`~ucal.annotation.WebOracle` or the review of a memory), through
its public ``state()`` and ``post(action, payload)`` only.

Security model, enforced here for every request:

- a random token (``secrets.token_urlsafe``) must be given as the
  ``token`` query parameter, compared in constant time; without it the
  answer is 403, on every route;
- only a fixed set of routes exists: the page's three files (read from
  the package once, at start-up), ``/img/<index>`` and ``/api/<name>``;
  no part of a request path is ever joined to a file-system path, so a
  ``..`` goes nowhere (404);
- API bodies are small JSON objects (``Content-Type: application/json``,
  at most 64 KiB); a malformed one is refused with 4xx before the
  controller changes anything.
"""

import hmac
import http.server
import importlib.resources
import io
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import sys
import threading
import warnings
from functools import lru_cache
from urllib.parse import parse_qs, urlsplit

import numpy as np

from ._controller import RequestError

__all__ = ["AnnotationServer", "ImageStore"]

logger = logging.getLogger(__name__)

# The page's files: route -> (package file, content type). Nothing else is served.
_STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
_IMAGE_ROUTE = re.compile(r"/img/([0-9]{1,12})")
_API_ROUTE = re.compile(r"/api/([a-z_]{1,32})")
_MAX_BODY = 64 * 1024
_IDLE_TIMEOUT = 30
_MAX_LOGGED_PATH = 200
# Host header names a loopback-bound server answers to.
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# Everything the page needs comes from this server; nothing may be framed,
# nothing inline runs, and the token in the URL never leaks as a referrer.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _read_page_files():
    """The page's files as bytes, read once from the installed package."""
    folder = importlib.resources.files("ucal.annotation").joinpath("static")
    files = {}
    for name in {name for name, _ in _STATIC_FILES.values()}:
        files[name] = folder.joinpath(name).read_bytes()
    return files


class ImageStore:
    """The images of the dataset being annotated, encoded on demand by index.

    The page gets an image only by its index: arrays are sent as lossless
    PNG, files are decoded and re-encoded as JPEG, so only pixels ever
    leave the server. The last 1,024 encoded images are kept.

    Parameters
    ----------
    images : ReIDSplit, list of path, or ndarray
        A :class:`~ucal.datasets.ReIDSplit` (its ``images`` and
        ``camids`` are used, never its ``pids``), a list of image file
        paths, or a uint8 array of shape (n, height, width, 3) or
        (n, height, width).

    Attributes
    ----------
    camids : ndarray of shape (n_images,) or None
        The cameras of a :class:`~ucal.datasets.ReIDSplit`; None for
        paths and arrays.

    Raises
    ------
    TypeError
        If ``images`` is a single path, an array of another dtype than
        uint8, or not a sequence of paths.
    ValueError
        If an array has another shape.

    Examples
    --------
    >>> import numpy as np
    >>> from ucal.annotation import ImageStore
    >>> store = ImageStore(np.zeros((3, 8, 4, 3), dtype=np.uint8))
    >>> len(store), store.camera(0)
    (3, None)
    >>> body, content_type = store.encode(2)
    >>> content_type, body[:4]
    ('image/png', b'\\x89PNG')
    """

    def __init__(self, images):
        camids = None
        if hasattr(images, "images") and not isinstance(images, np.ndarray):
            camids = getattr(images, "camids", None)
            images = images.images
        if isinstance(images, np.ndarray) and images.dtype.kind not in "USO":
            if images.dtype != np.uint8:
                raise TypeError(
                    f"An images array must have dtype uint8, got {images.dtype}."
                )
            if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
                raise ValueError(
                    "An images array must have shape (n, height, width, 3) or "
                    f"(n, height, width); got {images.shape}."
                )
            self._array = images
            self._paths = None
        else:
            if isinstance(images, (str, bytes)):
                raise TypeError(
                    "images must be a list of paths, a uint8 array or a ReIDSplit, "
                    f"not a single path {images!r}."
                )
            try:
                self._paths = [os.fspath(p) for p in images]
            except TypeError:
                raise TypeError(
                    "images must be a list of file paths, a uint8 array of shape "
                    f"(n, height, width, 3) or a ReIDSplit; got {type(images).__name__}."
                ) from None
            self._array = None
        n = len(self)
        if camids is not None:
            camids = np.asarray(camids).reshape(-1)
            if camids.shape[0] != n:
                camids = None
        self.camids = camids
        # Bounded: a long session views many images, each encoded once.
        self._encoded = lru_cache(maxsize=1024)(self._encode)

    def __len__(self):
        return len(self._array) if self._array is not None else len(self._paths)

    def camera(self, index):
        """Camera id of an image, or None when unknown.

        Parameters
        ----------
        index : int
            Which image, counted from 0.

        Returns
        -------
        camera : int or None
            Its camera, counted from 0; None without cameras or for ``-1``.
        """
        if self.camids is None or self.camids[index] < 0:
            return None
        return int(self.camids[index])

    def encode(self, index):
        """The image file the page gets for image ``index``.

        Parameters
        ----------
        index : int
            Position of the image.

        Returns
        -------
        body : bytes
            The encoded image.
        content_type : str
            ``"image/png"`` (arrays) or ``"image/jpeg"`` (files).

        Raises
        ------
        IndexError
            If ``index`` is out of range.
        OSError
            If the image file cannot be read.
        """
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._encoded(index)

    def _encode(self, index):
        from PIL import Image

        buffer = io.BytesIO()
        if self._array is not None:
            # Small in-memory crops: lossless PNG.
            Image.fromarray(self._array[index]).save(buffer, format="PNG")
            return buffer.getvalue(), "image/png"
        # Files are decoded and re-encoded, so only pixels ever leave the server.
        with Image.open(self._paths[index]) as image:
            image.convert("RGB").save(buffer, format="JPEG", quality=92)
        return buffer.getvalue(), "image/jpeg"


def redact_url(url):
    """``url`` with its token hidden: what may go into logs and files."""
    return re.sub(r"token=[^&#]*", "token=<hidden>", url)


def show_url(message, url, *, log=logger, level=logging.INFO):
    """Tell the person at the terminal to open ``url``, which holds the secret token.

    The full address goes to the terminal (stderr) only; the log (``log``
    at ``level``), which may be a file (``ucal train`` writes
    ``train.log``), gets it without the token. This is the one place the
    library writes to stderr itself.
    """
    log.log(level, "%s %s", message, redact_url(url))
    sys.stderr.write(f"{message} {url}\n")
    sys.stderr.flush()


def _file_name(memory):
    """The name of a memory's answers file for the page: no folders (they reveal the machine)."""
    path = getattr(memory, "path", None)
    return None if path is None else os.path.basename(path)


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Closable:
    """A ``with`` block closes the object: ``__exit__`` calls its ``close()``."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # A page loads many images at once; the default backlog of 5 drops connections.
    request_queue_size = 128
    # Restarting on the same port right after a crash must work.
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class AnnotationServer(_Closable):
    """Serve the annotation page in a background thread.

    The server starts listening as soon as it is created. It serves the
    page, the images by index, and forwards ``GET /api/state`` to
    ``controller.state()`` and ``POST /api/<action>`` to
    ``controller.post(action, payload)``; every request must carry the
    secret token of :attr:`url` (403 otherwise).

    Parameters
    ----------
    controller : AnnotationController
        Owns the state the page shows and changes (anything with the
        methods ``state()`` and ``post(action, payload)`` of
        :class:`AnnotationController`). Called from the server's threads:
        the controller does its own locking.
    images : ImageStore, ReIDSplit, list of path, or ndarray
        The images served by index (anything else than an
        :class:`ImageStore` is wrapped in one).
    host : str, default="127.0.0.1"
        Address to listen on. A host other than a loopback address warns
        (``UserWarning``).
    port : int, default=0
        Port to listen on; 0 picks a free one.
    users : sequence of str, default=()
        People who get a token of their own (a team): a request with
        ``users``' token is forwarded as ``controller.state(user=name)`` /
        ``controller.post(action, payload, user=name)``, so the page
        cannot claim another name than its token's. Requests with
        :attr:`token` are forwarded without ``user``.

    Attributes
    ----------
    controller : AnnotationController
        The controller given.
    images : ImageStore
        The images served.
    token : str
        The secret every request must carry (``?token=...``), or one of
        the users' tokens.
    urls : dict of str to str
        Each user's address, with their own token.
    host : str
        The address listened on.
    port : int
        The port listened on (the one picked when ``port=0``).

    See Also
    --------
    AnnotationController : What the server asks of its controller.
    WebOracle : An oracle answered on this page.
    serve_review : Review the answers of a label memory on this page.

    Examples
    --------
    >>> import json, urllib.request
    >>> import numpy as np
    >>> from ucal.annotation import AnnotationController, AnnotationServer
    >>> class Hello(AnnotationController):
    ...     def state(self):
    ...         return {"mode": "hello"}
    ...     def post(self, action, payload):
    ...         return {"action": action}
    >>> images = np.zeros((2, 8, 4, 3), dtype=np.uint8)
    >>> with AnnotationServer(Hello(), images) as server:
    ...     address = server.url.replace("/?", "/api/state?")
    ...     with urllib.request.urlopen(address) as reply:
    ...         json.loads(reply.read())
    {'mode': 'hello'}
    """

    def __init__(self, controller, images, *, host="127.0.0.1", port=0, users=()):
        missing = [
            name for name in ("state", "post") if not callable(getattr(controller, name, None))
        ]
        if missing:
            raise TypeError(
                "controller must be an AnnotationController (methods state() and "
                f"post(action, payload)); {type(controller).__name__} has no "
                + " and no ".join(f"{name}()" for name in missing)
                + "."
            )
        if not isinstance(host, str) or not host:
            raise TypeError(f"host must be a non-empty str, got {host!r}.")
        if isinstance(port, bool) or not isinstance(port, (int, np.integer)) or not (
            0 <= port <= 65535
        ):
            raise ValueError(f"port must be an int in [0, 65535], got {port!r}.")
        self.controller = controller
        self.images = images if isinstance(images, ImageStore) else ImageStore(images)
        self.token = secrets.token_urlsafe(24)
        users = list(users)
        if len(set(users)) != len(users) or not all(isinstance(u, str) and u for u in users):
            raise ValueError(f"users must be distinct non-empty strings, got {users!r}.")
        self._user_tokens = {name: secrets.token_urlsafe(24) for name in users}
        self._page_files = _read_page_files()
        if not _is_loopback(host):
            warnings.warn(
                f"The annotation server listens on {host!r}, not on the loopback "
                "address: anyone who can reach this machine and knows the URL's "
                "token can see the images and answer.",
                UserWarning,
                stacklevel=3,
            )
        server_class = _Server6 if ":" in host else _Server
        self._httpd = server_class((host, int(port)), self._make_handler())
        self.host = host
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # also how long close() waits
            name=f"ucal-annotation-{self.port}",
            daemon=True,
        )
        self._thread.start()
        self._closed = False

    @property
    def url(self):
        """str: The page's address, token included."""
        host = self.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/?token={self.token}"

    @property
    def urls(self):
        """dict of str to str: Each user's address, with their own token."""
        return {
            name: self.url.replace(self.token, token) for name, token in self._user_tokens.items()
        }

    def _user_of(self, token):
        """``(True, None)`` for the main token, ``(True, name)`` for a user's, ``(False, None)``."""
        given = token.encode("utf-8")
        found = (hmac.compare_digest(given, self.token.encode("utf-8")), None)
        for name, secret in self._user_tokens.items():  # compare with all: no early exit
            if hmac.compare_digest(given, secret.encode("utf-8")):
                found = (True, name)
        return found

    def _secrets(self):
        return (self.token, *self._user_tokens.values())

    def close(self):
        """Stop serving and free the port (idempotent).

        Examples
        --------
        >>> import numpy as np
        >>> from ucal.annotation import AnnotationController, AnnotationServer
        >>> class Nothing(AnnotationController):
        ...     def state(self):
        ...         return {}
        ...     def post(self, action, payload):
        ...         return {}
        >>> server = AnnotationServer(Nothing(), np.zeros((1, 8, 4, 3), np.uint8))
        >>> server.close()
        """
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _make_handler(self):
        server = self

        class Handler(_RequestHandler):
            owner = server

        return Handler


class _RequestHandler(http.server.BaseHTTPRequestHandler):
    owner = None  # the AnnotationServer, set on a subclass
    server_version = "ucal-annotation"
    sys_version = ""
    # An idle or slow connection is dropped after this many seconds: each one holds a thread.
    timeout = _IDLE_TIMEOUT

    def log_message(self, format, *args):
        # A malformed request line leaves command and path unset; and never log
        # the token, wherever in the request it was put.
        command = getattr(self, "command", None) or "-"
        path = urlsplit(getattr(self, "path", "") or "").path
        detail = str(args[1:2])  # an error's text may quote the request
        if self.owner is not None:  # redact, then cut: no token prefix survives
            for secret in self.owner._secrets():
                path = path.replace(secret, "<token>")
                detail = detail.replace(secret, "<token>")
        path, detail = path[:_MAX_LOGGED_PATH], detail[:_MAX_LOGGED_PATH]
        logger.debug("%s %s -> %s", command, path, detail)

    def _host_allowed(self):
        """Refuse (421) a Host header that is not this server's loopback name (DNS rebinding)."""
        if not _is_loopback(self.owner.host):
            return True  # listening beyond loopback: the user chose the names
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if host.startswith("[") and "]" in host:
            name = host[1:host.index("]")]
        own = self.owner.host.strip("[]").lower()
        if name in _LOOPBACK_NAMES or name == own:
            return True
        self._refuse(421, "This server answers only to localhost / 127.0.0.1 / [::1].")
        return False

    # -- replies ---------------------------------------------------------
    def _send(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in _SECURITY_HEADERS.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status, payload):
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8")

    def _refuse(self, status, message):
        self._send_json(status, {"error": message})

    # -- dispatch --------------------------------------------------------
    def _authorised_path(self):
        """The request's path if it carries a token; else refuse (403) and None.

        Sets ``self.user`` (None for the main token, a name for a user's)
        and ``self.token`` (the one given).
        """
        parts = urlsplit(self.path)
        try:
            query = parse_qs(parts.query, keep_blank_values=True, max_num_fields=8)
        except ValueError:
            query = {}
        given = query.get("token", [""])
        allowed, self.user = self.owner._user_of(given[0]) if len(given) == 1 else (False, None)
        if not allowed:
            # Same answer for every route, existing or not: nothing to probe.
            self._refuse(403, "Missing or wrong token: open the URL printed by UCAL.")
            return None
        self.token = given[0]
        return parts.path

    def _route(self, method):
        if not self._host_allowed():
            return
        path = self._authorised_path()
        if path is None:
            return
        try:
            if path in _STATIC_FILES:
                if method != "GET":
                    raise RequestError(405, f"{method} is not allowed on {path}.")
                self._serve_page_file(path)
                return
            match = _IMAGE_ROUTE.fullmatch(path)
            if match:
                if method != "GET":
                    raise RequestError(405, f"{method} is not allowed on images.")
                self._serve_image(int(match.group(1)))
                return
            match = _API_ROUTE.fullmatch(path)
            if match:
                name = match.group(1)
                if method == "GET":
                    if name != "state":
                        raise RequestError(404, f"No such endpoint: GET /api/{name}.")
                    user = {} if self.user is None else {"user": self.user}
                    self._send_json(200, self.owner.controller.state(**user))
                else:
                    payload = self._read_json()
                    user = {} if self.user is None else {"user": self.user}
                    self._send_json(200, self.owner.controller.post(name, payload, **user))
                return
            raise RequestError(404, "Not found.")
        except RequestError as error:
            self._refuse(error.status, error.message)
        except Exception as error:
            logger.exception("Annotation server error on %s %s", method, path)
            # The kind, not the message: messages may hold file paths. An OSError's
            # reason (say "No space left on device") has none and tells what to fix.
            reason = getattr(error, "strerror", None) if isinstance(error, OSError) else None
            kind = type(error).__name__ + (f": {reason}" if reason else "")
            self._refuse(500, f"Server error ({kind}); see the server's log.")

    def _serve_page_file(self, path):
        name, content_type = _STATIC_FILES[path]
        body = self.owner._page_files[name]
        if name == "index.html":
            # The token is URL-safe base64: safe inside an HTML attribute.
            body = body.replace(b"{{token}}", self.token.encode("ascii"))
        self._send(200, body, content_type)

    def _serve_image(self, index):
        try:
            body, content_type = self.owner.images.encode(index)
        except IndexError:
            raise RequestError(404, f"No image {index}.") from None
        except OSError as error:
            # the reason (with the file's path) goes to the log, not to the page
            logger.warning("Annotation server: image %d cannot be read: %s", index, error)
            raise RequestError(404, f"Image {index} cannot be read.") from None
        self._send(200, body, content_type)

    def _read_json(self):
        content_type = self.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            raise RequestError(415, "The body must be JSON (Content-Type: application/json).")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError(411, "A Content-Length header is required.") from None
        if length < 0 or length > _MAX_BODY:
            raise RequestError(413, f"The body must be at most {_MAX_BODY} bytes.")
        raw = self.rfile.read(length)
        try:
            payload = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise RequestError(400, "The body is not valid JSON.") from None
        if not isinstance(payload, dict):
            raise RequestError(400, "The body must be a JSON object.")
        return payload

    def do_GET(self):
        self._route("GET")

    def do_HEAD(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def _route_other(self):
        if self._host_allowed() and self._authorised_path() is not None:
            self._refuse(405, f"{self.command} is not allowed.")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _route_other
