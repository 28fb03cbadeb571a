"""Fault injection for the answers file: nothing an oracle answered is ever lost.

Disk full (an injected ENOSPC: these machines cannot mount a small tmpfs
without privileges), two writers, unwritable paths, files of other formats,
and kill -9 during appends.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from ucal.oracles import LabelMemory, LabelOracle, OracleError
from ucal.oracles import _memory as memory_module

fcntl = pytest.importorskip("fcntl", reason="file locks are POSIX")


def _records(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [(r.i, r.j, r.same) for r in LabelMemory(path)]


def _full_disk_after(monkeypatch, n_bytes):
    """os.write in the memory module writes ``n_bytes`` more, then fails with ENOSPC."""
    real_write = os.write
    left = [n_bytes]

    def write(fd, data):
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        data = bytes(data)[: left[0]]
        left[0] -= len(data)
        return real_write(fd, data)

    monkeypatch.setattr(memory_module.os, "write", write)


# ---------------------------------------------------------------- disk full (1)
def test_disk_full_mid_append_leaves_the_file_as_it_was_and_names_it(tmp_path, monkeypatch):
    path = tmp_path / "answers.jsonl"
    memory = LabelMemory(path)
    memory.record([[0, 1], [1, 2]], [True, False])
    before = path.read_bytes()
    _full_disk_after(monkeypatch, 30)  # part of one line fits, then the disk is full
    with pytest.raises(OSError, match="answers.jsonl") as info:
        memory.record([[3, 4], [5, 6]], [True, True])
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before  # no partial line stays behind
    assert memory.lookup([[3, 4]]).tolist() == [-1]  # not used: it was not saved
    monkeypatch.undo()
    memory.record([[7, 8]], [True])  # the next append in the same process
    assert _records(path) == [(0, 1, True), (1, 2, False), (7, 8, True)]


@pytest.fixture
def small_disk(tmp_path):
    """A real 128 KiB tmpfs, where the machine lets this process mount one."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mount_point)],
        capture_output=True, text=True,
    ) if os.name == "posix" and os.geteuid() == 0 else None
    if done is None or done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): the injected ENOSPC tests cover it")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_a_real_full_disk_loses_no_acknowledged_answer(small_disk):
    path = small_disk / "answers.jsonl"
    memory = LabelMemory(path)
    acknowledged = []
    with pytest.raises(OSError, match="answers.jsonl") as info:
        for k in range(100_000):  # about 80 bytes a record: the disk fills
            batch = [[3 * k, 3 * k + 1], [3 * k + 1, 3 * k + 2]]
            memory.record(batch, [True, False])
            acknowledged += [(3 * k, 3 * k + 1, True), (3 * k + 1, 3 * k + 2, False)]
    assert info.value.errno == errno.ENOSPC
    assert _records(path) == acknowledged  # every line whole, nothing lost
    with pytest.raises(OSError, match="answers.jsonl"):  # still full: refused before asking
        memory.ask([[0, 10**6]], LabelOracle(np.zeros(10**6 + 1, dtype=int)))
    assert _records(path) == acknowledged


def test_an_oracle_answering_into_a_full_disk_gets_its_answers_back(tmp_path, monkeypatch):
    path = tmp_path / "answers.jsonl"
    memory = LabelMemory(path)
    oracle = LabelOracle([0, 0, 1, 1])
    _full_disk_after(monkeypatch, 0)  # the disk fills between the check and the write
    with pytest.raises(OracleError, match="could not be saved") as info:
        memory.ask([[0, 1], [1, 2], [2, 3]], oracle)
    assert info.value.unsaved_pairs.tolist() == [[0, 1], [1, 2], [2, 3]]
    assert info.value.unsaved_answers.tolist() == [1, 0, 1]
    assert info.value.memory is memory and len(memory) == 0
    monkeypatch.undo()
    memory.record(info.value.unsaved_pairs, info.value.unsaved_answers)  # as the message says
    assert _records(path) == [(0, 1, True), (1, 2, False), (2, 3, True)]


# ---------------------------------------------------- unwritable, before asking (3)
class _CountingOracle:
    def __init__(self):
        self.calls = 0

    def __call__(self, pairs):
        self.calls += 1
        return np.ones(len(pairs), dtype=bool)


