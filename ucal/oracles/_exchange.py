"""Answers and cluster labels in and out: CSV and Label Studio tasks.

Teams keep their annotation work in tools such as Label Studio; these
functions move "same person?" answers between those tools and a
:class:`~ucal.oracles.LabelMemory`, and write the final cluster labels.

* CSV: one row per recorded answer (``i, j, answer, annotator, source,
  time, seconds``; ``answer`` is ``same``, ``different``, ``unsure`` or
  ``retracted``).
* Label Studio: a JSON list of tasks, one per pair, ``data`` holding the two
  sample indices (and image URLs when given), each person's answers as
  ``annotations`` of a ``choices`` control named ``same`` (``Same`` /
  ``Different`` / ``Not sure``) on the pair, ``completed_by`` holding the
  annotator.
"""

import csv
import io
import json
import math
import os
import re
from datetime import datetime, timezone

import numpy as np

from ..utils import atomic_write
from ._memory import AnswerRecord, LabelMemory, _checked_record, existing_memory
from ._protocol import MAX_INDEX, check_person, check_regular_file

__all__ = ["export_answers", "export_labels", "import_answers"]

_CSV_FIELDS = ["i", "j", "answer", "annotator", "source", "time", "seconds"]
_CHOICES = {True: "Same", False: "Different", None: "Not sure"}
_FROM_CHOICE = {"same": 1, "different": 0, "not sure": -1, "unsure": -1}
_WORDS = {"same": (True, False), "different": (False, False), "unsure": (None, True),
          "not sure": (None, True), "retracted": (None, False)}
# A spreadsheet runs a cell starting with one of these as a formula: such text is
# written after a quote (OWASP's advice), and the quote is taken off again on import.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
# Key of ucal's own fields in a Label Studio annotation (Label Studio keeps unknown keys).
_UCAL_KEY = "ucal"
# Plain ASCII numbers only: int() and float() also take "٣", "²"-like digits and "1_000".
_DIGITS = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
# Biggest CSV field read (a very long name is still a name).
_MAX_FIELD = 64 * 1024 * 1024


def _answer_word(record):
    if record.unsure:
        return "unsure"
    if record.same is None:
        return "retracted"
    return "same" if record.same else "different"


