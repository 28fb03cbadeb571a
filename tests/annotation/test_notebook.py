"""NotebookOracle: its widgets are driven directly (no browser, no kernel).

A batch is asked in a background thread (``oracle.run(oracle, pairs)``),
and the test presses the panel's buttons and types in its keyboard box on
its own thread, as the kernel's main thread would.
"""

import pickle
import subprocess
import sys
import threading
import time

import ipywidgets
import numpy as np
import pytest

from ucal.annotation import ImageStore, _notebook
from ucal.annotation._notebook import NotebookOracle
from ucal.oracles import LabelMemory

N_IMAGES = 6
ANNOTATOR = "ann"


# -- helpers -----------------------------------------------------------------


def wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.005)
    raise AssertionError("the condition did not come true in time")


def ask(oracle, pairs):
    """Start ``oracle(pairs)`` in the background; return once its batch is shown."""
    future = oracle.run(oracle, pairs)
    wait_until(lambda: oracle.current_pair is not None or future.done())
    assert not future.done(), future.exception()
    return future


def records(path):
    """The answers file as a second process would read it, right now."""
    return list(LabelMemory(path))


@pytest.fixture
def images():
    # each image its own grey level, so its encoding names it
    return (np.arange(N_IMAGES, dtype=np.uint8) * 40)[:, None, None, None] * np.ones(
        (1, 16, 8, 3), np.uint8
    )


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "answers.jsonl")


@pytest.fixture
def oracle(images, path):
    with NotebookOracle(
        images, label_memory=LabelMemory(path), annotator=ANNOTATOR, verbose=0
    ) as oracle:
        yield oracle


# -- answers, memory -----------------------------------------------------------


def test_clicked_answers_are_returned_and_recorded_at_once(oracle, path):
    future = ask(oracle, [[0, 1], [2, 3], [4, 5]])
    assert oracle.current_pair == (0, 1)
    assert oracle.progress.value == (
        "Pair 1 of 3 · 0 / 3 answered in this batch · total asked 3"
    )
    time.sleep(0.05)
    oracle.same_button.click()
    # in the file the moment the button is pressed, before the batch returns
    (first,) = records(path)
    assert (first.i, first.j, first.same, first.unsure) == (0, 1, True, False)
    assert first.source == "notebook" and first.annotator == ANNOTATOR
    assert isinstance(first.seconds, float) and first.seconds >= 0.05
    assert not future.done()
    assert oracle.current_pair == (2, 3)
    assert "1 / 3 answered in this batch" in oracle.progress.value

    oracle.different_button.click()
    assert [(r.i, r.j, r.same) for r in records(path)][-1] == (2, 3, False)
    assert not future.done()
    oracle.unsure_button.click()

    answers = future.result(timeout=5)
    assert answers.dtype == np.int8
    assert answers.tolist() == [1, 0, -1]
    last = records(path)[-1]
    assert (last.i, last.j, last.same, last.unsure) == (4, 5, None, True)
    assert last.source == "notebook" and last.annotator == ANNOTATOR and last.seconds >= 0
    assert (oracle.n_queries, oracle.n_batches) == (3, 1)
    assert oracle.current_pair is None
    assert oracle.same_button.disabled and oracle.undo_button.disabled
    assert "Batch 1 answered: 1 same, 1 different, 1 not sure" in oracle.message.value
    assert LabelMemory(path).lookup([[0, 1], [2, 3], [4, 5]]).tolist() == [1, 0, -1]


def test_pairs_the_memory_knows_are_not_shown(images, path):
    memory = LabelMemory(path)
    memory.record([[0, 1], [1, 2]], [1, 0])  # (0, 2) is then inferred "different"
    memory.record([[4, 5], [4, 5]], [-1, -1])  # "not sure" twice: not asked again
    with NotebookOracle(images, label_memory=memory, verbose=0) as oracle:
        future = ask(oracle, [[1, 0], [0, 2], [3, 4], [5, 4], [4, 3]])
        assert oracle.current_pair == (3, 4)
        assert oracle.progress.value.startswith("Pair 1 of 1 · 0 / 1 answered")
        oracle.same_button.click()
        assert future.result(timeout=5).tolist() == [1, 0, 1, -1, 1]
        assert oracle.n_queries == 1
        # all known now: nothing shown, nothing to wait for
        assert oracle([[3, 4], [0, 1]]).tolist() == [1, 1]
        assert oracle.n_queries == 1


def test_works_without_a_label_memory(images):
    with NotebookOracle(images, verbose=0) as oracle:
        future = ask(oracle, [[0, 1], [1, 2]])
        oracle.different_button.click()
        oracle.same_button.click()
        assert future.result(timeout=5).tolist() == [0, 1]


