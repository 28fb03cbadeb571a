"""Answers in and out without loss (issue 29): each reproduction of a defect found in
export_answers / import_answers, the agreement helpers and the answers file, as a test."""

import csv
import json
import os
import warnings

import numpy as np
import pytest

from ucal.oracles import (
    LabelMemory,
    annotator_agreement,
    assign_pairs,
    cohen_kappa,
    export_answers,
    export_labels,
    import_answers,
)

FORMATS = [("csv", "answers.csv"), ("label-studio", "tasks.json")]


def _state(memory):
    """Everything an exchange must keep: the records, what they settle, the conflicts."""
    records = [(r.i, r.j, r.same, r.unsure, r.annotator, r.source, round(r.time, 6), r.seconds)
               for r in memory]
    pairs = sorted({(r.i, r.j) for r in memory})
    lookup = memory.lookup(pairs).tolist() if pairs else []
    return records, lookup, memory.n_contradictions_, memory.n_unsure_


# -- 1. a retracted answer stays retracted -------------------------------------------
@pytest.mark.parametrize("fmt, name", FORMATS)
def test_a_retracted_answer_does_not_come_back(tmp_path, fmt, name):
    memory = LabelMemory()
    memory.record([[0, 1]], [1], annotator="ann")
    memory.retract([[0, 1]], annotator="ann")
    out = tmp_path / name
    export_answers(memory, out, format=fmt)
    copy = LabelMemory()
    import_answers(out, copy)
    assert copy.lookup([[0, 1]]).tolist() == [-1]
    assert _state(copy) == _state(memory)


# -- 2. the file's order and times decide, not the annotators' grouping ---------------
@pytest.mark.parametrize("fmt, name", FORMATS)
def test_latest_resolution_keeps_the_latest_answer_of_the_file(tmp_path, fmt, name):
    memory = LabelMemory()
    memory.record([[0, 1]], [1], annotator="ann")
    memory.record([[0, 1]], [1], annotator="bob")
    memory.record([[0, 1]], [0], annotator="ann")  # ann changed her mind: "different"
    out = tmp_path / name
    export_answers(memory, out, format=fmt)
    copy = LabelMemory()
    import_answers(out, copy)
    # grouped by annotator, bob's "same" came last
    assert copy.lookup([[0, 1]]).tolist() == memory.lookup([[0, 1]]).tolist() == [0]