def _safe_cell(text):
    """Text a spreadsheet shows as text: a quote before a formula's first character."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _unsafe_cell(text):
    """:func:`_safe_cell` undone."""
    return text[1:] if text.startswith("'") and text[1:].startswith(_FORMULA_START) else text


def export_answers(memory, path, *, format="csv", image_urls=None):
    """Write every record of a label memory to ``path``: its whole history.

    Answers, "not sure" answers and retractions are written in the
    memory's order, each with its annotator, source, time and seconds, so
    that :func:`import_answers` rebuilds a memory whose every lookup,
    conflict and agreement figure equals this one's.

    Parameters
    ----------
    memory : LabelMemory or str or path-like
        The memory, or its answers file (which must exist).
    path : str or path-like
        Where to write (replaced atomically).
    format : {"csv", "label-studio"}, default="csv"
        CSV rows, or Label Studio tasks (JSON) with their annotations.
        CSV carries everything: text cells that a spreadsheet would run as
        a formula (starting with ``=``, ``+``, ``-``, ``@``, a tab or a
        carriage return) are written after a ``'``, which the import takes
        off. Label Studio has no retraction: a retraction is written as a
        cancelled annotation, and ucal's own fields (the record's order,
        time, source, seconds and kind) under each annotation's ``"ucal"``
        key; an annotation made in Label Studio has none and is read from
        its choice.
    image_urls : sequence of str, default=None
        Label Studio only: the image of each sample, shown by the task as
        ``image_i`` and ``image_j``.

    Returns
    -------
    n_written : int
        Records written (CSV rows, or annotations over all tasks).

    Raises
    ------
    FileNotFoundError
        ``memory`` is a path where there is no answers file.

    Examples
    --------
    >>> import os, tempfile
    >>> from ucal.oracles import LabelMemory, export_answers
    >>> memory = LabelMemory()
    >>> _ = memory.record([[0, 1], [2, 3]], [1, 0], annotator="ann")
    >>> out = os.path.join(tempfile.mkdtemp(), "answers.csv")
    >>> export_answers(memory, out)
    2
    >>> open(out).read().splitlines()[1].split(",")[:4]
    ['0', '1', 'same', 'ann']
    """
    if format not in ("csv", "label-studio"):
        raise ValueError(f"format must be 'csv' or 'label-studio', got {format!r}.")
    records = list(existing_memory(memory))
    if format == "csv":
        rows = [
            [r.i, r.j, _answer_word(r), _safe_cell(r.annotator or ""), _safe_cell(r.source),
             repr(r.time), "" if r.seconds is None else repr(r.seconds)]
            for r in records
        ]
        _write_csv(path, _CSV_FIELDS, rows)
        return len(rows)
    tasks = {}
    for order, r in enumerate(records):
        task = tasks.setdefault((r.i, r.j), _task(r.i, r.j, image_urls))
        annotation = {
            "result": [] if r.same is None and not r.unsure else [{
                "from_name": "same", "to_name": "pair", "type": "choices",
                "value": {"choices": [_CHOICES[None if r.unsure else r.same]]},
            }],
            "completed_by": r.annotator or r.source,
            "created_at": _iso(r.time),
            "lead_time": r.seconds,
            _UCAL_KEY: {"order": order, "kind": _answer_word(r), "time": r.time,
                        "source": r.source, "annotator": r.annotator, "seconds": r.seconds},
        }
        if r.same is None and not r.unsure:
            annotation["was_cancelled"] = True  # a retraction: no answer in Label Studio
        task["annotations"].append(annotation)
    payload = json.dumps(list(tasks.values()), indent=1, allow_nan=False).encode("utf-8")
    atomic_write(path, lambda f: f.write(payload))
    return len(records)


def _iso(stamp):
    """ISO date of a time, or None where it has none (0.0: unknown; out of range)."""
    if not stamp:
        return None
    try:
        return datetime.fromtimestamp(stamp, timezone.utc).isoformat()
    except (ValueError, OverflowError, OSError):
        return None


def _write_csv(path, header, rows):
    """Write ``header`` and ``rows`` as CSV to ``path``, atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    payload = buffer.getvalue().encode("utf-8")
    atomic_write(path, lambda f: f.write(payload))


def _task(i, j, image_urls):
    data = {"i": int(i), "j": int(j)}
    if image_urls is not None:
        data["image_i"], data["image_j"] = str(image_urls[i]), str(image_urls[j])
    return {"data": data, "annotations": []}


