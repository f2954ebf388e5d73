"""Shared fixtures: real SQLite files and real, fresh PostgreSQL databases; what the suite needs
from outside the project, found or started for the run, or skipped with the reason.

PostgreSQL (`pg_server`, found once per run, on first use):
1. the server at RNNTUNE_TEST_PG (default: postgresql://postgres@127.0.0.1:5432, trust auth);
2. else a throwaway cluster on a free port: initdb/pg_ctl on PATH or under
   /usr/lib/postgresql/*/bin, run as a non-root user (as root: `runuser -u postgres`);
3. else a `postgres` container when a Docker engine answers;
4. else tests that need it skip, saying what was tried.
Each test that asks for it gets a database of its own, dropped afterwards. Whatever was started
is stopped when the run ends.

Docker, Chromium and ../shared (RNNTUNE_SHARED) are needed by a few tests; without them those
skip with the reason. Under CI=true (.ci/run provides everything) a skip is a failure, except
the reasons in CI_MAY_SKIP: the session fails if anything else was skipped.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

DEFAULT_PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RNNTUNE_SHARED") or REPO.parent / "shared")
TINY_DATA = "synthetic:n=400,length=16,features=3,seed=1"
CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
# Skips that CI cannot avoid either (hardware it does not have), matched in the skip reason,
# case-insensitively: every other skip under CI=true fails the session, so that "green" means
# every test that CI can run did run.
CI_MAY_SKIP = ("x86-64-v3 CPU", "CUDA", "GPU")
PG_IMAGE = "postgres:17"


# -- PostgreSQL: found, or started for the run ---------------------------------------------------


def _driver_url(url: str) -> str:
    return re.sub(r"^postgres(?:ql)?(?:\+\w+)?://", "postgresql+psycopg2://", url).rstrip("/")


def pg_answers(server: str, timeout: int = 3) -> bool:
    engine = create_engine(f"{server}/postgres", connect_args={"connect_timeout": timeout})
    try:
        with engine.connect() as c:
            c.execute(text("SELECT 1"))
        return True
    except OperationalError:
        return False
    finally:
        engine.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin_dirs() -> list[Path]:
    """Where PostgreSQL's server binaries are: PATH first, then Debian's versioned dirs."""
    dirs = []
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        dirs.append(Path(on_path).resolve().parent)
    versioned = glob.glob("/usr/lib/postgresql/*/bin")
    for d in sorted(versioned, key=lambda p: int(re.sub(r"\D", "", Path(p).parent.name) or 0),
                    reverse=True):  # fmt: skip
        if (Path(d) / "initdb").exists() and Path(d) not in dirs:
            dirs.append(Path(d))
    return dirs


@dataclass
class PgCluster:
    """A throwaway PostgreSQL cluster on 127.0.0.1:port, trust auth, deleted by stop()."""

    bin_dir: Path
    port: int
    root: Path
    run_as: str | None  # a non-root user when we are root
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.root / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}"

    def _run(self, *args: str, timeout: float = 120) -> None:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr}{tail}")

    def pg_ctl(self, action: str, *args: str) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=300"
        )
        self._run("pg_ctl", action, "-D", str(self.root / "data"), "-l", str(self.log),
                  "-o", options, "-w", "-t", "60", *args)  # fmt: skip

    def start(self) -> PgCluster:
        self._run("initdb", "-D", str(self.root / "data"), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")  # fmt: skip
        self.pg_ctl("start")
        return self

    def stop(self) -> None:
        try:
            if (self.root / "data" / "postmaster.pid").exists():
                self.pg_ctl("stop", "-m", "immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def throwaway_cluster(bin_dir: Path | None = None) -> Iterator[PgCluster]:
    """A PostgreSQL cluster of its own on a free port, stopped and deleted on exit."""
    dirs = [bin_dir] if bin_dir else pg_bin_dirs()
    if not dirs:
        raise RuntimeError("no initdb/pg_ctl on PATH or under /usr/lib/postgresql/*/bin")
    run_as = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            pwd.getpwnam("postgres")
        except KeyError as e:
            raise RuntimeError("running as root and there is no user 'postgres' to run it") from e
        if shutil.which("runuser") is None:
            raise RuntimeError("running as root and runuser (util-linux) is missing")
        run_as = "postgres"
    root = Path(tempfile.mkdtemp(prefix="rnntune-test-pg-"))
    if run_as:
        shutil.chown(root, run_as)
    cluster = PgCluster(dirs[0], free_port(), root, run_as)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def docker_missing() -> str | None:
    """Why Docker cannot be used here, or None when an engine answers."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    done = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    if done.returncode != 0:
        return "the Docker engine does not answer (docker info failed)"
    return None


@dataclass
class PgServer:
    url: str  # postgresql+psycopg2://user@host:port, without a database
    how: str  # where it came from, printed at the end of the run
    stop: Callable[[], None] | None = None


_PG: PgServer | str | None = None  # the server, or why there is none; None: not looked for yet


def _pg_image() -> str:
    """postgres:17, or a postgres:15 already here when 17 is not (a machine without a registry)."""
    for image in (PG_IMAGE, "postgres:15"):
        inspect = ["docker", "image", "inspect", image]
        done = subprocess.run(inspect, capture_output=True, check=False)
        if done.returncode == 0:
            return image
    return PG_IMAGE  # pulled


