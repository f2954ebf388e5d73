"""Helpers for the multi-process tests: start real processes, kill them, read exact counts.

Every process a test starts goes through :func:`spawn` or :func:`fork_cli`, which register it;
the autouse ``_reap_processes`` fixture (``tests/conftest.py``) calls :func:`reap_all` after
every test, pass or fail, so no worker outlives its test (a leaked worker keeps claiming work and
fails a later test with "ResourceWarning: subprocess ... is still running").
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from rnntune import evaluation
from rnntune.experiment import find_or_raise_by_name
from rnntune.storage import StorageRole, open_optuna_storage

FAST = ["--heartbeat-interval", "1", "--grace-period", "4"]
FAMILIES = ("rnn", "gru", "lstm")


# -- processes: started, registered, reaped --------------------------------------------------
_live: list[Any] = []  # subprocess.Popen or Forked, in start order
_logs: dict[int, Path] = {}


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # PR_SET_PDEATHSIG = 1: a test process killed hard (not through the fixture) takes its
    # workers with it instead of leaving them claiming work.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


def spawn(
    args: list[str], *, cwd: Path, env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[str]:
    """A real process in its own session (so its whole group can be killed), output to ``log``
    (a full pipe would block it); reaped after the test whatever happens."""
    log = log or cwd / f"proc-{len(_logs)}-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        p = subprocess.Popen(
            args,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            text=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl only, no Python state
        )
    _logs[p.pid] = log
    _live.append(p)
    return p


def reap_all() -> list[int]:
    """SIGKILL every registered process (and its process group) that is still running, wait for
    each, and forget them all. Returns the pids that had to be killed."""
    killed = []
    while _live:
        p = _live.pop()
        if p.poll() is None:
            killed.append(p.pid)
        kill(p)  # also waits: an exited Popen is reaped, so it warns about nothing
    return killed


def kill(p: Any) -> None:
    """SIGKILL ``p`` and its process group, and wait for it (no-op if it already exited)."""
    if p.poll() is None:
        for target in (lambda: os.killpg(p.pid, signal.SIGKILL), lambda: os.kill(p.pid, 9)):
            try:
                target()
            except (ProcessLookupError, PermissionError):
                pass
    p.wait(30)


def output(p: Any) -> str:
    return _logs[p.pid].read_text(errors="replace")


def wait_all(procs: list[Any], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                kill(q)
            raise AssertionError(
                f"processes did not finish in {timeout:.0f}s:\n"
                + "\n=====\n".join(output(q)[-3000:] for q in procs)
            ) from None
    return [output(p) for p in procs]


def start_worker(
    url: str,
    cwd: Path,
    *extra: str,
    command: str = "worker",
    experiment: str = "default",
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """A real `python -m rnntune worker` (or ``command``) process."""
    return spawn(
        [sys.executable, "-m", "rnntune", *worker_args(url, cwd, command, experiment), *extra],
        cwd=cwd,
        env={"RNNTUNE_LOG_LEVEL": "INFO", **(env or {})},
        log=cwd / f"{command}-{len(_logs)}-{time.monotonic_ns()}.log",
    )


def worker_args(url: str, cwd: Path, command: str = "worker", experiment: str = "default") -> list:
    return [
        command,
        "--storage",
        url,
        "--experiment",
        experiment,
        "--artifacts",
        str(cwd / "artifacts"),
        "--threads",
        "1",
        *FAST,
    ]


# -- forked CLI processes ---------------------------------------------------------------------
# `python -m rnntune worker` spends 5-15 s (on a loaded 2-core machine) importing torch and
# torch._dynamo before it does anything; the fault matrix starts ~3 processes per case. A fork
# server that imported them once forks each one in ~0.1 s instead. Each is still a real, separate
# `rnntune` process running the CLI's own code path (click's `main`) from its own environment:
# SIGKILL, SIGTERM and exit codes are real, only the interpreter start-up is shared.
_PRELOAD = [
    "torch",
    "torch._dynamo",
    "rnntune.cli",
    "rnntune.worker",
    "rnntune.runner",
    "rnntune.publish",
    "rnntune.report.collect",
    "rnntune.report.html",
    "rnntune.report.plots",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "scipy.stats",
    "sklearn.metrics",
    "tests.helpers",
]
_forkserver: Any = None


def _context() -> Any:
    global _forkserver
    if _forkserver is None:
        _forkserver = multiprocessing.get_context("forkserver")
        _forkserver.set_forkserver_preload(_PRELOAD)
    return _forkserver


def _cli_child(argv: list[str], env: dict[str, str], cwd: str, log: str) -> None:
    """Runs in the forked process: become `rnntune <argv>` with ``env``, output to ``log``."""
    os.setsid()
    _die_with_parent()  # the fork server dies with the test session; so does this process
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from rnntune import faults
    from rnntune.cli import main

    faults.reset()  # read RNNTUNE_FAILPOINTS from this process's environment
    main(args=argv, prog_name="rnntune")  # click exits with the command's exit code


class Forked:
    """A forked `rnntune` process with Popen's interface (pid, poll, wait, returncode)."""

    def __init__(self, proc: Any, log: Path) -> None:
        self.proc, self.log, self.pid = proc, log, proc.pid

    def poll(self) -> int | None:
        return self.proc.exitcode

    @property
    def returncode(self) -> int | None:
        return self.proc.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.proc.join(timeout)
        if self.proc.exitcode is None:
            raise subprocess.TimeoutExpired(f"rnntune (pid {self.pid})", timeout or 0)
        return self.proc.exitcode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)


