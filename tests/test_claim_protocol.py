"""The claim, retry and liveness protocol, in process, on real SQLite and real PostgreSQL.

A failpoint (rnntune.faults) lands a fault exactly between two commits; a heartbeat is made old
by writing it back in time in the database, never by waiting. Each test names the review
finding it covers (reliability-9206300.md) and fails on the code before its fix.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._rdb import models
from optuna.trial import TrialState
from sqlalchemy import select, update

from rnntune import evaluation, faults, state, tuning
from rnntune.config import Runtime
from rnntune.exceptions import ExperimentMismatchError, WorkerFaultError
from rnntune.experiment import Experiment, find_or_raise_by_name, load_data, register
from rnntune.progress import read as read_progress
from rnntune.storage import (
    EvaluationRunRow,
    StorageRole,
    WorkerRow,
    exclusive,
    load_study,
    open_optuna_storage,
    session_scope,
)
from rnntune.worker import Worker
from rnntune.worker_registry import boot_id, dead_peers, pid_namespace, record_beat, retire_silent
from tests.conftest import TINY_DATA
from tests.helpers import rnntune

GRACE = 10


def arm(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    monkeypatch.setenv(faults.ENV, spec)
    faults.reset()


def setup(
    url: str, trials: int = 2, repeats: int = 1, max_epochs: int = 1
) -> tuple[Any, Experiment, optuna.Study]:
    st = open_optuna_storage(url, StorageRole.MIGRATE)
    exp, _ = register(
        st,
        {
            "name": "t",
            "data": TINY_DATA,
            "trials": trials,
            "repeats": repeats,
            "max_epochs": max_epochs,
            "families": ["gru"],
        },
        None,
        2,
        GRACE,
    )
    return st, exp, load_study(st, exp.config.study_name("gru"))


def claim(study: optuna.Study, exp: Experiment, worker: str = "w1") -> optuna.Trial | None:
    return tuning.claim_trial(study, exp.config, worker, set(), exp.grace_period)


def age_heartbeat(st: Any, trial_id: int, seconds: float) -> None:
    """Move a trial's last heartbeat back in time (as if its worker had gone silent)."""
    with session_scope(st.engine) as s:
        beat = s.scalar(
            select(models.TrialHeartbeatModel.heartbeat).where(
                models.TrialHeartbeatModel.trial_id == trial_id
            )
        )
        s.execute(
            update(models.TrialHeartbeatModel)
            .where(models.TrialHeartbeatModel.trial_id == trial_id)
            .values(heartbeat=beat - timedelta(seconds=seconds))
        )


