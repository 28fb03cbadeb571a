"""Answers by a team: who answered and how long it took, agreement, export and import."""

import json

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from ucal.oracles import (
    LabelMemory,
    annotator_agreement,
    cohen_kappa,
    export_answers,
    export_labels,
    import_answers,
)


def test_each_persons_answer_is_kept_and_survives_the_file(tmp_path):
    path = tmp_path / "answers.jsonl"
    memory = LabelMemory(path)
    assert memory.record([[0, 1], [2, 3]], [1, 0], annotator="ann", seconds=[1.5, 2.0]) == 2
    # Another person agreeing is evidence: kept. The same person repeating: a no-op.
    assert memory.record([[1, 0]], [1], annotator="bob", seconds=0.8) == 1
    assert memory.record([[0, 1]], [1], annotator="ann") == 0
    # Without an annotator the old rule holds: the pair has that answer already.
    assert memory.record([[0, 1]], [1]) == 0
    again = LabelMemory(path)
    got = [(r.i, r.j, r.same, r.annotator, r.seconds) for r in again]
    assert got == [(0, 1, True, "ann", 1.5), (2, 3, False, "ann", 2.0), (0, 1, True, "bob", 0.8)]
    assert again.lookup([[0, 1], [2, 3]]).tolist() == [1, 0]


