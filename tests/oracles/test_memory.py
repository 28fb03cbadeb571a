"""LabelMemory: exact and transitive answers, contradictions, persistence."""

import json
import os
import pickle
import warnings

import numpy as np
import pytest

from ucal.oracles import AnswerRecord, LabelMemory, LabelOracle, OracleError


class CountingOracle:
    """LabelOracle that keeps every batch it was sent."""

    def __init__(self, y):
        self.oracle = LabelOracle(y)
        self.batches = []

    def __call__(self, pairs):
        self.batches.append(np.array(pairs))
        return self.oracle(pairs)


def test_exact_answers_are_symmetric_and_unknown_stays_unknown():
    memory = LabelMemory()
    assert memory.record([[4, 2], [0, 1]], [True, False]) == 2
    assert memory.lookup([[2, 4], [4, 2], [1, 0], [0, 4]]).tolist() == [1, 1, 0, -1]
    assert memory.lookup(np.empty((0, 2), dtype=int)).shape == (0,)
    # a sample is trivially the same as itself
    assert memory.lookup([[7, 7]]).tolist() == [1]


def test_transitive_inference_and_exact_only_mode():
    answers = ([[0, 1], [1, 2], [2, 3], [3, 4]], [True, True, False, True])
    inferring, exact_only = LabelMemory(), LabelMemory(infer=False)
    for memory in (inferring, exact_only):
        memory.record(*answers)
    queried = [[0, 2], [0, 4], [1, 3], [0, 9], [4, 2]]
    # {0,1,2} same; {3,4} same; the two components are separated by (2, 3)
    assert inferring.lookup(queried).tolist() == [1, 0, 0, -1, 0]
    assert exact_only.lookup(queried).tolist() == [-1, -1, -1, -1, -1]
    assert exact_only.lookup([[2, 3]]).tolist() == [0]


def test_ask_sends_only_unknown_pairs_once_in_one_batch():
    y = np.array([0, 0, 0, 1, 1, 2])
    oracle = CountingOracle(y)
    memory = LabelMemory()
    memory.record([[0, 1], [1, 2]], [True, True])
    pairs = [[0, 2], [3, 4], [4, 3], [2, 5], [0, 1], [3, 4]]
    answers = memory.ask(pairs, oracle)
    assert answers.tolist() == [1, 1, 1, 0, 1, 1]
    assert len(oracle.batches) == 1
    sent = {tuple(p) for p in np.sort(oracle.batches[0], axis=1).tolist()}
    assert sent == {(3, 4), (2, 5)}
    assert memory.n_queries == 2
    assert memory.n_inferred == 2  # (0, 2) inferred, (0, 1) exact
    assert memory.n_transitive == 1
    # nothing new to ask: the oracle is not called at all
    memory.ask(pairs, oracle)
    assert len(oracle.batches) == 1


def test_ask_without_oracle_answers_from_memory_only():
    memory = LabelMemory()
    memory.record([[0, 1]], [False])
    assert memory.ask([[1, 0], [1, 2]], None).tolist() == [0, -1]
    assert memory.n_queries == 0


# -- "not sure" answers ---------------------------------------------------------