def frozen(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


# -- H1: a claim is atomic as every other worker sees it -------------------------------------
@pytest.mark.parametrize("action", ["error", "db-error"])
def test_a_claim_that_dies_after_ask_is_retried_by_the_next_claim(
    storage_url: str, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    """H1: a claim that dies between ask and its first heartbeat left a RUNNING trial no rule
    ever found stale; with a budget of 1 the family waited for ever. Now the next claimer, under
    the same family lock, sees a RUNNING trial without heartbeat and retries it at once."""
    st, exp, study = setup(storage_url, trials=1)
    arm(monkeypatch, f"claim.after_ask={action}")
    with pytest.raises(Exception, match="failpoint"):
        claim(study, exp, "w1")
    orphan = study.get_trials(deepcopy=False)[0]
    assert orphan.state == TrialState.RUNNING
    # Whoever owns it: tag it with a live worker's id (the review's tag-then-no-heartbeat case).
    tuning.rdb(study).set_trial_system_attr(orphan._trial_id, state.WORKER_ATTR, "alive")
    retry = claim(study, exp, "w2")
    assert retry is not None, "the family's only slot is held by an orphan for ever"
    assert frozen(study, orphan.number).state == TrialState.FAIL
    assert state.fail_kind(frozen(study, orphan.number)) == state.STALE
    assert study._storage.get_trial_system_attrs(retry._trial_id)["failed_trial"] == orphan.number
    assert retry.params == orphan.params


def test_a_stale_heartbeat_is_stale_whoever_owns_it_on_the_database_clock(
    storage_url: str,
) -> None:
    """H1/M3/M4: a RUNNING trial whose heartbeat is older than the experiment's grace period (on
    the database's clock) is retried, even when its owner is recorded as alive; one within the
    grace period is not."""
    st, exp, study = setup(storage_url, trials=2)
    t1 = claim(study, exp, "alive-1")
    t2 = claim(study, exp, "alive-2")
    assert t1 is not None and t2 is not None
    age_heartbeat(st, t1._trial_id, exp.grace_period + 5)
    age_heartbeat(st, t2._trial_id, exp.grace_period - 5)
    retry = claim(study, exp, "w3")
    assert retry is not None
    assert frozen(study, t1.number).state == TrialState.FAIL
    assert frozen(study, t2.number).state == TrialState.RUNNING
    assert study._storage.get_trial_system_attrs(retry._trial_id)["failed_trial"] == t1.number


def test_stale_take_overs_are_capped_per_chain(storage_url: str) -> None:
    """A trial whose worker dies every time is retried MAX_RETRY times, then failed for good as
    an error (so a trial that kills its worker cannot loop for ever)."""
    st, exp, study = setup(storage_url, trials=1)
    t = claim(study, exp)
    for _ in range(state.MAX_RETRY):
        assert t is not None
        age_heartbeat(st, t._trial_id, exp.grace_period + 5)
        t = claim(study, exp)
    assert t is not None
    age_heartbeat(st, t._trial_id, exp.grace_period + 5)
    nxt = claim(study, exp)  # the chain is dropped; a fresh configuration takes the slot
    assert nxt is not None
    assert "failed_trial" not in study._storage.get_trial_system_attrs(nxt._trial_id)
    last = frozen(study, t.number)
    assert last.state == TrialState.FAIL and state.fail_kind(last) == state.ERROR
    assert "went silent" in last.system_attrs[state.REASON_ATTR]
    assert state.count_trials(study).errors == 1


# -- L3: fail and requeue are recoverable ------------------------------------------------------
@pytest.mark.parametrize("point", ["handback.after_fail", "claim.after_stale_fail"])
def test_a_retry_lost_between_fail_and_requeue_is_enqueued_by_the_next_claim(
    storage_url: str, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """L3: FAIL and the retry are two commits; a fault between them lost the retry, and a fresh
    configuration was sampled instead. Now the retry is owed (written before the FAIL) and the
    next claim enqueues it: same parameters, same chain."""
    st, exp, study = setup(storage_url, trials=1)
    t = claim(study, exp, "w1")
    assert t is not None
    arm(monkeypatch, f"{point}=error")
    with pytest.raises(RuntimeError, match="failpoint"):
        if point == "handback.after_fail":
            tuning.hand_back(study, t, "worker stopped (SIGTERM)")
        else:
            age_heartbeat(st, t._trial_id, exp.grace_period + 5)
            claim(study, exp, "w2")
    faults.reset()
    monkeypatch.delenv(faults.ENV)
    assert frozen(study, t.number).state == TrialState.FAIL
    assert state.count_trials(study).owed == 1
    retry = claim(study, exp, "w3")
    assert retry is not None
    assert retry.params == t.params
    attrs = study._storage.get_trial_system_attrs(retry._trial_id)
    assert attrs["retry_history"] == [t.number]
    assert state.count_trials(study).owed == 0
    assert claim(study, exp, "w4") is None  # exactly the budget: nothing enqueued twice


# -- H2: only genuine errors count toward giving up ------------------------------------------
def test_hand_backs_never_count_toward_giving_up(storage_url: str) -> None:
    """H2: every FAIL row counted, so a dozen SIGTERM hand-backs (a few `docker compose stop`
    cycles) abandoned the family below its budget. Hand-backs never count now."""
    st, exp, study = setup(storage_url, trials=2)
    n = state.give_up_after(exp.config.trials) + 2
    for _ in range(n):
        t = claim(study, exp)
        assert t is not None
        tuning.hand_back(study, t, "worker stopped (SIGTERM)")
    counts = state.count_trials(study)
    assert counts.fail == n and counts.errors == 0
    assert not tuning.family_done(exp.config, counts)
    assert state.tuning_state(exp.config.trials, counts) == state.TUNING
    assert claim(study, exp) is not None


def test_no_give_up_while_a_retry_waits() -> None:
    c = state.Counts(errors=100, waiting=1)
    assert state.tuning_state(5, c) == state.TUNING
    assert state.tuning_state(5, state.Counts(errors=100, owed=1)) == state.TUNING
    assert state.tuning_state(5, state.Counts(errors=100)) == state.GAVE_UP
    assert state.tuning_state(5, state.Counts(errors=100, forgiven=100)) == state.TUNING


def _fail_as_error(study: optuna.Study, exp: Experiment, n: int) -> None:
    for _ in range(n):
        t = claim(study, exp)
        assert t is not None
        tuning._annotate_error(study, t, "ValueError: boom")
        study.tell(t, state=TrialState.FAIL)


def test_a_family_that_gave_up_is_incomplete_with_why_and_a_rerun_finishes_it(
    storage_url: str,
) -> None:
    """H2: a family that gave up was reported complete and `run` said "already finished". Now it
    is listed as missing with the reason, the experiment is not done, and a rerun (init or run)
    forgives its errors so that workers can finish it."""
    from rnntune.report.collect import build_report

    st, exp, study = setup(storage_url, trials=2)
    _fail_as_error(study, exp, state.give_up_after(exp.config.trials))
    counts = state.count_trials(study)
    assert state.tuning_state(exp.config.trials, counts) == state.GAVE_UP
    report = build_report(st, exp)
    assert report["complete"] is False
    (line,) = [m for m in report["missing"] if "tuning" in m]
    assert "gave up after 10 trial errors" in line and "ValueError: boom" in line
    prog = read_progress(st, exp)
    assert not prog.done and prog.over
    assert claim(study, exp) is None
    # A rerun: the same registration again.
    register(st, {"name": "t"})
    assert state.tuning_state(exp.config.trials, state.count_trials(study)) == state.TUNING
    assert claim(study, exp) is not None


def test_an_unwritable_artifact_directory_is_a_worker_fault_at_start_up(
    storage_url: str, tmp_path: Path
) -> None:
    """H2: an unwritable --artifacts failed every trial, and the families gave up. Now the
    worker refuses to start, with the fix, and claims nothing."""
    setup(storage_url)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    rt = Runtime(storage=storage_url, artifacts=str(blocker / "artifacts"))
    w = Worker(storage_url, "t", rt, install_signal_handlers=False)
    with pytest.raises(WorkerFaultError, match="cannot write to the artifact directory"):
        w.run()
    st = open_optuna_storage(storage_url, StorageRole.READ)
    assert load_study(st, "t.gru").get_trials() == []


def test_a_checkpoint_write_error_mid_trial_hands_the_trial_back(
    storage_url: str, tmp_path: Path
) -> None:
    """H2: an OSError writing a checkpoint (disk full, directory gone) failed the trial as if
    its configuration were bad. Now it is a worker fault: the trial is handed back (FAIL of kind
    handback, its retry WAITING) and the worker stops with the fix."""
    st, exp, study = setup(storage_url, trials=1)
    splits = load_data(exp.config).splits
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rt = Runtime(storage=storage_url, artifacts=str(blocker), device="cpu", threads=1)
    t = claim(study, exp)
    assert t is not None
    with pytest.raises(WorkerFaultError, match="cannot write checkpoints") as e:
        tuning.run_trial(study, t, "gru", exp.config, splits, rt, lambda: False, lambda fn: fn())
    assert "handed back" in str(e.value) and "\n" not in str(e.value)
    failed = frozen(study, t.number)
    assert failed.state == TrialState.FAIL and state.fail_kind(failed) == state.HANDBACK
    counts = state.count_trials(study)
    assert counts.errors == 0 and counts.waiting == 1


def test_a_lost_database_mid_trial_is_a_worker_fault(storage_url: str, tmp_path: Path) -> None:
    """H2: a database lost for longer than the worker waits (db_retry gives up with a
    StorageError) failed the trial as a training error. Now the trial is handed back."""
    from rnntune.exceptions import StorageError

    st, exp, study = setup(storage_url, trials=1)
    splits = load_data(exp.config).splits
    rt = Runtime(storage=storage_url, artifacts=str(tmp_path / "a"), device="cpu", threads=1)
    t = claim(study, exp)
    assert t is not None

    def gone(_fn: Any) -> Any:
        raise StorageError("the study database has been unreachable for 600s: check the server")

    with pytest.raises(WorkerFaultError, match="unreachable for 600s"):
        tuning.run_trial(study, t, "gru", exp.config, splits, rt, lambda: False, gone)
    failed = frozen(study, t.number)
    assert failed.state == TrialState.FAIL and state.fail_kind(failed) == state.HANDBACK
    assert state.count_trials(study).errors == 0


@pytest.mark.parametrize("point", ["trial.after_checkpoint", "trial.after_report"])
def test_a_database_error_escaping_training_hands_the_trial_back(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """H2: a driver error (OperationalError: a restarted database) escaping the training loop
    failed the trial as a training error (not retried, checkpoint removed, counted toward giving
    up). Now the trial is handed back and the worker goes on."""
    st, exp, study = setup(storage_url, trials=1)
    splits = load_data(exp.config).splits
    rt = Runtime(storage=storage_url, artifacts=str(tmp_path / "a"), device="cpu", threads=1)
    t = claim(study, exp)
    assert t is not None
    arm(monkeypatch, f"{point}=db-error")
    with pytest.raises(tuning.TrialHandedBack, match="handed back"):
        tuning.run_trial(study, t, "gru", exp.config, splits, rt, lambda: False, lambda f: f())
    failed = frozen(study, t.number)
    assert failed.state == TrialState.FAIL and state.fail_kind(failed) == state.HANDBACK
    assert state.count_trials(study).waiting == 1
    assert list((tmp_path / "a").rglob("trial-*.pt")), "the retry's checkpoint was removed"


def test_a_retry_resumed_from_an_unreported_checkpoint_reports_it_and_decides_pruning(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """L4: an attempt stopped between an epoch's checkpoint and its report left that epoch
    unreported; the retry resumed after it and skipped the pruning decision there, so a trial
    an uninterrupted run prunes at that epoch trained on. Now the retry reports the checkpoint's
    epoch and decides before it trains."""
    st, exp, study = setup(storage_url, trials=1, max_epochs=3)
    splits = load_data(exp.config).splits
    rt = Runtime(storage=storage_url, artifacts=str(tmp_path / "a"), device="cpu", threads=1)
    t = claim(study, exp)
    assert t is not None
    arm(monkeypatch, "trial.after_checkpoint=db-error@1")  # epoch 1 saved, never reported
    with pytest.raises(tuning.TrialHandedBack):
        tuning.run_trial(study, t, "gru", exp.config, splits, rt, lambda: False, lambda f: f())
    assert frozen(study, t.number).intermediate_values == {}
    arm(monkeypatch, "")
    # A pruner that prunes at every step: an uninterrupted run stops at epoch 1.
    study.pruner = optuna.pruners.ThresholdPruner(lower=2.0)
    retry = claim(study, exp, "w2")
    assert retry is not None
    out = tuning.run_trial(
        study, retry, "gru", exp.config, splits, rt, lambda: False, lambda f: f()
    )
    assert out.state == TrialState.PRUNED and out.epochs_this_run == [], out
    done = frozen(study, retry.number)
    assert done.state == TrialState.PRUNED and sorted(done.intermediate_values) == [1]
    # Where it picked up is recorded even though it was pruned before training (the soak's
    # invariant check found a retry pruned on resume without it).
    assert out.resumed_from_epoch == 1 and done.user_attrs["resumed_from_epoch"] == 1


@pytest.mark.parametrize("point", ["init.after_migrate", "init.after_studies"])
def test_a_database_error_in_init_is_one_error_line(
    storage_url: str, tmp_path: Path, point: str
) -> None:
    proc = rnntune(
        "init", "--storage", storage_url, "--data", TINY_DATA, cwd=tmp_path, check=False,
        env={faults.ENV: f"{point}=db-error"},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "lost the study database" in errors[0]
    rnntune("init", "--storage", storage_url, "--data", TINY_DATA, cwd=tmp_path)  # a rerun


def test_the_worker_command_refuses_an_unwritable_artifact_directory(
    storage_url: str, tmp_path: Path
) -> None:
    """H2, as a user sees it: one Error line naming the fix, exit 2 (a bad option), no traceback;
    checked before the worker registers or claims anything."""
    setup(storage_url)
    (tmp_path / "a-file").write_text("x")
    proc = rnntune(
        "worker", "--storage", storage_url, "--experiment", "t",
        "--artifacts", str(tmp_path / "a-file" / "artifacts"), cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "not a writable directory" in errors[0] and "--artifacts" in errors[0]


def test_a_result_told_after_a_take_over_is_not_reported_and_keeps_the_checkpoint(
    storage_url: str,
) -> None:
    """L4: a take-over between the last attributes and tell made tell skip silently; the worker
    then removed the retry's checkpoint and logged the discarded result as complete."""
    st, exp, study = setup(storage_url, trials=1)
    t = claim(study, exp)
    assert t is not None
    with exclusive(st.engine, f"rnntune:claim:{study.study_name}"):
        tuning.fail_and_requeue(study, [t._trial_id], "heartbeat stale: test")
    with pytest.raises(UpdateFinishedTrialError):
        tuning._tell(study, t, TrialState.COMPLETE, 0.5)


# -- the budget after a database error: no duplicate is ever run --------------------------------
def test_a_duplicate_trial_made_by_a_database_error_is_failed_without_a_retry(
    storage_url: str,
) -> None:
    """A create whose commit reached the server while the client saw an error (a PostgreSQL
    restart mid-commit) is retried by Optuna, which leaves one more RUNNING trial than was
    claimed, with no heartbeat. It used to be retried like an interrupted claim, and the family
    finished one trial past its budget (seen in CI: rnn 7 of 6 after a restart). Now a trial
    the budget has no room for is failed as surplus, without a retry."""
    st, exp, study = setup(storage_url, trials=1)
    mine = claim(study, exp, "w1")
    assert mine is not None
    # The duplicate: a second RUNNING trial of the same family, never heartbeated or tagged.
    tuning.rdb(study).create_new_trial(study._study_id)
    assert claim(study, exp, "w2") is None  # the budget (1) is claimed: nothing to hand out
    counts = tuning.count_trials(study)
    assert (counts.running, counts.waiting, counts.fail) == (1, 0, 1), counts
    dup = next(t for t in study.get_trials(deepcopy=False) if t.state == TrialState.FAIL)
    assert state.fail_kind(dup) == state.SURPLUS and not state.owed_retries([dup])
    assert counts.counted_errors == 0  # never counted toward giving up
    tuning._tell(study, mine, TrialState.COMPLETE, 0.5)
    assert tuning.count_trials(study).finished == 1


def test_a_duplicated_retry_is_dropped_so_the_family_keeps_its_budget(storage_url: str) -> None:
    """The same for a retry enqueued twice (its create retried after an in-doubt commit): the
    newest duplicate is failed as surplus before anything is claimed."""
    st, exp, study = setup(storage_url, trials=2)
    first = claim(study, exp, "w1")
    assert first is not None
    with exclusive(st.engine, f"rnntune:claim:{study.study_name}"):
        tuning.fail_and_requeue(study, [first._trial_id], "heartbeat stale: test")
    retry = next(t for t in study.get_trials(deepcopy=False) if t.state == TrialState.WAITING)
    tuning.requeue(study, retry)  # the duplicate: the same retry again
    tuning.requeue(study, retry)  # and once more: live = 3 waiting > budget 2
    claims = [claim(study, exp, f"w{i}") for i in range(2, 6)]
    got = [c for c in claims if c is not None]
    assert len(got) == 2, "the family hands out exactly its budget"
    counts = tuning.count_trials(study)
    assert counts.live == 2 and counts.waiting == 0, counts


# -- H3: a worker is dead by missed heartbeats; /proc only where the pid means something -------
def test_only_a_worker_in_this_kernel_and_pid_namespace_is_judged_by_its_pid(
    storage_url: str,
) -> None:
    """H3: peers on the same hostname were judged by pid even from another PID namespace
    (--network host containers, hostNetwork pods, cloned VMs) or with no /proc at all (macOS),
    and their live work was taken. Now only a row from this kernel and namespace is judged."""
    st, exp, _ = setup(storage_url)
    me, ns = boot_id(), pid_namespace()
    if me is None or ns is None:
        pytest.skip("no /proc here")
    gone = 2**22 + 12345  # above pid_max's default: no such process
    rows = {
        "same-ns-dead": (me, ns),
        "other-ns": (me, ns + 1),
        "other-kernel": ("another-boot-id", ns),
        "no-proc": (None, None),
    }
    with session_scope(st.engine) as s:
        for wid, (boot, pidns) in rows.items():
            s.add(
                WorkerRow(
                    id=wid,
                    experiment_id=exp.id,
                    hostname="same-hostname",
                    pid=gone,
                    process_token="x:1" if boot else f"same-hostname:{gone}:0",
                    boot_id=boot,
                    pid_namespace=pidns,
                    status="running",
                    trials_done=0,
                    repeats_done=0,
                )
            )
    w = Worker(storage_url, "t", Runtime(storage=storage_url), install_signal_handlers=False)
    w.identity.hostname = "same-hostname"
    assert dead_peers(st.engine, exp.id, w.identity) == {"same-ns-dead"}
    w.identity.boot_id = None  # this reader has no /proc: it judges nobody
    assert dead_peers(st.engine, exp.id, w.identity) == set()


def test_rows_of_workers_silent_past_the_grace_period_are_retired(storage_url: str) -> None:
    """L10: a SIGKILLed worker's row stayed `running` for ever and every claim examined it
    again. Silent past the grace period (database clock) it is now `lost`; a worker that was
    only paused is `running` again with its next beat."""
    st, exp, _ = setup(storage_url)
    now = state.database_now(st.engine)
    ages = {"fresh": 1, "just-inside": 25, "silent": 31, "long-gone": 86_400}
    with session_scope(st.engine) as s:
        for wid, age in ages.items():
            s.add(
                WorkerRow(
                    id=wid,
                    experiment_id=exp.id,
                    hostname="h",
                    pid=1,
                    process_token="x:1",
                    status="running",
                    heartbeat_at=now - timedelta(seconds=age),
                    trials_done=0,
                    repeats_done=0,
                )
            )
    assert retire_silent(st.engine, exp.id, grace_period=30) == 2
    assert retire_silent(st.engine, exp.id, grace_period=30) == 0  # once only

    def statuses() -> dict[str, str]:
        with session_scope(st.engine) as s:
            return dict(s.execute(select(WorkerRow.id, WorkerRow.status)).all())

    assert statuses() == {
        "fresh": "running", "just-inside": "running", "silent": "lost", "long-gone": "lost"
    }  # fmt: skip
    record_beat(st.engine, "silent", stopping=False, task="t", trials=0, repeats=0)
    assert statuses()["silent"] == "running"


# -- M4: one policy per experiment --------------------------------------------------------------
def test_heartbeat_settings_are_the_experiments(storage_url: str, tmp_path: Path) -> None:
    """M4: each process judged the others by its own grace period. Now the interval and grace
    are stored with the experiment; a process given others is refused, one given none takes
    the stored ones."""
    st, exp, _ = setup(storage_url)
    assert (exp.heartbeat_interval, exp.grace_period) == (2, GRACE)
    with pytest.raises(ExperimentMismatchError, match="--grace-period 99"):
        register(st, {"name": "t"}, None, None, 99)
    register(st, {"name": "t"}, None, 2, GRACE)  # the same values: fine
    proc = rnntune(
        "worker", "--storage", storage_url, "--experiment", "t", "--grace-period", "99",
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "--grace-period 10 (stored at init)" in errors[0]


# -- M3 / M9: repeats --------------------------------------------------------------------------
def _jobs(st: Any, exp: Experiment) -> None:
    evaluation.ensure_jobs(st.engine, exp, "gru", {"hidden_size": 16})


def _age_repeat(st: Any, job_id: int, seconds: float) -> None:
    with session_scope(st.engine) as s:
        row = s.get(EvaluationRunRow, job_id)
        assert row is not None and row.heartbeat_at is not None
        row.heartbeat_at = row.heartbeat_at - timedelta(seconds=seconds)


def test_repeat_staleness_uses_the_database_clock(
    storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """M3: a host whose clock ran ahead reclaimed every running repeat of the others."""
    from rnntune.storage import utcnow

    st, exp, _ = setup(storage_url)
    _jobs(st, exp)
    job = evaluation.claim_job(st.engine, exp, "w1", exp.grace_period, set())
    assert job is not None
    # This host's clock runs an hour ahead (before the fix, claims judged by it).
    monkeypatch.setattr(evaluation, "utcnow", lambda: utcnow() + timedelta(hours=1), raising=False)
    assert evaluation.claim_job(st.engine, exp, "w2", exp.grace_period, set()) is None


def test_repeat_errors_and_dead_workers_are_counted_apart_and_capped(storage_url: str) -> None:
    """M9: attempts counted claims, so hand-backs used up a repeat's error budget, and a repeat
    whose worker kept dying was reclaimed for ever. Now attempts counts errors only, and a
    repeat taken from a silent worker MAX_REPEAT_RECLAIMS times is failed with the reason."""
    st, exp, _ = setup(storage_url)
    _jobs(st, exp)
    for i in range(3):  # hand-backs (SIGTERM): not errors
        job = evaluation.claim_job(st.engine, exp, f"h{i}", exp.grace_period, set())
        assert job is not None and job.attempts == 0
        evaluation.release(st.engine, job, f"h{i}")
    job = evaluation.claim_job(st.engine, exp, "e", exp.grace_period, set())
    assert job is not None
    evaluation.release(st.engine, job, "e", "RuntimeError: CUDA error")
    for i in range(state.MAX_REPEAT_RECLAIMS + 1):  # its worker dies every time
        job = evaluation.claim_job(st.engine, exp, f"k{i}", exp.grace_period, set())
        assert job is not None, i
        _age_repeat(st, job.id, exp.grace_period + 5)
    assert evaluation.claim_job(st.engine, exp, "last", exp.grace_period, set()) is None
    (row,) = state.eval_runs(st.engine, exp)
    assert row.status == "failed" and row.attempts == 1
    assert row.reclaims == state.MAX_REPEAT_RECLAIMS
    assert "went silent" in (row.error or "")
    assert evaluation.all_done(st.engine, exp, ["gru"])


def test_readers_import_neither_torch_nor_the_writers() -> None:
    """state, progress and report/collect are readers (STYLE: readers never import writers)."""
    import subprocess
    import sys

    code = (
        "import sys, rnntune.state, rnntune.progress, rnntune.report.collect; "
        "bad = [m for m in ('torch', 'rnntune.tuning', 'rnntune.evaluation', 'rnntune.worker') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_experiment_row_round_trips_the_policy(storage_url: str) -> None:
    st, exp, _ = setup(storage_url)
    again = find_or_raise_by_name(st.engine, "t")
    assert (again.heartbeat_interval, again.grace_period) == (2, GRACE)
