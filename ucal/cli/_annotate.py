"""``ucal annotate``: review and correct a label memory file in the browser."""

import logging
import os

from ._common import add_dataset_arguments, add_verbosity, load_data, setup_logging

logger = logging.getLogger(__name__)


def cmd_annotate(args):
    """``ucal annotate``: serve the review page of ``--memory`` until it is finished."""
    from ucal.annotation import serve_review
    from ucal.oracles import LabelMemory

    setup_logging(args.verbose)
    if not os.path.exists(args.memory):
        raise FileNotFoundError(f"No label memory file {args.memory!r}.")
    memory = LabelMemory(args.memory)
    resolution = args.resolution
    if resolution is None:  # a team's file (answers with names) is resolved by majority
        resolution = "majority" if any(r.annotator is not None for r in memory) else "latest"
    if resolution != memory.resolution:
        memory = LabelMemory(args.memory, resolution=resolution)
    split = load_data(args).train
    n_corrections = serve_review(
        memory, split, host=args.host, port=args.port, open_browser=args.open_browser,
        reviewer=args.reviewer,
    )
    logger.info("%d corrections recorded in %s.", n_corrections, args.memory)
    return 0


def add_parser(commands):
    """Add ``annotate`` to the sub-parsers ``commands`` of ``ucal``."""
    annotate = commands.add_parser(
        "annotate",
        help="review and correct a label memory file in the browser",
        description="Review and correct the answers of a label memory file in a browser.",
    )
    annotate.add_argument("--memory", required=True, metavar="FILE",
                          help="label memory file (JSON lines) to review")
    add_dataset_arguments(annotate,
                          purpose="dataset the answers were given on (its training split)")
    annotate.add_argument("--host", default="127.0.0.1",
                          help="address to listen on (default 127.0.0.1; others warn)")
    annotate.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    annotate.add_argument("--open-browser", action="store_true",
                          help="open the page in the default web browser")
    annotate.add_argument("--resolution", choices=("latest", "majority"), default=None,
                          help="how several answers to a pair become one: the latest, or a "
                          "team's majority (ties listed first); default: majority when the "
                          "answers carry annotators' names, else latest")
    annotate.add_argument("--reviewer", default=None, metavar="NAME",
                          help="record the corrections under this reviewer's name")
    add_verbosity(annotate)
    annotate.set_defaults(func=cmd_annotate)
    return annotate