def fork_cli(
    argv: list[str], *, cwd: Path, env: dict[str, str] | None = None, name: str = "rnntune"
) -> Forked:
    """Start `rnntune <argv>` as a process forked from the preloaded fork server."""
    log = cwd / f"{name}-{len(_logs)}-{time.monotonic_ns()}.log"
    log.touch()
    full_env = {**os.environ, "RNNTUNE_LOG_LEVEL": "INFO", **(env or {})}
    full_env.pop("PYTEST_CURRENT_TEST", None)
    proc = _context().Process(
        target=_cli_child, args=(argv, full_env, str(cwd), str(log)), daemon=False
    )
    proc.start()
    f = Forked(proc, log)
    _logs[f.pid] = log
    _live.append(f)
    return f


# -- reading the database ----------------------------------------------------------------------
def trials(url: str, family: str, experiment: str = "default") -> list[optuna.trial.FrozenTrial]:
    st = open_optuna_storage(url, StorageRole.READ)
    try:
        return optuna.load_study(study_name=f"{experiment}.{family}", storage=st).get_trials()
    finally:
        st.engine.dispose()  # tests poll this: do not leave a connection per call behind


def finished(url: str, experiment: str = "default") -> dict[str, int]:
    return {
        f: sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials(url, f))
        for f in FAMILIES
    }


