"""Chunk locks: written whole or not at all; an empty or malformed lock is waited for while young
and taken over with a warning when old; a chunk held by another process is waited for with one
message naming the holder and the lock file. Locks are aged with os.utime, never by sleeping."""

import errno
import json
import os
import re
import socket
import time
import warnings

import pytest

from bnprivacy.runs import chunks, disk, local, locks
from bnprivacy.config import Config
from bnprivacy.runs.executor import ChunkJob, ExecutorOptions
from bnprivacy.runs.spec import RunSpec

SPEC = RunSpec(Config(width=8, epochs=2, device="cpu"), n_models=4)
HOST = json.dumps(socket.gethostname())


@pytest.fixture
def chunk(tmp_path):
    """A chunk folder's path (not created) in a run folder that exists."""
    (tmp_path / "run").mkdir()
    return tmp_path / "run" / "models-00000-00001"


def age(path, seconds):
    """Set ``path``'s modification time ``seconds`` into the past."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def seal_without_training(spec, data, masks, models, chunk, **job):
    """Stands in for ``chunks.train_seal_and_signal``: a sealed chunk with placeholder files."""
    disk.reset(chunk)
    disk.write_atomic(chunk / "states.pt", b"weights")
    disk.write_atomic(chunk / "history.csv", b"model\n0\n")
    disk.seal(chunk, list(chunks.CHUNK_FILES))


def test_a_lock_is_written_whole_with_pid_host_and_time_and_no_temporary_file_stays(chunk, monkeypatch):
    monkeypatch.setattr(locks.time, "time", lambda: 1_700_000_000.5)
    assert locks.claim_chunk(chunk)
    lock = locks.chunk_lock(chunk)
    holder = json.loads(lock.read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    assert holder["created"] == 1_700_000_000.5
    assert [p.name for p in chunk.parent.iterdir()] == [lock.name]
    assert not locks.claim_chunk(chunk), "this live process holds the lock"


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_lock_write_leaves_neither_a_lock_nor_a_temporary_file(chunk, monkeypatch, error):
    def fails(*args):
        raise error

    monkeypatch.setattr(os, "fsync", fails)
    with pytest.raises(type(error)):
        locks.claim_chunk(chunk)
    assert list(chunk.parent.iterdir()) == []


def test_a_file_system_without_hard_links_still_gets_a_whole_lock(chunk, monkeypatch):
    def no_hard_links(*args):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_hard_links)
    assert locks.claim_chunk(chunk) and not locks.claim_chunk(chunk)
    assert json.loads(locks.chunk_lock(chunk).read_text())["pid"] == os.getpid()
    assert [p.name for p in chunk.parent.iterdir()] == [locks.chunk_lock(chunk).name]
    locks.chunk_lock(chunk).unlink()

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", disk_full)  # the write of the lock itself fails
    with pytest.raises(OSError, match="No space left"):
        locks._create_lock_in_place(locks.chunk_lock(chunk), b"{}")
    assert list(chunk.parent.iterdir()) == []


@pytest.mark.parametrize("content", [
    "", '{"pid": 12', "[1, 2]", "null", "\udcff\udcfe", '{"host": HOST}', '{"pid": "12", "host": HOST}',
    '{"pid": true, "host": HOST}', '{"pid": 0, "host": HOST}', '{"pid": -1, "host": HOST}',
    '{"pid": 12, "host": 7}',
], ids=["empty", "cut-short", "list", "null", "not-utf8", "no-pid", "pid-text", "pid-bool", "pid-0",
        "pid-negative", "host-number"])
def test_a_malformed_lock_is_waited_for_while_young_and_taken_over_with_a_warning_when_old(chunk, content):
    lock = locks.chunk_lock(chunk)
    lock.write_bytes(content.replace("HOST", HOST).encode("utf-8", "surrogateescape"))
    age(lock, locks.LOCK_TAKEOVER_SECONDS - 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not locks.claim_chunk(chunk), "a young malformed lock may still be being written"
    age(lock, locks.LOCK_TAKEOVER_SECONDS + 1)
    with pytest.warns(UserWarning, match=f"taking over the lock {re.escape(str(lock))}: it is 6[01] s old"):
        assert locks.claim_chunk(chunk)
    assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_an_old_lock_of_another_machine_is_never_taken_over(chunk):
    lock = locks.chunk_lock(chunk)
    lock.write_text('{"pid": 4242, "host": "elsewhere"}')  # written before locks recorded their time
    age(lock, 7 * 86400)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not locks.claim_chunk(chunk)
    assert json.loads(lock.read_text()) == {"pid": 4242, "host": "elsewhere"}


def test_the_lock_of_a_dead_process_on_this_machine_is_taken_over(chunk):
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    locks.chunk_lock(chunk).write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname()}))
    assert locks.claim_chunk(chunk)
    assert json.loads(locks.chunk_lock(chunk).read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("host, pid", [("elsewhere", 4242), (socket.gethostname(), os.getpid())],
                         ids=["another-machine", "a-live-process-here"])
def test_a_held_chunk_is_waited_for_with_one_message_naming_the_holder_and_the_lock(
        chunk, monkeypatch, capsys, host, pid):
    folder, lock = chunk.parent, locks.chunk_lock(chunk)
    lock.write_text(json.dumps({"pid": pid, "host": host, "created": time.time()}))
    polls = []

    def sleep(seconds):
        polls.append(seconds)
        if len(polls) == 5:
            lock.unlink()  # a person deletes the lock, as the message says

    monkeypatch.setattr(chunks.time, "sleep", sleep)
    monkeypatch.setattr(local, "train_seal_and_signal", seal_without_training)
    local.EXECUTOR.train([chunks.RunChunks(SPEC, folder, None, 2)], None, ChunkJob(progress=False), ExecutorOptions())
    err = capsys.readouterr().err
    assert len(polls) == 5 and chunks.is_run_complete(folder, SPEC.n_models, 2)
    assert err.count("waiting for") == 1, err
    assert f"waiting for models-00000-00001 of {folder}: process {pid} on {host} holds its lock since " in err
    assert f"If that process is gone, delete {lock} and this run trains the chunk" in err
    assert "never taken over automatically" in err
