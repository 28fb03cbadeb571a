"""Durable files: a crash never leaves a half-written file behind."""

import os

__all__ = ["atomic_write", "fsync_dir"]


def fsync_dir(path):
    """Flush a directory entry to disk (POSIX), so that a new or renamed file survives a crash.

    Parameters
    ----------
    path : str or path-like
        The directory. Platforms that cannot open a directory (Windows)
        are left alone.
    """
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path, write, *, mode="wb", before_replace=None):
    """Write a file atomically: a reader sees the old content or the new, never a part.

    The content goes to a temporary file in the same directory, is flushed
    and fsync'ed, then renamed over ``path`` (``os.replace`` is atomic);
    the directory is synced last. On failure the temporary file is removed
    and ``path`` is untouched.

    Parameters
    ----------
    path : str or path-like
        The file to (re)write.
    write : callable
        ``write(f)`` writes the content to the open file object ``f``.
    mode : {"wb", "w"}, default="wb"
        Binary or text.
    before_replace : callable, default=None
        Called once the new content is on disk, just before it replaces
        ``path`` (say, to keep the old file as a fallback).

    Returns
    -------
    path : str
        ``path``, as a string.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fsync_dir(directory)
    return path
