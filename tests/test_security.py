"""Security defaults: the dashboard only reads and only answers local names unless told otherwise,
the database password never reaches a command line, a log or a report, secrets come from files,
and SQLite on a network filesystem is refused."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from rnntune.cli import main
from rnntune.exceptions import ConfigError, StorageError
from rnntune.storage import check_local_filesystem, filesystem_type, storage_from_env
from tests.conftest import TINY_DATA

PASSWORD = "p@ss:w/rd#s3cr3t"  # every URL-special character, and a marker to search for


# -- the dashboard, served for real ----------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(port: int, method: str, path: str, host: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Host": host if host is not None else f"127.0.0.1:{port}"}
        conn.request(method, path, body=b"{}" if method != "GET" else None, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _serve(storage: str, *extra: str) -> Iterator[int]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rnntune", "dashboard", "--storage", storage, "--port", str(port),
         *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _request(port, "GET", "/api/studies")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, "the dashboard exited"
            assert time.monotonic() < deadline, "the dashboard did not answer in 60 s"
            time.sleep(0.3)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def studies_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="exp.gru", storage=url, direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    return url


@pytest.fixture
def read_only_dashboard(studies_db: str) -> Iterator[int]:
    yield from _serve(studies_db)


@pytest.mark.timeout(120)
def test_served_dashboard_refuses_writes_by_default(read_only_dashboard: int, studies_db: str):
    port = read_only_dashboard
    sid = optuna.storages.RDBStorage(studies_db).get_study_id_from_name("exp.gru")
    for method, path in (
        ("DELETE", f"/api/studies/{sid}"),
        ("POST", f"/api/studies/{sid}/rename"),
        ("POST", "/api/trials/0/tell"),
        ("PUT", f"/api/studies/{sid}/note"),
        ("POST", "/api/studies"),
    ):
        status, body = _request(port, method, path)
        assert status == 403, (method, path, status)
        assert b"restart it with --allow-writes" in body
    summaries = optuna.get_all_study_summaries(studies_db)
    assert [s.study_name for s in summaries] == ["exp.gru"]
    assert summaries[0].n_trials == 2


@pytest.mark.timeout(120)
def test_served_dashboard_checks_the_host_header(read_only_dashboard: int) -> None:
    port = read_only_dashboard
    for good in (f"localhost:{port}", f"127.0.0.1:{port}", "[::1]:8080", "LOCALHOST"):
        assert _request(port, "GET", "/api/studies", host=good)[0] == 200, good
    for bad in ("evil.example", f"evil.example:{port}", "127.0.0.1.nip.io", ""):
        status, body = _request(port, "GET", "/api/studies", host=bad)
        assert status == 403, bad
        assert b"--allowed-host" in body


@pytest.mark.timeout(180)
def test_allow_writes_and_allowed_host_are_explicit(studies_db: str) -> None:
    sid = optuna.storages.RDBStorage(studies_db).get_study_id_from_name("exp.gru")
    for port in _serve(studies_db, "--allow-writes", "--allowed-host", "tuning.lab"):
        assert _request(port, "GET", "/api/studies", host="tuning.lab")[0] == 200
        assert _request(port, "GET", "/api/studies", host="other.lab")[0] == 403
        status, _ = _request(port, "DELETE", f"/api/studies/{sid}")
        assert status in (200, 204)
    assert optuna.get_all_study_summaries(studies_db) == []


def test_dashboard_help_says_what_it_is() -> None:
    text = " ".join(CliRunner().invoke(main, ["dashboard", "--help"]).output.split())
    assert "optuna-dashboard (Optuna's web UI" in text
    assert "Read-only unless --allow-writes" in text
    assert "--allowed-host" in text and "no login" in text


# -- the password: never on a command line, in a log or in a report -------------------------
@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_run_keeps_the_password_off_argv_logs_and_reports(pg_url: str, tmp_path: Path) -> None:
    """A real `rnntune run` on PostgreSQL: every process's argv is read from /proc while it
    runs; none may hold the password (the local server trusts any password)."""
    url = make_url(pg_url).set(password=PASSWORD).render_as_string(hide_password=False)
    secret = PASSWORD
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNTUNE_")}
    (tmp_path / "url").write_text(url)
    env.update(RNNTUNE_STORAGE_FILE=str(tmp_path / "url"), RNNTUNE_LOG_LEVEL="INFO")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rnntune", "run", "--data", TINY_DATA, "--trials", "2",
         "--repeats", "2", "--max-epochs", "2", "--workers", "2", "--out", str(tmp_path / "r"),
         "--artifacts", str(tmp_path / "a")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    seen_workers, leaks = 0, []
    try:
        while proc.poll() is None:
            for d in Path("/proc").iterdir():
                if not d.name.isdigit():
                    continue
                try:
                    argv = (
                        (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    )
                except OSError:
                    continue
                if "rnntune" in argv and " worker" in argv:
                    seen_workers += 1
                if "p@ss" in argv or "s3cr3t" in argv:
                    leaks.append(argv)
            time.sleep(0.2)
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert seen_workers > 0, "no worker process was observed"
    assert leaks == []
    assert "s3cr3t" not in out and "p@ss" not in out
    assert "***" in out  # the URL is shown, masked
    for f in (tmp_path / "r").rglob("report.*"):
        assert secret not in f.read_text(encoding="utf-8", errors="replace")
        assert "s3cr3t" not in f.read_text(encoding="utf-8", errors="replace"), f


def test_worker_command_has_no_storage_url() -> None:
    from rnntune.config import Runtime
    from rnntune.runner import worker_command, worker_env

    url = f"postgresql://u:{PASSWORD}@db/x"
    cmd = worker_command("exp", Runtime(storage=url), None)
    assert "--storage" not in cmd and not any("s3cr3t" in a for a in cmd)
    env = worker_env(url, {"RNNTUNE_STORAGE_FILE": "/run/secrets/url", "PATH": "/bin"})
    assert env["RNNTUNE_STORAGE"] == url and "RNNTUNE_STORAGE_FILE" not in env


def test_password_file_builds_the_url_in_code(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    url = storage_from_env(
        "postgresql://rnntune@db:5432/rnntune", {"RNNTUNE_STORAGE_PASSWORD_FILE": str(pw)}
    )
    parsed = make_url(url)
    assert (parsed.username, parsed.password, parsed.host, parsed.port, parsed.database) == (
        "rnntune",
        PASSWORD,
        "db",
        5432,
        "rnntune",
    )
    # No user in the URL (compose's init: libpq's PGUSER names it): the password must not be
    # dropped on the way, as SQLAlchemy does with a password that has no user name.
    env = {"RNNTUNE_STORAGE_PASSWORD_FILE": str(pw), "PGUSER": "owner"}
    parsed = make_url(storage_from_env("postgresql://db:5432/rnntune", env))
    assert (parsed.username, parsed.password) == ("owner", PASSWORD)
    with pytest.raises(ConfigError, match="names no user"):
        storage_from_env("postgresql://db/x", {"RNNTUNE_STORAGE_PASSWORD_FILE": str(pw)})
    # The whole URL from a file, and --storage/RNNTUNE_STORAGE before it.
    (tmp_path / "url").write_text("sqlite:///from-file.db\n")
    env = {"RNNTUNE_STORAGE_FILE": str(tmp_path / "url")}
    assert storage_from_env(None, env) == "sqlite:///from-file.db"
    assert storage_from_env("sqlite:///given.db", env) == "sqlite:///given.db"
    assert storage_from_env(None, {}) == "sqlite:///rnntune.db"
    with pytest.raises(ConfigError, match="is empty"):
        (tmp_path / "empty").write_text("")
        storage_from_env(None, {"RNNTUNE_STORAGE_FILE": str(tmp_path / "empty")})


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_password_with_at_sign_from_a_file_reaches_real_postgres(
    pg_url: str, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text(PASSWORD)
    env = {"RNNTUNE_STORAGE_PASSWORD_FILE": str(tmp_path / "pw")}
    r = CliRunner().invoke(
        main, ["init", "--storage", pg_url, "--data", TINY_DATA], env=env, catch_exceptions=False
    )
    assert r.exit_code == 0, r.output
    assert "s3cr3t" not in r.output


# -- SQLite on a network filesystem ---------------------------------------------------------
MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /mnt/nfs rw,relatime shared:20 - nfs4 server:/export rw,vers=4.2
41 40 8:2 / /mnt/nfs/local rw,relatime shared:21 - ext4 /dev/sda2 rw
42 22 0:36 / /srv/me/remote rw,nosuid - fuse.sshfs me@host:/ rw,user_id=1000
43 22 0:37 / /mnt/win\\040share rw - cifs //srv/share rw
44 22 0:38 / /tmp rw - tmpfs tmpfs rw
"""


