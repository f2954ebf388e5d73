"""Open the study database: Optuna's RDBStorage, whose engine rnntune's own tables share.

Connection economy (DESIGN.md): one engine per process. Optuna's scoped session, rnntune's
session scope, the claim lock and the supervised heartbeat thread all draw on the same pool of
``POOL_SIZE`` connection plus ``MAX_OVERFLOW``: at most 3 PostgreSQL connections a process (the
claim lock + the claim itself + a heartbeat at the same moment), 1 kept open while idle.
benchmarks/many_workers.py measured a peak of 59 for 32 workers in a worst case where all of
them queue on the claim lock at once.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from rnntune.exceptions import StorageError, first_line
from rnntune.limits import MAX_RETRY

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
        "connect_args": {
            "connect_timeout": 10,
            "application_name": "rnntune",
            # A server or a network path that vanishes without a FIN (a paused VM, a dropped
            # NAT entry) is noticed in about a minute instead of the kernel's two hours.
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        },
    }


class StorageRole(enum.Enum):
    """What a process opens the study database for: decides what opening it may do.

    Not to be confused with PostgreSQL roles (ensure_roles): this is about one process's use.
    """

    #: ``rnntune init`` (and ``run``, which inits): may create the database file and Optuna's
    #: tables (under a lock, after the foreign-database check).
    MIGRATE = "migrate"
    #: Workers, the final job, the dashboard: read and write rows, never create tables. On SQLite
    #: the file is switched to WAL and every transaction is BEGIN IMMEDIATE (writers queue).
    WORK = "work"
    #: Processes that only read (status, report): never create tables; on SQLite their
    #: transactions stay deferred, and a WAL reader never waits for, nor blocks, a writer.
    READ = "read"


def open_optuna_storage(
    url: str,
    role: StorageRole,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int = MAX_RETRY,
) -> RDBStorage:
    """Optuna's RDBStorage on ``url``, opened for ``role``; only ``rnntune init`` migrates.

    With a heartbeat interval, a trial whose heartbeat stops for ``grace_period`` seconds is failed
    and re-enqueued with the same parameters (RetryHeartbeatStaleTrialCallback), up to
    ``max_retry`` times, inheriting its reported epochs so the retry resumes where it stopped.
    """
    url = normalize_url(url)
    sqlite = is_sqlite(url)
    creating = role is StorageRole.MIGRATE
    reader = role is StorageRole.READ
    if sqlite:
        _prepare_sqlite_file(url, create=creating, wal=False)
    # Looked at before anything is written: Optuna's RDBStorage writes to any database it opens
    # (a version row, an Alembic stamp: DDL) when its tables are missing or half-made, which
    # would race the `init` that is creating them, or litter someone else's database.
    state, tables = _schema_state(url)
    if state == "foreign":
        raise _foreign(url, creating, tables)
    if sqlite and not reader:
        # WAL lets readers (status, dashboard) run beside a writer; set before tables exist.
        _prepare_sqlite_file(url, create=creating, wal=True)
    if creating and state != "ready":
        _create_tables_once(url)
    elif not creating and state in ("empty", "partial"):
        raise StorageError(
            f"the database at {mask_url(url)} has no study tables"
            + (
                " yet (or only some: an init is running or was interrupted)"
                if state == "partial"
                else ""
            )
            + ": run `rnntune init` (or `rnntune run`) on it first, or point --storage at "
            "rnntune's database"
        )
    callback = None
    if heartbeat_interval is not None:
        callback = RetryHeartbeatStaleTrialCallback(
            max_retry=max_retry, inherit_intermediate_values=True
        )
    try:
        storage = RDBStorage(
            url,
            engine_kwargs=engine_kwargs(url),
            # Created (under a lock, after the foreign-database check) by _create_tables_once.
            skip_table_creation=True,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=callback,
        )
    except (SQLAlchemyError, RuntimeError, optuna.exceptions.StorageInternalError) as e:
        # StorageInternalError: Optuna's wrapper of a failed first query, e.g. a read-only open of
        # a database that has no tables yet.
        raise StorageError(
            f"cannot open the study database at {mask_url(url)} ({first_line(e)}): check the URL "
            "and that the server is running; a new database needs `rnntune init` first"
        ) from e
    if sqlite and not reader:
        _serialise_sqlite_writers(storage.engine)
    return storage


# Filesystems on which SQLite's WAL (shared memory) and POSIX locks (rnntune's budget lock) are
# not safe: the database would be corrupted or two workers would both hold the lock.
NETWORK_FS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb", "smb3", "smbfs", "ncpfs", "afs", "ceph", "glusterfs",
        "lustre", "gpfs", "beegfs", "9p", "davfs", "fuse.sshfs", "fuse.glusterfs", "fuse.s3fs",
        "fuse.rclone", "fuse.gcsfuse", "fuse.juicefs", "fuse.davfs", "fuse.cephfs",
        "fuse.goofys", "fuse.blobfuse", "fuse.smbnetfs", "fuse.curlftpfs",
    }
)  # fmt: skip


def _unescape_mount(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def filesystem_type(path: str | os.PathLike[str], mountinfo: str | None = None) -> str | None:
    """The type of the filesystem holding ``path`` (from /proc/self/mountinfo), or None when
    unknown (no /proc: macOS)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    target = os.path.abspath(path)
    best, best_type = "", None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        parts = left.split()
        if not sep or len(parts) < 5 or not right.split():
            continue
        mount_point = _unescape_mount(parts[4])
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        # Later lines shadow earlier ones mounted on the same point.
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, right.split()[0]
    return best_type