def test_files_without_annotators_still_open(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text('{"i": 0, "j": 1, "same": true, "source": "web", "time": 1.0}\n')
    (record,) = list(LabelMemory(path))
    assert record.annotator is None and record.seconds is None and record.same is True


@pytest.mark.parametrize(
    "line, match",
    [
        ('{"i": 0, "j": 1, "same": true, "annotator": 7}', "'annotator' must be a string"),
        ('{"i": 0, "j": 1, "same": true, "seconds": -2}', "'seconds' must be a number >= 0"),
    ],
)
def test_malformed_team_fields_are_named(tmp_path, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"i": 2, "j": 3, "same": false}\n' + line + "\n{\"i\": 4, \"j\": 5, \"same\": true}\n")
    with pytest.raises(ValueError, match=match):
        LabelMemory(path)


def test_bad_annotator_or_seconds_are_refused_before_anything_is_written(tmp_path):
    memory = LabelMemory(tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match="annotator must be a non-empty string"):
        memory.record([[0, 1]], [1], annotator="")
    with pytest.raises(ValueError, match="seconds must be one number or 2 numbers"):
        memory.record([[0, 1], [1, 2]], [1, 0], seconds=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="seconds must be numbers >= 0"):
        memory.record([[0, 1]], [1], seconds=-1)
    assert len(memory) == 0 and not (tmp_path / "m.jsonl").exists()


def test_cohen_kappa_matches_scikit_learn():
    rng = np.random.default_rng(0)
    a = rng.random(300) < 0.4
    b = np.where(rng.random(300) < 0.2, ~a, a)
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    assert np.isnan(cohen_kappa([], []))
    assert np.isnan(cohen_kappa([True, True], [True, True]))  # chance agreement is certain
    with pytest.raises(ValueError, match="same length"):
        cohen_kappa([True], [True, False])


def test_agreement_singles_out_the_least_reliable_annotator():
    rng = np.random.default_rng(1)
    n = 600
    pairs = np.column_stack([np.arange(n), np.arange(n) + n])
    truth = rng.random(n) < 0.5
    memory = LabelMemory()
    for name, error in (("careful", 0.02), ("usual", 0.05), ("hasty", 0.15)):
        flips = rng.random(n) < error
        memory.record(pairs, truth ^ flips, annotator=name)
    result = annotator_agreement(memory)
    kappas = {name: s["kappa"] for name, s in result["annotators"].items()}
    assert min(kappas, key=kappas.get) == "hasty"
    assert max(kappas, key=kappas.get) == "careful"
    assert len(result["pairs"]) == 3 and all(p["n_common"] == n for p in result["pairs"])
    assert result["overall"]["n_common"] == 3 * n
    assert 0.6 < result["overall"]["kappa"] < 0.9


def test_agreement_uses_each_persons_latest_answer():
    memory = LabelMemory()
    memory.record([[0, 1]], [0], annotator="ann")
    memory.record([[0, 1]], [1], annotator="ann")  # changed her mind
    memory.record([[0, 1]], [1], annotator="bob")
    memory.record([[2, 3]], [-1], annotator="bob")  # "not sure" does not count
    result = annotator_agreement(memory)
    assert result["pairs"] == [
        {"annotators": ("ann", "bob"), "n_common": 1, "agreement": 1.0, "kappa": pytest.approx(np.nan, nan_ok=True)}
    ]
    assert result["annotators"]["bob"]["n_answers"] == 1


@pytest.mark.parametrize("fmt, name", [("csv", "answers.csv"), ("label-studio", "tasks.json")])
def test_export_then_import_keeps_every_answer(tmp_path, fmt, name):
    memory = LabelMemory()
    memory.record([[0, 1], [2, 3]], [1, 0], annotator="ann", seconds=[1.0, 2.5])
    memory.record([[0, 1], [4, 5]], [0, -1], annotator="bob", seconds=[3.0, 4.0])
    out = tmp_path / name
    assert export_answers(memory, out, format=fmt) == 4
    copy = LabelMemory(tmp_path / "copy.jsonl")
    assert import_answers(out, copy) == 4
    key = lambda r: (r.i, r.j, r.same, r.unsure, r.annotator, r.seconds)  # noqa: E731
    assert sorted(map(key, copy)) == sorted(map(key, memory))
    assert all(r.source == "import" for r in copy)
    # Importing the same file again adds nothing but the "not sure" answers
    # (each of which is a question answered, always kept).
    assert import_answers(out, copy) == 1


def test_label_studio_tasks_carry_images_and_read_label_studio_users(tmp_path):
    memory = LabelMemory()
    memory.record([[0, 2]], [1], annotator="ann")
    out = tmp_path / "tasks.json"
    export_answers(memory, out, format="label-studio", image_urls=["a.jpg", "b.jpg", "c.jpg"])
    tasks = json.loads(out.read_text())
    assert tasks[0]["data"] == {"i": 0, "j": 2, "image_i": "a.jpg", "image_j": "c.jpg"}
    assert tasks[0]["annotations"][0]["result"][0]["value"] == {"choices": ["Same"]}
    # Label Studio's own export names the user with an object, and may cancel an annotation.
    tasks[0]["annotations"][0]["completed_by"] = {"id": 3, "email": "ann@example.org"}
    tasks[0]["annotations"].append({"was_cancelled": True, "result": []})
    out.write_text(json.dumps(tasks))
    copy = LabelMemory()
    assert import_answers(out, copy) == 1
    assert next(iter(copy)).annotator == "ann@example.org"


@pytest.mark.parametrize(
    "content, name, match",
    [
        ("i,j,answer\n0,1,same\n2,3,maybe\n", "a.csv", "line 3: answer 'maybe'"),
        ("i,answer\n0,same\n", "a.csv", r"no column\(s\) \['j'\]"),
        ("i,j,answer\n0,x,same\n", "a.csv", "two sample indices"),
        ('[{"data": {"i": 0, "j": 1}, "annotations": [{"result": []}]}]', "t.json", "must choose one"),
        ('{"tasks": []}', "t.json", "must be a JSON list"),
        ("not json", "t.json", "is not Label Studio JSON"),
    ],
)
def test_import_errors_name_the_problem_and_record_nothing(tmp_path, content, name, match):
    path = tmp_path / name
    path.write_text(content)
    memory = LabelMemory()
    with pytest.raises(ValueError, match=match):
        import_answers(path, memory)
    assert len(memory) == 0


def test_export_labels_and_its_errors(tmp_path):
    out = tmp_path / "labels.csv"
    assert export_labels(np.array([2, -1, 2]), out) == 3
    assert out.read_text().splitlines() == ["index,label", "0,2", "1,-1", "2,2"]
    with pytest.raises(ValueError, match="1D array of ints"):
        export_labels([0.5, 1.0], out)
    with pytest.raises(ValueError, match="names has 1 entries for 2 labels"):
        export_labels([0, 1], out, names=["a"])
    with pytest.raises(ValueError, match="format must be"):
        export_answers(LabelMemory(), out, format="xml")
