"""Answers by a team: who answered and how long it took, agreement, export and import."""

import json

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from ucal.oracles import (
    AnnotatorTeam,
    LabelMemory,
    LabelOracle,
    NoisyOracle,
    OracleError,
    annotator_agreement,
    assign_pairs,
    cohen_kappa,
    export_answers,
    export_labels,
    import_answers,
)
from ucal.oracles._team import error_rates_of


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
    with pytest.raises(ValueError, match="seconds must be finite numbers >= 0"):
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
    key = lambda r: (r.i, r.j, r.same, r.unsure, r.annotator, r.seconds, r.source)
    assert sorted(map(key, copy)) == sorted(map(key, memory))
    # Importing the same file again adds nothing, "not sure" answers included
    # (issue 29: each record is imported once).
    assert import_answers(out, copy) == 0


def test_label_studio_tasks_carry_images_and_read_label_studio_users(tmp_path):
    memory = LabelMemory()
    memory.record([[0, 2]], [1], annotator="ann")
    out = tmp_path / "tasks.json"
    export_answers(memory, out, format="label-studio", image_urls=["a.jpg", "b.jpg", "c.jpg"])
    tasks = json.loads(out.read_text())
    assert tasks[0]["data"] == {"i": 0, "j": 2, "image_i": "a.jpg", "image_j": "c.jpg"}
    assert tasks[0]["annotations"][0]["result"][0]["value"] == {"choices": ["Same"]}
    # Label Studio's own export names the user with an object, and may cancel an annotation;
    # an annotation made in Label Studio has no "ucal" fields
    del tasks[0]["annotations"][0]["ucal"]
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
        ("i,j,answer\n0,x,same\n", "a.csv", "line 2: j must be a sample index"),
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


# -- resolution="majority": the rule that turns a team's answers into one ----------


def test_majority_counts_each_persons_latest_answer_once(tmp_path):
    path = tmp_path / "team.jsonl"
    memory = LabelMemory(path, resolution="majority")
    memory.record([[0, 1]], [True], annotator="ann")
    memory.record([[0, 1]], [False], annotator="bob")
    assert memory.lookup([[0, 1]]).tolist() == [-1]  # a tie: no answer
    assert memory.ask([[0, 1]], LabelOracle([0, 0])).tolist() == [-1]  # and never asked
    memory.record([[0, 1]], [True], annotator="cat")
    assert memory.lookup([[0, 1]]).tolist() == [1]  # two against one
    memory.record([[0, 1]], [False], annotator="ann")  # ann changes her mind: still one vote
    assert memory.lookup([[0, 1]]).tolist() == [0]
    # the latest answer alone would say "different" too; order does not decide under majority
    latest = LabelMemory(resolution="majority")
    for who, same in (("ann", True), ("cat", True), ("bob", False)):
        latest.record([[0, 1]], [same], annotator=who)
    assert latest.lookup([[0, 1]]).tolist() == [1]
    assert LabelMemory(path).lookup([[0, 1]]).tolist() == [0]  # "latest" on the same file
    assert LabelMemory(path, resolution="majority").lookup([[0, 1]]).tolist() == [0]


def test_a_reviewer_overrides_the_votes_and_settles_the_disagreement():
    memory = LabelMemory(resolution="majority")
    memory.record([[3, 4]], [True], annotator="ann")
    memory.record([[3, 4]], [False], annotator="bob")
    (conflict,) = memory.conflicts()
    assert (conflict["kind"], conflict["tied"]) == ("disagreement", True)
    assert [r.annotator for r in conflict["answers"]] == ["ann", "bob"]
    memory.record([[3, 4]], [False], source="correction", annotator="rev")
    assert memory.lookup([[3, 4]]).tolist() == [0]
    assert memory.conflicts() == []
    memory.record([[3, 4]], [True], annotator="cat")  # more votes do not undo a review
    assert memory.lookup([[3, 4]]).tolist() == [0]


