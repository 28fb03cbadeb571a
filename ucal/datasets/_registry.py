"""Every dataset ucal reads or makes, by name: :func:`load_dataset`."""

import inspect

from ._folder import load_image_folder
from ._public import load_dukemtmc, load_market1501, load_msmt17
from ._synthetic import make_persons

__all__ = ["DATASET_NAMES", "load_dataset"]

# name -> (loader, whether it reads a root folder or file).
_REGISTRY = {
    "market1501": (load_market1501, True),
    "dukemtmc": (load_dukemtmc, True),
    "msmt17": (load_msmt17, True),
    "folder": (load_image_folder, True),
    "synthetic": (make_persons, False),
}

#: The names :func:`load_dataset` knows, in the order the documentation lists them.
DATASET_NAMES = tuple(_REGISTRY)


def _known():
    return ", ".join(repr(name) for name in DATASET_NAMES)


def _loader(name):
    if not isinstance(name, str):
        raise TypeError(f"A dataset name must be a str (one of {_known()}); got {name!r}.")
    if name not in _REGISTRY:
        raise ValueError(f"Unknown dataset {name!r}; the known names are {_known()}.")
    return _REGISTRY[name]


def load_dataset(name, root=None, **kwargs):
    r"""Load a dataset by its name: a public benchmark, your own images, or synthetic persons.

    One entry point for the loaders of :mod:`ucal.datasets`, so that a
    name in a configuration file or on the command line (``ucal train
    --dataset NAME``) picks the data.

    ==============  ===============================  =========================
    ``name``        loader                           ``root``
    ==============  ===============================  =========================
    ``market1501``  :func:`load_market1501`          the dataset folder
    ``dukemtmc``    :func:`load_dukemtmc`            the dataset folder
    ``msmt17``      :func:`load_msmt17`              the dataset folder
    ``folder``      :func:`load_image_folder`        a folder or a CSV file
    ``synthetic``   :func:`make_persons`             none (made in memory)
    ==============  ===============================  =========================

    The names are ``ucal.datasets.DATASET_NAMES``.

    Parameters
    ----------
    name : str
        One of ``DATASET_NAMES``.
    root : str, path-like or None, default=None
        Where the dataset is: required by every name but ``synthetic``,
        which refuses one.
    **kwargs
        Passed to the loader: for instance ``pattern`` for ``folder``,
        ``combine_train_val`` for ``msmt17``, ``n_identities`` or
        ``random_state`` for ``synthetic``.

    Returns
    -------
    dataset : ReIDDataset
        What the loader returns.

    Raises
    ------
    ValueError
        If ``name`` is unknown (the message lists the known names), or
        ``root`` is missing (or given for ``synthetic``).
    TypeError
        If ``name`` is not a str, or the loader takes no such keyword
        argument (the message lists those it takes).
    FileNotFoundError
        From the loader, if ``root`` does not hold the dataset.

    See Also
    --------
    load_market1501, load_dukemtmc, load_msmt17, load_image_folder, make_persons

    Examples
    --------
    >>> from ucal.datasets import DATASET_NAMES, load_dataset
    >>> DATASET_NAMES
    ('market1501', 'dukemtmc', 'msmt17', 'folder', 'synthetic')
    >>> data = load_dataset("synthetic", n_identities=4, n_test_identities=2, random_state=0)
    >>> data.train.n_identities
    4
    >>> load_dataset("cifar10")
    Traceback (most recent call last):
        ...
    ValueError: Unknown dataset 'cifar10'; the known names are 'market1501', ...
    """
    loader, needs_root = _loader(name)
    parameters = inspect.signature(loader).parameters
    accepted = [key for key, p in parameters.items() if p.kind is not p.VAR_POSITIONAL]
    if needs_root:
        accepted = accepted[1:]  # the root
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"load_dataset({name!r}) got an unexpected keyword argument {unknown[0]!r}: "
            + (f"{loader.__name__} takes {', '.join(accepted)}." if accepted
               else f"{loader.__name__} takes none besides root.")
        )
    if not needs_root:
        if root is not None:
            raise ValueError(
                f"The {name!r} dataset is made in memory: it takes no root (got {root!r})."
            )
        return loader(**kwargs)
    if root is None:
        raise ValueError(
            f"The {name!r} dataset needs root, the folder it is in "
            f"(see {loader.__name__})."
        )
    return loader(root, **kwargs)
