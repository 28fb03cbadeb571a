"""``ucal index``: embed a folder of gallery images once and save a searchable index."""

import json
import os
import sys

from ._common import add_threads, add_verbosity, image_paths, load_model, set_threads, setup_logging


def cmd_index(args):
    """``ucal index``: embed IMAGES with RUN's model and save a GalleryIndex to --out."""
    from ucal.reid._export import model_fingerprint
    from ucal.search import GalleryIndex
    from ucal.utils import atomic_write

    setup_logging(args.verbose)
    set_threads(args.threads)
    model, model_path = load_model(args.run)
    paths, ids, cams = image_paths(args.images, args.pattern)
    if args.verbose >= 0:
        model.set_params(verbose=1)  # a progress bar over the gallery
    embeddings = model.transform(paths)
    index = GalleryIndex(backend=args.backend, rerank=args.rerank).fit(
        embeddings, ids=ids, cameras=cams, names=[os.path.abspath(p) for p in paths],
        fingerprint=model_fingerprint(model.backbone_),
    )
    index.save(args.out)
    link = {"model": model_path, "image_size": list(model.image_size)}
    payload = json.dumps(link).encode("utf-8")
    atomic_write(os.path.join(args.out, "model.json"), lambda f: f.write(payload))
    sys.stdout.write(f"{args.out}: {len(paths)} gallery images, {embeddings.shape[1]}-d, "
                     f"backend {index.backend_}\n")
    return 0


def add_parser(commands):
    """Add the ``index`` sub-command."""
    index = commands.add_parser(
        "index", help="index a gallery of images for search",
        description="Embed every image under IMAGES (a folder, searched recursively) with "
        "the model of RUN and save a searchable gallery index to --out.",
    )
    index.add_argument("run", metavar="RUN", help="run folder (with model.joblib) or model file")
    index.add_argument("images", metavar="IMAGES", help="folder of gallery images")
    index.add_argument("--out", required=True, metavar="DIR", help="folder of the index")
    index.add_argument("--pattern", default=None, metavar="REGEX",
                       help="regular expression with groups pid and/or camid, searched in "
                       "each file name (cameras allow searching across cameras)")
    index.add_argument("--backend", choices=("auto", "numpy", "faiss", "faiss-ivf"),
                       default="auto", help="search backend (default auto)")
    index.add_argument("--rerank", action="store_true",
                       help="re-rank each query's top candidates (k-reciprocal)")
    add_threads(index)
    add_verbosity(index)
    index.set_defaults(func=cmd_index)
    return index