def test_ties_come_first_among_the_disagreements():
    memory = LabelMemory(resolution="majority")
    for who, same in (("ann", True), ("bob", False), ("cat", True)):
        memory.record([[0, 1]], [same], annotator=who)
    memory.record([[5, 6]], [True], annotator="ann")
    memory.record([[5, 6]], [False], annotator="bob")
    assert [(c["i"], c["j"], c["tied"]) for c in memory.conflicts()] == [
        (5, 6, True), (0, 1, False)
    ]


def test_retract_removes_only_that_persons_vote():
    memory = LabelMemory(resolution="majority")
    memory.record([[0, 1]], [True], annotator="ann")
    memory.record([[0, 1]], [True], annotator="bob")
    assert memory.retract([[0, 1]], annotator="cat") == 0  # cat never answered
    assert memory.retract([[0, 1]], annotator="ann") == 1
    assert memory.lookup([[0, 1]]).tolist() == [1]  # bob's vote stands
    assert memory.retract([[0, 1]], annotator="bob") == 1
    assert memory.lookup([[0, 1]]).tolist() == [-1]
    with pytest.raises(ValueError, match="resolution must be one of"):
        LabelMemory(resolution="vote")


def test_transitive_inference_uses_the_resolved_answers():
    memory = LabelMemory(resolution="majority")
    memory.record([[0, 1], [1, 2]], [True, True], annotator="ann")
    memory.record([[0, 1]], [False], annotator="bob")  # a tie cuts 0 from 1
    assert memory.lookup([[0, 2]]).tolist() == [-1]
    memory.record([[0, 1]], [True], annotator="cat")
    assert memory.lookup([[0, 2]]).tolist() == [1]


# -- AnnotatorTeam: a team of oracles, for studies --------------------------------


def test_assign_pairs_balances_and_honours_the_double_fraction():
    load = {}
    names = ["ann", "bob", "cat"]
    assignment = assign_pairs(100, names, double_fraction=0.2, random_state=0, load=load)
    assert sum(len(who) == 2 for who in assignment) == 20
    assert all(len(set(who)) == len(who) for who in assignment)
    assert sum(load.values()) == 120 and max(load.values()) - min(load.values()) <= 1
    excluded = assign_pairs(3, names, random_state=0, exclude=[{"ann", "bob"}, set(names), set()])
    assert excluded[0] == ("cat",) and excluded[1] == ()
    with pytest.raises(ValueError, match="double_fraction"):
        assign_pairs(3, names, double_fraction=1.5)
    with pytest.raises(ValueError, match="non-empty strings"):
        assign_pairs(3, ["ann", ""])


def test_team_breaks_ties_with_a_third_member_and_counts_every_answer():
    y = np.repeat(np.arange(10), 4)
    truth = LabelOracle(y)
    liar = NoisyOracle(LabelOracle(y), error_rate=1.0, random_state=0)
    team = AnnotatorTeam({"ann": truth, "bob": liar, "cat": truth}, double_fraction=1.0,
                         random_state=0)
    pairs = np.array([[0, 1], [0, 4], [8, 9], [12, 20], [4, 5], [30, 31]])
    answers = team(pairs)
    # every tie (bob against one of the others) went to the third, who tells the truth
    assert answers.tolist() == truth(pairs).astype(int).tolist()
    assert team.n_queries == 6
    by = team.n_answers_by
    assert by["bob"] >= 1 and team.n_answers == sum(by.values()) > 2 * 6
    agreement = annotator_agreement(team.label_memory)
    assert agreement["annotators"]["bob"]["kappa"] < agreement["annotators"]["ann"]["kappa"]


def test_team_reviewer_settles_ties_when_asked_to():
    y = np.repeat(np.arange(5), 2)
    truth = LabelOracle(y)
    liar = NoisyOracle(LabelOracle(y), error_rate=1.0, random_state=0)
    reviewer = LabelOracle(y)
    team = AnnotatorTeam({"ann": truth, "bob": liar}, double_fraction=1.0, reviewer=reviewer,
                         tie_breaker="reviewer", random_state=0)
    assert team([[0, 1], [2, 5]]).tolist() == [1, 0]
    assert team.n_answers_by["reviewer"] == 2
    assert all(r.source == "correction" for r in team.label_memory if r.annotator == "reviewer")


