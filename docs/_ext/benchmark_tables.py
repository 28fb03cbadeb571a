"""Render the saved benchmark results as tables at build time.

Every benchmark script under ``benchmarks/`` saves ``results/<name>.json``
and, usually, ``results/<name>.md``. The directive ::

    .. benchmark-results:: clustering
       :script: benchmarks/bench_clustering.py

renders ``<name>.md`` when it exists (a small Markdown subset: headings,
paragraphs, bullet lists, code fences and pipe tables), else the JSON
(lists of records become tables, flat mappings become key/value tables),
else a "not yet run" note naming the script. ::

    .. benchmark-results-others::
       :exclude: clustering evaluation

renders every other result file, so that a new benchmark shows up without
editing the page. Nothing is parsed as reStructuredText: a stray ``*`` or
``|`` in a result file cannot break the ``-W`` build.
"""

import json
import math
import re
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

# Inline Markdown: code spans, bold, links; everything else is plain text.
_INLINE = re.compile(r"(`+)(.+?)\1|\*\*(.+?)\*\*|\[([^\]]+)\]\(([^)\s]+)\)")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_MAX_DEPTH = 3


def _inline(text):
    """Nodes of one line of Markdown inline markup."""
    out, pos = [], 0
    for match in _INLINE.finditer(text):
        if match.start() > pos:
            out.append(nodes.Text(text[pos : match.start()]))
        code, bold, label, url = match.group(2), match.group(3), match.group(4), match.group(5)
        if code is not None:
            out.append(nodes.literal(code, code))
        elif bold is not None:
            out.append(nodes.strong(bold, "", *_inline(bold)))
        else:
            out.append(nodes.reference(label, label, refuri=url))
        pos = match.end()
    if pos < len(text):
        out.append(nodes.Text(text[pos:]))
    return out


def _paragraph(text):
    return nodes.paragraph("", "", *_inline(text))


def _split_row(line):
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    cells = re.split(r"(?<!\\)\|", line)
    return [cell.strip().replace("\\|", "|") for cell in cells]


def _table(header, rows):
    """A docutils table; rows shorter than the header are padded."""
    n_cols = max([len(header)] + [len(r) for r in rows])
    table = nodes.table(classes=["benchmark-table"])
    group = nodes.tgroup(cols=n_cols)
    table += group
    for _ in range(n_cols):
        group += nodes.colspec(colwidth=1)

    def row_node(cells):
        row = nodes.row()
        for i in range(n_cols):
            cell = cells[i] if i < len(cells) else ""
            entry = nodes.entry()
            if isinstance(cell, nodes.Node):
                entry += cell
            elif cell != "":
                entry += _paragraph(str(cell))
            row += entry
        return row

    head = nodes.thead()
    head += row_node(header)
    group += head
    body = nodes.tbody()
    for cells in rows:
        body += row_node(cells)
    group += body
    return table


def markdown_to_nodes(text):
    """Nodes of the Markdown subset the benchmark scripts write."""
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            i += 1
        elif stripped.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            code = "\n".join(lines[i + 1 : j])
            out.append(nodes.literal_block(code, code))
            i = j + 1
        elif stripped.startswith("#"):
            title = stripped.lstrip("#").strip()
            out.append(nodes.rubric(title, "", *_inline(title)))
            i += 1
        elif stripped.startswith("|"):
            block = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                block.append(lines[i])
                i += 1
            rows = [_split_row(b) for b in block if not _TABLE_RULE.match(b)]
            if rows:
                out.append(_table(rows[0], rows[1:]))
        elif re.match(r"^[-*+]\s+", stripped):
            items = nodes.bullet_list()
            while i < len(lines) and re.match(r"^\s*[-*+]\s+", lines[i]):
                item_text = re.sub(r"^\s*[-*+]\s+", "", lines[i])
                i += 1
                # continuation lines of the same item
                while i < len(lines) and lines[i].startswith("  ") and not re.match(r"^\s*[-*+]\s+", lines[i]):
                    item_text += " " + lines[i].strip()
                    i += 1
                item = nodes.list_item()
                item += _paragraph(item_text)
                items += item
            out.append(items)
        else:
            para = [stripped]
            i += 1
            while i < len(lines):
                nxt = lines[i].strip()
                if not nxt or nxt.startswith(("#", "|", "```")) or re.match(r"^[-*+]\s+", nxt):
                    break
                para.append(nxt)
                i += 1
            out.append(_paragraph(" ".join(para)))
    return out


