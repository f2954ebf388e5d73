"""Shared plumbing for the benchmarks: fresh PostgreSQL databases and SQLite files."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

PG_SERVER = os.environ.get("RNNTUNE_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")


@contextmanager
def fresh_postgres() -> Iterator[str]:
    name = f"rnntune_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def fresh_sqlite(tmp: Path) -> Iterator[str]:
    path = tmp / f"bench-{uuid.uuid4().hex[:8]}.db"
    try:
        yield f"sqlite:///{path}"
    finally:
        for suffix in ("", "-wal", "-shm", ".rnntune-lock"):
            Path(str(path) + suffix).unlink(missing_ok=True)