def import_answers(path, memory, *, format=None, source="import"):
    """Record the answers of a CSV or Label Studio export into ``memory``.

    All or nothing: the whole file is read and checked first, and any
    problem raises an error naming its line (CSV) or task (Label Studio)
    before anything is recorded; then every new record is appended in one
    durable write. A record the memory already holds (same pair, answer,
    annotator, source, time and seconds) is skipped, so importing a file
    twice changes nothing. Records keep the file's times (none: 0, unknown),
    seconds (unknown stays unknown), sources and retractions, and are
    applied after the records the memory already holds, in the file's
    order: a CSV's rows as they come; in Label Studio, the annotations ucal
    wrote in their recorded order, then those made in Label Studio by
    ``created_at``. A ucal annotation changed in Label Studio (another
    choice, or cancelled) keeps its original record and adds the change
    after it.

    Parameters
    ----------
    path : str or path-like
        A regular file written by :func:`export_answers` or by Label Studio
        (tasks whose ``data`` holds integer ``i`` and ``j`` and whose
        annotations choose ``Same``, ``Different`` or ``Not sure``), or a
        CSV with at least the columns ``i``, ``j`` and ``answer`` (a UTF-8
        byte order mark is fine).
    memory : LabelMemory or str or path-like
        Where to record them (a memory file is appended to, durably).
    format : {"csv", "label-studio"}, default=None
        None: from the file name (``.csv``, else Label Studio JSON).
    source : str, default="import"
        The source of records whose file gives none (a CSV without a
        ``source`` column, an annotation made in Label Studio).

    Returns
    -------
    n_recorded : int
        New records.

    Raises
    ------
    ValueError
        Naming the row or task that is not an answer; nothing of the file
        is recorded then.

    Examples
    --------
    >>> import os, tempfile
    >>> from ucal.oracles import LabelMemory, export_answers, import_answers
    >>> memory = LabelMemory()
    >>> _ = memory.record([[0, 1], [2, 3]], [1, 0], annotator="ann")
    >>> out = os.path.join(tempfile.mkdtemp(), "tasks.json")
    >>> export_answers(memory, out, format="label-studio")
    2
    >>> copy = LabelMemory()
    >>> import_answers(out, copy), import_answers(out, copy)
    (2, 0)
    >>> [(r.i, r.j, r.same, r.annotator) for r in copy]
    [(0, 1, True, 'ann'), (2, 3, False, 'ann')]
    """
    path = os.fspath(path)
    if format is None:
        format = "csv" if path.lower().endswith(".csv") else "label-studio"
    if format not in ("csv", "label-studio"):
        raise ValueError(f"format must be 'csv' or 'label-studio', got {format!r}.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"No file to import at {path!r}.")
    check_regular_file(path, "an answers export")
    if format == "csv":
        entries = _read_csv(path, source)
    else:
        entries = _read_label_studio(path, source)
    # (order, where, record): the file's order (Label Studio: ucal's order, then the
    # annotations made in Label Studio by time)
    entries.sort(key=lambda e: e[0])
    for _, where, record in entries:  # what the memory would refuse, named by line or task
        try:
            _checked_record(record)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}.") from None
    memory = memory if isinstance(memory, LabelMemory) else LabelMemory(memory)
    return memory.merge([record for _, _, record in entries])


def _index(value, name, where, *, text=False):
    """A sample index: an int (or, from CSV text, ASCII digits), 0 <= value < 2**31."""
    if text and isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        value = int(value.strip())
    elif isinstance(value, float) and value.is_integer() and not text:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: {name} must be a sample index (an integer), got {value!r}.")
    if not 0 <= value < MAX_INDEX:
        raise ValueError(f"{where}: {name} must be in [0, 2**31), got {value}.")
    return value


def _record(where, i, j, same, unsure, source, stamp, annotator, seconds):
    i, j = _index(i, "i", where, text=isinstance(i, str)), _index(j, "j", where, text=isinstance(j, str))
    if i == j:
        raise ValueError(f"{where}: the pair must be two different samples, got {i} and {j}.")
    try:
        check_person(annotator)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return AnswerRecord(min(i, j), max(i, j), same, source, stamp, unsure, annotator, seconds)


