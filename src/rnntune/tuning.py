"""The only module that talks to Optuna's samplers and pruners: search space, claim, objective.

Exact budgets (issue: "the number of finished trials equals the budget"). ``MaxTrialsCallback``
overshoots by up to one trial per worker (optuna#3518) because the check and the creation of a
trial are separate steps. Here every step that changes the number of *live* trials of a family
(finished + running + waiting) happens under one cross-process lock per family
(:func:`rnntune.storage.exclusive`: a PostgreSQL advisory lock, or a file lock on SQLite):

* creating a trial (``study.ask()`` when no trial is WAITING) only while live < budget;
* popping a WAITING retry (``ask()`` pops before it creates) — no change in live;
* failing a stale trial and enqueueing its retry — no change in live, as one step.

A trial that finishes COMPLETE or PRUNED stays live; one that FAILs by an exception leaves the
count, so another trial is created in its place. Live therefore never exceeds the budget, and the
claim loop runs until finished == budget: exactly the budget, with any number of workers.
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, Trial, TrialState

from rnntune import state
from rnntune.config import ExperimentConfig, Runtime, build_distributions, build_pruner
from rnntune.exceptions import (
    Interrupted,
    StorageError,
    TrainingError,
    WorkerFaultError,
    error_reason,
    first_line,
)
from rnntune.faults import failpoint
from rnntune.storage import (
    DATABASE_ERRORS,
    exclusive,
    is_transient,
    rdb_storage,
    study_id,
    study_storage,
    trial_id,
)

if TYPE_CHECKING:  # torch is imported only where a model is trained
    from rnntune.train import EpochResult, FitResult

log = logging.getLogger(__name__)

WORKER_ATTR = state.WORKER_ATTR
REASON_ATTR = state.REASON_ATTR
# User attributes that describe one attempt at a trial (not carried over to its retry).
ATTEMPT_ATTRS = frozenset(
    {"resumed_from_epoch", "epochs_this_run", "epochs_trained", "best_epoch", "fail_reason"}
)
# DATABASE_ERRORS and is_transient (rnntune.storage) stay importable from here for callers.


class TrialHandedBack(Exception):  # noqa: N818 - an outcome, not a failure
    """The trial was handed back (FAIL of kind handback, retry enqueued); the worker goes on."""


LIVE_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


# -- search space ---------------------------------------------------------------------------
def distributions(space: dict[str, dict[str, Any]]) -> dict[str, BaseDistribution]:
    # Built by config, which builds them once at validation: what `init` accepts never fails here.
    return build_distributions(space)


def make_sampler(cfg: ExperimentConfig, seed: int) -> optuna.samplers.BaseSampler:
    # Constant liar: running trials count as bad results, so parallel workers spread out.
    return optuna.samplers.TPESampler(
        seed=seed, constant_liar=True, n_startup_trials=cfg.tpe_startup_trials
    )


def make_pruner(cfg: ExperimentConfig) -> optuna.pruners.BasePruner:
    return build_pruner(cfg.pruner, cfg.max_epochs)


# -- counting and claiming ------------------------------------------------------------------
# The counting rules live in rnntune.state (readers use them too); these names stay for callers.
Counts = state.Counts
count_trials = state.count_trials


def family_done(cfg: ExperimentConfig, counts: Counts) -> bool:
    """Tuning of a family is over: its budget is finished, or it gave up (see rnntune.state)."""
    return state.tuning_over(cfg.trials, counts)


def gave_up(cfg: ExperimentConfig, counts: Counts) -> bool:
    return state.tuning_state(cfg.trials, counts) == state.GAVE_UP


def rdb(study: optuna.Study) -> RDBStorage:
    """The RDBStorage under the study (Optuna wraps it in a cache layer)."""
    return rdb_storage(study)


def requeue(study: optuna.Study, frozen: FrozenTrial) -> None:
    """Enqueue a retry of a failed trial: same parameters, its reported epochs inherited."""
    # The retry inherits the failed trial's attributes; these describe that attempt, not the
    # retry (a retry killed before its first epoch must not look as if it had resumed).
    frozen.system_attrs = {
        k: v for k, v in frozen.system_attrs.items() if not k.startswith("rnntune:")
    }
    frozen.user_attrs = {k: v for k, v in frozen.user_attrs.items() if k not in ATTEMPT_ATTRS}
    # No cap here: fail_and_requeue decided that this trial is owed a retry.
    RetryHeartbeatStaleTrialCallback(max_retry=None, inherit_intermediate_values=True)(
        study, frozen
    )


def fail_and_requeue(
    study: optuna.Study,
    trial_ids: list[int],
    reason: str,
    max_retry: int = state.MAX_RETRY,
    *,
    kind: str = state.STALE,
    after_fail: Callable[[], None] = lambda: failpoint("claim.after_stale_fail"),
    budget: int | None = None,
) -> list[int]:
    """Fail RUNNING trials and enqueue their retries (call under the family lock).

    ``kind`` says why (rnntune.state): ``stale`` (its worker went silent; after ``max_retry``
    such retries the chain is failed for good as an ``error``) or ``handback`` (SIGTERM, a
    worker fault: always retried). Neither counts toward giving up. The kind, the reason and
    whether a retry is owed are written before the FAIL, so a process killed between the FAIL
    and the retry leaves a retry that the next claim enqueues (state.owed_retries).

    ``budget``: the family's budget. A retry is enqueued only while the family's finished,
    running and waiting trials leave room for it; a trial without room is a duplicate that a
    database error made (see state.SURPLUS) and is failed without a retry.
    """
    storage = rdb(study)
    trials = state.all_trials(study) if kind == state.STALE or budget is not None else []
    live = state.count(trials).live if budget is not None else None
    done = []
    for tid in trial_ids:
        try:
            t_kind, t_reason = kind, reason
            if kind == state.STALE:
                frozen = storage.get_trial(tid)
                deaths = state.silent_deaths(trials, state.root_number(frozen)) + 1
                if deaths > max_retry:
                    t_kind = state.ERROR
                    t_reason = (
                        f"its worker went silent {deaths} times running it (killed, out of "
                        f"memory?): {reason}"
                    )
            if t_kind != state.ERROR and live is not None and budget is not None:
                if live - 1 >= budget:  # the others fill the budget without this one
                    t_kind = state.SURPLUS
                    t_reason = f"surplus: the family's {budget} trials are claimed without it"
            retry = t_kind not in (state.ERROR, state.SURPLUS)
            # Annotate first: once FAIL, a trial can no longer be annotated.
            storage.set_trial_system_attr(tid, state.REASON_ATTR, t_reason)
            storage.set_trial_system_attr(tid, state.KIND_ATTR, t_kind)
            storage.set_trial_system_attr(tid, state.RETRY_ATTR, retry)
            if not storage.set_trial_state_values(tid, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # it finished, or another worker failed it first: nothing left to do
        if live is not None:
            live -= 1
        after_fail()
        if retry:
            requeue(study, storage.get_trial(tid))
            if live is not None:
                live += 1
        done.append(tid)
    return done


def drop_surplus_waiting(study: optuna.Study, budget: int) -> list[int]:
    """Fail, without a retry, the newest WAITING trials the budget has no room for (call under
    the family lock): duplicates of a retry that a database error made (see state.SURPLUS)."""
    trials = state.all_trials(study)
    extra = state.count(trials).live - budget
    waiting = sorted(
        (t for t in trials if t.state == TrialState.WAITING), key=lambda t: t.number, reverse=True
    )
    storage = rdb(study)
    done = []
    for t in waiting[: max(0, extra)]:
        tid = trial_id(t)
        storage.set_trial_system_attr(tid, state.REASON_ATTR, "surplus: a duplicate retry")
        storage.set_trial_system_attr(tid, state.KIND_ATTR, state.SURPLUS)
        storage.set_trial_system_attr(tid, state.RETRY_ATTR, False)
        if storage.set_trial_state_values(tid, state=TrialState.FAIL):
            done.append(t.number)
    return done


def recover_owed_retries(study: optuna.Study, budget: int) -> list[int]:
    """Enqueue retries that were owed but never enqueued (call under the family lock)."""
    trials = state.all_trials(study)
    owed = state.owed_retries(trials)
    live = state.count(trials).live
    done = []
    for t in owed:
        if live >= budget:  # never past the budget (the chain's slot was taken meanwhile)
            break
        requeue(study, copy.deepcopy(t))
        live += 1
        done.append(t.number)
    return done


def stale_trial_ids(
    study: optuna.Study, dead_workers: set[str], grace_period: int
) -> tuple[list[int], list[int]]:
    """(stale, orphaned) RUNNING trials, judged on the database clock, whoever owns them.

    Stale: its heartbeat is older than the experiment's grace period, or its worker is known
    dead (the local fast path: worker.dead_workers). Orphaned: it has no heartbeat at all;
    called under the family lock, that means the claim that made it died (see state).
    """
    stale, orphans = state.stale_trials(rdb(study), study_id(study), grace_period)
    if dead_workers:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.system_attrs.get(state.WORKER_ATTR) in dead_workers:
                stale.append(trial_id(t))
    return sorted(set(stale) - set(orphans)), orphans


def claim_trial(
    study: optuna.Study,
    cfg: ExperimentConfig,
    worker_id: str,
    dead_workers: set[str],
    grace_period: int,
    max_retry: int = state.MAX_RETRY,
) -> Trial | None:
    """Claim the next trial of this family, or None when its budget is fully claimed.

    One atomic step as every other claimer sees it: all of it runs under the family lock, and
    the trial has its heartbeat before the lock is released. A claim that dies half-way leaves
    a RUNNING trial without heartbeat, which the next claimer fails and retries at once.
    """
    storage = rdb(study)
    with exclusive(storage.engine, f"rnntune:claim:{study.study_name}"):
        stale, orphans = stale_trial_ids(study, dead_workers, grace_period)
        if orphans:
            failed = fail_and_requeue(
                study, orphans, "claim interrupted", max_retry, budget=cfg.trials
            )
            log.warning("%s: retrying orphaned trial(s) %s", study.study_name, failed)
        if stale:
            failed = fail_and_requeue(
                study, stale, "heartbeat stale: worker died", max_retry, budget=cfg.trials
            )
            log.warning("%s: retrying stale trial(s) %s", study.study_name, failed)
        owed = recover_owed_retries(study, cfg.trials)
        if owed:
            log.warning("%s: enqueued the lost retries of trial(s) %s", study.study_name, owed)
        counts = count_trials(study)
        if counts.waiting and counts.live > cfg.trials:  # rare: read the trials again only then
            surplus = drop_surplus_waiting(study, cfg.trials)
            log.warning("%s: dropped duplicate retries %s", study.study_name, surplus)
            counts = count_trials(study)
        if counts.waiting == 0 and (counts.live >= cfg.trials or gave_up(cfg, counts)):
            return None
        trial = study.ask(fixed_distributions=distributions(cfg.search_space))
        failpoint("claim.after_ask")
        # Heartbeat, then owner tag, before letting go of the lock (see the docstring).
        storage.record_heartbeat(trial_id(trial))
        failpoint("claim.after_heartbeat")
        storage.set_trial_system_attr(trial_id(trial), WORKER_ATTR, worker_id)
        failpoint("claim.after_tag")
        return trial


# -- the objective --------------------------------------------------------------------------
def original_number(trial: Trial | FrozenTrial) -> int:
    system_attrs = (
        trial.system_attrs
        if isinstance(trial, FrozenTrial)
        else trial.storage.get_trial_system_attrs(trial_id(trial))
    )
    root = system_attrs.get("failed_trial")
    return int(root) if root is not None else trial.number


def checkpoint_path(artifacts: str, cfg: ExperimentConfig, family: str, root: int) -> Path:
    return Path(artifacts) / "checkpoints" / cfg.name / family / f"trial-{root:05d}.pt"


@dataclass(frozen=True)
class TrialOutcome:
    number: int
    state: TrialState
    value: float | None
    epochs_this_run: list[int]
    resumed_from_epoch: int
    # Time in the training loop (incl. checkpoint writes), less its per-epoch database calls.
    fit_seconds: float = 0.0


def run_trial(
    study: optuna.Study,
    trial: Trial,
    family: str,
    cfg: ExperimentConfig,
    splits: Any,
    runtime: Runtime,
    should_stop: Callable[[], bool],
    db_retry: Callable[[Callable[[], Any]], Any],
) -> TrialOutcome:
    """Train one claimed trial, resuming from its retry chain's checkpoint; tell the result.

    Raises Interrupted (after the trial was failed and re-enqueued) when asked to stop.

    Raises UpdateFinishedTrialError when the trial was taken over while it ran: this worker's
    heartbeat stopped for longer than the grace period (a long database outage, a stalled host),
    so a peer failed and re-enqueued it, and the retry owns the trial and its checkpoint now.
    The checkpoint is left in place; the caller drops the attempt and goes on.
    """
    from rnntune.train import fit, model_and_train_config  # torch only where a model trains

    epochs: list[int] = []  # the epochs this attempt actually trained
    resumed: list[int] = []  # the checkpoint's epoch this attempt resumed after, once known
    root = original_number(trial)
    params = dict(trial.params)
    ckpt = checkpoint_path(runtime.artifacts, cfg, family, root)
    model_cfg, train_cfg = model_and_train_config(
        family, params, cfg, splits.X_train.shape[2], cfg.trial_seed(root), runtime.device
    )

    in_storage = [0.0]  # seconds spent on the database from inside the training loop
    prunes = not isinstance(study.pruner, optuna.pruners.NopPruner)

    def on_epoch(r: EpochResult) -> None:
        failpoint("trial.after_checkpoint")
        t = time.perf_counter()
        if not epochs and not resumed:
            # A fresh start: recorded at the first epoch (a resumed one was recorded on resume).
            db_retry(lambda: trial.set_user_attr("resumed_from_epoch", r.epoch - 1))
        epochs.append(r.epoch)
        db_retry(lambda: trial.report(r.val_metric, r.epoch))
        failpoint("trial.after_report")
        prune = prunes and db_retry(trial.should_prune)
        in_storage[0] += time.perf_counter() - t
        if prune:
            raise optuna.TrialPruned(f"pruned at epoch {r.epoch}")

    def on_resume(r: EpochResult) -> None:
        # The attempt before may have been stopped between this checkpoint and its report or
        # pruning decision: report it if it is missing (the retry inherits what was reported)
        # and decide again, so a resumed trial is pruned where an uninterrupted one would be.
        t = time.perf_counter()
        resumed.append(r.epoch)
        # Recorded as soon as it is known, before anything that may end this attempt (a pruning
        # decision, a kill), so a test or a person sees where every retry picked up.
        db_retry(lambda: trial.set_user_attr("resumed_from_epoch", r.epoch))
        failpoint("trial.after_resume")
        reported = db_retry(lambda: study_storage(study).get_trial(trial_id(trial)))
        if r.epoch not in reported.intermediate_values:
            db_retry(lambda: trial.report(r.val_metric, r.epoch))
        prune = prunes and db_retry(trial.should_prune)
        in_storage[0] += time.perf_counter() - t
        if prune:
            raise optuna.TrialPruned(f"pruned at epoch {r.epoch} (decided again on resume)")

    t0 = time.perf_counter()
    try:
        result: FitResult = fit(
            model_cfg,
            train_cfg,
            *splits.fit_parts(),
            checkpoint_path=ckpt,
            on_epoch=on_epoch,
            should_stop=should_stop,
            on_resume=on_resume,
        )
    except optuna.TrialPruned:
        frozen = db_retry(lambda: study_storage(study).get_trial(trial_id(trial)))
        epochs_done = sorted(frozen.intermediate_values)
        _record(trial, db_retry, {"epochs_trained": len(epochs_done), "epochs_this_run": epochs})
        failpoint("tell.before")
        db_retry(lambda: _tell(study, trial, TrialState.PRUNED))
        failpoint("tell.after")
        _remove(ckpt)
        last = frozen.intermediate_values[epochs_done[-1]] if epochs_done else None
        return TrialOutcome(
            trial.number,
            TrialState.PRUNED,
            last,
            epochs,
            resumed[0] if resumed else 0,
            time.perf_counter() - t0 - in_storage[0],
        )
    except Interrupted:
        hand_back(study, trial, "worker stopped (SIGTERM)")
        raise
    except UpdateFinishedTrialError:
        raise  # taken over by a retry: see the docstring
    except DATABASE_ERRORS + (OSError,) as e:
        if is_transient(e):
            # The database restarted under the training loop: not the trial's fault. Hand it
            # back once the database is back (its retry resumes from the checkpoint); go on.
            first = first_line(e)
            log.warning(
                "%s trial %d: database error (%s); handing it back", family, trial.number, first
            )
            try:
                db_retry(lambda: hand_back(study, trial, f"database error: {first}"[:500]))
            except DATABASE_ERRORS as e2:
                raise _worker_fault(study, trial, family, runtime, e2) from e2
            raise TrialHandedBack(f"{family} trial {trial.number} handed back: {first}") from e
        # The worker's fault, not the trial's: hand the trial back (best effort: the database
        # may be what is gone; then its heartbeat goes stale and it is retried all the same).
        raise _worker_fault(study, trial, family, runtime, e) from e
    except (TrainingError, Exception) as e:  # noqa: BLE001 - any bug in a trial fails that trial
        reason = error_reason(e)
        log.error("%s trial %d failed: %s", family, trial.number, reason)
        db_retry(lambda: _annotate_error(study, trial, reason))
        _record(trial, db_retry, {"fail_reason": reason, "epochs_this_run": epochs})
        db_retry(lambda: _tell(study, trial, TrialState.FAIL))
        _remove(ckpt)
        return TrialOutcome(
            trial.number, TrialState.FAIL, None, epochs, 0, time.perf_counter() - t0 - in_storage[0]
        )
    fit_seconds = time.perf_counter() - t0 - in_storage[0]
    _record(
        trial,
        db_retry,
        # Each attribute is a round trip: keep to what a reader of the trial needs
        # (resumed_from_epoch was written on resume, or at the first epoch of a fresh start).
        {
            "epochs_trained": result.epochs_trained,
            "best_epoch": result.best_epoch,
            "epochs_this_run": result.epochs_this_run,
        },
    )
    value = float(result.best_val_metric)
    if not math.isfinite(value):
        reason = f"the best validation {cfg.objective} is not a number ({value})"
        db_retry(lambda: _annotate_error(study, trial, reason))
        db_retry(lambda: _tell(study, trial, TrialState.FAIL))
        return TrialOutcome(trial.number, TrialState.FAIL, None, result.epochs_this_run, 0)
    failpoint("tell.before")
    db_retry(lambda: _tell(study, trial, TrialState.COMPLETE, value))
    failpoint("tell.after")
    _remove(ckpt)
    return TrialOutcome(
        trial.number,
        TrialState.COMPLETE,
        value,
        result.epochs_this_run,
        result.resumed_from_epoch,
        fit_seconds,
    )


def hand_back(study: optuna.Study, trial: Trial, reason: str) -> None:
    """Fail the trial as a hand-back and enqueue its retry (never counts toward giving up)."""
    with exclusive(rdb(study).engine, f"rnntune:claim:{study.study_name}"):
        fail_and_requeue(
            study,
            [trial_id(trial)],
            reason,
            kind=state.HANDBACK,
            after_fail=lambda: failpoint("handback.after_fail"),
        )


def _worker_fault(
    study: optuna.Study, trial: Trial, family: str, runtime: Runtime, e: BaseException
) -> WorkerFaultError:
    if isinstance(e, OSError):
        where = e.filename or runtime.artifacts
        what = (
            f"cannot write checkpoints to {where} ({e.strerror or e}): make --artifacts "
            "(RNNTUNE_ARTIFACTS) a writable directory with free space, shared by all workers, "
            "then restart this worker"
        )
    else:
        what = (
            e.args[0]
            if isinstance(e, StorageError)
            else f"lost the study database ({first_line(e)}): check that it is running and "
            "reachable, then restart this worker"
        )
    try:
        hand_back(study, trial, f"worker fault: {what}"[:500])
        handed = f"{family} trial {trial.number} was handed back"
    except Exception as e2:  # noqa: BLE001 - the database may be the fault
        log.warning("could not hand back trial %d: %s", trial.number, first_line(e2))
        handed = f"{family} trial {trial.number} will be retried once its heartbeat is stale"
    return WorkerFaultError(f"{what} ({handed})")


def _annotate_error(study: optuna.Study, trial: Trial, reason: str) -> None:
    storage, tid = study_storage(study), trial_id(trial)
    storage.set_trial_system_attr(tid, state.REASON_ATTR, reason)
    storage.set_trial_system_attr(tid, state.KIND_ATTR, state.ERROR)


def _record(
    trial: Trial, db_retry: Callable[[Callable[[], Any]], Any], attrs: dict[str, Any]
) -> None:
    for k, v in attrs.items():
        db_retry(partial(trial.set_user_attr, k, v))


def _tell(study: optuna.Study, trial: Trial, to: TrialState, value: float | None = None) -> None:
    """Tell, tolerating a retry after a lost acknowledgement (the first tell went through).

    A trial found finished in another state was taken over (failed and retried by a peer) in
    the meantime: raise UpdateFinishedTrialError, so the caller keeps the checkpoint (the
    retry resumes from it) and does not report a result that was discarded.
    """
    study.tell(trial, value if to == TrialState.COMPLETE else None, state=to, skip_if_finished=True)
    stored = study_storage(study).get_trial(trial_id(trial))
    # A FAIL we told is an error (annotated so before the tell); a peer's is stale or a hand-back.
    if stored.state != to or (to == TrialState.FAIL and state.fail_kind(stored) != state.ERROR):
        raise UpdateFinishedTrialError(
            f"trial {trial.number} was taken over ({stored.state.name}) before it was told"
        )


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # a checkpoint left behind costs disk, not correctness
        log.warning("could not remove checkpoint %s", path)


def clear_checkpoints(artifacts: str, cfg: ExperimentConfig) -> None:
    shutil.rmtree(Path(artifacts) / "checkpoints" / cfg.name, ignore_errors=True)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None
