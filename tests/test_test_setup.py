"""The test suite's own setup, as a user's machine sees it: PostgreSQL found or started for the
run (tests/conftest.py), and CI=true failing a run that skipped what CI can run.

Real servers: a throwaway cluster from the installed server binaries, and a postgres container
when Docker answers; each is started on a free port and torn down by the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import (
    REPO,
    _find_pg,
    _start_container,
    docker_missing,
    free_port,
    pg_answers,
    pg_bin_dirs,
    throwaway_cluster,
)

pytestmark = pytest.mark.slow


def _needs_pg_binaries() -> None:
    if not pg_bin_dirs():
        pytest.skip("no initdb/pg_ctl on PATH or under /usr/lib/postgresql/*/bin")


@pytest.mark.timeout(180)
def test_throwaway_cluster_starts_answers_and_goes_away() -> None:
    _needs_pg_binaries()
    with throwaway_cluster() as cluster:
        assert pg_answers(cluster.url)
        if os.geteuid() == 0:
            assert cluster.run_as == "postgres", "PostgreSQL must not run as root"
        root = cluster.root
        assert (root / "data" / "PG_VERSION").is_file()
    assert not pg_answers(cluster.url, timeout=1), "the cluster still answers after the run"
    assert not root.exists(), "the cluster's files were left behind"


@pytest.mark.timeout(180)
def test_an_unreachable_server_is_replaced_by_a_throwaway_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A user's machine with no server running: RNNTUNE_TEST_PG (or 127.0.0.1:5432) is closed."""
    _needs_pg_binaries()
    closed = free_port()
    monkeypatch.setenv("RNNTUNE_TEST_PG", f"postgresql://postgres@127.0.0.1:{closed}")
    server = _find_pg()
    assert not isinstance(server, str), server
    try:
        assert "throwaway cluster" in server.how and f":{closed}" not in server.url
        assert pg_answers(server.url)
    finally:
        assert server.stop is not None
        server.stop()
    assert not pg_answers(server.url, timeout=1)


@pytest.mark.timeout(300)
def test_a_postgres_container_when_docker_answers() -> None:
    why = docker_missing()
    if why:
        pytest.skip(f"needs Docker: {why}")
    server = _start_container()
    try:
        assert "container" in server.how and pg_answers(server.url)
    finally:
        assert server.stop is not None
        server.stop()
    assert not pg_answers(server.url, timeout=1)


SKIPPING = """
import pytest

def test_runs():
    pass

def test_skips():
    pytest.skip({reason!r})
"""


@pytest.mark.parametrize(
    ("reason", "ci", "fails"),
    [
        ("Chromium is not installed", "true", True),
        ("Chromium is not installed", "", False),
        ("needs an x86-64-v3 CPU to compare with", "true", False),
        ("needs a CUDA device", "true", False),
    ],
    ids=["ci-skip-fails", "user-skip-passes", "ci-allowlisted-cpu", "ci-allowlisted-gpu"],
)
@pytest.mark.timeout(120)
def test_under_ci_a_skip_fails_the_run(tmp_path: Path, reason: str, ci: str, fails: bool) -> None:
    (tmp_path / "test_x.py").write_text(textwrap.dedent(SKIPPING.format(reason=reason)))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "CI": ci, "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "-c", str(tmp_path / "pytest.ini"), "-rs", str(tmp_path / "test_x.py")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert "1 passed, 1 skipped" in done.stdout, done.stdout + done.stderr
    assert done.returncode == (1 if fails else 0), done.stdout + done.stderr
    assert ("tests were skipped that CI must run" in done.stdout) == fails, done.stdout
