"""``ucal evaluate``: CMC and mAP of a saved model."""

import os
import sys

from ._common import (
    add_dataset_arguments,
    add_threads,
    add_verbosity,
    load_data,
    load_model,
    results_table,
    set_threads,
    setup_logging,
    write_json,
)


def cmd_evaluate(args):
    """``ucal evaluate``: CMC and mAP of a saved model."""
    setup_logging(args.verbose)
    set_threads(args.threads)
    model, _ = load_model(args.model)
    if args.device is not None:
        import pickle

        # Unpickling moves the network to the model's device parameter.
        model = pickle.loads(pickle.dumps(model.set_params(device=args.device)))
    data = load_data(args)
    if not len(data.query) or not len(data.gallery):
        where = args.dataset if args.dataset == "synthetic" else repr(args.root)
        raise ValueError(f"{where} has no query/gallery split to evaluate on.")
    scores = model.evaluate(data, rerank=args.rerank)
    row = {
        "method": os.path.basename(args.model),
        "n_queries": int(getattr(model, "n_queries_", 0)),
        "cost": float(getattr(model, "cost_", 0.0)),
        **scores,
    }
    sys.stdout.write(results_table([row]) + "\n")
    if args.output:
        write_json(args.output, {k: v for k, v in scores.items()})
    return 0


def add_parser(commands):
    """Add ``evaluate`` to the sub-parsers ``commands`` of ``ucal``."""
    evaluate = commands.add_parser("evaluate", help="CMC and mAP of a saved model",
                                   description="Evaluate a model saved by ucal train "
                                   "(model.joblib).")
    evaluate.add_argument("--model", required=True, metavar="PATH", help="model.joblib")
    add_dataset_arguments(evaluate, purpose="dataset to evaluate on (its query and gallery)")
    evaluate.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    evaluate.add_argument("--device", default=None, help="override the model's device")
    evaluate.add_argument("--output", default=None, metavar="FILE", help="write scores as JSON")
    add_verbosity(evaluate)
    add_threads(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)
    return evaluate
