"""``ucal export``: a trained model as ONNX or TorchScript, for deployment."""

import os
import sys

from ._common import add_verbosity, load_model, setup_logging


def cmd_export(args):
    """``ucal export``: write RUN's network as ONNX or TorchScript, with its description."""
    setup_logging(args.verbose)
    model, model_path = load_model(args.run)
    suffix = ".onnx" if args.format == "onnx" else ".pt"
    out = args.out or os.path.join(os.path.dirname(model_path), "model" + suffix)
    info = model.export(out, format=args.format)
    sys.stdout.write(
        f"{out}: {args.format}, uint8 images {info['input']['height']}x"
        f"{info['input']['width']}x3 (NHWC, RGB) -> {info['output']['dim']}-d embeddings; "
        f"description in {out}.json\n"
    )
    return 0


def add_parser(commands):
    """Add the ``export`` sub-command."""
    export = commands.add_parser(
        "export", help="a trained model as ONNX or TorchScript",
        description="Write the network of a run (ucal train / ucal demo output folder, or "
        "its model.joblib) as a file that runs without ucal: uint8 images (batch, height, "
        "width, 3) in, L2-normalised embeddings out; its input size, embedding size and "
        "weight fingerprint go to <file>.json.",
    )
    export.add_argument("run", metavar="RUN", help="run folder (with model.joblib) or model file")
    export.add_argument("--format", choices=("onnx", "torchscript"), default="onnx",
                        help="onnx (needs pip install 'ucal[export]') or torchscript")
    export.add_argument("--out", default=None, metavar="FILE",
                        help="model file to write (default: model.onnx / model.pt beside "
                        "model.joblib)")
    add_verbosity(export)
    export.set_defaults(func=cmd_export)
    return export