def _start_container() -> PgServer:
    port = free_port()
    image = _pg_image()
    name = f"rnntune-test-pg-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["docker", "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:5432",
         "-e", "POSTGRES_HOST_AUTH_METHOD=trust", image,
         "postgres", "-c", "fsync=off", "-c", "max_connections=300"],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip

    def stop() -> None:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60, check=False)

    url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while not pg_answers(url):
        if time.monotonic() > deadline:
            stop()
            raise RuntimeError(f"container {name} ({image}) did not answer within 90 s")
        time.sleep(1)
    return PgServer(url, f"a {image} container ({name}) on 127.0.0.1:{port}", stop)


def _find_pg() -> PgServer | str:
    explicit = os.environ.get("RNNTUNE_TEST_PG")
    url = _driver_url(explicit or DEFAULT_PG)
    shown = re.sub(r"^postgresql\+psycopg2", "postgresql", url)
    if pg_answers(url):
        return PgServer(url, f"{shown} ({'RNNTUNE_TEST_PG' if explicit else 'the local server'})")
    tried = [f"nothing answers at {shown}"]
    if pg_bin_dirs():
        try:
            ctx = throwaway_cluster()
            cluster = ctx.__enter__()
            return PgServer(
                cluster.url,
                f"a throwaway cluster ({cluster.bin_dir}, port {cluster.port})",
                lambda: ctx.__exit__(None, None, None),
            )
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            tried.append(f"a throwaway cluster failed: {e}")
    else:
        tried.append("no initdb/pg_ctl on PATH or under /usr/lib/postgresql/*/bin")
    why_not_docker = docker_missing()
    if why_not_docker is None:
        try:
            return _start_container()
        except (RuntimeError, subprocess.SubprocessError) as e:
            tried.append(f"a {PG_IMAGE} container failed: {e}")
    else:
        tried.append(why_not_docker)
    return (
        "no PostgreSQL for the tests: " + "; ".join(tried)
        + " (install PostgreSQL's server binaries or Docker, or set RNNTUNE_TEST_PG)"
    )  # fmt: skip


def pg_server() -> PgServer:
    """The PostgreSQL server of this run: found or started on first use; skips without one."""
    global _PG
    if _PG is None:
        _PG = _find_pg()
        if isinstance(_PG, PgServer):
            # Tests import this file as tests.conftest too (a second module, its own _PG), and
            # their subprocesses have their own: all of them find this server here.
            os.environ["RNNTUNE_TEST_PG"] = _PG.url
            if _PG.stop:
                atexit.register(_stop_pg)  # also when pytest is interrupted
    if isinstance(_PG, str):
        if CI:
            pytest.fail(f"{_PG} (CI must start it)")
        pytest.skip(_PG)
    return _PG


def _stop_pg() -> None:
    if isinstance(_PG, PgServer) and _PG.stop:
        stop, _PG.stop = _PG.stop, None
        stop()


def _pg_admin():
    return create_engine(
        f"{pg_server().url}/postgres", isolation_level="AUTOCOMMIT", pool_pre_ping=True
    )


def pg_available() -> bool:
    try:
        pg_server()
    except pytest.skip.Exception:
        return False
    return True


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """A PostgreSQL database of its own, dropped afterwards (skips, or fails under CI, without
    a server)."""
    server = pg_server()
    name = f"rnntune_test_{uuid.uuid4().hex[:10]}"
    admin = _pg_admin()
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{server.url}/{name}".replace("postgresql+psycopg2://", "postgresql://")
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


# -- other things from outside the project -----------------------------------------------------


def needs_shared(relative: str) -> Path:
    """A file of ../shared (RNNTUNE_SHARED): a user's clone has none, so the test skips."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} is missing: it comes with ../shared (set RNNTUNE_SHARED)")
    return path


# -- under CI, nothing is skipped that CI can run ----------------------------------------------

_SKIPPED: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        _SKIPPED.append((report.nodeid, reason.removeprefix("Skipped: ")))


def ci_skip_problems(skipped: list[tuple[str, str]]) -> list[str]:
    allowed = [a.lower() for a in CI_MAY_SKIP]
    return [f"{n}: {why}" for n, why in skipped if not any(a in why.lower() for a in allowed)]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _stop_pg()
    imported = sys.modules.get("tests.conftest")  # the same file, imported by tests
    if imported is not None and imported is not sys.modules[__name__]:
        imported._stop_pg()
    if CI and exitstatus == 0 and ci_skip_problems(_SKIPPED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int) -> None:  # noqa: ANN001
    imported = sys.modules.get("tests.conftest")
    for server in (_PG, getattr(imported, "_PG", None)):
        if isinstance(server, PgServer):
            terminalreporter.write_line(f"PostgreSQL for the tests: {server.how}")
            break
    problems = ci_skip_problems(_SKIPPED)
    if CI and problems:
        terminalreporter.write_sep("=", "CI=true: tests were skipped that CI must run", red=True)
        for line in problems:
            terminalreporter.write_line(line)


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


@pytest.fixture(autouse=True)
def _no_failpoints(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test inherits failpoints from the environment; in-process ones are re-read afresh."""
    from rnntune import faults

    monkeypatch.delenv(faults.ENV, raising=False)
    faults.reset()
    yield
    faults.reset()


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for the test: tests share two cores with each other, and one thread
    keeps timings and floating-point reduction order steady. Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
