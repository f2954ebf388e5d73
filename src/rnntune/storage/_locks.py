"""Cross-process exclusive sections: the one place where racing workers are serialised.

PostgreSQL: a transaction-level advisory lock (released by commit, or by the server when the
holder's connection dies, so a SIGKILLed worker never leaves it held). SQLite: a POSIX byte-range
lock on a file beside the database (released by the kernel when the process dies). Both are
fair enough and held for milliseconds.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.engine import Engine

from ._url import is_sqlite, sqlite_path

_fds: dict[str, int] = {}
_fd_guard = threading.Lock()


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
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _key(name)})
        yield


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