def test_unsure_is_recorded_asked_again_once_then_never(tmp_path):
    path = tmp_path / "answers.jsonl"
    calls = []

    def unsure_about_0_1(pairs):
        calls.append(sorted(map(tuple, np.sort(pairs, axis=1).tolist())))
        return np.array([-1 if tuple(sorted(p)) == (0, 1) else 1 for p in pairs.tolist()])

    memory = LabelMemory(path)
    assert memory.ask([[0, 1], [2, 3]], unsure_about_0_1).tolist() == [-1, 1]
    assert len(memory) == 2 and memory.n_abstentions == 1 and memory.n_unsure_ == 1
    assert memory.lookup([[0, 1]]).tolist() == [-1]
    # asked once more: still not sure
    result = memory._ask([[1, 0], [2, 3]], unsure_about_0_1)
    assert result.answers.tolist() == [-1, 1]
    assert result.sent_pairs.tolist() == [[0, 1]] and result.n_unsure_skipped == 0
    assert len(memory) == 3 and memory.n_unsure_ == 1 and memory.n_queries == 3
    # twice "not sure": never sent again, counted apart from the budget's leftovers
    result = memory._ask([[0, 1], [4, 5]], unsure_about_0_1, max_queries=0)
    assert result.answers.tolist() == [-1, -1]
    assert result.n_unsure_skipped == 1 and result.n_unsent == 1 and len(result.sent_pairs) == 0
    assert memory.ask([[0, 1]], unsure_about_0_1).tolist() == [-1]
    assert calls == [[(0, 1), (2, 3)], [(0, 1)]]
    assert memory.n_queries == 3 and len(memory) == 3
    # on disk: one record per "not sure", and the replayed memory agrees
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["i"], r["j"], r["same"], r.get("unsure")) for r in lines] == [
        (0, 1, None, True), (2, 3, True, None), (0, 1, None, True)
    ]
    assert list(lines[0]) == ["i", "j", "same", "unsure", "source", "time"]
    reopened = LabelMemory(path)
    assert [r.unsure for r in reopened] == [True, False, True]
    assert next(iter(reopened)) == AnswerRecord(0, 1, None, "oracle", lines[0]["time"], True)
    assert reopened.n_unsure_ == 1 and reopened.lookup([[0, 1]]).tolist() == [-1]
    assert reopened._ask([[0, 1]], unsure_about_0_1).n_unsure_skipped == 1
    assert len(calls) == 2
    # a definite answer settles the pair
    reopened.record([[0, 1]], [False], source="web")
    assert reopened.n_unsure_ == 0 and reopened.lookup([[0, 1]]).tolist() == [0]
    assert reopened.n_contradictions_ == 0 and reopened.conflicts() == []


def test_record_keeps_every_unsure_answer_and_counts_it():
    memory = LabelMemory()
    assert memory.record([[0, 1], [1, 0], [2, 3]], [-1, -1, True]) == 3
    assert [(r.i, r.j, r.same, r.unsure) for r in memory] == [
        (0, 1, None, True), (0, 1, None, True), (2, 3, True, False)
    ]
    assert memory.n_unsure_ == 1
    assert memory._unsure_counts([[1, 0], [2, 3], [5, 6]]).tolist() == [2, 0, 0]
    assert memory.to_arrays()[0].tolist() == [[2, 3]]  # "not sure" is no answer to use
    assert memory.record([[4, 4]], [-1]) == 0  # a sample and itself: nothing to ask


def test_unsure_never_overrides_a_definite_answer():
    memory = LabelMemory()
    memory.record([[0, 1], [1, 2]], [True, False])
    assert memory.record([[1, 0], [2, 1]], [-1, -1], source="web") == 2
    assert memory.lookup([[0, 1], [1, 2], [0, 2]]).tolist() == [1, 0, 0]
    assert memory.n_unsure_ == 0 and memory.n_contradictions_ == 0
    assert memory.conflicts() == []
    # and a pair known by inference is answered, however unsure someone was about it
    memory.record([[0, 2]], [-1])
    assert memory._ask([[0, 2]], None).answers.tolist() == [0]


def test_a_later_definite_answer_overrides_unsure_and_retract_takes_unsure_back(tmp_path):
    path = tmp_path / "answers.jsonl"
    memory = LabelMemory(path)
    memory.record([[0, 1], [0, 1]], [-1, -1])
    assert memory.retract([[1, 0]]) == 1  # the latest "not sure" only
    assert memory._unsure_counts([[0, 1]]).tolist() == [1]
    memory.record([[0, 1]], [True])
    assert memory.n_unsure_ == 0 and memory.lookup([[0, 1]]).tolist() == [1]
    assert memory.retract([[0, 1]]) == 1  # takes back the definite answer
    assert memory.lookup([[0, 1]]).tolist() == [-1] and memory.n_unsure_ == 0
    assert memory.retract([[0, 1]]) == 0
    lines = path.read_text().splitlines()
    assert [json.loads(line).get("unsure", False) for line in lines] == [
        True, True, False, False, False
    ]
    reopened = LabelMemory(path)
    assert len(reopened) == 5 and reopened.n_unsure_ == 0
    assert reopened.lookup([[0, 1]]).tolist() == [-1]