def check_local_filesystem(path: Path, mountinfo: str | None = None) -> None:
    """Refuse a SQLite database on a network filesystem (WAL and file locks are unsafe there)."""
    probe = path if path.exists() else path.parent
    fstype = filesystem_type(probe, mountinfo)
    if fstype is not None and fstype.lower() in NETWORK_FS:
        raise StorageError(
            f"the SQLite database {path} is on a network filesystem ({fstype}), where SQLite's "
            "locking is unsafe and the study could be corrupted: put it on a local disk, or use "
            "PostgreSQL (--storage postgresql://user@host/db) to share a study between machines"
        )


# Tables that mark a database as Optuna's or rnntune's; any other non-empty database belongs to
# someone else, and `rnntune init` must not create tables in it.
OPTUNA_MARKERS = frozenset({"version_info", "studies"})
RNNTUNE_MARKERS = frozenset({"rnntune_alembic_version", "rnntune_experiments"})


def _create_tables_once(url: str) -> None:
    """Create Optuna's tables, serialised across processes, in a database that is empty or
    already Optuna's/rnntune's.

    Several `rnntune init` (or `run`) on an empty database at once would otherwise race in
    Optuna's ``create_all`` and version row insert, and one of them fail. The check comes first,
    so a foreign database is refused before a single table is created in it.
    """
    from sqlalchemy import create_engine, inspect

    from ._locks import exclusive

    engine = create_engine(url, **engine_kwargs(url))
    try:
        with exclusive(engine, "rnntune:migrate"):
            tables = set(inspect(engine).get_table_names())
            if tables and not tables >= OPTUNA_MARKERS and not tables & RNNTUNE_MARKERS:
                shown = ", ".join(sorted(tables)[:5]) + (" ..." if len(tables) > 5 else "")
                raise StorageError(
                    f"the database at {mask_url(url)} already holds tables of another "
                    f"application ({shown}) and no Optuna or rnntune tables; nothing was "
                    "changed: give rnntune a database of its own (createdb rnntune), or on "
                    "PostgreSQL a schema of its own (?options=-csearch_path%3Drnntune)"
                )
            # Idempotent: creates what is missing, the version row, the Alembic stamp.
            RDBStorage(url, engine_kwargs=engine_kwargs(url)).engine.dispose()
    except OperationalError as e:  # cannot connect: a wrong host, port, user, database...
        raise StorageError(
            f"cannot open the study database at {mask_url(url)} ({first_line(e)}): check the URL, "
            "that the server is running and that the database exists"
        ) from e
    except (SQLAlchemyError, RuntimeError, optuna.exceptions.StorageInternalError) as e:
        raise StorageError(
            f"cannot create the study tables at {mask_url(url)} ({first_line(e)}): check that the "
            "user may create tables there (run `rnntune init` as the database owner)"
        ) from e
    finally:
        engine.dispose()


def _schema_state(url: str) -> tuple[str | None, set[str]]:
    """``empty``, ``foreign`` (another application's tables only), ``partial`` (Optuna's tables
    not all there, or not stamped yet), ``ready``, or None when the database does not answer."""
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url, **engine_kwargs(url))
    try:
        tables = set(inspect(engine).get_table_names())
        if not tables:
            return "empty", tables
        if not tables >= OPTUNA_MARKERS and not tables & RNNTUNE_MARKERS:
            return "foreign", tables
        if not tables >= OPTUNA_MARKERS | {"alembic_version"}:
            return "partial", tables
        with engine.connect() as conn:
            stamped = conn.execute(text("SELECT count(*) FROM alembic_version")).scalar()
            versioned = conn.execute(text("SELECT count(*) FROM version_info")).scalar()
        return ("ready" if stamped and versioned else "partial"), tables
    except SQLAlchemyError:
        return None, set()
    finally:
        engine.dispose()


