"""Who trains a chunk: one lock file per chunk, written whole or not at all, with a dead-process check.

Processes (shards on one machine, jobs on a shared disk, a Ray driver) claim a chunk before they
train or submit it; a chunk that another live process holds is left to it and waited for.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import tempfile
import time
import warnings
from pathlib import Path

# An empty or malformed lock file older than this is taken over, with a warning. This code writes
# a lock whole or not at all (:func:`_create_lock`), so it never leaves one: only a crash of an
# earlier version while it wrote its lock (a full disk), an interrupted write on a file system
# without hard links (where the lock is written in place), or a foreign write does. A minute is far
# longer than writing a few bytes takes, so a lock still being written is never taken from its writer.
LOCK_TAKEOVER_SECONDS = 60.0


# os.link's errors on file systems without hard links (FAT, some network and FUSE file systems).
NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


def chunk_lock(chunk: Path) -> Path:
    """The lock file of ``chunk``: held by the process that trains (or submits) it."""
    return chunk.with_name(chunk.name + ".lock")


def claim_chunk(chunk: Path) -> bool:
    """Take ``chunk``'s lock file, written whole or not at all. A lock whose process has died on
    this machine is taken over, and so is an empty or malformed one older than
    ``LOCK_TAKEOVER_SECONDS`` (with a warning naming it). False when a live process holds the lock,
    or a malformed one is younger than that."""
    lock = chunk_lock(chunk)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while not _create_lock(lock):
        if not _stale(lock):
            return False
        lock.unlink(missing_ok=True)
    return True


def _create_lock(lock: Path) -> bool:
    """Create ``lock`` holding this process's ``{pid, host, created}``; False when it exists. The
    record is written into a temporary file of the same folder, then hard-linked to the lock's name
    (which fails when that name exists): exclusive and atomic, so no process ever reads a lock half
    written, even when the disk fills up midway."""
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "created": time.time()}).encode()
    handle, tmp = tempfile.mkstemp(dir=lock.parent, prefix=f".{lock.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(record)
            out.flush()
            os.fsync(out.fileno())  # the lock's name never points at bytes still only in memory
        return _link_lock(Path(tmp), lock, record)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _link_lock(tmp: Path, lock: Path, record: bytes) -> bool:
    """Give the written ``tmp`` the lock's name; False when the lock exists."""
    try:
        os.link(tmp, lock)
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in NO_HARD_LINKS:
            raise
        return _create_lock_in_place(lock, record)
    return True


def _create_lock_in_place(lock: Path, record: bytes) -> bool:
    """:func:`_create_lock` where hard links are not supported: created exclusively, then written;
    a failed write removes it (only a crash midway leaves a malformed lock, taken over after
    ``LOCK_TAKEOVER_SECONDS``)."""
    try:
        handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(record)
    except BaseException:
        lock.unlink(missing_ok=True)  # ours: created exclusively just now
        raise
    return True


def _read_lock(lock: Path) -> dict | None:
    """The ``{pid, host}`` (and ``created``) that ``lock`` records, or None when it is empty,
    unreadable, or not a JSON object with an integer pid and a host name. Raises
    ``FileNotFoundError`` when there is no lock."""
    try:
        holder = json.loads(lock.read_bytes())
    except FileNotFoundError:
        raise
    except (OSError, ValueError):  # unreadable, empty, not JSON, not UTF-8
        return None
    pid = holder.get("pid") if isinstance(holder, dict) else None
    # pid 0 and negative pids name process groups for os.kill, which would always look alive.
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 2**31:
        return None
    return holder if isinstance(holder.get("host"), str) else None


def _stale(lock: Path) -> bool:
    """Whether ``lock`` may be taken over: it is gone, its process died on this machine, or it is
    malformed and old (:func:`_abandoned`). Whether a process on another machine lives is not
    knowable here: its lock is left to that machine, or to a person who deletes it."""
    try:
        holder = _read_lock(lock)
    except FileNotFoundError:
        return True
    if holder is None:
        return _abandoned(lock)
    if holder["host"] != socket.gethostname():
        return False
    return not _alive(holder["pid"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _abandoned(lock: Path) -> bool:
    """Whether the malformed ``lock`` is older than ``LOCK_TAKEOVER_SECONDS``, then said in a
    warning; a younger one may still be being written."""
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return True
    if age < LOCK_TAKEOVER_SECONDS:
        return False
    warnings.warn(f"taking over the lock {lock}: it is {age:.0f} s old and empty or not the {{pid, host}} record "
                  "a run writes (left by a crash while it was written, or written by something else)",
                  stacklevel=4)
    return True


def say_who_holds(chunks: list[Path], reported: set) -> None:
    """Print, once per chunk and holder (``reported`` remembers them), which process holds the lock
    of each of ``chunks`` and which file to delete if that process is gone: a hung process, or one
    on another machine (whose liveness cannot be checked from here), would otherwise keep this run
    waiting without a word."""
    for chunk in chunks:
        lock = chunk_lock(chunk)
        try:
            holder = _read_lock(lock)
        except FileNotFoundError:
            continue  # freed meanwhile
        if holder is None or (lock, holder["pid"], holder["host"]) in reported:
            continue  # a malformed lock is taken over when old enough, with a warning of its own
        reported.add((lock, holder["pid"], holder["host"]))
        print(f"waiting for {chunk.name} of {chunk.parent}: process {holder['pid']} on {holder['host']} "
              f"holds its lock{_since(holder)}. If that process is gone, delete {lock} and this run trains "
              "the chunk (a lock from another machine is never taken over automatically)",
              file=sys.stderr, flush=True)


def _since(holder: dict) -> str:
    created = holder.get("created")
    if isinstance(created, bool) or not isinstance(created, (int, float)):
        return ""  # written before locks recorded their time
    try:
        return time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(created))
    except (OverflowError, OSError, ValueError):
        return ""  # not a time this machine can show



def release_chunk(chunk: Path) -> None:
    """Free ``chunk``'s lock (this process's, taken by :func:`claim_chunk`)."""
    chunk_lock(chunk).unlink(missing_ok=True)