@pytest.mark.parametrize("fault", ["missing folder", "read-only", "immutable", "full disk"])
def test_an_unwritable_answers_file_is_found_before_anyone_is_asked(tmp_path, monkeypatch, fault):
    path = tmp_path / "answers.jsonl"
    if fault == "missing folder":
        path = tmp_path / "no-such-folder" / "answers.jsonl"
    elif fault in ("read-only", "immutable"):
        # Tests run as root here, where chmod does not stop a write: inject the
        # kernel's answer instead (EROFS for a read-only mount, EPERM for chattr +i).
        code = errno.EROFS if fault == "read-only" else errno.EPERM
        real_open = os.open

        def refuse(file, flags, *args, **kwargs):
            if os.path.dirname(os.fspath(file)) == str(tmp_path) and flags & (
                os.O_WRONLY | os.O_RDWR
            ):
                raise OSError(code, os.strerror(code), os.fspath(file))
            return real_open(file, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", refuse)  # also the scratch file's
    else:
        import shutil

        real = shutil.disk_usage

        def nearly_full(folder):
            return real(folder)._replace(free=4096)

        monkeypatch.setattr(memory_module.shutil, "disk_usage", nearly_full)
    memory = LabelMemory(path)
    oracle = _CountingOracle()
    with pytest.raises(OSError, match="answers.jsonl"):
        memory.ask([[0, 1]], oracle)
    monkeypatch.undo()
    assert oracle.calls == 0  # nobody answered into the void
    assert not path.exists()  # the check leaves nothing behind
    assert [p.name for p in tmp_path.iterdir()] == []


def test_check_writable_passes_on_a_good_file_and_leaves_no_file(tmp_path):
    path = tmp_path / "answers.jsonl"
    LabelMemory(path).check_writable()
    assert list(tmp_path.iterdir()) == []  # not even a scratch file
    memory = LabelMemory(path)
    memory.record([[0, 1]], [True])
    before = path.read_bytes()
    memory.check_writable()
    assert path.read_bytes() == before
    LabelMemory().check_writable()  # no file: always writable


# ------------------------------------------------------------- two writers (2)
def test_two_memories_on_a_file_with_a_torn_line_keep_each_others_answers(tmp_path):
    path = tmp_path / "answers.jsonl"
    LabelMemory(path).record([[0, 1]], [True])
    with open(path, "ab") as f:
        f.write(b'{"i": 5, "j": 6, "sa')  # a writer killed mid-line
    with pytest.warns(UserWarning, match="truncated"):
        first = LabelMemory(path)
    with pytest.warns(UserWarning, match="truncated"):
        second = LabelMemory(path)
    first.record([[1, 2]], [False])
    second.record([[3, 4]], [True])  # must not cut the file back to where the torn line began
    first.record([[4, 5]], [True])
    assert sorted(_records(path)) == [(0, 1, True), (1, 2, False), (3, 4, True), (4, 5, True)]


_WRITER = """
import sys
from ucal.oracles import LabelMemory
path, base, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
memory = LabelMemory(path)
for k in range(n):
    memory.record([[base + 2 * k, base + 2 * k + 1]], [k % 2 == 0])
"""


def test_two_processes_appending_to_one_file_lose_nothing(tmp_path):
    path = tmp_path / "answers.jsonl"
    n = 150
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(base), str(n)])
        for base in (0, 10_000)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    records = _records(path)
    assert len(records) == 2 * n and len(set(records)) == 2 * n
    for line in path.read_bytes().splitlines():
        json.loads(line)  # no interleaved lines


# ------------------------------------------------------- other formats (4)
@pytest.mark.parametrize(
    "content",
    [
        b'{"epochs": 50, "lr": 0.00035}',  # a JSON config
        b"[1, 2, 3]",
        b"i,j,same\n0,1,true\n",  # a CSV
        b"i,j,same",
        b'{"name": "run"}\n{"i": 0, "j": 1, "same": true}\n',
    ],
)
def test_a_file_of_another_format_is_refused_and_left_untouched(tmp_path, content):
    path = tmp_path / "answers.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a label memory"):
        LabelMemory(path)
    assert path.read_bytes() == content