# -- undo, navigation, keys ----------------------------------------------------


def test_undo_reverts_the_last_answer_like_the_web_oracle(oracle, path):
    future = ask(oracle, [[0, 1], [2, 3]])
    assert oracle.undo_button.disabled
    oracle.same_button.click()
    assert oracle.current_pair == (2, 3) and not oracle.undo_button.disabled

    oracle.undo_button.click()  # a definite answer is retracted
    assert oracle.current_pair == (0, 1)  # its pair is shown again
    last = records(path)[-1]
    assert (last.i, last.j, last.same, last.unsure) == (0, 1, None, False)
    assert last.source == "undo" and last.annotator == ANNOTATOR
    assert LabelMemory(path).lookup([[0, 1]]).tolist() == [-1]
    assert oracle.undo_button.disabled
    assert "0 / 2 answered" in oracle.progress.value

    oracle.unsure_button.click()
    oracle.previous_button.click()
    assert oracle.current_pair == (0, 1)
    assert oracle.unsure_button.icon == "check"
    oracle.same_button.click()  # overrides the "not sure"
    assert LabelMemory(path).lookup([[0, 1]]).tolist() == [1]

    oracle.undo_button.click()  # back to "not sure": retracted, "not sure" recorded again
    *_, retraction, unsure = records(path)
    assert (retraction.same, retraction.unsure, retraction.source) == (None, False, "undo")
    assert (unsure.same, unsure.unsure, unsure.source) == (None, True, "undo")
    assert unsure.annotator == ANNOTATOR
    reread = LabelMemory(path)
    assert reread.lookup([[0, 1]]).tolist() == [-1] and reread.n_unsure_ == 1

    oracle.undo_button.click()  # an undone "not sure" is no answer
    assert LabelMemory(path).n_unsure_ == 0
    assert oracle.undo_button.disabled
    oracle.undo_button.click()  # nothing left to undo: nothing happens
    n_records = len(records(path))

    oracle.different_button.click()
    oracle.same_button.click()
    assert future.result(timeout=5).tolist() == [0, 1]
    assert len(records(path)) == n_records + 2


def test_answering_a_pair_again_after_an_undo_is_recorded(oracle, path):
    future = ask(oracle, [[0, 1], [2, 3]])
    oracle.same_button.click()
    oracle.undo_button.click()
    oracle.same_button.click()
    assert LabelMemory(path).lookup([[0, 1]]).tolist() == [1]
    oracle.different_button.click()
    assert future.result(timeout=5).tolist() == [1, 0]
    assert LabelMemory(path).lookup([[0, 1], [2, 3]]).tolist() == [1, 0]


def test_changing_an_answer_records_the_new_one(oracle, path):
    future = ask(oracle, [[0, 1], [2, 3], [4, 5]])
    oracle.same_button.click()
    oracle.previous_button.click()
    oracle.different_button.click()  # changed: then the next unanswered pair
    assert oracle.current_pair == (2, 3)
    assert LabelMemory(path).lookup([[0, 1]]).tolist() == [0]
    oracle.previous_button.click()
    n_records = len(records(path))
    oracle.different_button.click()  # the same answer again: nothing new
    assert len(records(path)) == n_records
    oracle.unsure_button.click()
    oracle.same_button.click()
    assert future.result(timeout=5).tolist() == [0, -1, 1]


def test_previous_and_next_move_through_the_batch(oracle):
    future = ask(oracle, [[0, 1], [2, 3], [4, 5]])
    assert oracle.previous_button.disabled and not oracle.next_button.disabled
    oracle.next_button.click()
    oracle.next_button.click()
    assert oracle.current_pair == (4, 5)
    assert oracle.next_button.disabled and not oracle.previous_button.disabled
    oracle.next_button.click()
    assert oracle.current_pair == (4, 5)
    oracle.same_button.click()  # then the first unanswered pair, wrapping round
    assert oracle.current_pair == (0, 1)
    oracle.same_button.click()
    oracle.same_button.click()
    assert future.result(timeout=5).tolist() == [1, 1, 1]


