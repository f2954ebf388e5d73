"""Storage: URL normalisation, migrations, the cross-process lock — on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
from sqlalchemy import inspect

from rnntune.exceptions import ConfigError, StorageError
from rnntune.storage import (
    StorageRole,
    current_revision,
    exclusive,
    head_revision,
    mask_url,
    normalize_url,
    open_optuna_storage,
    upgrade,
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+psycopg2://u:p@h:5432/db"),
        ("postgres://u:p@h/db", "postgresql+psycopg2://u:p@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("sqlite:///rnntune.db", "sqlite:///rnntune.db"),
    ],
)
def test_normalize_url(given: str, expected: str) -> None:
    assert normalize_url(given) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("", "the storage URL is empty"),
        ("sqlite://", "in-memory SQLite storage cannot be shared"),
        ("mysql://u@h/db", "unsupported storage backend 'mysql'"),
        ("postgresql+asyncpg://u@h/db", "unsupported PostgreSQL driver"),
        ("not a url", "cannot parse storage URL"),
    ],
)
def test_bad_urls_name_the_fix(given: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        normalize_url(given)


def test_mask_url_hides_password() -> None:
    assert "secret" not in mask_url("postgresql://u:secret@h/db")


def test_missing_sqlite_file_says_run_init(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="run `rnntune init`"):
        open_optuna_storage(f"sqlite:///{tmp_path / 'none.db'}", StorageRole.WORK)
    assert not (tmp_path / "none.db").exists()


def test_unreachable_postgres_is_one_clear_error() -> None:
    with pytest.raises(StorageError, match="cannot open the study database"):
        open_optuna_storage("postgresql://nobody@127.0.0.1:1/nothing", StorageRole.MIGRATE)


def test_migrations_are_idempotent_and_versioned_apart(storage_url: str) -> None:
    st = open_optuna_storage(storage_url, StorageRole.MIGRATE)
    assert current_revision(st.engine) is None
    upgrade(st.engine)
    upgrade(st.engine)
    assert current_revision(st.engine) == head_revision()
    tables = set(inspect(st.engine).get_table_names())
    assert {"rnntune_experiments", "rnntune_evaluation_runs", "rnntune_workers"} <= tables
    # Our version table is our own; Optuna's alembic_version is untouched by us.
    assert "rnntune_alembic_version" in tables
    assert "studies" in tables


def _count_under_lock(url: str, counter: str, n: int) -> None:
    st = open_optuna_storage(url, StorageRole.WORK)
    for _ in range(n):
        with exclusive(st.engine, "test:counter"):
            p = Path(counter)
            value = int(p.read_text())
            # A read-modify-write with a deliberate gap: without mutual exclusion it loses updates.
            import time

            time.sleep(0.002)
            p.write_text(str(value + 1))


def test_exclusive_lock_excludes_across_processes(storage_url: str, tmp_path: Path) -> None:
    st = open_optuna_storage(storage_url, StorageRole.MIGRATE)
    upgrade(st.engine)
    counter = tmp_path / "counter"
    counter.write_text("0")
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_count_under_lock, args=(storage_url, str(counter), 40))
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert int(counter.read_text()) == 120


def test_sqlite_commits_are_durable_and_in_wal_mode(tmp_path: Path) -> None:
    """L6: WAL with synchronous=NORMAL may roll back the last commits on a power loss, after
    a finished trial's checkpoint was removed; every connection now syncs each commit."""
    st = open_optuna_storage(f"sqlite:///{tmp_path / 's.db'}", StorageRole.MIGRATE)
    with st.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


@pytest.mark.postgres
@pytest.mark.timeout(60)
def test_a_stalled_lock_holder_is_fenced_and_a_live_one_is_waited_for(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """L2: a holder paused inside the family lock (docker pause, a frozen VM) blocked every
    claimer for ever, each one stuck inside the driver where SIGTERM cannot reach it. A waiter
    now polls, and terminates the connection of a holder that kept the lock past STUCK_AFTER."""
    import threading
    import time

    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    from rnntune.storage import _locks, normalize_url

    st = open_optuna_storage(pg_url, StorageRole.MIGRATE)
    monkeypatch.setattr(_locks, "STUCK_AFTER", 3.0)
    key = _locks._key("test:family")
    holder = create_engine(normalize_url(pg_url)).connect()

    # A live holder that lets go after 0.5 s is waited for, not fenced.
    holder.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    threading.Timer(0.5, holder.commit).start()
    t0 = time.monotonic()
    with exclusive(st.engine, "test:family"):
        waited = time.monotonic() - t0
    assert 0.4 < waited < 3.0, waited
    holder.execute(text("SELECT 1"))  # still connected

    # A holder that never lets go is fenced after STUCK_AFTER, and the waiter goes on.
    holder.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    t0 = time.monotonic()
    with exclusive(st.engine, "test:family"):
        waited = time.monotonic() - t0
    assert 3.0 <= waited < 15, waited
    with pytest.raises(OperationalError):
        holder.execute(text("SELECT 1"))
    holder.invalidate()

    # The fenced side: a holder whose lock connection was terminated while it ran learns it
    # when it lets go (an error, as from a lost database), so a claim made so is not used.
    fencer = create_engine(normalize_url(pg_url)).connect()
    with pytest.raises(OperationalError):
        with exclusive(st.engine, "test:family"):
            fencer.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND granted AND objid = CAST(:lo AS oid) AND pid <> pg_backend_pid()"
                ),
                {"lo": key & 0xFFFFFFFF},
            )
            fencer.commit()
    fencer.close()
