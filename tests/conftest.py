"""Shared fixtures: real SQLite files and real, fresh PostgreSQL databases.

PostgreSQL comes from RNNTUNE_TEST_PG (default: the local server, trust auth). Each test that
asks for it gets a database of its own, dropped afterwards. Under CI=true a missing server is a
failure, not a skip: the same suite must run on both backends.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

PG_SERVER = os.environ.get("RNNTUNE_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")
REPO = Path(__file__).resolve().parents[1]
TINY_DATA = "synthetic:n=400,length=16,features=3,seed=1"


def _pg_admin():
    return create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT", pool_pre_ping=True)


def pg_available() -> bool:
    try:
        with _pg_admin().connect() as c:
            c.execute(text("SELECT 1"))
        return True
    except OperationalError:
        return False


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """A PostgreSQL database of its own, dropped afterwards (fails under CI if no server)."""
    if not pg_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_SERVER} (CI must start it)")
        pytest.skip(f"PostgreSQL is not reachable at {PG_SERVER}")
    name = f"rnntune_test_{uuid.uuid4().hex[:10]}"
    admin = _pg_admin()
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_SERVER}/{name}".replace("postgresql+psycopg2://", "postgresql://")
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(autouse=True)
def _reap_processes() -> Iterator[None]:
    """Every process a test started through tests.helpers is killed when the test ends, whether
    it passed or failed: a leaked worker would keep claiming work and fail a later test."""
    yield
    helpers = sys.modules.get("tests.helpers")  # never imported: it started nothing
    if helpers is not None:
        helpers.reap_all()


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return request.getfixturevalue("pg_url")


def rnntune(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess."""
    full_env = {**os.environ, "RNNTUNE_LOG_LEVEL": "WARNING", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "rnntune", *args],
        cwd=cwd,
        env=full_env,
        text=True,
        capture_output=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"rnntune {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n"
            f"--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc
