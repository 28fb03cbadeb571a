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
import os
from datetime import datetime, timezone

import numpy as np

from ..utils import atomic_write
from ._memory import LabelMemory

__all__ = ["export_answers", "export_labels", "import_answers"]

_CSV_FIELDS = ["i", "j", "answer", "annotator", "source", "time", "seconds"]
_CHOICES = {True: "Same", False: "Different", None: "Not sure"}
_FROM_CHOICE = {"same": 1, "different": 0, "not sure": -1, "unsure": -1}


def _answer_word(record):
    if record.unsure:
        return "unsure"
    if record.same is None:
        return "retracted"
    return "same" if record.same else "different"


def _as_memory(memory):
    return memory if isinstance(memory, LabelMemory) else LabelMemory(memory)


def export_answers(memory, path, *, format="csv", image_urls=None):
    """Write every answer of a label memory to ``path``.

    Parameters
    ----------
    memory : LabelMemory or str or path-like
        The memory, or its answers file.
    path : str or path-like
        Where to write (replaced atomically).
    format : {"csv", "label-studio"}, default="csv"
        CSV rows, or Label Studio tasks (JSON) with their annotations.
    image_urls : sequence of str, default=None
        Label Studio only: the image of each sample, shown by the task as
        ``image_i`` and ``image_j``.

    Returns
    -------
    n_written : int
        Answers written (CSV rows, or annotations over all tasks).

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
    records = list(_as_memory(memory))
    if format == "csv":
        rows = [
            [r.i, r.j, _answer_word(r), r.annotator or "", r.source, repr(r.time),
             "" if r.seconds is None else repr(r.seconds)]
            for r in records
        ]
        _write_csv(path, _CSV_FIELDS, rows)
        return len(rows)
    if format == "label-studio":
        tasks = {}
        n = 0
        for r in records:
            if r.same is None and not r.unsure:
                continue  # a retraction is not an annotation
            task = tasks.setdefault((r.i, r.j), _task(r.i, r.j, image_urls))
            task["annotations"].append({
                "result": [{
                    "from_name": "same", "to_name": "pair", "type": "choices",
                    "value": {"choices": [_CHOICES[None if r.unsure else r.same]]},
                }],
                "completed_by": r.annotator or r.source,
                "created_at": datetime.fromtimestamp(r.time, timezone.utc).isoformat(),
                "lead_time": r.seconds,
            })
            n += 1
        payload = json.dumps(list(tasks.values()), indent=1).encode("utf-8")
        atomic_write(path, lambda f: f.write(payload))
        return n
    raise ValueError(f"format must be 'csv' or 'label-studio', got {format!r}.")


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

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`export_answers` or by Label Studio (tasks
        whose ``data`` holds ``i`` and ``j`` and whose annotations use the
        choices ``Same``, ``Different`` or ``Not sure``).
    memory : LabelMemory or str or path-like
        Where to record them (a memory file is appended to, durably).
    format : {"csv", "label-studio"}, default=None
        None: from the file name (``.csv``, else Label Studio JSON).
    source : str, default="import"
        Stored as each record's source.

    Returns
    -------
    n_recorded : int
        New records (an answer the memory already holds from the same
        person is not recorded twice).

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
    >>> import_answers(out, copy)
    2
    >>> [(r.i, r.j, r.same, r.annotator) for r in copy]
    [(0, 1, True, 'ann'), (2, 3, False, 'ann')]
    """
    path = os.fspath(path)
    if format is None:
        format = "csv" if path.lower().endswith(".csv") else "label-studio"
    if format == "csv":
        answers = _read_csv(path)
    elif format == "label-studio":
        answers = _read_label_studio(path)
    else:
        raise ValueError(f"format must be 'csv' or 'label-studio', got {format!r}.")
    memory = memory if isinstance(memory, LabelMemory) else LabelMemory(memory)
    # One durable append per annotator (in file order within each person).
    by_person = {}
    for pair, code, annotator, seconds in answers:
        group = by_person.setdefault(annotator, ([], [], []))
        group[0].append(pair)
        group[1].append(code)
        group[2].append(0.0 if seconds is None else seconds)
    n = 0
    for annotator, (pairs, codes, seconds) in by_person.items():
        n += memory.record(pairs, codes, source=source, annotator=annotator, seconds=seconds)
    return n


def _read_csv(path):
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"i", "j", "answer"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path!r}: the CSV has no column(s) {sorted(missing)}.")
        for number, row in enumerate(reader, start=2):
            word = (row["answer"] or "").strip().lower()
            if word == "retracted":
                continue
            if word not in _FROM_CHOICE:
                raise ValueError(
                    f"{path!r}, line {number}: answer {row['answer']!r} is not one of "
                    "same, different, unsure."
                )
            out.append((_pair(row["i"], row["j"], f"{path!r}, line {number}"), _FROM_CHOICE[word],
                        row.get("annotator") or None, _seconds(row.get("seconds"))))
    return out


def _read_label_studio(path):
    with open(path, encoding="utf-8") as f:
        try:
            tasks = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path!r} is not Label Studio JSON: {exc}.") from None
    if not isinstance(tasks, list):
        raise ValueError(f"{path!r}: Label Studio tasks must be a JSON list, got {type(tasks).__name__}.")
    out = []
    for number, task in enumerate(tasks):
        where = f"{path!r}, task {number}"
        data = task.get("data", {}) if isinstance(task, dict) else {}
        pair = _pair(data.get("i"), data.get("j"), where)
        for annotation in task.get("annotations", []):
            if annotation.get("was_cancelled"):
                continue
            choices = [
                c for item in annotation.get("result", [])
                for c in item.get("value", {}).get("choices", [])
            ]
            if len(choices) != 1 or choices[0].strip().lower() not in _FROM_CHOICE:
                raise ValueError(
                    f"{where}: an annotation must choose one of Same, Different, Not sure; "
                    f"got {choices!r}."
                )
            who = annotation.get("completed_by")
            if isinstance(who, dict):  # Label Studio's own export: the user object
                who = who.get("email") or who.get("id")
            out.append((pair, _FROM_CHOICE[choices[0].strip().lower()],
                        None if who is None else str(who), _seconds(annotation.get("lead_time"))))
    return out


def _pair(i, j, where):
    try:
        i, j = int(i), int(j)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: the pair must be two sample indices, got {i!r} and {j!r}.") from None
    if i < 0 or j < 0:
        raise ValueError(f"{where}: sample indices must be >= 0, got {i} and {j}.")
    return i, j


def _seconds(value):
    if value in (None, ""):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


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
        [k, label] + ([names[k]] if names is not None else []) for k, label in enumerate(labels.tolist())
    ]
    _write_csv(path, header, rows)
    return labels.size