def test_team_refuses_bad_members_and_keeps_answers_of_a_failing_member():
    with pytest.raises(TypeError, match="dict of annotator name"):
        AnnotatorTeam([LabelOracle([0, 1])])
    with pytest.raises(TypeError, match="not callable"):
        AnnotatorTeam({"ann": 3}, double_fraction=0)
    with pytest.raises(ValueError, match="tie_breaker"):
        AnnotatorTeam({"ann": LabelOracle([0, 1])}, double_fraction=0, tie_breaker="coin")

    def broken(pairs):
        raise RuntimeError("the annotator went home")

    team = AnnotatorTeam({"ann": LabelOracle([0, 0, 1, 1]), "bob": broken}, double_fraction=1.0,
                         random_state=0)
    with pytest.raises(OracleError, match="went home"):
        team([[0, 1], [2, 3]])
    assert {r.annotator for r in team.label_memory} == {"ann"}  # ann's answers are kept


def test_routing_by_error_rate_shares_work_and_second_opinions():
    names = ["ann", "bob", "cat"]
    rates = {"ann": 0.02, "bob": 0.04, "cat": 0.08}
    load = {}
    assignment = assign_pairs(90, names, double_fraction=0.1, random_state=0, load=load,
                              error_rates=rates)
    # the median is bob's 0.04: ann and bob share alike, cat (twice as error-prone) a
    # quarter as much: 4 : 4 : 1 of the 99 answers
    assert sum(load.values()) == 99
    assert abs(load["cat"] - 11) <= 1 and abs(load["ann"] - load["bob"]) <= 1
    doubles = [who for who in assignment if len(who) == 2]
    assert len(doubles) == 9 and all(who[0] == "cat" for who in doubles)


def test_agreement_estimates_each_persons_error_rate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=3000)  # balanced enough that every error shows
    pairs = rng.choice(3000, size=(1500, 2))
    memory = LabelMemory()
    truth = LabelOracle(y)(pairs)
    for k, (name, rate) in enumerate((("ann", 0.02), ("bob", 0.05), ("cat", 0.15))):
        flip = np.random.default_rng(k).random(len(pairs)) < rate
        memory.record(pairs, truth ^ flip, annotator=name)
    # a tie-break answer is left out: it is asked only where someone erred
    memory.record(pairs[:50], ~truth[:50], source="tiebreak", annotator="dan")
    people = annotator_agreement(memory)["annotators"]
    assert "dan" not in people
    rates = {name: people[name]["error_rate"] for name in people}
    assert rates["ann"] < rates["bob"] < rates["cat"]
    assert abs(rates["cat"] - 0.15) < 0.03 and abs(rates["ann"] - 0.02) < 0.02
    two = LabelMemory()
    two.record(pairs[:10], truth[:10], annotator="ann")
    two.record(pairs[:10], truth[:10], annotator="bob")
    assert np.isnan(annotator_agreement(two)["annotators"]["ann"]["error_rate"])


def test_a_team_learns_who_errs_and_routes_work_away_from_them():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, size=400)
    members = {
        "ann": NoisyOracle(LabelOracle(y), 0.02, random_state=1),
        "bob": NoisyOracle(LabelOracle(y), 0.02, random_state=2),
        "cat": NoisyOracle(LabelOracle(y), 0.3, random_state=3),
    }
    team = AnnotatorTeam(members, double_fraction=0.3, routing="reliability", random_state=0)
    with pytest.raises(ValueError, match="routing"):
        AnnotatorTeam(members, routing="smart")
    assert error_rates_of(team.label_memory, list(members)) is None  # nothing measured yet
    team(rng.choice(400, size=(200, 2)))
    before = dict(team.n_answers_by)
    rates = error_rates_of(team.label_memory, list(members))
    assert max(rates, key=rates.get) == "cat"
    for _ in range(4):
        team(rng.choice(400, size=(100, 2)))
    after = {name: team.n_answers_by[name] - before[name] for name in members}
    # once measured, cat gets a small share of the work
    assert after["cat"] < 0.25 * sum(after.values())


