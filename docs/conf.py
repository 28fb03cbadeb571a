"""Sphinx configuration of the ucal documentation.

Build with ``make docs`` (``sphinx -W --keep-going -b html docs
docs/_build/html``); ``tests/test_docs.py`` runs the same build so that a
warning (a broken docstring, a missing page) fails the test suite.

Everything here works offline: no intersphinx, no theme from the network.
"""

import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# The package is imported from the working tree, installed or not.
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))

import ucal  # noqa: E402

project = "ucal"
author = "ucal developers"
copyright = "2026, ucal developers"
version = release = ucal.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "benchmark_tables",
    "ucal_aliases",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "figures"]
root_doc = "index"
default_role = "literal"

# autodoc / autosummary: one page per public name, written under
# docs/api/generated/ (git-ignored) at build time.
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # numpydoc sections carry the types
autoclass_content = "class"

# numpydoc: methods are listed by the autosummary class template.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False

html_theme = "alabaster"
html_static_path = ["_static"]
html_title = f"ucal {release}"
html_theme_options = {
    "description": "Unsupervised Clustering Active Learning for person re-id",
    "fixed_sidebar": True,
    "show_relbars": True,
    "page_width": "1160px",
}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}

# benchmark_tables: where the benchmark scripts save their results.
benchmark_results_dir = str(ROOT / "benchmarks" / "results")


def _skip_member(app, what, name, obj, skip, options):
    # Classes are documented with their inherited members (SNPSSplitter's
    # fit lives in a private base class), but only those ucal defines:
    # scikit-learn's and torch's own methods (get_params, set_output,
    # set_fit_request, ...) link into their projects' user guides.
    if what not in ("class", "exception"):
        return None
    func = getattr(obj, "fget", None) or getattr(obj, "__func__", None) or obj
    module = getattr(func, "__module__", None) or getattr(getattr(func, "__objclass__", None), "__module__", None)
    if isinstance(module, str) and not module.startswith("ucal"):
        return True
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


# "ndarray of shape (n_clusters_, n_features)": in reStructuredText a word
# ending in "_" is a link, so the shape tuples of the docstrings' type
# fields are escaped rather than rewritten by hand in every module.
_SHAPE = re.compile(r"\(([\w\s,*+/-]+)\)")
_TRAILING_UNDERSCORE = re.compile(r"(?<=\w)_(?=[\s,)*+/-]|$)")


def _escape_shapes(app, what, name, obj, options, lines):
    for i, line in enumerate(lines):
        if "_" not in line or "`" in line:
            continue
        lines[i] = _SHAPE.sub(lambda m: "(" + _TRAILING_UNDERSCORE.sub(r"\\_", m.group(1)) + ")", line)


def _remove_stale_api_pages(app):
    # autosummary writes one page per name into api/generated/ but never
    # deletes one: a page of a name no longer listed in api.rst would still
    # be read (and fail to import, or sit outside every toctree).
    from sphinx.ext.autosummary.generate import find_autosummary_in_files

    listed = {entry.name for entry in find_autosummary_in_files([str(DOCS / "api.rst")])}
    for page in (DOCS / "api" / "generated").glob("*.rst"):
        if page.stem not in listed:
            page.unlink(missing_ok=True)


def setup(app):
    app.connect("builder-inited", _remove_stale_api_pages)
    app.connect("autodoc-skip-member", _skip_member)
    app.connect("autodoc-process-docstring", _escape_shapes)
