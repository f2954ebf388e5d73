"""Distributed workers on the real PostgreSQL (and SQLite): exact budgets through kills,
SIGTERM, a database restart and concurrent final jobs. Real processes, real SIGKILL.

Where a fault lands is decided by a failpoint (rnntune.faults), not by a sleep or by the
machine's speed; a test that must wait waits for an observable state (a trial with k epochs
reported), never for a duration. Every process is reaped by the conftest fixture, pass or fail.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from optuna.trial import TrialState

from rnntune import faults
from tests.helpers import (
    FAMILIES,
    FAST,
    PgCluster,
    assert_exact,
    check_retries,
    finished,
    output,
    rnntune,
    start_worker,
    trials,
    wait_all,
    wait_for,
)

pytestmark = [pytest.mark.slow]

DATA = "synthetic:n=500,length=20,features=3,seed=3"


def _init(url: str, cwd: Path, trials_: int, repeats: int, epochs: int, data: str = DATA) -> None:
    rnntune(
        "init",
        "--storage",
        url,
        "--data",
        data,
        "--trials",
        str(trials_),
        "--repeats",
        str(repeats),
        "--max-epochs",
        str(epochs),
        *FAST,  # the heartbeat policy is the experiment's: the workers' FAST must match it
        cwd=cwd,
    )


def _armed(spec: str, log: Path) -> dict[str, str]:
    """The environment that makes a worker hit ``spec`` (NAME=ACTION[@N]), logged to ``log``."""
    return {faults.ENV: spec, faults.LOG_ENV: str(log)}


def _fired(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.postgres
@pytest.mark.timeout(400)
def test_four_workers_finish_exactly(pg_url: str, tmp_path: Path) -> None:
    _init(pg_url, tmp_path, trials_=6, repeats=3, epochs=2)
    procs = [start_worker(pg_url, tmp_path) for _ in range(4)]
    outs = wait_all(procs, timeout=300)
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outs
    assert all("finished: nothing left to do" in o for o in outs)
    res = assert_exact(pg_url, budget=6, repeats=3)
    # Evaluation repeats were shared out and none ran twice.
    assert all(r.attempts == 0 and r.reclaims == 0 for r in res["runs"])  # no error, no reclaim


@pytest.mark.timeout(400)
def test_two_workers_on_sqlite_never_locked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    _init(url, tmp_path, trials_=5, repeats=2, epochs=2)
    procs = [start_worker(url, tmp_path) for _ in range(2)]
    outs = wait_all(procs, timeout=300)
    assert [p.returncode for p in procs] == [0, 0], outs
    assert not any("database is locked" in o for o in outs), outs
    assert_exact(url, budget=5, repeats=2)


# Six SIGKILLs at different commit boundaries, one per armed worker, wherever the workers are.
# Until the six have fired, every live worker is armed and dies in its first trial (at the
# latest just before telling it), so no trial finishes before all six kills have landed: the
# number of kills does not depend on the machine's speed (it did: a fast machine finished tuning
# after 1-2 of the 5 random kills that test wanted).
STORM = (
    "trial.after_report=kill@2",  # mid-trial, two epochs checkpointed
    "trial.after_checkpoint=kill",  # an epoch checkpointed, not reported
    "claim.after_tag=kill",  # claimed, owned, not started
    "tell.before=kill",  # trained to the end, not told
    "trial.after_report=kill",
    "claim.after_ask=kill",  # claimed, not yet heartbeated: an orphan
)


@pytest.mark.timeout(600)
def test_kill_storm(storage_url: str, tmp_path: Path) -> None:
    """SIGKILL workers at six commit boundaries, replacing each killed worker at once: 3 workers
    on PostgreSQL, 2 on SQLite. Exact budgets, each repeat once, retries resumed."""
    url = storage_url
    _init(url, tmp_path, trials_=8, repeats=2, epochs=3)
    n_workers = 2 if url.startswith("sqlite") else 3
    fired = tmp_path / "fired.log"
    specs = list(STORM)

    def worker() -> object:
        return start_worker(url, tmp_path, env=_armed(specs.pop(0), fired) if specs else None)

    live = [worker() for _ in range(n_workers)]
    killed, ended = [], []
    deadline = time.monotonic() + 500
    while live:  # replace each killed worker as soon as it is gone
        assert time.monotonic() < deadline, "the storm did not end:\n" + "\n=====\n".join(
            output(p)[-2000:] for p in live
        )
        for p in [p for p in live if p.poll() is not None]:
            live.remove(p)
            if p.returncode == -signal.SIGKILL:
                killed.append(p)
                live.append(worker())
            else:
                ended.append(p)
        time.sleep(0.2)
    assert len(killed) == len(STORM) and len(_fired(fired)) == len(STORM), _fired(fired)
    assert {line.split()[0] for line in _fired(fired)} == {s.split("=")[0] for s in STORM}
    outs = [output(p) for p in ended]
    assert all(p.returncode == 0 for p in ended), "\n=====\n".join(o[-3000:] for o in outs)
    assert not any("database is locked" in o for o in outs)
    res = assert_exact(url, budget=8, repeats=2)
    resumed = check_retries(res, dropped_ok=True)
    # The trial killed after its second epoch resumed from that checkpoint, not from scratch.
    assert any(start >= 2 for _, start in resumed), resumed


@pytest.fixture
def own_pg() -> Iterator[PgCluster]:
    """A PostgreSQL cluster of this test's own, for restarting: never the shared server."""
    why = PgCluster.available()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must be able to start a throwaway PostgreSQL cluster: {why}")
        pytest.skip(why)
    cluster = PgCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_postgres_restart_mid_run(own_pg: PgCluster, tmp_path: Path) -> None:
    url = own_pg.create_database()
    _init(url, tmp_path, trials_=6, repeats=2, epochs=3)
    # The restart must land mid-tuning, decided by a failpoint, not by the machine's speed: the
    # first worker holds its first trial open for 20 s before telling it, so tuning cannot end
    # before the restart, while the second keeps working (and meets the outage).
    held = {"RNNTUNE_FAILPOINTS": "tell.before=sleep:20@1"}
    procs = [start_worker(url, tmp_path, env=held), start_worker(url, tmp_path)]
    wait_for(lambda: sum(finished(url).values()) >= 2, timeout=180, alive=procs)
    assert sum(finished(url).values()) < 3 * 6, "tuning ended before the restart"
    own_pg.restart("fast")
    outs = wait_all(procs, timeout=400)
    assert [p.returncode for p in procs] == [0, 0], outs
    # The outage reached the workers (they talk to the database every epoch and every second),
    # and they waited it out.
    assert any("database unreachable" in o or "heartbeat failed" in o for o in outs), outs
    res = assert_exact(url, budget=6, repeats=2)
    check_retries(res)


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_sigterm_stops_within_10s_and_hands_the_trial_back(pg_url: str, tmp_path: Path) -> None:
    _init(pg_url, tmp_path, trials_=3, repeats=1, epochs=4)
    fired = tmp_path / "fired.log"
    # SIGTERM lands mid-trial: right after the first epoch is reported, three more to go.
    p = start_worker(pg_url, tmp_path, env=_armed("trial.after_report=term", fired))
    wait_for(lambda: _fired(fired), timeout=180, interval=0.05, alive=[p], what="SIGTERM")
    t0 = time.monotonic()
    p.wait(timeout=15)
    assert p.returncode == 0, output(p)
    assert time.monotonic() - t0 < 10
    assert "stopped" in output(p) and "Traceback" not in output(p)
    ts = [t for f in FAMILIES for t in trials(pg_url, f)]
    assert TrialState.RUNNING not in [t.state for t in ts]
    waiting = [t for t in ts if t.state == TrialState.WAITING]
    # The interrupted trial, queued for a retry with the epoch it had reported.
    assert len(waiting) == 1 and len(waiting[0].intermediate_values) == 1
    # A new worker finishes the experiment, resuming the handed-back trial after its epoch.
    q = start_worker(pg_url, tmp_path)
    wait_all([q], timeout=300)
    assert q.returncode == 0
    res = assert_exact(pg_url, budget=3, repeats=1)
    assert check_retries(res) == [(1, 1)]


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_a_worker_whose_trial_was_taken_over_drops_it_and_goes_on(
    pg_url: str, tmp_path: Path
) -> None:
    """A live worker that stalls (SIGSTOP: a paused container, a frozen VM) past the grace
    period has its trial taken over by a peer; when it wakes it finds out at its next epoch,
    drops that attempt, leaves the checkpoint to the retry, and carries on: it does not crash."""
    _init(pg_url, tmp_path, trials_=2, repeats=1, epochs=4)
    fired = tmp_path / "fired.log"
    # A pauses right after reporting its first epoch: a known place mid-trial. The pause only
    # keeps it there until it is stopped below; it is not what the test waits for.
    a = start_worker(pg_url, tmp_path, env=_armed("trial.after_report=sleep:20", fired))
    wait_for(lambda: _fired(fired), timeout=180, interval=0.05, alive=[a], what="A mid-trial")
    os.kill(a.pid, signal.SIGSTOP)  # stalled: its heartbeat thread stops too
    try:
        running = [
            (f, t) for f in FAMILIES for t in trials(pg_url, f) if t.state == TrialState.RUNNING
        ]
        assert len(running) == 1, running
        family, victim = running[0]
        assert len(victim.intermediate_values) == 1, victim.intermediate_values
        b = start_worker(pg_url, tmp_path)

        def taken_over() -> bool:
            ts = trials(pg_url, family)
            return any(t.system_attrs.get("retry_history", [])[-1:] == [victim.number] for t in ts)

        wait_for(taken_over, timeout=180, alive=[b], what="B taking the trial over")
    finally:
        os.kill(a.pid, signal.SIGCONT)
    outs = wait_all([a, b], timeout=300)
    assert a.returncode == 0 and b.returncode == 0, outs
    assert "taken over" in outs[0] and "Traceback" not in outs[0], outs[0]
    res = assert_exact(pg_url, budget=2, repeats=1)
    check_retries(res)
    retry = next(
        t for t in res[family] if t.system_attrs.get("retry_history", [])[-1:] == [victim.number]
    )
    assert retry.user_attrs["resumed_from_epoch"] >= 1  # the checkpoint was left for the retry