def _fmt(value):
    """A short string for a JSON scalar (lists of scalars joined)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in value) and len(value) <= 12:
            return ", ".join(_fmt(v) for v in value)
        return f"({len(value)} values)"
    if isinstance(value, dict):
        return f"({len(value)} fields)"
    return str(value)


def _is_scalar(value):
    return not isinstance(value, (dict, list, tuple)) or (
        isinstance(value, (list, tuple)) and all(not isinstance(v, (dict, list, tuple)) for v in value)
    )


def json_to_nodes(data, depth=0):
    """Nodes for any JSON value: records become tables, mappings key/value tables."""
    out = []
    if isinstance(data, list):
        records = [r for r in data if isinstance(r, dict)]
        if records and len(records) == len(data):
            columns = []
            for record in records:
                columns += [k for k in record if k not in columns]
            out.append(_table(columns, [[_fmt(r.get(c)) for c in columns] for r in records]))
        elif data:
            out.append(_paragraph(_fmt(data)))
        return out
    if not isinstance(data, dict):
        return [_paragraph(_fmt(data))]
    flat = [(k, v) for k, v in data.items() if _is_scalar(v)]
    if flat:
        out.append(_table(["field", "value"], [[str(k), _fmt(v)] for k, v in flat]))
    for key, value in data.items():
        if _is_scalar(value):
            continue
        out.append(nodes.rubric(str(key), str(key)))
        if depth >= _MAX_DEPTH:
            out.append(_paragraph(_fmt(value)))
        else:
            out.extend(json_to_nodes(value, depth + 1))
    return out


def _results_dir(env):
    return Path(env.config.benchmark_results_dir)


def render_result(stem, results_dir, note_dependency=None):
    """Nodes for one result (Markdown, else JSON), or None if absent or unreadable."""
    md, js = results_dir / f"{stem}.md", results_dir / f"{stem}.json"
    for path in (md, js):
        if path.is_file() and note_dependency is not None:
            note_dependency(str(path))
    if md.is_file():
        try:
            out = markdown_to_nodes(md.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            logger.info("benchmark_tables: cannot read %s: %s", md, exc)
        else:
            if js.is_file():
                out.append(
                    nodes.paragraph(
                        "", "", nodes.Text("Raw data: "), nodes.literal("", f"benchmarks/results/{js.name}"), nodes.Text(".")
                    )
                )
            return out
    if js.is_file():
        try:
            data = json.loads(js.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            # A benchmark may be writing the file right now: say so, do not fail the build.
            return [_paragraph(f"`benchmarks/results/{js.name}` could not be read ({type(exc).__name__}).")]
        return json_to_nodes(data)
    return None


class BenchmarkResults(SphinxDirective):
    """Render ``benchmarks/results/<name>.{md,json}`` or a "not yet run" note."""

    required_arguments = 1
    option_spec = {"script": directives.unchanged}

    def run(self):
        stem = self.arguments[0]
        self.env.note_reread()  # results change outside the source tree
        out = render_result(stem, _results_dir(self.env), self.env.note_dependency)
        if out is not None:
            return out
        script = self.options.get("script")
        admonition = nodes.note()
        text = [nodes.Text("Not yet run: there is no "), nodes.literal("", f"benchmarks/results/{stem}.json"), nodes.Text(" yet.")]
        root = _results_dir(self.env).parents[1]  # benchmarks/results -> the repository
        if script and (root / script).is_file():
            text += [nodes.Text(" Run "), nodes.literal("", f"python {script}"), nodes.Text(" to produce it.")]
        admonition += nodes.paragraph("", "", *text)
        return [admonition]


class BenchmarkResultsOthers(SphinxDirective):
    """Render every result file whose name is not in ``:exclude:``."""

    option_spec = {"exclude": directives.unchanged}

    def run(self):
        self.env.note_reread()
        results_dir = _results_dir(self.env)
        exclude = set((self.options.get("exclude") or "").split())
        stems = sorted(
            {p.stem for p in results_dir.glob("*") if p.suffix in (".json", ".md") and p.stem not in exclude}
        ) if results_dir.is_dir() else []
        if not stems:
            return [_paragraph("No other results yet.")]
        out = []
        for stem in stems:
            out.append(nodes.rubric(stem, "", nodes.literal("", f"{stem}")))
            out.extend(render_result(stem, results_dir, self.env.note_dependency) or [])
        return out


def setup(app):
    app.add_config_value("benchmark_results_dir", "", "env")
    app.add_directive("benchmark-results", BenchmarkResults)
    app.add_directive("benchmark-results-others", BenchmarkResultsOthers)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