def test_an_oracle_recording_into_the_memory_itself_is_not_counted_twice():
    memory = LabelMemory()

    class SelfRecording:
        """Like a WebOracle given the memory: records each answer as it comes."""

        def __call__(self, pairs):
            memory.record(pairs, [-1] * len(pairs), source="web")
            return np.full(len(pairs), -1)

    memory.ask([[0, 1], [2, 3]], SelfRecording())
    assert [(r.i, r.j, r.source) for r in memory] == [(0, 1, "web"), (2, 3, "web")]
    assert memory._unsure_counts([[0, 1], [2, 3]]).tolist() == [1, 1]
    memory.ask([[0, 1]], SelfRecording())
    assert memory._ask([[0, 1], [2, 3]], SelfRecording()).n_unsure_skipped == 1


def test_files_without_the_unsure_field_still_load(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text(
        '{"i": 0, "j": 1, "same": true, "source": "web", "time": 1.0}\n'
        '{"i": 1, "j": 2, "same": false, "source": "web", "time": 2.0}\n'
        '{"i": 1, "j": 2, "same": null, "source": "undo", "time": 3.0}\n'
    )
    memory = LabelMemory(path)
    assert len(memory) == 3 and memory.n_unsure_ == 0
    assert [r.unsure for r in memory] == [False, False, False]
    assert memory.lookup([[0, 1], [1, 2]]).tolist() == [1, -1]
    memory.record([[4, 5]], [-1])
    assert LabelMemory(path).n_unsure_ == 1


@pytest.mark.parametrize(
    "line, match",
    [
        ('{"i": 0, "j": 1, "same": true, "unsure": true}', "must have 'same': null"),
        ('{"i": 0, "j": 1, "same": null, "unsure": "yes"}', "'unsure' must be true or false"),
        ('{"i": 2, "j": 2, "same": null, "unsure": true}', "itself"),
    ],
)
def test_invalid_unsure_records_are_an_error(tmp_path, line, match):
    path = tmp_path / "answers.jsonl"
    path.write_text(line + "\n" + '{"i": 0, "j": 1, "same": true}\n')
    with pytest.raises(ValueError, match="line 1.*" + match):
        LabelMemory(path)


def test_old_pickles_without_unsure_state_still_load():
    memory = LabelMemory()
    memory.record([[0, 1]], [True])
    state = memory.__getstate__()
    del state["_unsure"]
    clone = LabelMemory.__new__(LabelMemory)
    clone.__setstate__(state)
    assert clone.n_unsure_ == 0 and clone.record([[2, 3]], [-1]) == 1


def test_rerecording_the_same_answer_is_a_noop(tmp_path):
    path = tmp_path / "answers.jsonl"
    memory = LabelMemory(path)
    assert memory.record([[1, 2]], [True]) == 1
    assert memory.record([[2, 1]], [1], source="web") == 0
    assert len(memory) == 1 and memory.n_contradictions_ == 0
    assert len(path.read_text().splitlines()) == 1


def test_contradiction_latest_exact_answer_wins_and_is_counted(tmp_path):
    path = tmp_path / "answers.jsonl"
    memory = LabelMemory(path)
    memory.record([[0, 1]], [True])
    memory.record([[1, 0]], [False])
    assert memory.lookup([[0, 1]]).tolist() == [0]
    assert memory.n_contradictions_ == 1
    assert [r.same for r in memory] == [True, False]  # both answers are kept
    reopened = LabelMemory(path)
    assert reopened.lookup([[0, 1]]).tolist() == [0]
    assert reopened.n_contradictions_ == 1 and len(reopened) == 2


def test_transitive_conflict_rule():
    memory = LabelMemory()
    # "same" answers join 0-1-2, then a direct "different" for (0, 2)
    memory.record([[0, 1], [1, 2], [0, 2], [2, 3]], [1, 1, 0, 0])
    assert memory.n_conflicts_ == 1
    # direct answers override the inference; the rest follows "same first"
    assert memory.lookup([[0, 2], [0, 1], [1, 2]]).tolist() == [0, 1, 1]
    assert memory.lookup([[1, 0]]).tolist() == [1]
    # the conflicting answer separates nothing, but (2, 3) still does
    assert memory.lookup([[0, 3], [1, 3]]).tolist() == [0, 0]
    # fixing a "same" answer removes the conflict
    memory.record([[1, 2]], [False])
    assert memory.n_conflicts_ == 0
    assert memory.lookup([[0, 2], [1, 2], [0, 3]]).tolist() == [0, 0, -1]


def test_state_depends_only_on_latest_answers_not_on_order():
    rng = np.random.RandomState(0)
    pairs = rng.randint(0, 15, size=(60, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    answers = rng.randint(0, 2, size=len(pairs))
    # deduplicate so that each pair has one answer, then replay in two orders
    _, first = np.unique(np.sort(pairs, axis=1), axis=0, return_index=True)
    pairs, answers = pairs[first], answers[first]
    forward, backward = LabelMemory(), LabelMemory()
    forward.record(pairs, answers)
    for i in range(len(pairs) - 1, -1, -1):
        backward.record(pairs[i : i + 1], answers[i : i + 1])
    everything = np.array([(i, j) for i in range(16) for j in range(16)])
    np.testing.assert_array_equal(forward.lookup(everything), backward.lookup(everything))
    assert forward.n_conflicts_ == backward.n_conflicts_


def test_record_validates_input():
    memory = LabelMemory()
    with pytest.raises(ValueError, match="answers must be bool"):
        memory.record([[0, 1]], [0.5])
    with pytest.raises(ValueError, match="shape"):
        memory.record([[0, 1]], [True, False])
    with pytest.raises(ValueError, match="itself"):
        memory.record([[3, 3]], [False])
    with pytest.raises(TypeError, match="integer"):
        memory.record([[0.0, 1.0]], [True])
    with pytest.raises(ValueError, match="negative"):
        memory.lookup([[-1, 2]])
    assert len(memory) == 0


def test_persistence_one_json_line_per_answer_and_replay(tmp_path):
    path = tmp_path / "answers.jsonl"
    memory = LabelMemory(path)
    memory.ask([[0, 1], [1, 2], [2, 3]], LabelOracle([0, 0, 0, 1]))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["i"], r["j"], r["same"]) for r in lines] == [
        (0, 1, True), (1, 2, True), (2, 3, False)
    ]
    assert all(r["source"] == "oracle" and r["time"] > 0 for r in lines)
    reopened = LabelMemory(path)
    assert len(reopened) == 3
    assert reopened.lookup([[0, 2], [0, 3]]).tolist() == [1, 0]
    assert list(reopened)[2] == AnswerRecord(2, 3, False, "oracle", lines[2]["time"])


def test_answers_are_fsynced_before_they_are_used(tmp_path, monkeypatch):
    path = tmp_path / "answers.jsonl"
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.path.getsize(path))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    memory = LabelMemory(path)
    memory.record([[0, 1], [2, 3]], [True, False])
    assert synced and synced[0] == path.stat().st_size  # whole batch, then one fsync
    # a write that fails leaves the in-memory state untouched
    broken = LabelMemory(tmp_path / "missing-dir" / "answers.jsonl")
    with pytest.raises(OSError):
        broken.record([[0, 1]], [True])
    assert len(broken) == 0 and broken.lookup([[0, 1]]).tolist() == [-1]