def test_keys_answer_and_undo(oracle, path):
    future = ask(oracle, [[0, 1], [2, 3], [4, 5]])
    oracle.keys.value = "s"
    assert oracle.keys.value == ""  # cleared for the next key
    assert oracle.current_pair == (2, 3)
    assert LabelMemory(path).lookup([[0, 1]]).tolist() == [1]
    oracle.keys.value = "u"
    assert oracle.current_pair == (0, 1)
    assert LabelMemory(path).lookup([[0, 1]]).tolist() == [-1]
    oracle.keys.value = "x"  # not a key: ignored
    assert oracle.keys.value == "" and oracle.current_pair == (0, 1)
    oracle.keys.value = "sD"  # only the last character typed counts
    oracle.keys.value = "n"
    assert oracle.current_pair == (4, 5)
    oracle.keys.value = "S"
    assert future.result(timeout=5).tolist() == [0, -1, 1]
    assert oracle.keys.disabled
    sources = {(r.source, r.annotator) for r in records(path)}
    assert sources == {("notebook", ANNOTATOR), ("undo", ANNOTATOR)}


# -- what is shown -------------------------------------------------------------


def test_images_captions_and_context_follow_set_context(images, path):
    store = ImageStore(images)

    def shown(context):
        return [thumb.value for thumb in context.children]

    def encoded(*indices):
        return [store.encode(k)[0] for k in indices]

    with NotebookOracle(images, label_memory=path, verbose=0) as oracle:
        oracle.set_context([0, 0, 0, 1, 1, -1])
        future = ask(oracle, [[0, 3], [2, 5]])
        assert oracle.left_image.value == store.encode(0)[0]
        assert oracle.right_image.value == store.encode(3)[0]
        assert oracle.left_image.format == "png"
        assert oracle.left_caption.value == "image 0 · group of 3"
        assert oracle.right_caption.value == "image 3 · group of 2"
        assert shown(oracle.left_context) == encoded(1, 2)
        assert [t.tooltip for t in oracle.left_context.children] == ["image 1", "image 2"]
        assert shown(oracle.right_context) == encoded(4)
        oracle.same_button.click()
        assert oracle.right_caption.value == "image 5"  # no group
        assert shown(oracle.left_context) == encoded(0, 1)
        assert shown(oracle.right_context) == []
        oracle.different_button.click()
        future.result(timeout=5)
        assert oracle.left_image.value == b"" and shown(oracle.left_context) == []

        oracle.set_context(None)
        future = ask(oracle, [[1, 4]])
        assert oracle.left_caption.value == "image 1"
        assert shown(oracle.left_context) == shown(oracle.right_context) == []
        oracle.same_button.click()
        future.result(timeout=5)

    with NotebookOracle(images, n_context=1, verbose=0) as oracle:
        oracle.set_context([0, 0, 0, 0, 0, 0])
        future = ask(oracle, [[0, 5]])
        assert len(oracle.left_context.children) == len(oracle.right_context.children) == 1
        oracle.same_button.click()
        future.result(timeout=5)


def test_cameras_of_a_reid_split_are_captioned(images):
    class Split:  # what ImageStore reads of a ReIDSplit
        def __init__(self):
            self.images = images
            self.camids = np.array([0, 1, 2, 0, 1, 2])

    with NotebookOracle(Split(), n_context=0, verbose=0) as oracle:
        future = ask(oracle, [[1, 2]])
        assert oracle.left_caption.value == "image 1 · camera 1"
        assert oracle.right_caption.value == "image 2 · camera 2"
        oracle.same_button.click()
        future.result(timeout=5)


def test_the_oracle_displays_its_widget(oracle):
    assert isinstance(oracle.widget, ipywidgets.VBox)
    bundle = oracle._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == oracle.widget.model_id
    assert oracle.progress.value == "No batch waiting · total asked 0"
    assert repr(oracle) == f"NotebookOracle(annotator={ANNOTATOR!r}, n_samples={N_IMAGES})"


# -- failures, life cycle ------------------------------------------------------


def test_timeout_raises_with_the_answers_given(images, path):
    with NotebookOracle(images, label_memory=path, timeout=0.5, verbose=0) as oracle:
        future = ask(oracle, [[0, 1], [2, 3]])
        oracle.same_button.click()
        with pytest.raises(TimeoutError, match="1 of its 2 pairs were answered") as info:
            future.result(timeout=5)
        assert info.value.answers.tolist() == [1, -1]
        assert LabelMemory(path).lookup([[0, 1]]).tolist() == [1]
        assert oracle.current_pair is None and oracle.n_batches == 0
        # run() shows what its function raised
        assert "failed: TimeoutError: The NotebookOracle's timeout" in oracle.message.value
        # the oracle asks again; the answered pair is not shown again
        future = ask(oracle, [[0, 1], [2, 3]])
        assert oracle.current_pair == (2, 3)
        oracle.different_button.click()
        assert future.result(timeout=5).tolist() == [1, 0]


