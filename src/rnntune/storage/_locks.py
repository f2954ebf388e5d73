"""Cross-process exclusive sections: the one place where racing workers are serialised.

PostgreSQL: a transaction-level advisory lock (released by commit, or by the server when the
holder's connection dies, so a SIGKILLed worker never leaves it held). SQLite: a POSIX byte-range
lock on a file beside the database (released by the kernel when the process dies). Both are
fair enough and held for milliseconds.

On PostgreSQL a waiter polls ``pg_try_advisory_xact_lock`` from Python rather than blocking
inside the driver, so its signal handlers run while it waits (a SIGTERMed worker stops cleanly).
A holder that keeps the lock past :data:`STUCK_AFTER` is a paused or cut-off process (``docker
pause``, a frozen VM, a lost network): the waiter terminates its connection, which ends its
transaction and releases the lock, instead of blocking every claimer of the family for ever.
A holder fenced so may still write through its other connections when it wakes; the budget
rule (a trial the budget has no room for is failed as surplus: rnntune.tuning) absorbs that.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from ._url import is_sqlite, sqlite_path

log = logging.getLogger(__name__)

_fds: dict[str, int] = {}
_fd_guard = threading.Lock()

# Seconds a holder may keep a lock before a waiter fences it. Locks are held for milliseconds,
# the longest (a schema migration) for seconds; a study's data is loaded outside them.
STUCK_AFTER = 300.0
_POLL_FIRST, _POLL_MAX = 0.005, 0.25


def _key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def exclusive(engine: Engine, name: str) -> Iterator[None]:
    """Hold the lock called ``name`` for this database, across processes and machines."""
    url = engine.url.render_as_string(hide_password=False)
    if is_sqlite(url):
        with _file_lock(str(sqlite_path(url)) + ".rnntune-lock", name):
            yield
        return
    with engine.connect() as conn:
        _acquire(conn, name, STUCK_AFTER)  # in a transaction that holds the lock
        try:
            yield
        except BaseException:
            conn.rollback()
            raise
        conn.commit()


def _acquire(conn: Connection, name: str, stuck_after: float) -> None:
    """Take the lock, each try in a transaction of its own: the holder's transaction then starts
    when it got the lock, which is what :func:`_fence_holder` measures."""
    key = _key(name)
    pause, waited_since = _POLL_FIRST, time.monotonic()
    while not conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key}).scalar():
        fenced = time.monotonic() - waited_since >= stuck_after and _fence_holder(
            conn, name, key, stuck_after
        )
        conn.rollback()
        if fenced:
            waited_since = time.monotonic()
            continue
        time.sleep(pause * random.uniform(0.5, 1.0))  # jitter: waiters do not poll in step
        pause = min(pause * 2, _POLL_MAX)


# A bigint advisory key shows in pg_locks as classid (high 32 bits), objid (low 32), objsubid 1.
_HOLDER = text(
    """
    SELECT l.pid, EXTRACT(EPOCH FROM clock_timestamp() - a.xact_start) AS held
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.classid = CAST(:hi AS oid) AND l.objid = CAST(:lo AS oid)
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.pid <> pg_backend_pid()
    """
)


def _fence_holder(conn: Connection, name: str, key: int, stuck_after: float) -> bool:
    """Terminate the connection holding ``name`` if it has held it past ``stuck_after`` seconds.

    Returns whether a holder was terminated. Never raises for want of a privilege: without
    ``pg_signal_backend`` (or the holder's role) the waiter goes on waiting, and says so.
    """
    row = conn.execute(_HOLDER, {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF}).first()
    if row is None or row.held is None or float(row.held) < stuck_after:
        return False
    done = conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": row.pid}).scalar()
    if done:
        log.warning(
            "lock %s was held for %.0fs by a stalled connection (pid %d on the server): "
            "terminated it so the study can go on",
            name,
            float(row.held),
            row.pid,
        )
    else:
        log.warning(
            "lock %s has been held for %.0fs by pid %d on the server, which this role may not "
            "terminate: still waiting (grant it pg_signal_backend, or end that connection)",
            name,
            float(row.held),
            row.pid,
        )
    return bool(done)


@contextmanager
def _file_lock(path: str, name: str) -> Iterator[None]:
    # POSIX locks belong to the process and are all dropped when *any* descriptor of the file is
    # closed, so keep one descriptor per lock file open for the life of the process.
    with _fd_guard:
        fd = _fds.get(path)
        if fd is None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            _fds[path] = fd
    offset = _key(name) % (1 << 30)
    fcntl.lockf(fd, fcntl.LOCK_EX, 1, offset)
    try:
        yield
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)
