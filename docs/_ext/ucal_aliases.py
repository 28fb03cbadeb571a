"""Resolve cross-references to ucal's top-level aliases.

``ucal.SelfPacedDBSCAN`` is the same object as
``ucal.cluster.SelfPacedDBSCAN``; the API reference documents each object
once, under its subpackage (as scikit-learn does), and this hook sends a
reference to the short name (``:class:`ucal.SNPSSplitter```, or a
numpydoc "See Also" entry) to that page. The same goes for a name that a
subpackage re-exports from another (``ucal.oracles.WebOracle``).
"""

import ucal


# Names a subpackage re-exports from another one, documented there.
_REEXPORTS = {"ucal.oracles.WebOracle": "ucal.annotation.WebOracle"}


def _canonical(target):
    for alias, home in _REEXPORTS.items():
        if target == alias or target.startswith(alias + "."):
            return home + target[len(alias):]
    parts = target.split(".")
    if len(parts) < 2 or parts[0] != "ucal":
        return None
    module = ucal._LAZY_ATTRS.get(parts[1])
    if module is None:
        return None
    return ".".join([module, *parts[1:]])


def _resolve_alias(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = _canonical(node.get("reftarget", ""))
    if target is None:
        return None
    domain = env.get_domain("py")
    return domain.resolve_xref(
        env, node.get("refdoc", ""), app.builder, node.get("reftype", "obj"), target, node, contnode
    )


def setup(app):
    app.connect("missing-reference", _resolve_alias)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