def test_csv_rows_are_applied_in_the_order_of_the_file_with_their_times(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("i,j,answer,annotator,source,time,seconds\n"
                    "0,1,different,ann,web,200.0,\n"
                    "0,1,same,bob,web,100.0,\n")
    memory = LabelMemory()
    import_answers(path, memory)
    assert memory.lookup([[0, 1]]).tolist() == [1]  # bob's row comes last in the file
    assert [r.time for r in memory] == [200.0, 100.0]


# -- 3. all or nothing, and the error names the row ---------------------------------
@pytest.mark.parametrize("bad, match", [("5,5,different,bob", "line 3"),
                                        (f"0,{2 ** 40},same,bob", "line 3")])
def test_a_bad_row_records_nothing_and_is_named(tmp_path, bad, match):
    path = tmp_path / "a.csv"
    path.write_text(f"i,j,answer,annotator\n0,1,same,ann\n{bad}\n")
    memory = LabelMemory(tmp_path / "memory.jsonl")
    with pytest.raises(ValueError, match=match):
        import_answers(path, memory)
    assert len(memory) == 0
    assert not (tmp_path / "memory.jsonl").exists() or (tmp_path / "memory.jsonl").read_text() == ""


def test_a_bad_task_records_nothing_and_is_named(tmp_path):
    tasks = [{"data": {"i": 0, "j": 1}, "annotations": [
        {"result": [{"value": {"choices": ["Same"]}}], "completed_by": "ann"}]},
        {"data": {"i": 3, "j": 3}, "annotations": [
            {"result": [{"value": {"choices": ["Different"]}}], "completed_by": "ann"}]}]
    path = tmp_path / "t.json"
    path.write_text(json.dumps(tasks))
    memory = LabelMemory()
    with pytest.raises(ValueError, match="task 1"):
        import_answers(path, memory)
    assert len(memory) == 0


# -- 4. idempotent ------------------------------------------------------------------
@pytest.mark.parametrize("fmt, name", FORMATS)
def test_importing_a_file_twice_changes_nothing(tmp_path, fmt, name):
    memory = LabelMemory()
    memory.record([[0, 1], [2, 3]], [1, -1], annotator="ann", seconds=[1.5, 2.0])
    memory.record([[0, 1]], [0], annotator="bob")
    out = tmp_path / name
    export_answers(memory, out, format=fmt)
    copy = LabelMemory(tmp_path / "copy.jsonl")
    assert import_answers(out, copy) == 3
    state = _state(copy)
    size = (tmp_path / "copy.jsonl").stat().st_size
    assert import_answers(out, copy) == 0
    assert _state(copy) == state and copy.n_unsure_ == 1
    assert (tmp_path / "copy.jsonl").stat().st_size == size
    # and from the file after a restart
    assert _state(LabelMemory(tmp_path / "copy.jsonl")) == state


# -- 5. spreadsheet-safe cells --------------------------------------------------------
def test_csv_cells_cannot_become_formulas_and_come_back_unchanged(tmp_path):
    memory = LabelMemory()
    names = ["=HYPERLINK(\"x\")", "+1", "-2", "@SUM(A1)"]
    for k, name in enumerate(names):
        memory.record([[k, k + 10]], [1], annotator=name, source="\tweb")
    out = tmp_path / "a.csv"
    export_answers(memory, out)
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for field in ("annotator", "source"):
            assert row[field][0] not in "=+-@\t\r"
    copy = LabelMemory()
    import_answers(out, copy)
    assert [r.annotator for r in copy] == names
    assert all(r.source == "\tweb" for r in copy)
    labels = tmp_path / "labels.csv"
    export_labels([0, -1], labels, names=["=cmd|' /C calc'!A0", "b.jpg"])
    lines = labels.read_text().splitlines()
    assert lines[1].split(",", 2)[2].startswith("\"'=") or lines[1].split(",", 2)[2].startswith("'=")
    assert lines[2] == "1,-1,b.jpg"  # numbers are not escaped


# -- 6. strict indices in Label Studio --------------------------------------------------
@pytest.mark.parametrize("value", [1.9, True, "1", None, -1])
def test_label_studio_indices_must_be_integers(tmp_path, value):
    tasks = [{"data": {"i": value, "j": 4}, "annotations": [
        {"result": [{"value": {"choices": ["Same"]}}], "completed_by": "ann"}]}]
    path = tmp_path / "t.json"
    path.write_text(json.dumps(tasks))
    memory = LabelMemory()
    with pytest.raises(ValueError, match="task 0"):
        import_answers(path, memory)
    assert len(memory) == 0


def test_label_studio_integral_float_indices_are_read(tmp_path):
    tasks = [{"data": {"i": 1.0, "j": 4}, "annotations": [
        {"result": [{"value": {"choices": ["Same"]}}], "completed_by": "ann"}]}]
    path = tmp_path / "t.json"
    path.write_text(json.dumps(tasks))
    memory = LabelMemory()
    assert import_answers(path, memory) == 1
    assert memory.lookup([[1, 4]]).tolist() == [1]


# -- 7. malformed Label Studio files ------------------------------------------------
@pytest.mark.parametrize("task", [
    {"data": {"i": 0, "j": 1}, "annotations": None},
    {"data": {"i": 0, "j": 1}, "annotations": {"result": []}},
    {"data": {"i": 0, "j": 1}, "annotations": [{"result": None}]},
    {"data": {"i": 0, "j": 1}, "annotations": [{"result": [{"value": "Same"}]}]},
    {"data": [0, 1], "annotations": []},
    {"data": {"i": 0, "j": 1}, "annotations": [{"result": [{"value": {"choices": [1]}}]}]},
    {"data": {"i": 0, "j": 1}, "annotations": ["Same"]},
    "a task",
])
def test_malformed_label_studio_tasks_get_an_error_naming_the_task(tmp_path, task):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([task]))
    with pytest.raises(ValueError, match="task 0"):
        import_answers(path, LabelMemory())


# -- 8. valid JSON only ---------------------------------------------------------------
def test_infinite_seconds_are_refused_and_never_written(tmp_path):
    memory = LabelMemory()
    with pytest.raises(ValueError, match="seconds"):
        memory.record([[0, 1]], [1], seconds=float("inf"))
    # an old file holding Infinity keeps its answer, not the non-number
    path = tmp_path / "old.jsonl"
    path.write_text('{"i": 0, "j": 1, "same": true, "source": "web", "time": 5.0, '
                    '"seconds": Infinity}\n')
    old = LabelMemory(path)
    assert old.lookup([[0, 1]]).tolist() == [1] and next(iter(old)).seconds is None
    out = tmp_path / "t.json"
    export_answers(old, out, format="label-studio")
    json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"{name} written"))