def test_truncated_last_line_is_skipped_with_a_warning_then_repaired(tmp_path):
    path = tmp_path / "answers.jsonl"
    LabelMemory(path).record([[0, 1], [1, 2]], [True, False])
    with open(path, "ab") as f:
        f.write(b'{"i": 5, "j": 6, "sa')  # killed mid-write
    with pytest.warns(UserWarning, match="truncated last line"):
        memory = LabelMemory(path)
    assert len(memory) == 2
    memory.record([[7, 8]], [True])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reopened = LabelMemory(path)
    assert [(r.i, r.j, r.same) for r in reopened] == [(0, 1, True), (1, 2, False), (7, 8, True)]


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"i": 0, "j": 1, "same": true}')
    memory = LabelMemory(path)
    assert memory.lookup([[0, 1]]).tolist() == [1]
    memory.record([[1, 2]], [False])
    assert len(LabelMemory(path)) == 2


def test_corrupt_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"i": 0, "j": 1, "same": true}\nnot json\n{"i": 1, "j": 2, "same": false}\n')
    with pytest.raises(ValueError, match="line 2"):
        LabelMemory(path)
    path.write_text('{"i": 0, "j": 1, "same": "yes"}\n')
    with pytest.raises(ValueError, match="line 1.*'same'"):
        LabelMemory(path)