@pytest.mark.postgres
@pytest.mark.timeout(500)
def test_two_evaluate_jobs_at_once(pg_url: str, tmp_path: Path) -> None:
    _init(pg_url, tmp_path, trials_=3, repeats=4, epochs=2)
    evals = [
        start_worker(pg_url, tmp_path, "--out", str(tmp_path / f"r{i}"), command="evaluate")
        for i in range(2)
    ]
    worker = start_worker(pg_url, tmp_path)
    outs = wait_all([*evals, worker], timeout=400)
    assert [p.returncode for p in (*evals, worker)] == [0, 0, 0], outs
    res = assert_exact(pg_url, budget=3, repeats=4)
    assert all(r.attempts == 0 and r.reclaims == 0 for r in res["runs"])  # no error, no reclaim
    for i in range(2):
        assert (tmp_path / f"r{i}" / "report.json").exists()


def test_wrong_data_file_is_refused(storage_url: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 10, 2)).astype("float32")
    y = (rng.random(200) < 0.3).astype("int64")
    np.savez(tmp_path / "a.npz", X=X, y=y)
    X[0, 0, 0] += 1.0
    np.savez(tmp_path / "b.npz", X=X, y=y)
    rnntune("init", "--storage", storage_url, "--data", f"npz:{tmp_path / 'a.npz'}", cwd=tmp_path)
    proc = rnntune(
        "worker",
        "--storage",
        storage_url,
        "--data",
        f"npz:{tmp_path / 'b.npz'}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 1
    err = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(err) == 1 and "Traceback" not in proc.stderr
    assert "has fingerprint sha256:" in err[0] and "registered with sha256:" in err[0]
    # Nothing was claimed by the refused worker.
    assert all(n == 0 for n in finished(storage_url).values())
    assert not any(t for f in ("rnn", "gru", "lstm") for t in trials(storage_url, f))
