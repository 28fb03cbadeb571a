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
    split = load_data(args).train
    n_corrections = serve_review(
        memory, split, host=args.host, port=args.port, open_browser=args.open_browser
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
    add_verbosity(annotate)
    annotate.set_defaults(func=cmd_annotate)
    return annotate