def test_oracle_faults_keep_the_answers_already_received(tmp_path):
    path = tmp_path / "answers.jsonl"
    memory = LabelMemory(path)
    memory.ask([[0, 1]], LabelOracle([0, 0, 1, 1]))

    def crashes(pairs):
        raise RuntimeError("annotator went home")

    with pytest.raises(OracleError, match="raised RuntimeError: annotator went home") as info:
        memory.ask([[2, 3]], crashes)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert info.value.memory is memory and len(memory) == 1

    def half_valid(pairs):
        return np.array([True, None, False], dtype=object)

    with pytest.raises(OracleError, match="invalid answer"):
        memory.ask([[4, 5], [6, 7], [8, 9]], half_valid)
    assert memory.lookup([[4, 5], [6, 7], [8, 9]]).tolist() == [1, -1, 0]
    assert len(LabelMemory(path)) == 3  # and they are on disk


def test_oracle_gets_a_copy_and_context_hook():
    seen = {}

    class Annotator:
        def set_context(self, labels):
            seen["context"] = labels

        def __call__(self, pairs):
            seen["pairs"] = pairs.copy()
            pairs[:] = 0  # must not corrupt the memory
            return np.ones(len(pairs), dtype=bool)

    memory = LabelMemory()
    context = np.array([0, 0, 1, 1])
    memory.ask([[0, 2]], Annotator(), context=context)
    np.testing.assert_array_equal(seen["context"], context)
    assert memory.to_arrays()[0].tolist() == [[0, 2]]


def test_memory_pickles_with_its_state():
    memory = LabelMemory(infer=True)
    memory.record([[0, 1], [1, 2]], [True, True])
    clone = pickle.loads(pickle.dumps(memory))
    assert clone.lookup([[0, 2]]).tolist() == [1]
    clone.record([[2, 3]], [False])  # the lock was rebuilt
    assert len(clone) == 3 and len(memory) == 2


def test_retract_takes_an_answer_back_durably(tmp_path):
    path = tmp_path / "answers.jsonl"
    memory = LabelMemory(path)
    memory.record([[0, 1], [1, 2]], [True, True])
    assert memory.lookup([[0, 2]])[0] == 1  # inferred through 1
    assert memory.retract([[2, 1], [7, 8]], source="undo") == 1
    assert memory.lookup([[1, 2], [0, 2], [0, 1]]).tolist() == [-1, -1, 1]
    assert memory.retract([[1, 2]]) == 0  # nothing left to take back
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and '"same": null' in lines[-1]
    reopened = LabelMemory(path)
    assert reopened.lookup([[1, 2], [0, 1]]).tolist() == [-1, 1]
    assert [r.same for r in reopened] == [True, True, None]
    # Answering again after a retraction is a new answer, not a contradiction.
    reopened.record([[1, 2]], [False])
    assert reopened.n_contradictions_ == 0
    assert reopened.lookup([[0, 2]])[0] == 0


# -- contradictions --------------------------------------------------------------


def _summary(conflicts):
    return [
        (c["kind"], c["i"], c["j"], [(r.same, r.source) for r in c["answers"]],
         [(r.i, r.j) for r in c["chain"]])
        for c in conflicts
    ]


def test_conflicts_lists_changed_pairs_with_both_answers():
    memory = LabelMemory()
    memory.record([[0, 1]], [True], source="web")
    memory.record([[1, 0]], [False], source="snps")
    memory.record([[2, 3]], [True], source="web")
    memory.record([[2, 3]], [True], source="mpps")  # the same answer: no conflict
    assert _summary(memory.conflicts()) == [
        ("changed", 0, 1, [(True, "web"), (False, "snps")], [])
    ]
    first, second = memory.conflicts()[0]["answers"]
    assert first.time <= second.time
    # a retraction starts the pair afresh
    memory.retract([[0, 1]])
    memory.record([[0, 1]], [True])
    assert memory.conflicts() == []