def _foreign(url: str, creating: bool, tables: set[str]) -> StorageError:
    shown = ", ".join(sorted(tables)[:5]) + (" ..." if len(tables) > 5 else "")
    if not creating:
        return StorageError(
            f"the database at {mask_url(url)} holds another application's tables ({shown}) and "
            "no study tables: point --storage at rnntune's database"
        )
    return StorageError(
        f"the database at {mask_url(url)} already holds tables of another application "
        f"({shown}) and no Optuna or rnntune tables; nothing was changed: give rnntune a "
        "database of its own (createdb rnntune), or on PostgreSQL a schema of its own "
        "(?options=-csearch_path%3Drnntune)"
    )


def _prepare_sqlite_file(url: str, *, create: bool, wal: bool) -> None:
    path = sqlite_path(url)
    try:
        _check_sqlite_file(path, create=create, wal=wal)
    except OSError as e:  # e.g. a directory on the way that this user may not enter
        raise StorageError(
            f"cannot use {path} as the SQLite database ({e.strerror or e}): pass --storage "
            "sqlite:///PATH/TO/FILE.db (a file in a directory this user can write)"
        ) from e


def _check_sqlite_file(path: Path, *, create: bool, wal: bool) -> None:
    fix = "pass --storage sqlite:///PATH/TO/FILE.db (a file in a writable directory)"
    if path.is_dir():
        raise StorageError(f"the SQLite storage {path} is a directory, not a database file: {fix}")
    if not path.exists() and not create:
        raise StorageError(
            f"no study database at {path}: run `rnntune init` (or `rnntune run`) first, "
            "or point --storage at the right file"
        )
    if path.exists():
        # Asked of SQLite itself, read-only. Never open the database file with a plain open():
        # closing that descriptor drops every POSIX lock this process holds on the file,
        # SQLite's included, and a database can be corrupted that way (sqlite.org/howtocorrupt,
        # 2.2). SQLite shares one descriptor per file between its own connections.
        try:
            with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as conn:
                conn.execute("PRAGMA schema_version").fetchone()
        except sqlite3.DatabaseError as e:
            if "malformed" in str(e):
                raise StorageError(
                    f"the SQLite database {path} is damaged ({e}): restore it from a backup, or "
                    f"start a new study elsewhere: {fix}"
                ) from e
            if "not a database" in str(e):
                raise StorageError(
                    f"{path} is not a SQLite database (it holds something else); nothing was "
                    f"changed: {fix}"
                ) from e
            raise StorageError(f"cannot read the SQLite database {path} ({e}): {fix}") from e
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise StorageError(
            f"cannot create the directory {path.parent} for the SQLite database: a part of that "
            f"path is a file, not a directory; {fix}"
        ) from e
    except OSError as e:
        raise StorageError(
            f"cannot create the directory {path.parent} for the SQLite database ({e.strerror}): "
            f"{fix}"
        ) from e
    if not path.parent.is_dir():
        raise StorageError(f"{path.parent} is not a directory: {fix}")
    check_local_filesystem(path)
    if (create or wal) and not os.access(path.parent, os.W_OK | os.X_OK):
        # SQLite writes its -wal/-shm/-journal files (and rnntune its lock file) beside the
        # database: the directory must be writable, not just the file.
        raise StorageError(
            f"the directory {path.parent} of the SQLite database is not writable: make it "
            f"writable, or {fix}"
        )
    if not wal:
        return
    # WAL lets readers (status, dashboard) run beside a writer; it is a property of the file.
    try:
        with closing(sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as e:
        raise StorageError(f"cannot open the SQLite database {path} ({e}): {fix}") from e


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
        # FULL: in WAL mode NORMAL may roll back the last commits on a power loss or an OS
        # crash, and a trial told COMPLETE has had its checkpoint removed by then.
        dbapi_connection.execute("PRAGMA synchronous=FULL")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    # Connections opened before the listeners existed would keep the old behaviour.
    engine.dispose()


def artifact_store(path: str) -> FileSystemArtifactStore:
    """The shared artifact store (checkpoints, uploaded reports): a directory all workers see."""

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
