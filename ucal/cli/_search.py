"""``ucal search``: the gallery images most like each query image."""

import json
import os
import sys

from ._common import add_threads, add_verbosity, image_paths, load_model, set_threads, setup_logging


def cmd_search(args):
    """``ucal search``: embed the QUERY images and print their best gallery matches."""
    from ucal.reid._export import model_fingerprint
    from ucal.search import GalleryIndex

    setup_logging(args.verbose)
    set_threads(args.threads)
    index = GalleryIndex.load(args.gallery)
    link_path = os.path.join(args.gallery, "model.json")
    model_source = args.model
    if model_source is None:
        if not os.path.isfile(link_path):
            raise FileNotFoundError(f"{args.gallery!r} names no model (no model.json): "
                                    "pass --model RUN.")
        with open(link_path, encoding="utf-8") as f:
            model_source = json.load(f)["model"]
    model, _ = load_model(model_source)
    paths = []
    for query in args.queries:
        paths += image_paths(query)[0]
    if args.verbose >= 0 and len(paths) > 1:
        model.set_params(verbose=1)  # a progress bar over the queries
    embeddings = model.transform(paths)
    cameras = None if args.camera is None else [args.camera] * len(paths)
    sims, idx = index.kneighbors(embeddings, args.top, cameras=cameras,
                                 fingerprint=model_fingerprint(model.backbone_))
    results = []
    for path, row_s, row_i in zip(paths, sims, idx):
        matches = [
            {"rank": r + 1, "similarity": float(s), "gallery_index": int(i),
             "image": index.names_[i] if index.names_ else None,
             **({"id": int(index.ids_[i])} if index.ids_ is not None else {}),
             **({"camera": int(index.cameras_[i])} if index.cameras_ is not None else {})}
            for r, (s, i) in enumerate(zip(row_s, row_i)) if i >= 0
        ]
        results.append({"query": os.path.abspath(path), "matches": matches})
    if args.serve:
        return _serve(results, args, index)
    if args.json:
        sys.stdout.write(json.dumps(results, indent=1) + "\n")
    else:
        for result in results:
            sys.stdout.write(f"{result['query']}\n")
            for m in result["matches"]:
                sys.stdout.write(f"  {m['rank']:3d}  {m['similarity']:.3f}  {m['image']}\n")
    return 0


def _serve(results, args, index):
    """Show the results on a local page until Ctrl-C."""
    import time

    from ucal.annotation._matches import serve_matches
    from ucal.annotation._server import show_url

    if index.names_ is None:
        raise ValueError("The gallery has no image names to show (indexed from embeddings).")
    server = serve_matches(results, args.top, len(index.names_), host=args.host, port=args.port)
    with server:
        show_url("Search results (Ctrl-C to stop):", server.url)
        if args.open_browser:
            import webbrowser

            webbrowser.open(server.url)
        try:
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


def add_parser(commands):
    """Add the ``search`` sub-command."""
    search = commands.add_parser(
        "search", help="search an indexed gallery by image",
        description="Embed each QUERY image (files or folders) with the model the gallery "
        "was indexed with and list its most similar gallery images.",
    )
    search.add_argument("gallery", metavar="GALLERY", help="folder written by ucal index")
    search.add_argument("queries", metavar="QUERY", nargs="+", help="query images or folders")
    search.add_argument("--top", type=int, default=10, help="matches per query (default 10)")
    search.add_argument("--camera", type=int, default=None,
                        help="the queries' camera: gallery images of it are left out")
    search.add_argument("--model", default=None, metavar="RUN",
                        help="the model (default: the one the gallery was indexed with)")
    search.add_argument("--json", action="store_true", help="print JSON for scripts")
    search.add_argument("--serve", action="store_true",
                        help="show each query beside its matches on a local page (Ctrl-C ends)")
    search.add_argument("--host", default="127.0.0.1", help="--serve: address")
    search.add_argument("--port", type=int, default=0, help="--serve: port (0: any free)")
    search.add_argument("--open-browser", action="store_true", help="--serve: open the page")
    add_threads(search)
    add_verbosity(search)
    search.set_defaults(func=cmd_search)
    return search