def wait_for(
    pred: Callable[[], Any],
    timeout: float,
    interval: float = 0.3,
    alive: list[Any] | None = None,
    what: str = "condition",
) -> None:
    """Wait for an observable state. With ``alive``, fail at once (with their output) when one
    of those processes exits first: the state can then never come."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception:  # noqa: BLE001 - e.g. the database or its tables do not exist yet
            pass
        for p in alive or []:
            if p.poll() is not None:
                raise AssertionError(
                    f"{what}: a process exited ({p.returncode}) before it came:\n"
                    + output(p)[-3000:]
                )
        time.sleep(interval)
    raise AssertionError(f"{what}: not met in {timeout}s")


def running_trials(url: str, min_epochs: int = 1, experiment: str = "default") -> list[Any]:
    """RUNNING trials with at least ``min_epochs`` epochs reported (so checkpointed)."""
    return [
        t
        for f in FAMILIES
        for t in trials(url, f, experiment)
        if t.state == TrialState.RUNNING and len(t.intermediate_values) >= min_epochs
    ]


def assert_exact(url: str, budget: int, repeats: int, experiment: str = "default") -> dict:
    """Exactly ``budget`` finished trials per family, nothing live left, each repeat once."""
    st = open_optuna_storage(url, StorageRole.READ)
    exp = find_or_raise_by_name(st.engine, experiment)
    out: dict[str, Any] = {}
    for family in exp.config.families:
        ts = trials(url, family, experiment)
        states = Counter(t.state for t in ts)
        assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == budget, (family, states)
        assert states[TrialState.RUNNING] == 0 and states[TrialState.WAITING] == 0, states
        # No two finished trials share parameters unless one is a retry of the other (a retry
        # that lost its link to the trial it retries would show here). Only finished trials:
        # Optuna writes a trial's parameters one transaction each during ask(), so a trial
        # killed inside ask() fails with some or none of them, and two such trials can "share"
        # the empty set. Their retries complete the sampling.
        finished = (TrialState.COMPLETE, TrialState.PRUNED)
        firsts = [t for t in ts if t.state in finished and "failed_trial" not in t.system_attrs]
        by_key: dict[tuple, list[Any]] = {}
        for t in firsts:
            by_key.setdefault(tuple(sorted(t.params.items())), []).append(t)
        dups = [group for group in by_key.values() if len(group) > 1]
        assert not dups, f"{family}: duplicate parameters sampled: " + "; ".join(
            " = ".join(
                f"#{t.number} {t.state.name} {t.params} attrs {sorted(t.system_attrs)} "
                f"started {t.datetime_start}"
                for t in group
            )
            for group in dups[:3]
        )
        out[family] = ts
    runs = evaluation.runs(st.engine, exp)
    seen = Counter((r.family, r.repeat) for r in runs)
    expected = {(f, r) for f in exp.config.families for r in range(repeats)}
    assert set(seen) == expected and all(n == 1 for n in seen.values())
    assert all(r.status == "done" for r in runs), [(r.family, r.repeat, r.status) for r in runs]
    seeds = {(r.repeat, r.seed) for r in runs}
    assert len(seeds) == repeats, "repeat i must share its seed across families"
    out["runs"] = runs
    return out


# -- a throwaway PostgreSQL cluster ----------------------------------------------------------
PG_BIN = Path(os.environ.get("RNNTUNE_PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """A PostgreSQL cluster of its own (initdb in a temporary directory, its own port and
    socket, trust auth on 127.0.0.1), for tests and benchmarks that restart the server: never the
    shared server on 5432. As root, the server runs as user ``postgres`` (it refuses root)."""

    def __init__(self, bin_dir: Path = PG_BIN) -> None:
        import tempfile

        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="rnntune-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)

    @staticmethod
    def available(bin_dir: Path = PG_BIN) -> str | None:
        """None if a cluster can be made here, else why not."""
        if not (bin_dir / "initdb").exists() or not (bin_dir / "pg_ctl").exists():
            return f"no initdb/pg_ctl in {bin_dir} (set RNNTUNE_PG_BIN)"
        if os.geteuid() == 0:
            import pwd
            import shutil

            if shutil.which("runuser") is None:
                return "running as root needs runuser to start PostgreSQL as user postgres"
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root needs a 'postgres' user to own the cluster"
        return None

    def _run(self, tool: str, *args: str, timeout: float = 120) -> str:
        cmd = [str(self.bin / tool), *args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        # The server's own output goes to its log (-l): a pipe it inherited would never close.
        done = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{tool} {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
                f"\n--- server log\n{log}"
            )
        return done.stdout

    def start(self) -> PgCluster:
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                      "-E", "UTF8", "--no-sync")  # fmt: skip
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c max_connections=200 -c shared_buffers=32MB"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w",
                  "-t", "60", "start")  # fmt: skip
        return self

    def restart(self, mode: str = "fast") -> None:
        """``fast``: clients are disconnected, a clean shutdown. ``immediate``: the server is
        killed and recovers from its WAL at start, as after a crash or a power cut."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", mode, "-w",
                  "-t", "60", "restart")  # fmt: skip

    def stop(self, keep: bool = False) -> None:
        """Stop the server and remove the cluster (``keep``: leave its files, for a post-mortem:
        ``pg_ctl -D <root>/data start`` serves it again on the same port)."""
        import shutil

        if (self.data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def server_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def create_database(self, name: str = "rnntune") -> str:
        from sqlalchemy import create_engine, text

        admin = create_engine(
            f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres",
            isolation_level="AUTOCOMMIT",
        )
        try:
            with admin.connect() as c:
                c.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        return f"{self.server_url}/{name}"


def check_retries(
    res: dict[str, Any], families: tuple[str, ...] = FAMILIES, dropped_ok: bool = False
) -> list[tuple[int, int]]:
    """No duplicated or lost trial, and every retry resumed from the checkpoint its failed
    attempt had. ``res``: what :func:`assert_exact` returned. ``dropped_ok``: a chain whose
    worker was killed ``MAX_RETRY`` + 1 times may end failed for good (a kill storm does that).

    Returns (epochs the failed attempt had reported, epoch its retry resumed after) per retry
    that finished, for the caller to check that the faults really landed mid-trial.
    """
    from rnntune import state

    resumed: list[tuple[int, int]] = []
    for family in families:
        ts = res[family]
        # One finished result per retry chain: a trial and its retry never both count.
        roots = [
            state.root_number(t) for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        ]
        assert len(roots) == len(set(roots)), f"{family}: a retry chain finished twice"
        for t in ts:
            if t.state != TrialState.FAIL:
                continue
            retry = next(
                (r for r in ts if r.system_attrs.get("retry_history", [])[-1:] == [t.number]),
                None,
            )
            why = t.system_attrs.get(state.REASON_ATTR)
            if retry is None:
                # No lost result: an interrupted trial is retried, unless its chain was killed
                # more often than the retry limit (then it is an error, and another trial is
                # sampled in its place: the budget above is still exact).
                assert dropped_ok and state.fail_kind(t) == state.ERROR, (
                    f"{family} trial {t.number} failed ({why}) and was never retried"
                )
                assert state.silent_deaths(ts, state.root_number(t)) >= state.MAX_RETRY, (
                    f"{family} trial {t.number} failed for good ({why}) before its retry limit"
                )
                continue
            assert state.fail_kind(t) != state.ERROR, (family, t.number, why)
            # Retried with its parameters (a worker killed while drawing them stored only some).
            assert t.params.items() <= retry.params.items(), (t.params, retry.params)
            if retry.state == TrialState.FAIL:
                continue
            start = retry.user_attrs.get("resumed_from_epoch")
            done_before = len(t.intermediate_values)
            # From the checkpoint the failed attempt had: after its last reported epoch, or one
            # more when it was stopped between writing a checkpoint and reporting its epoch.
            assert start is not None and done_before <= start <= done_before + 1, (
                f"{family} trial {retry.number} resumed after epoch {start}; its failed attempt "
                f"{t.number} had reported {done_before} epoch(s)"
            )
            if retry.state == TrialState.COMPLETE and retry.user_attrs.get("epochs_this_run"):
                assert retry.user_attrs["epochs_this_run"][0] == start + 1, retry.user_attrs
            resumed.append((done_before, start))
    return resumed


def rnntune(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess; ``check``: raise AssertionError, with its output, when
    it exits non-zero."""
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


def previous_stopping_rule(history: list[Any], patience: int = 3) -> tuple[int, float]:
    """The early-stopping rule before issue 10 (patience on the validation metric alone), replayed
    on a full ``history`` of EpochResults: (epochs it would have trained, best metric it saw)."""
    best, bad = float("-inf"), 0
    for h in history:
        if h.val_metric > best:
            best, bad = h.val_metric, 0
        else:
            bad += 1
        if bad >= patience:
            return h.epoch, best
    return history[-1].epoch, best
