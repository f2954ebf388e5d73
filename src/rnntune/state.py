"""Where an experiment stands: the one definition of counting, staleness, done and gave-up.

Read-only: this module reads trials and rows and writes nothing; it imports neither torch nor
the writers (tuning, evaluation, worker), which use it as readers do (progress, report).

**Trials of a family.** COMPLETE and PRUNED are *finished*; finished + RUNNING + WAITING are
*live* (what the budget bounds). A FAIL row has a *kind*, stored on the trial before it fails:

* ``error``: its training raised (or its result was not a number), or its worker died
  ``MAX_RETRY`` + 1 times running it. Only these count toward giving up.
* ``handback``: its worker was stopped (SIGTERM) or hit a fault of its own (an unwritable or
  full artifact directory, a lost database): retried, never counted.
* ``stale``: its worker went silent (killed, host lost, outage past the grace period): retried,
  never counted.

A retried FAIL row carries ``rnntune:retry_owed``; its retry is a WAITING trial whose
``retry_history`` names it. Failing and enqueueing are two commits, so a retry owed and not
enqueued (a kill between them) is recovered by the next claim (:func:`owed_retries`).

A family's tuning is **done** when its budget is finished and nothing runs or waits; it **gave
up** when ``give_up_after(budget)`` errors piled up (since the last rerun forgave them) with
nothing running, waiting or owed; otherwise it is **tuning**. A family that gave up is reported
as incomplete, with why, and a rerun (`rnntune run` or `init`) forgives its errors and goes on.

**Staleness** is judged on the database's clock with the experiment's grace period: a RUNNING
trial whose last heartbeat is older than the grace period is stale, whoever owns it; one with no
heartbeat at all is an orphan (every claim records a heartbeat before it releases the family
lock, so a claimer that sees one under that lock knows its claim died).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from rnntune.limits import MAX_REPEAT_ERRORS, MAX_REPEAT_RECLAIMS, MAX_RETRY, give_up_after
from rnntune.storage import (
    EvaluationRunRow,
    db_now,
    running_trial_heartbeats,
    session_scope,
    study_id,
    study_storage,
)


# -- retry limits: set in rnntune.limits only (re-exported here for readers), shown by
# `rnntune status` and in the report ---------------------------------------------------------
def limits(budget: int) -> dict[str, int]:
    return {
        "trial_retries_after_silent_worker": MAX_RETRY,
        "trial_errors_before_giving_up": give_up_after(budget),
        "repeat_errors": MAX_REPEAT_ERRORS,
        "repeat_reclaims": MAX_REPEAT_RECLAIMS,
    }


def describe_limits(budget: int) -> str:
    return (
        f"limits: a trial is retried {MAX_RETRY}x after its worker dies; a family gives up "
        f"after {give_up_after(budget)} trial errors; a repeat fails after {MAX_REPEAT_ERRORS} "
        f"errors or {MAX_REPEAT_RECLAIMS} dead workers"
    )


# -- trial attributes --------------------------------------------------------------------------
WORKER_ATTR = "rnntune:worker"
REASON_ATTR = "rnntune:fail_reason"
KIND_ATTR = "rnntune:fail_kind"
RETRY_ATTR = "rnntune:retry_owed"
FORGIVEN_ATTR = "rnntune:errors_forgiven"  # a study system attr: errors a rerun forgave

ERROR, HANDBACK, STALE = "error", "handback", "stale"
# A trial the family's budget has no room for: a duplicate that a database error made (a create
# whose commit reached the server although the client saw it fail, and was retried). Failed
# without a retry; like a hand-back, never counted toward giving up.
SURPLUS = "surplus"


def fail_kind(t: FrozenTrial) -> str:
    kind = t.system_attrs.get(KIND_ATTR)
    if kind in (ERROR, HANDBACK, STALE, SURPLUS):
        return str(kind)
    # Rows written before kinds existed: tell them by their reason.
    reason = str(t.system_attrs.get(REASON_ATTR) or "")
    if reason.startswith("heartbeat stale"):
        return STALE
    if "SIGTERM" in reason:
        return HANDBACK
    return ERROR


def root_number(t: FrozenTrial) -> int:
    """The number of the first trial of ``t``'s retry chain (whose checkpoint it resumes)."""
    root = t.system_attrs.get("failed_trial")
    return int(root) if root is not None else t.number


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the trials that have a retry (named in some trial's retry history)."""
    out: set[int] = set()
    for t in trials:
        out.update(int(n) for n in t.system_attrs.get("retry_history", []))
    return out


def owed_retries(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """FAIL trials whose retry was decided but never enqueued (killed between the two commits)."""
    have = retried_numbers(trials)
    return [
        t
        for t in trials
        if t.state == TrialState.FAIL and t.system_attrs.get(RETRY_ATTR) and t.number not in have
    ]


def silent_deaths(trials: list[FrozenTrial], root: int) -> int:
    """How many attempts of the chain starting at ``root`` were failed as stale."""
    return sum(
        1
        for t in trials
        if t.state == TrialState.FAIL and root_number(t) == root and fail_kind(t) == STALE
    )


# -- counting trials ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Counts:
    complete: int = 0
    pruned: int = 0
    fail: int = 0  # every FAIL row (errors, hand-backs, stale take-overs)
    running: int = 0
    waiting: int = 0
    errors: int = 0  # FAIL rows of kind "error": the only ones that count toward giving up
    owed: int = 0  # retries decided and not enqueued yet
    forgiven: int = 0  # errors a rerun forgave
    last_error: str | None = None

    @property
    def finished(self) -> int:
        return self.complete + self.pruned

    @property
    def live(self) -> int:
        return self.finished + self.running + self.waiting

    @property
    def counted_errors(self) -> int:
        return max(0, self.errors - self.forgiven)

    def as_dict(self) -> dict[str, int]:
        return {
            "complete": self.complete,
            "pruned": self.pruned,
            "fail": self.fail,
            "running": self.running,
            "waiting": self.waiting,
            "errors": self.errors,
        }


def count(trials: list[FrozenTrial], forgiven: int = 0) -> Counts:
    n: dict[TrialState, int] = {}
    errors, last_error = 0, None
    for t in trials:
        n[t.state] = n.get(t.state, 0) + 1
        if t.state == TrialState.FAIL and fail_kind(t) == ERROR:
            errors += 1
            last_error = t.system_attrs.get(REASON_ATTR) or last_error
    return Counts(
        complete=n.get(TrialState.COMPLETE, 0),
        pruned=n.get(TrialState.PRUNED, 0),
        fail=n.get(TrialState.FAIL, 0),
        running=n.get(TrialState.RUNNING, 0),
        waiting=n.get(TrialState.WAITING, 0),
        errors=errors,
        owed=len(owed_retries(trials)),
        forgiven=int(forgiven),
        last_error=last_error,
    )


def all_trials(study: Any) -> list[FrozenTrial]:
    return study_storage(study).get_all_trials(study_id(study), deepcopy=False)


def forgiven_errors(study: Any) -> int:
    attrs = study_storage(study).get_study_system_attrs(study_id(study))
    return int(attrs.get(FORGIVEN_ATTR, 0))


def count_trials(study: Any) -> Counts:
    return count(all_trials(study), forgiven_errors(study))


def best_trial(study: Any) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None


DONE, GAVE_UP, TUNING = "done", "gave-up", "tuning"


def tuning_state(budget: int, c: Counts) -> str:
    if c.finished >= budget and c.running == 0 and c.waiting == 0:
        return DONE
    if (
        c.counted_errors >= give_up_after(budget)
        and c.running == 0
        and c.waiting == 0
        and c.owed == 0
    ):
        return GAVE_UP
    return TUNING


def tuning_over(budget: int, c: Counts) -> bool:
    """Nothing is left to claim in this family (done, or gave up until a rerun)."""
    return tuning_state(budget, c) != TUNING


def shortfall(budget: int, c: Counts) -> str | None:
    """Why a family's tuning is short of its budget, or None when it is done."""
    state = tuning_state(budget, c)
    if state == DONE:
        return None
    text = f"{c.finished}/{budget} tuning trials finished"
    if state == GAVE_UP:
        last = f" (last: {c.last_error})" if c.last_error else ""
        return (
            f"{text}; gave up after {c.counted_errors} trial errors{last}: fix the cause, then "
            "rerun `rnntune run` (or `rnntune init`) to finish it"
        )
    return text


# -- staleness of trials, on the database clock --------------------------------------------------
def stale_trials(storage: Any, sid: int, grace_period: int) -> tuple[list[int], list[int]]:
    """(stale, orphans) among the study's RUNNING trials, judged on the database's clock.

    stale: the last heartbeat is older than ``grace_period``; orphans: no heartbeat at all.
    """
    with session_scope(storage.engine) as s:
        # Optuna stamps heartbeats with the database's now() (local time of the session on
        # PostgreSQL): compare with the same function, never with this host's clock.
        now = s.execute(select(func.now())).scalar_one()
        rows = s.execute(running_trial_heartbeats(sid)).all()
    stale, orphans = [], []
    cutoff = _naive(now) - timedelta(seconds=grace_period)
    for trial_id, beat in rows:
        if beat is None:
            orphans.append(trial_id)
        elif _naive(beat) < cutoff:
            stale.append(trial_id)
    return sorted(stale), sorted(orphans)


def _naive(dt: datetime | str) -> datetime:
    if isinstance(dt, str):  # SQLite's strftime() comes back as text
        dt = datetime.fromisoformat(dt)
    return dt.replace(tzinfo=None)


# -- repeats -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalCounts:
    done: int = 0
    running: int = 0
    pending: int = 0
    failed: int = 0

    def over(self, total: int) -> bool:
        """Every repeat is done or failed for good."""
        return self.done + self.failed >= total


def eval_counts(engine: Engine, exp: Any) -> dict[str, EvalCounts]:
    with session_scope(engine) as s:
        rows = s.execute(
            select(EvaluationRunRow.family, EvaluationRunRow.status, func.count())
            .where(EvaluationRunRow.experiment_id == exp.id)
            .group_by(EvaluationRunRow.family, EvaluationRunRow.status)
        ).all()
    acc: dict[str, dict[str, int]] = {f: {} for f in exp.config.families}
    for family, status, n in rows:
        acc.setdefault(family, {})[status] = n
    return {
        f: EvalCounts(**{k: v for k, v in d.items() if k in EvalCounts.__annotations__})
        for f, d in acc.items()
    }


def eval_runs(engine: Engine, exp: Any) -> list[EvaluationRunRow]:
    with session_scope(engine) as s:
        return list(
            s.scalars(
                select(EvaluationRunRow)
                .where(EvaluationRunRow.experiment_id == exp.id)
                .order_by(EvaluationRunRow.family, EvaluationRunRow.repeat)
            )
        )


def database_now(engine: Engine) -> datetime:
    with session_scope(engine) as s:
        return _naive(s.execute(select(db_now())).scalar_one())