# -- 9. metadata ----------------------------------------------------------------------
@pytest.mark.parametrize("fmt, name", FORMATS)
def test_unknown_seconds_and_original_times_survive(tmp_path, fmt, name):
    path = tmp_path / "memory.jsonl"
    path.write_text('{"i": 0, "j": 1, "same": true, "source": "web", "time": 1700000000.25, '
                    '"annotator": "ann"}\n'
                    '{"i": 2, "j": 3, "same": false, "source": "web", "time": 1700000100.5, '
                    '"annotator": "ann", "seconds": 3.25}\n')
    memory = LabelMemory(path)
    out = tmp_path / name
    export_answers(memory, out, format=fmt)
    copy = LabelMemory()
    import_answers(out, copy)
    assert [(r.time, r.seconds) for r in copy] == [(1700000000.25, None), (1700000100.5, 3.25)]


# -- 10. spreadsheet files ------------------------------------------------------------
def test_a_csv_with_a_byte_order_mark_and_a_long_field_is_read(tmp_path):
    path = tmp_path / "a.csv"
    long_name = "x" * 200_000
    path.write_bytes(("\ufeffi,j,answer,annotator\n0,1,same,ann\n"
                      f"2,3,different,{long_name}\n").encode("utf-8"))
    memory = LabelMemory()
    assert import_answers(path, memory) == 2
    assert [r.annotator for r in memory] == ["ann", long_name]


# -- 11. strict helpers -----------------------------------------------------------------
@pytest.mark.parametrize("bad", ["no", -1, float("nan"), 2, None])
def test_cohen_kappa_takes_yes_or_no_answers_only(bad):
    with pytest.raises(ValueError, match="answers"):
        cohen_kappa([True, bad], [True, False])
    assert cohen_kappa([True, False, 1, 0], [True, False, True, False]) == 1.0


