"""The ``ucal`` command: ``demo``, ``train``, ``evaluate``, ``annotate``, ``export``,
``index`` and ``search``.

One module per command (``_demo``, ``_train``, ``_evaluate``,
``_annotate``), each adding its sub-parser and running it; what they share
(logging, JSON files, the results table, the dataset options) is in
``_common``. Every command goes through :func:`build_parser`, and
:func:`main` turns the expected failures of all of them into one line,
``ucal <command>: error: <message>``, and exit code 1.

torch is reached only through ``ucal.reid``, imported inside the commands
that train or embed, so that ``import ucal.cli`` stays light.
"""

import argparse
import logging
import sys

from . import _annotate, _demo, _evaluate, _export, _index, _search, _train
from ._common import check_dataset_arguments

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)

_COMMANDS = (_demo, _train, _evaluate, _annotate, _export, _index, _search)

# What a command may fail with, expectedly: a missing or existing file, a
# disk that refuses a write, bad data or settings. Anything else is a bug
# and keeps its traceback.
_EXPECTED_ERRORS = (OSError, ValueError)


def build_parser():
    """The argument parser of the ``ucal`` command.

    Returns
    -------
    parser : argparse.ArgumentParser
        With one sub-parser per command; ``parse_args`` sets ``command``
        (its name), ``func`` (the function that runs it) and
        ``command_parser`` (its sub-parser).

    Examples
    --------
    >>> from ucal.cli import build_parser
    >>> args = build_parser().parse_args(["annotate", "--memory", "answers.jsonl",
    ...                                   "--dataset", "synthetic"])
    >>> args.command, args.memory, args.host, args.port
    ('annotate', 'answers.jsonl', '127.0.0.1', 0)
    """
    parser = argparse.ArgumentParser(
        prog="ucal",
        description="Unsupervised Clustering Active Learning for person re-identification.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _COMMANDS:
        command = module.add_parser(commands)
        command.set_defaults(command_parser=command)
    return parser


def main(argv=None):
    """Entry point of the ``ucal`` console script.

    Parameters
    ----------
    argv : list of str, default=None
        Command-line arguments; None reads ``sys.argv[1:]``.

    Returns
    -------
    exit_code : int
        0 on success; 1 after an expected failure (a missing or existing
        file, an error reading or writing one, a bad value), reported on
        stderr as ``ucal <command>: error: <message>``. A usage error
        exits with code 2 (``SystemExit``), as argparse does.

    Examples
    --------
    >>> from ucal.cli import build_parser
    >>> build_parser().parse_args(["demo", "--quick"]).quick
    True
    """
    args = build_parser().parse_args(argv)
    if getattr(args, "dataset", None) is not None:
        check_dataset_arguments(args.command_parser, args)
    try:
        return args.func(args)
    except _EXPECTED_ERRORS as exc:
        logger.error("%s", exc)
        sys.stderr.write(f"ucal {args.command}: error: {exc}\n")
        return 1