@pytest.mark.parametrize("resolution", ["latest", "majority"])
def test_an_answer_given_again_after_its_retraction_is_recorded(resolution):
    memory = LabelMemory(resolution=resolution)
    assert memory.record([[0, 1]], [1], annotator="ann") == 1
    assert memory.retract([[0, 1]], annotator="ann") == 1
    assert memory.lookup([[0, 1]]).tolist() == [-1]
    assert memory.record([[0, 1]], [1], annotator="ann") == 1
    assert memory.lookup([[0, 1]]).tolist() == [1]


def test_a_team_asked_through_its_memory_adds_no_vote_of_its_own():
    # the refiner's memory.ask records what the oracle answered; a team records each
    # person's answer itself, so its reply (the resolved answer) must not become a vote
    ann = LabelOracle([0, 0, 0])
    bob = NoisyOracle(LabelOracle([0, 0, 0]), error_rate=1.0, random_state=0)
    memory = LabelMemory(resolution="majority")
    team = AnnotatorTeam({"ann": ann, "bob": bob}, label_memory=memory, double_fraction=1.0,
                         random_state=0)
    assert memory.ask([[0, 1]], team).tolist() == [-1]  # a tie nobody can break
    assert {r.annotator for r in memory} == {"ann", "bob"}
    assert memory.n_abstentions == 0 and memory.n_unsure_ == 0
    assert memory._votes[(0, 1)] == {"ann": True, "bob": False}


def test_majority_conflicts_survive_one_persons_retraction():
    memory = LabelMemory(resolution="majority")
    for name in "AB":
        memory.record([[0, 1]], [True], annotator=name)
    memory.record([[0, 1]], [False], annotator="C")
    memory.retract([[0, 1]], annotator="C")
    memory.record([[1, 2]], [True], annotator="A")
    memory.record([[0, 2]], [False], annotator="A")
    (conflict,) = memory.conflicts()
    assert conflict["kind"] == "transitive" and (conflict["i"], conflict["j"]) == (0, 2)
    assert [(r.i, r.j) for r in conflict["chain"]] == [(0, 1), (1, 2)]


def test_a_reviewers_decision_can_be_taken_back():
    memory = LabelMemory(resolution="majority")
    memory.record([[0, 1]], [True], annotator="A")
    memory.record([[0, 1]], [False], annotator="B")
    memory.record([[0, 1]], [True], source="correction", annotator="R")
    assert memory.lookup([[0, 1]]).tolist() == [1]
    assert memory.retract([[0, 1]], source="correction") == 1
    assert memory.lookup([[0, 1]]).tolist() == [-1]  # tied again


def test_an_unnamed_voter_changing_their_answer_is_recorded():
    memory = LabelMemory(resolution="majority")
    memory.record([[0, 1]], [False])
    memory.record([[0, 1]], [True], annotator="A")
    memory.record([[0, 1]], [True], annotator="B")
    assert memory.record([[0, 1]], [True]) == 1  # the unnamed voter's own answer changed
    memory.retract([[0, 1]], annotator="A")
    assert memory.lookup([[0, 1]]).tolist() == [1]


def test_agreement_leaves_the_reviewer_out():
    memory = LabelMemory(resolution="majority")
    memory.record([[0, 1], [1, 2]], [True, True], annotator="ann")
    memory.record([[0, 1], [1, 2]], [True, False], annotator="bob")
    memory.record([[1, 2]], [True], source="correction", annotator="rev")
    assert set(annotator_agreement(memory)["annotators"]) == {"ann", "bob"}
