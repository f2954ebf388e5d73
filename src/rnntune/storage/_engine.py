"""Open the study database: Optuna's RDBStorage, whose engine rnntune's own tables share.

Connection economy (DESIGN.md): one engine per process. Optuna's scoped session, rnntune's
session scope, the claim lock and the supervised heartbeat thread all draw on the same pool of
``POOL_SIZE`` connection plus ``MAX_OVERFLOW``: at most 3 PostgreSQL connections a process (the
claim lock + the claim itself + a heartbeat at the same moment), 1 kept open while idle.
benchmarks/many_workers.py measured a peak of 59 for 32 workers in a worst case where all of
them queue on the claim lock at once.
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from rnntune.exceptions import StorageError

from ._url import is_sqlite, mask_url, normalize_url, sqlite_path

log = logging.getLogger(__name__)

POOL_SIZE = 1
MAX_OVERFLOW = 2
SQLITE_BUSY_TIMEOUT_S = 120


def engine_kwargs(url: str) -> dict[str, Any]:
    if is_sqlite(url):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    return {
        "pool_size": POOL_SIZE,
        "max_overflow": MAX_OVERFLOW,
        # A restarted PostgreSQL leaves dead connections in the pool: test each one on checkout.
        "pool_pre_ping": True,
        "pool_recycle": 1800,
        "pool_timeout": 60,
        "connect_args": {"connect_timeout": 10, "application_name": "rnntune"},
    }


def open_optuna_storage(
    url: str,
    *,
    read_only: bool = False,
    reader: bool = False,
    create_tables: bool = False,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = None,
) -> RDBStorage:
    """Optuna's RDBStorage on ``url``; only ``rnntune init`` passes ``create_tables=True``.

    With a heartbeat interval, a trial whose heartbeat stops for ``grace_period`` seconds is failed
    and re-enqueued with the same parameters (RetryHeartbeatStaleTrialCallback), up to
    ``max_retry`` times, inheriting its reported epochs so the retry resumes where it stopped.

    ``read_only`` never creates tables. ``reader`` is for processes that only read (status,
    report): on SQLite their transactions stay deferred, and a WAL reader never waits for, nor
    blocks, a writer.
    """
    url = normalize_url(url)
    sqlite = is_sqlite(url)
    if sqlite:
        _prepare_sqlite_file(url, create=create_tables, wal=not reader)
    callback = None
    if heartbeat_interval is not None:
        if max_retry is None:
            from rnntune.state import MAX_RETRY as max_retry  # the one place limits are set
        callback = RetryHeartbeatStaleTrialCallback(
            max_retry=max_retry, inherit_intermediate_values=True
        )
    try:
        storage = RDBStorage(
            url,
            engine_kwargs=engine_kwargs(url),
            skip_table_creation=read_only or not create_tables,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=callback,
        )
    except (SQLAlchemyError, RuntimeError, optuna.exceptions.StorageInternalError) as e:
        # StorageInternalError: Optuna's wrapper of a failed first query, e.g. a read-only open of
        # a database that has no tables yet.
        raise StorageError(
            f"cannot open the study database at {mask_url(url)} ({_short(e)}): check the URL and "
            "that the server is running; a new database needs `rnntune init` first"
        ) from e
    if sqlite and not reader:
        _serialise_sqlite_writers(storage.engine)
    return storage


def _prepare_sqlite_file(url: str, *, create: bool, wal: bool) -> None:
    path = sqlite_path(url)
    if not path.exists() and not create:
        raise StorageError(
            f"no study database at {path}: run `rnntune init` (or `rnntune run`) first, "
            "or point --storage at the right file"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if not wal:
        return
    # WAL lets readers (status, dashboard) run beside a writer; it is a property of the file.
    with closing(sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


def _serialise_sqlite_writers(engine: Engine) -> None:
    """Make every SQLite transaction BEGIN IMMEDIATE.

    pysqlite opens deferred transactions; two processes that both read and then write get
    SQLITE_BUSY at once on the upgrade, without waiting on the busy timeout ("database is
    locked"). An immediate transaction takes the write lock up front and waits its turn instead.
    This is SQLAlchemy's documented recipe for pysqlite transaction control.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    # Connections opened before the listeners existed would keep the old behaviour.
    engine.dispose()


def artifact_store(path: str) -> FileSystemArtifactStore:
    """The shared artifact store (checkpoints, uploaded reports): a directory all workers see."""
    from pathlib import Path

    base = Path(path)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(
            f"cannot create the artifact directory {base} ({e.strerror}): pass --artifacts DIR "
            "(RNNTUNE_ARTIFACTS) pointing at a writable directory shared by all workers"
        ) from e
    return FileSystemArtifactStore(str(base))


def load_study(storage: RDBStorage, name: str, sampler: Any = None, pruner: Any = None) -> Any:
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError as e:
        raise StorageError(
            f"study {name!r} is missing from the storage: run `rnntune init` for this experiment"
        ) from e


def _short(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__