@pytest.mark.parametrize(
    ("path", "fstype"),
    [
        ("/mnt/nfs/study.db", "nfs4"),
        ("/mnt/nfs/local/study.db", "ext4"),
        ("/mnt/nfsother/study.db", "ext4"),
        ("/srv/me/remote/x/study.db", "fuse.sshfs"),
        ("/mnt/win share/study.db", "cifs"),
        ("/tmp/study.db", "tmpfs"),
    ],
)
def test_filesystem_type_from_mountinfo(path: str, fstype: str) -> None:
    assert filesystem_type(path, MOUNTINFO) == fstype


@pytest.mark.parametrize("path", ["/mnt/nfs/s.db", "/srv/me/remote/s.db", "/mnt/win share/s.db"])
def test_sqlite_on_a_network_filesystem_is_refused(path: str) -> None:
    with pytest.raises(StorageError, match=r"on a network filesystem .*use PostgreSQL"):
        check_local_filesystem(Path(path), MOUNTINFO)


def test_sqlite_on_a_local_filesystem_is_accepted(tmp_path: Path) -> None:
    check_local_filesystem(Path("/mnt/nfs/local/s.db"), MOUNTINFO)
    check_local_filesystem(tmp_path / "s.db")  # this machine's real /proc/self/mountinfo
    assert filesystem_type(tmp_path) is not None