def test_a_missing_answers_file_is_an_error_not_an_empty_result(tmp_path):
    missing = tmp_path / "typo.jsonl"
    with pytest.raises(FileNotFoundError, match="typo.jsonl"):
        annotator_agreement(missing)
    with pytest.raises(FileNotFoundError, match="typo.jsonl"):
        export_answers(missing, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("n", [-2, 1.5, True])
def test_assign_pairs_refuses_a_bad_number_of_pairs(n):
    with pytest.raises(ValueError, match="n_pairs"):
        assign_pairs(n, ["ann", "bob"])


# -- 12. the answers file --------------------------------------------------------------
def test_a_torn_last_line_longer_than_the_tail_window_is_repaired(tmp_path):
    path = tmp_path / "memory.jsonl"
    memory = LabelMemory(path)
    memory.record([[0, 1]], [1], annotator="ann")
    with open(path, "ab") as f:  # a writer died in the middle of a 100 KB record
        f.write(b'{"i": 2, "j": 3, "same": true, "source": "web", "annotator": "' + b"y" * 100_000)
    with pytest.warns(UserWarning, match="truncated"):
        again = LabelMemory(path)
    assert again.record([[4, 5]], [0]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the torn line is gone: nothing to warn about
        final = LabelMemory(path)
    assert final.lookup([[0, 1], [4, 5], [2, 3]]).tolist() == [1, 0, -1]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")
def test_a_named_pipe_is_refused_at_once(tmp_path):
    fifo = tmp_path / "answers.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="regular file"):
        LabelMemory(fifo)
    with pytest.raises(ValueError, match="regular file"):
        import_answers(fifo, LabelMemory(), format="csv")


def test_a_name_that_cannot_be_written_is_refused_when_recorded(tmp_path):
    memory = LabelMemory()
    with pytest.raises(ValueError, match="annotator"):
        memory.record([[0, 1]], [1], annotator="ann\ud800")
    assert len(memory) == 0


# -- the property: any history survives both formats, a second import changes nothing ----
@pytest.mark.parametrize("fmt, name", FORMATS)
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("resolution", ["latest", "majority"])
def test_random_histories_survive_export_and_import(tmp_path, fmt, name, seed, resolution):
    rng = np.random.default_rng(seed)
    memory = LabelMemory(resolution=resolution)
    people = ["ann", "bob", "=cy", None]
    for _ in range(60):
        pair = sorted(rng.choice(12, size=2, replace=False).tolist())
        who = people[rng.integers(len(people))]
        source = ["web", "correction", "tiebreak", "team"][rng.integers(4)]
        kind = rng.random()
        seconds = None if rng.random() < 0.3 else float(rng.integers(1, 90)) / 4
        if kind < 0.15:
            memory.retract([pair], annotator=who, source=source)
        elif kind < 0.3:
            memory.record([pair], [-1], annotator=who, source=source, seconds=seconds)
        else:
            memory.record([pair], [int(rng.random() < 0.5)], annotator=who, source=source,
                          seconds=seconds)
    out = tmp_path / name
    export_answers(memory, out, format=fmt)
    copy = LabelMemory(tmp_path / "copy.jsonl", resolution=resolution)
    import_answers(out, copy)
    assert _state(copy) == _state(memory)
    assert copy.conflicts() == memory.conflicts()
    assert _agreement(copy) == _agreement(memory)
    assert import_answers(out, copy) == 0
    assert _state(LabelMemory(tmp_path / "copy.jsonl", resolution=resolution)) == _state(memory)


def _agreement(memory):
    result = annotator_agreement(memory)
    return json.dumps(result, sort_keys=True, default=str).replace("NaN", "nan")


# -- found by review: repeated records, file order, files without times, sources, edits --
@pytest.mark.parametrize("fmt, name", FORMATS)
def test_repeated_answers_of_one_call_all_survive(tmp_path, fmt, name):
    memory = LabelMemory()
    memory.record([[0, 1]] * 3, [1, 0, 1])  # one call: one time on all three
    memory.record([[2, 3]] * 2, [-1, -1])
    out = tmp_path / name
    export_answers(memory, out, format=fmt)
    copy = LabelMemory()
    assert import_answers(out, copy) == len(memory)
    assert _state(copy) == _state(memory)
    assert copy.lookup([[0, 1]]).tolist() == [1] and copy.n_unsure_ == memory.n_unsure_
    assert import_answers(out, copy) == 0


@pytest.mark.parametrize("fmt, name", FORMATS)
def test_an_older_answer_merged_later_stays_later(tmp_path, fmt, name):
    from ucal.oracles import AnswerRecord

    memory = LabelMemory()
    memory.record([[0, 1]], [0], source="web")
    memory.merge([AnswerRecord(0, 1, True, "web", 10.0)])  # an old answer, applied last
    assert memory.lookup([[0, 1]]).tolist() == [1]
    out = tmp_path / name
    export_answers(memory, out, format=fmt)
    copy = LabelMemory()
    import_answers(out, copy)
    assert copy.lookup([[0, 1]]).tolist() == [1]


@pytest.mark.parametrize("content, name", [
    ("i,j,answer\n0,1,same\n0,1,different\n", "a.csv"),
    (json.dumps([{"data": {"i": 0, "j": 1}, "annotations": [
        {"result": [{"value": {"choices": ["Same"]}}], "completed_by": "ann"}]}]), "t.json"),
])
def test_a_file_without_times_imports_once(tmp_path, content, name):
    path = tmp_path / name
    path.write_text(content)
    memory = LabelMemory()
    n = import_answers(path, memory)
    assert n >= 1 and import_answers(path, memory) == 0 and len(memory) == n
    assert all(r.time == 0.0 for r in memory)  # unknown, not the import's time


def test_an_empty_source_is_refused_when_recorded():
    memory = LabelMemory()
    with pytest.raises(ValueError, match="source"):
        memory.record([[0, 1]], [1], source="")
    with pytest.raises(ValueError, match="source"):
        memory.retract([[0, 1]], source="")


def test_a_change_made_in_label_studio_is_imported_after_the_original(tmp_path):
    memory = LabelMemory()
    memory.record([[0, 1], [2, 3]], [1, 0], annotator="ann")
    out = tmp_path / "t.json"
    export_answers(memory, out, format="label-studio")
    tasks = json.loads(out.read_text())
    tasks[0]["annotations"][0]["result"][0]["value"]["choices"] = ["Different"]
    tasks[1]["annotations"][0]["was_cancelled"] = True
    out.write_text(json.dumps(tasks))
    copy = LabelMemory()
    assert import_answers(out, copy) == 4
    assert copy.lookup([[0, 1], [2, 3]]).tolist() == [0, -1]
    assert import_answers(out, copy) == 0
    # into the memory that made the file: only the two changes are new
    assert import_answers(out, memory) == 2
    assert memory.lookup([[0, 1], [2, 3]]).tolist() == [0, -1]


def test_times_out_of_calendar_range_do_not_break_the_label_studio_export(tmp_path):
    csv_path = tmp_path / "a.csv"
    csv_path.write_text("i,j,answer,time\n0,1,same,1e12\n2,3,same,1e20\n")
    memory = LabelMemory()
    import_answers(csv_path, memory)
    out = tmp_path / "t.json"
    export_answers(memory, out, format="label-studio")
    copy = LabelMemory()
    import_answers(out, copy)
    assert [r.time for r in copy] == [1e12, 1e20]


@pytest.mark.parametrize("row, match", [("\u00b2,1,same", "line 2: i must be"),
                                        ("\u0663,1,same", "line 2: i must be"),
                                        ("0,1,same,1_000", "line 2: time must be")])
def test_only_plain_numbers_are_read(tmp_path, row, match):
    path = tmp_path / "a.csv"
    path.write_text("i,j,answer,time\n" + row + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        import_answers(path, LabelMemory())


def test_deeply_nested_json_gets_a_clear_error(tmp_path):
    path = tmp_path / "t.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="not Label Studio JSON"):
        import_answers(path, LabelMemory())