def test_close_during_a_batch_raises_and_is_idempotent(images, path):
    oracle = NotebookOracle(images, label_memory=path, verbose=0)
    future = ask(oracle, [[0, 1], [2, 3]])
    oracle.same_button.click()
    oracle.close()
    with pytest.raises(RuntimeError, match="closed during batch 1; 1 of its 2"):
        future.result(timeout=5)
    oracle.close()
    assert oracle.same_button.disabled and "closed" in oracle.message.value
    with pytest.raises(RuntimeError, match="closed"):
        oracle([[0, 1]])
    with NotebookOracle(images, verbose=0) as other:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        other([[0, 1]])


def test_one_batch_at_a_time(oracle):
    future = ask(oracle, [[0, 1]])
    with pytest.raises(RuntimeError, match="one batch at a time"):
        oracle([[2, 3]])
    oracle.same_button.click()
    assert future.result(timeout=5).tolist() == [1]


def test_a_failed_write_keeps_the_pair_unanswered(images, path):
    class Flaky(LabelMemory):
        fail = True

        def record(self, *args, **kwargs):
            if self.fail:
                self.fail = False
                raise OSError("disk full")
            return super().record(*args, **kwargs)

    with NotebookOracle(images, label_memory=Flaky(path), verbose=0) as oracle:
        future = ask(oracle, [[0, 1]])
        oracle.same_button.click()
        assert "NOT recorded: disk full" in oracle.message.value
        assert oracle.current_pair == (0, 1) and not future.done()
        oracle.same_button.click()
        assert future.result(timeout=5).tolist() == [1]


def test_main_thread_of_a_kernel_must_use_run(oracle, monkeypatch):
    monkeypatch.setattr(_notebook, "_in_kernel", lambda: True)
    monkeypatch.setattr(oracle, "display", lambda: None)  # no frontend here
    with pytest.raises(RuntimeError, match=r"oracle\.run\(refiner\.fit, X\)"):
        oracle([[0, 1]])
    assert oracle.n_queries == 0
    future = ask(oracle, [[0, 1]])  # a background thread may wait
    oracle.different_button.click()
    assert future.result(timeout=5).tolist() == [0]


def test_run_returns_a_future(oracle, caplog):
    assert oracle.run(sum, [1, 2, 3]).result(timeout=5) == 6
    assert oracle.run(dict, a=1).result(timeout=5) == {"a": 1}
    main = threading.get_ident()
    assert oracle.run(threading.get_ident).result(timeout=5) != main
    future = oracle.run(lambda: 1 / 0)
    assert isinstance(future.exception(timeout=5), ZeroDivisionError)
    wait_until(lambda: "ZeroDivisionError" in oracle.message.value)
    assert "failed" in caplog.text
    with pytest.raises(TypeError, match="callable"):
        oracle.run(3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_context": -1}, "n_context must be an int >= 0"),
        ({"n_context": 1.5}, "n_context must be an int >= 0"),
        ({"n_context": True}, "n_context must be an int >= 0"),
        ({"timeout": 0}, "timeout must be a number > 0 or None"),
        ({"timeout": "1"}, "timeout must be a number > 0 or None"),
        ({"timeout": True}, "timeout must be a number > 0 or None"),
        ({"annotator": ""}, "annotator must be a non-empty string or None"),
        ({"annotator": 3}, "annotator must be a non-empty string or None"),
    ],
)
def test_bad_arguments(images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        NotebookOracle(images, verbose=0, **kwargs)


def test_bad_images_pairs_and_context(oracle, images):
    with pytest.raises(TypeError, match="uint8"):
        NotebookOracle(images.astype(np.float32), verbose=0)
    with pytest.raises(ValueError, match="one label per sample"):
        oracle.set_context([0, 1])
    with pytest.raises(TypeError, match="integer labels"):
        oracle.set_context(np.zeros(N_IMAGES))
    with pytest.raises(ValueError):
        oracle([[0, N_IMAGES]])
    with pytest.raises(ValueError, match="two different samples"):
        oracle([[2, 2]])
    assert oracle.n_queries == 0


def test_cannot_be_pickled(oracle):
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(oracle)


def test_needs_ipywidgets(images, monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with pytest.raises(ImportError, match=r"pip install 'ucal\[notebook\]'") as info:
        NotebookOracle(images)
    assert isinstance(info.value.__cause__, ImportError)


def test_importing_ucal_annotation_does_not_import_ipywidgets():
    code = (
        "import sys, ucal.annotation, ucal.annotation._notebook; "
        "assert 'ipywidgets' not in sys.modules, 'ipywidgets imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