def test_a_correction_settles_a_changed_pair_until_it_changes_again():
    memory = LabelMemory()
    memory.record([[0, 1]], [True], source="web")
    memory.record([[0, 1]], [False], source="web")
    assert len(memory.conflicts()) == 1
    memory._record([[0, 1]], [False], source="correction", repeat=True)  # confirmed
    assert memory.conflicts() == [] and memory.lookup([[0, 1]]).tolist() == [0]
    memory.record([[0, 1]], [True], source="snps")  # someone disagrees again
    assert _summary(memory.conflicts())[0][3] == [
        (True, "web"), (False, "web"), (False, "correction"), (True, "snps")
    ]


def test_conflicts_gives_a_shortest_chain_for_transitive_conflicts():
    memory = LabelMemory(infer=False)  # contradictions are listed with or without inference
    # a long and a short "same" path from 0 to 4, and a "different" (0, 4)
    memory.record(
        [[0, 1], [1, 2], [2, 3], [3, 4], [0, 5], [5, 4], [4, 0], [6, 7]],
        [True, True, True, True, True, True, False, False],
    )
    assert memory.n_conflicts_ == 1
    assert _summary(memory.conflicts()) == [
        ("transitive", 0, 4, [(False, "oracle")], [(0, 5), (4, 5)])
    ]
    # the chain is in path order from i to j
    chain = memory.conflicts()[0]["chain"]
    path = [0]
    for r in chain:
        path.append(r.j if r.i == path[-1] else r.i)
    assert path == [0, 5, 4]
    # breaking the short path leaves the long one (and (4, 5) now contradicts it too)
    memory.record([[5, 4]], [False])
    kinds = [(c["kind"], c["i"], c["j"]) for c in memory.conflicts()]
    assert kinds == [("changed", 4, 5), ("transitive", 0, 4), ("transitive", 4, 5)]
    assert [(r.i, r.j) for r in memory.conflicts()[2]["chain"]] == [
        (3, 4), (2, 3), (1, 2), (0, 1), (0, 5)
    ]
    assert [(r.i, r.j) for r in memory.conflicts()[1]["chain"]] == [
        (0, 1), (1, 2), (2, 3), (3, 4)
    ]
    assert memory.n_conflicts_ == sum(c["kind"] == "transitive" for c in memory.conflicts())
    # corrections remove the transitive conflicts, and settle the pairs they changed
    memory.record([[0, 4], [0, 5]], [True, False], source="correction")
    assert [(c["kind"], c["i"], c["j"]) for c in memory.conflicts()] == [("changed", 4, 5)]
    assert memory.n_conflicts_ == 0


def test_conflicts_agree_with_n_conflicts_on_random_answers():
    rng = np.random.RandomState(3)
    memory = LabelMemory()
    for _ in range(5):
        pairs = rng.randint(0, 20, size=(30, 2))
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        memory.record(pairs, rng.randint(-1, 2, size=len(pairs)))
    conflicts = memory.conflicts()
    transitive = [c for c in conflicts if c["kind"] == "transitive"]
    assert len(transitive) == memory.n_conflicts_ > 0
    for c in transitive:
        assert memory.lookup([[c["i"], c["j"]]]).tolist() == [0]
        assert all(r.same for r in c["chain"]) and len(c["chain"]) >= 2
        assert memory.lookup([[r.i, r.j] for r in c["chain"]]).tolist() == [1] * len(c["chain"])
    for c in conflicts:
        if c["kind"] == "changed":
            assert {r.same for r in c["answers"]} == {True, False}


def test_held_out_pairs_are_never_sent_and_stay_unknown():
    from ucal.oracles import LabelMemory, LabelOracle

    memory = LabelMemory()
    memory.hold_out([[3, 1], [0, 2]])
    sent = []
    truth = LabelOracle([0, 0, 0, 0])

    def oracle(pairs):
        sent.extend(map(tuple, np.sort(pairs, axis=1).tolist()))
        return truth(pairs)

    answers = memory.ask([[1, 3], [0, 1], [2, 0]], oracle)
    assert answers.tolist() == [-1, 1, -1] and sent == [(0, 1)]
    assert memory.held_out().tolist() == [[0, 2], [1, 3]]
    # an answer inferred from other answers is still given (it is not the held-out one)
    memory.record([[1, 2]], [True])
    assert memory.lookup([[0, 2]]).tolist() == [1]