def test_appending_never_destroys_a_file_that_became_another_format(tmp_path):
    path = tmp_path / "answers.jsonl"
    memory = LabelMemory(path)
    memory.record([[0, 1]], [True])
    with open(path, "ab") as f:
        f.write(b'{"epochs": 50}')  # someone else wrote a complete, foreign line
    before = path.read_bytes()
    with pytest.raises(ValueError, match="not a label memory"):
        memory.record([[1, 2]], [True])
    assert path.read_bytes() == before


def test_a_record_cut_short_is_still_recognised_as_torn(tmp_path):
    path = tmp_path / "answers.jsonl"
    for torn in (b"{", b'{"i', b'{"i": 12, "j": 3', b'{"i": 1, "j": 2, "same": tr'):
        path.write_bytes(b'{"i": 0, "j": 1, "same": true}\n' + torn)
        with pytest.warns(UserWarning, match="truncated"):
            memory = LabelMemory(path)
        memory.record([[2, 3]], [False])
        assert _records(path) == [(0, 1, True), (2, 3, False)]


# ---------------------------------------------------------- kill -9 (evidence)
_KILLED = """
import sys
from ucal.oracles import LabelMemory
path, base = sys.argv[1], int(sys.argv[2])
memory = LabelMemory(path)
k = 0
while True:
    pairs = [[base + 3 * k + a, base + 3 * k + a + 1] for a in range(2)]
    memory.record(pairs, [True, False])
    print(k, flush=True)  # acknowledged: record() returned
    k += 1
"""


def test_kill_9_during_appends_loses_no_acknowledged_answer(tmp_path):
    path = tmp_path / "answers.jsonl"
    rng = np.random.default_rng(0)
    acknowledged = set()
    kills = 0
    deadline = time.monotonic() + 6
    base = 0
    while time.monotonic() < deadline or kills < 3:
        proc = subprocess.Popen(
            [sys.executable, "-c", _KILLED, str(path), str(base)],
            stdout=subprocess.PIPE, text=True,
        )
        first = proc.stdout.readline()  # started and appending
        time.sleep(float(rng.uniform(0.0, 0.05)))
        proc.send_signal(signal.SIGKILL)
        out = first + proc.stdout.read()
        proc.wait()
        kills += 1
        for k in (int(line) for line in out.split()):
            acknowledged.add((base + 3 * k, base + 3 * k + 1, True))
            acknowledged.add((base + 3 * k + 1, base + 3 * k + 2, False))
        base += 1_000_000
    reloaded = set(_records(path))
    assert acknowledged and acknowledged <= reloaded
    assert len(acknowledged) >= 2 * kills


# ------------------------------------------------------------ huge indices (9)
def test_indices_of_2_31_and_more_are_refused_in_calls_and_in_files(tmp_path):
    memory = LabelMemory()
    with pytest.raises(ValueError, match="below 2\\*\\*31"):
        memory.record([[0, 2**31]], [True])
    with pytest.raises(ValueError, match="below 2\\*\\*31"):
        memory.lookup([[2**32 + 1, 0]])  # would collide with (1, 1) in a packed key
    path = tmp_path / "answers.jsonl"
    path.write_text('{"i": 0, "j": 1, "same": true}\n{"i": 1, "j": 4294967296, "same": true}\n')
    with pytest.raises(ValueError, match="line 2.*below 2\\*\\*31"):
        LabelMemory(path)


def test_a_large_index_costs_memory_of_the_answers_not_of_the_index():
    import tracemalloc

    memory = LabelMemory()
    memory.record([[0, 2**30], [2**30, 5], [7, 8]], [True, True, False])
    tracemalloc.start()
    try:
        answers = memory.lookup([[0, 5], [5, 7], [8, 2**30 - 1]])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answers.tolist() == [1, -1, -1]
    assert peak < 10 * 2**20  # a few KiB, not an array of 2**30 nodes
    assert [c["i"] for c in memory.conflicts()] == []


def test_a_memory_about_other_data_is_refused_by_the_refiners(tmp_path):
    from ucal import SNPSSplitter

    path = tmp_path / "answers.jsonl"
    LabelMemory(path).record([[3, 500]], [True])
    X = np.random.default_rng(0).normal(size=(40, 4))
    with pytest.raises(ValueError, match="sample 500, but the data has 40 samples"):
        SNPSSplitter().fit(X, np.repeat(np.arange(4), 10), label_memory=str(path))