def _number(value, name, where, *, minimum=None):
    """A finite float from a cell or a JSON value, None when empty."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or (isinstance(value, str) and not _DECIMAL.fullmatch(value.strip())):
        raise ValueError(f"{where}: {name} must be a number, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {name} must be a number, got {value!r}.") from None
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        raise ValueError(f"{where}: {name} must be a finite number"
                         + (f" >= {minimum}" if minimum is not None else "") + f", got {value!r}.")
    return number


def _read_csv(path, default_source):
    entries = []
    previous = csv.field_size_limit()
    csv.field_size_limit(_MAX_FIELD)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = {"i", "j", "answer"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{path!r}: the CSV has no column(s) {sorted(missing)}.")
            for number, row in enumerate(reader, start=2):
                where = f"{path!r}, line {number}"
                word = (row["answer"] or "").strip().lower()
                if word not in _WORDS:
                    raise ValueError(
                        f"{where}: answer {row['answer']!r} is not one of same, different, "
                        "unsure, retracted."
                    )
                same, unsure = _WORDS[word]
                annotator = _unsafe_cell(row.get("annotator") or "") or None
                source = _unsafe_cell(row.get("source") or "") or default_source
                stamp = _number(row.get("time"), "time", where)
                seconds = _number(row.get("seconds"), "seconds", where, minimum=0)
                record = _record(where, row["i"], row["j"], same, unsure, source,
                                 0.0 if stamp is None else stamp, annotator, seconds)
                entries.append(((number,), where, record))
    except csv.Error as exc:
        raise ValueError(f"{path!r}: not a readable CSV ({exc}).") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path!r}: not UTF-8 text ({exc}).") from None
    finally:
        csv.field_size_limit(previous)
    return entries


def _read_label_studio(path, default_source):
    with open(path, encoding="utf-8-sig") as f:
        try:
            tasks = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ValueError(f"{path!r} is not Label Studio JSON: {exc}.") from None
    if not isinstance(tasks, list):
        raise ValueError(f"{path!r}: Label Studio tasks must be a JSON list, got {type(tasks).__name__}.")
    entries = []
    for number, task in enumerate(tasks):
        where = f"{path!r}, task {number}"
        if not isinstance(task, dict):
            raise ValueError(f"{where}: a task must be a JSON object, got {type(task).__name__}.")
        data = task.get("data")
        if not isinstance(data, dict):
            raise ValueError(f"{where}: 'data' must be an object holding i and j, got {data!r}.")
        annotations = task.get("annotations", [])
        if not isinstance(annotations, list):
            raise ValueError(f"{where}: 'annotations' must be a list, got {annotations!r}.")
        i, j = _index(data.get("i"), "i", where), _index(data.get("j"), "j", where)
        for k, annotation in enumerate(annotations):
            here = f"{where}, annotation {k}"
            if not isinstance(annotation, dict):
                raise ValueError(f"{here}: an annotation must be a JSON object, got {annotation!r}.")
            mine = annotation.get(_UCAL_KEY)
            cancelled = bool(annotation.get("was_cancelled"))
            if mine is not None:
                entry = _ucal_entry(here, i, j, mine)
                entries.append(entry)
                change = _changed_in_label_studio(here, entry[2], annotation, cancelled)
                if change is not None:  # edited in Label Studio: the change comes after
                    entries.append(((entry[0][0], entry[0][1], 1), here, change))
                continue
            if cancelled:
                continue  # skipped in Label Studio: no answer
            record = _foreign_record(here, i, j, annotation, default_source)
            entries.append(((1, record.time, number, k), here, record))
    return entries


def _who(annotation):
    who = annotation.get("completed_by")
    if isinstance(who, dict):  # Label Studio's own export: the user object
        who = who.get("email") or who.get("id")
    return None if who is None else str(who)


def _foreign_record(where, i, j, annotation, default_source):
    """An annotation made in Label Studio: its choice, person, time and lead time."""
    choice = _choice(where, annotation.get("result"))
    stamp = _created_at(where, annotation.get("updated_at") or annotation.get("created_at"))
    seconds = _number(annotation.get("lead_time"), "lead_time", where, minimum=0)
    same, unsure = _WORDS[choice]
    return _record(where, i, j, same, unsure, default_source, 0.0 if stamp is None else stamp,
                   _who(annotation), seconds)


def _changed_in_label_studio(where, original, annotation, cancelled):
    """The record of a change made in Label Studio to an annotation ucal wrote, or None."""
    was_retraction = original.same is None and not original.unsure
    if was_retraction:
        return None  # a retraction has no choice to change
    if cancelled:  # cancelled in Label Studio: the answer is taken back
        return AnswerRecord(original.i, original.j, None, original.source,
                            _changed_time(where, annotation, original), False,
                            original.annotator, None)
    choice = _choice(where, annotation.get("result"))
    same, unsure = _WORDS[choice]
    if (same, unsure) == (original.same, original.unsure):
        return None
    seconds = _number(annotation.get("lead_time"), "lead_time", where, minimum=0)
    return AnswerRecord(original.i, original.j, same, original.source,
                        _changed_time(where, annotation, original), unsure,
                        original.annotator, seconds)


def _changed_time(where, annotation, original):
    stamp = _created_at(where, annotation.get("updated_at"))
    return original.time if stamp is None else stamp


def _ucal_entry(where, i, j, mine):
    """An annotation ucal wrote: the record exactly as it was."""
    if not isinstance(mine, dict):
        raise ValueError(f"{where}: {_UCAL_KEY!r} must be an object, got {mine!r}.")
    kind = mine.get("kind")
    if kind not in ("same", "different", "unsure", "retracted"):
        raise ValueError(f"{where}: {_UCAL_KEY!r} kind {kind!r} is not an answer.")
    order = mine.get("order")
    if isinstance(order, bool) or not isinstance(order, int):
        raise ValueError(f"{where}: {_UCAL_KEY!r} order must be an integer, got {order!r}.")
    stamp = _number(mine.get("time"), "time", where)
    if stamp is None:
        raise ValueError(f"{where}: {_UCAL_KEY!r} has no time.")
    source = mine.get("source")
    if not isinstance(source, str) or not source:
        raise ValueError(f"{where}: {_UCAL_KEY!r} source must be a non-empty string, got {source!r}.")
    annotator = mine.get("annotator")
    if annotator is not None and not isinstance(annotator, str):
        raise ValueError(f"{where}: the annotator must be a string, got {annotator!r}.")
    seconds = _number(mine.get("seconds"), "seconds", where, minimum=0)
    same, unsure = _WORDS[kind]
    record = _record(where, i, j, same, unsure, source, stamp, annotator, seconds)
    return ((0, order, 0), where, record)  # before any annotation made in Label Studio


def _choice(where, result):
    if not isinstance(result, list):
        raise ValueError(f"{where}: 'result' must be a list, got {result!r}.")
    choices = []
    for item in result:
        value = item.get("value") if isinstance(item, dict) else None
        if not isinstance(value, dict) or not isinstance(value.get("choices", []), list):
            raise ValueError(f"{where}: a result must hold a 'value' with 'choices', got {item!r}.")
        choices.extend(value.get("choices", []))
    if (len(choices) != 1 or not isinstance(choices[0], str)
            or choices[0].strip().lower() not in _FROM_CHOICE):
        raise ValueError(
            f"{where}: an annotation must choose one of Same, Different, Not sure; got {choices!r}."
        )
    return choices[0].strip().lower()


def _created_at(where, value):
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where}: created_at must be an ISO date, got {value!r}.")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{where}: created_at must be an ISO date, got {value!r}.") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def export_labels(labels, path, *, names=None):
    """Write cluster labels as CSV rows ``index, label`` (and ``name``).

    Parameters
    ----------
    labels : array-like of shape (n_samples,)
        Cluster of each sample (``-1``: not clustered).
    path : str or path-like
        Where to write (replaced atomically).
    names : sequence of str, default=None
        A name per sample (an image path, say), written as a third column.

    Returns
    -------
    n_written : int
        Rows written.

    Examples
    --------
    >>> import os, tempfile
    >>> from ucal.oracles import export_labels
    >>> out = os.path.join(tempfile.mkdtemp(), "labels.csv")
    >>> export_labels([0, 0, -1], out, names=["a.jpg", "b.jpg", "c.jpg"])
    3
    >>> open(out).read().splitlines()
    ['index,label,name', '0,0,a.jpg', '1,0,b.jpg', '2,-1,c.jpg']
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be a 1D array of ints, got dtype {labels.dtype} and shape {labels.shape}.")
    if names is not None and len(names) != labels.size:
        raise ValueError(f"names has {len(names)} entries for {labels.size} labels.")
    header = ["index", "label"] + (["name"] if names is not None else [])
    rows = [
        [k, label] + ([_safe_cell(str(names[k]))] if names is not None else [])
        for k, label in enumerate(labels.tolist())
    ]
    _write_csv(path, header, rows)
    return labels.size