# -- least-privilege roles (what Compose's init creates) --------------------------------------
@pytest.fixture
def roles(pg_url: str) -> Iterator[tuple[str, str]]:
    import uuid

    from sqlalchemy import create_engine, text

    tag = uuid.uuid4().hex[:8]
    names = (f"rnntune_w_{tag}", f"rnntune_d_{tag}")
    yield names
    admin = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg2://"))
    with admin.begin() as c:
        for n in names:
            if c.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :n"), {"n": n}).first():
                c.execute(text(f'DROP OWNED BY "{n}"'))
                c.execute(text(f'DROP ROLE "{n}"'))
    admin.dispose()


@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_init_creates_least_privilege_roles(pg_url: str, roles: tuple[str, str], tmp_path: Path):
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import ProgrammingError

    worker, dash = roles
    (tmp_path / "w").write_text(PASSWORD)
    (tmp_path / "d").write_text("dashboard-" + PASSWORD)
    env = {
        "RNNTUNE_WORKER_ROLE_PASSWORD_FILE": str(tmp_path / "w"),
        "RNNTUNE_DASHBOARD_ROLE_PASSWORD_FILE": str(tmp_path / "d"),
    }
    args = ["init", "--storage", pg_url, "--data", TINY_DATA, "--trials", "1", "--repeats", "1",
            "--max-epochs", "1", "--worker-role", worker, "--dashboard-role", dash]  # fmt: skip
    for _ in range(2):  # idempotent
        r = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
        assert r.exit_code == 0, r.output
        assert "s3cr3t" not in r.output
    server = make_url(pg_url)

    def as_role(name: str, password: str):  # noqa: ANN202
        return server.set(drivername="postgresql+psycopg2", username=name, password=password)

    # The stored password is a SCRAM verifier of the file's password, by the server's rules.
    admin = create_engine(as_role("postgres", ""))
    with admin.connect() as c:
        stored = c.execute(
            text("SELECT rolpassword FROM pg_authid WHERE rolname = :n"), {"n": worker}
        ).scalar_one()
    admin.dispose()
    from rnntune.storage import scram_verifier

    salt = __import__("base64").b64decode(stored.split("$")[1].split(":")[1])
    assert stored == scram_verifier(PASSWORD, salt)

    w = create_engine(as_role(worker, PASSWORD))
    with w.connect() as c:
        assert c.execute(text("SELECT count(*) FROM studies")).scalar_one() == 3
        with pytest.raises(ProgrammingError, match="permission denied"):
            c.execute(text("CREATE TABLE intruder (x int)"))
    w.dispose()
    d = create_engine(as_role(dash, "x"))
    with d.connect() as c:
        assert c.execute(text("SELECT count(*) FROM studies")).scalar_one() == 3
        with pytest.raises(ProgrammingError, match="permission denied"):
            c.execute(text("DELETE FROM trials"))
    d.dispose()

    # A real worker, as the worker role, does all of its work with those rights.
    (tmp_path / "pw").write_text(PASSWORD)
    base = {k: v for k, v in os.environ.items() if not k.startswith("RNNTUNE_")}
    proc = subprocess.run(
        [sys.executable, "-m", "rnntune", "worker", "--artifacts", str(tmp_path / "a")],
        env={
            **base,
            "RNNTUNE_STORAGE": server.set(username=worker, password=None).render_as_string(),
            "RNNTUNE_STORAGE_PASSWORD_FILE": str(tmp_path / "pw"),
            "RNNTUNE_LOG_LEVEL": "WARNING",
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # And the dashboard's role can read the report's numbers: `status` as the dashboard.
    url_d = as_role(dash, "x").render_as_string(hide_password=False)
    r = CliRunner().invoke(main, ["status", "--storage", url_d], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "1/1" in r.output or "done" in r.output.lower(), r.output
    # The dashboard app itself works on the read-only role (GET pages only read).
    from wsgiref.util import setup_testing_defaults

    from rnntune.dashboard import make_app

    app = make_app(url_d)
    for path in ("/api/studies", "/api/studies/1?after=0"):
        environ: dict = {}
        setup_testing_defaults(environ)
        environ["PATH_INFO"], environ["QUERY_STRING"] = path.partition("?")[::2]
        status: list[str] = []
        b"".join(app(environ, lambda s, h, exc_info=None, out=status: out.append(s)))
        assert status[0].startswith("200"), (path, status)
