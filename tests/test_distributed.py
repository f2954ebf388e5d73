"""Distributed workers on the real PostgreSQL (and SQLite): exact budgets through kills,
SIGTERM, a database restart and concurrent final jobs. Real processes, real SIGKILL."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from rnntune.storage import MAX_RETRY, exclusive, open_optuna_storage
from rnntune.tuning import fail_and_requeue
from tests.conftest import rnntune
from tests.helpers import (
    FAST,
    assert_exact,
    finished,
    kill,
    output,
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


def _wait_for_a_trial_mid_run(url: str) -> None:
    """Until some trial is RUNNING with at least one epoch reported (and checkpointed)."""
    wait_for(
        lambda: any(
            t.state == TrialState.RUNNING and t.intermediate_values
            for f in ("rnn", "gru", "lstm")
            for t in trials(url, f)
        ),
        timeout=120,
        interval=0.2,
    )


@pytest.mark.postgres
def test_four_workers_finish_exactly(pg_url: str, tmp_path: Path) -> None:
    _init(pg_url, tmp_path, trials_=6, repeats=3, epochs=2)
    procs = [start_worker(pg_url, tmp_path) for _ in range(4)]
    outs = wait_all(procs, timeout=300)
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outs
    assert all("finished: nothing left to do" in o for o in outs)
    res = assert_exact(pg_url, budget=6, repeats=3)
    # Evaluation repeats were shared out and none ran twice.
    assert all(r.attempts == 0 and r.reclaims == 0 for r in res["runs"])  # no error, no reclaim


def test_two_workers_on_sqlite_never_locked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    _init(url, tmp_path, trials_=5, repeats=2, epochs=2)
    procs = [start_worker(url, tmp_path) for _ in range(2)]
    outs = wait_all(procs, timeout=300)
    assert [p.returncode for p in procs] == [0, 0], outs
    assert not any("database is locked" in o for o in outs), outs
    assert_exact(url, budget=5, repeats=2)


def test_kill_storm(storage_url: str, tmp_path: Path) -> None:
    """SIGKILL a random worker at random moments (>= 5 kills), replacing it each time:
    3 workers on PostgreSQL, 2 on SQLite."""
    pg_url = storage_url
    # Big enough that, on a quiet machine too, the storm lands >= 5 kills before tuning ends.
    data = "synthetic:n=1600,length=30,features=3,seed=4"
    _init(pg_url, tmp_path, trials_=8, repeats=2, epochs=4, data=data)
    rng = random.Random(7)
    n_workers = 2 if pg_url.startswith("sqlite") else 3
    procs = [start_worker(pg_url, tmp_path) for _ in range(n_workers)]
    kills = 0
    deadline = time.monotonic() + 240
    while kills < 6 and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.5, 2.0))
        running = [
            t
            for f in ("rnn", "gru", "lstm")
            for t in trials(pg_url, f)
            if t.state == TrialState.RUNNING and t.intermediate_values
        ]
        if not running:
            if sum(finished(pg_url).values()) >= 24:
                break
            continue
        victim = rng.choice([p for p in procs if p.poll() is None])
        kill(victim)
        kills += 1
        procs.remove(victim)
        procs.append(start_worker(pg_url, tmp_path))
    assert kills >= 5, f"only {kills} kills landed mid-trial"
    outs = wait_all(procs, timeout=400)
    assert all(p.returncode == 0 for p in procs), "\n=====\n".join(o[-3000:] for o in outs)
    assert not any("database is locked" in o for o in outs)
    res = assert_exact(pg_url, budget=8, repeats=2)

    resumed = 0
    for family in ("rnn", "gru", "lstm"):
        for t in res[family]:
            if t.state != TrialState.FAIL:
                continue
            assert "died" in t.system_attrs.get("rnntune:fail_reason", ""), t.system_attrs
            retry = next(
                (
                    r
                    for r in res[family]
                    if r.system_attrs.get("retry_history", [])[-1:] == [t.number]
                ),
                None,
            )
            if retry is None:
                # Not retried forever: a chain killed MAX_RETRY times is dropped (and another
                # trial is sampled in its place, so the budget above is still exact).
                assert len(t.system_attrs.get("retry_history", [])) + 1 > MAX_RETRY
                continue
            # Retried with identical parameters. A worker killed while it was still drawing them
            # leaves only the first few stored: the retry keeps those and draws the rest.
            assert t.params.items() <= retry.params.items(), (t.params, retry.params)
            assert set(retry.params) == {"hidden_size", "learning_rate", "batch_size"}
            # It resumed from the checkpoint of the last finished epoch, not from scratch:
            # the epochs it reported before the kill are inherited, and training restarted after
            # the checkpoint epoch (a kill between checkpoint and report loses no epoch either).
            done_before = len(t.intermediate_values)
            start = retry.user_attrs.get("resumed_from_epoch")
            if start is None:  # the retry itself was killed before its first epoch ended
                continue
            assert done_before <= start <= done_before + 1, (t.number, done_before, start)
            if retry.state in (TrialState.COMPLETE, TrialState.PRUNED):
                trained = retry.user_attrs["epochs_this_run"]
                if trained:  # empty when the checkpoint already held the final epoch
                    assert trained[0] == start + 1, (trained, start)
            if start > 0:
                resumed += 1
    assert resumed >= 1, "no killed trial resumed from a checkpoint: the test proved nothing"


@pytest.mark.postgres
def test_postgres_restart_mid_run(pg_url: str, tmp_path: Path) -> None:
    if shutil.which("pg_ctlcluster") is None or os.geteuid() != 0:
        pytest.skip("needs root and pg_ctlcluster to restart the local server")
    _init(pg_url, tmp_path, trials_=6, repeats=2, epochs=3)
    procs = [start_worker(pg_url, tmp_path) for _ in range(2)]
    wait_for(lambda: sum(finished(pg_url).values()) >= 2, timeout=180)
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        timeout=60,
    )
    outs = wait_all(procs, timeout=400)
    assert [p.returncode for p in procs] == [0, 0], outs
    assert_exact(pg_url, budget=6, repeats=2)


@pytest.mark.postgres
def test_sigterm_stops_within_10s_and_hands_the_trial_back(pg_url: str, tmp_path: Path) -> None:
    data = "synthetic:n=1500,length=40,features=3,seed=5"
    _init(pg_url, tmp_path, trials_=3, repeats=1, epochs=6, data=data)
    p = start_worker(pg_url, tmp_path)
    _wait_for_a_trial_mid_run(pg_url)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=15)
    assert p.returncode == 0, output(p)
    assert time.monotonic() - t0 < 10
    states = [t.state for f in ("rnn", "gru", "lstm") for t in trials(pg_url, f)]
    assert TrialState.RUNNING not in states
    assert states.count(TrialState.WAITING) == 1  # the interrupted trial, queued for a retry
    # A new worker finishes the experiment, resuming the handed-back trial.
    q = start_worker(pg_url, tmp_path)
    wait_all([q], timeout=300)
    assert q.returncode == 0
    assert_exact(pg_url, budget=3, repeats=1)


@pytest.mark.postgres
def test_a_worker_whose_trial_was_taken_over_drops_it_and_goes_on(
    pg_url: str, tmp_path: Path
) -> None:
    """A live worker whose heartbeat went stale (a long outage, a stalled host) finds at its next
    epoch that a peer failed and re-enqueued its trial: it drops that attempt, keeps the
    checkpoint for the retry, and carries on; it does not crash."""
    data = "synthetic:n=2000,length=40,features=3,seed=6"
    _init(pg_url, tmp_path, trials_=2, repeats=1, epochs=8, data=data)
    p = start_worker(pg_url, tmp_path)
    # What a peer does when it finds a trial stale: the real code path, from another process.
    # Trials come and go quickly, so try until one is taken over mid-run (an epoch reported,
    # several to go).
    st = open_optuna_storage(pg_url, read_only=True, heartbeat_interval=1, grace_period=4)
    studies = {
        f: optuna.load_study(study_name=f"default.{f}", storage=st) for f in ("rnn", "gru", "lstm")
    }
    taken, taken_family = None, ""
    deadline = time.monotonic() + 120
    while taken is None and time.monotonic() < deadline and p.poll() is None:
        for family, study in studies.items():
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            victims = [t for t in running if 1 <= len(t.intermediate_values) <= 5]
            if victims:
                with exclusive(st.engine, f"rnntune:claim:{study.study_name}"):
                    ids = [victims[0]._trial_id]
                    if fail_and_requeue(study, ids, "heartbeat stale: test", MAX_RETRY) == ids:
                        taken, taken_family = victims[0], family
                break
        else:
            time.sleep(0.05)
    assert taken is not None, "no trial could be taken over mid-run:\n" + output(p)
    wait_all([p], timeout=300)
    log = output(p)
    assert p.returncode == 0, log
    assert "taken over" in log and "Traceback" not in log, log
    res = assert_exact(pg_url, budget=2, repeats=1)
    retry = next(
        t for t in res[taken_family] if t.system_attrs.get("retry_history") == [taken.number]
    )
    assert retry.user_attrs["resumed_from_epoch"] >= 1  # the checkpoint was left for the retry


@pytest.mark.postgres
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
