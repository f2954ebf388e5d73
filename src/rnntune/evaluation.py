"""The final stage: each family's best configuration trained and tested ``repeats`` times.

Every (family, repeat) is a row in ``rnntune_evaluation_runs``: a job claimed by one worker at a
time (``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL; on SQLite the claim runs under the
database-wide file lock and BEGIN IMMEDIATE), kept alive by the worker's heartbeat, reclaimed when
that heartbeat goes stale, and resumed from its per-epoch checkpoint. A result is written only by
the worker that still holds the claim, so each repeat completes exactly once.

Staleness is judged on the database clock with the experiment's grace period. Retry limits
(rnntune.state): only errors raised by its training count toward failing a repeat
(``attempts``); a repeat taken from a silent worker ``MAX_REPEAT_RECLAIMS`` times (a repeat that
keeps killing its worker, e.g. out of memory) is failed with that reason instead of looping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.exc import IntegrityError

from rnntune import state
from rnntune.config import ExperimentConfig, Runtime
from rnntune.experiment import Experiment
from rnntune.faults import failpoint
from rnntune.storage import EvaluationRunRow, db_now, exclusive, is_sqlite, session_scope
from rnntune.train import (
    FitResult,
    classification_metrics,
    fit,
    fit_ensemble,
    model_and_train_config,
    predict_proba,
)

log = logging.getLogger(__name__)

MAX_ATTEMPTS = state.MAX_REPEAT_ERRORS  # kept for callers; the limit is set in rnntune.state
EvalCounts = state.EvalCounts


@dataclass(frozen=True)
class Job:
    id: int
    family: str
    repeat: int
    seed: int
    params: dict[str, Any]
    attempts: int


def ensure_jobs(engine: Engine, exp: Experiment, family: str, params: dict[str, Any]) -> None:
    """Create the family's repeat jobs once its tuning is done (idempotent across workers)."""
    cfg = exp.config
    with exclusive(engine, f"rnntune:eval-jobs:{cfg.name}:{family}"):
        with session_scope(engine) as s:
            have = set(
                s.scalars(
                    select(EvaluationRunRow.repeat).where(
                        EvaluationRunRow.experiment_id == exp.id,
                        EvaluationRunRow.family == family,
                    )
                )
            )
            for r in range(cfg.repeats):
                if r not in have:
                    s.add(
                        EvaluationRunRow(
                            experiment_id=exp.id,
                            family=family,
                            repeat=r,
                            seed=cfg.repeat_seed(r),
                            params=dict(params),
                            status="pending",
                            attempts=0,
                        )
                    )
    failpoint("repeat.after_create")
    # The unique constraint (experiment, family, repeat) backs the lock up: a duplicate insert
    # raises IntegrityError, which only happens if another worker already did the work.


def ensure_jobs_safely(engine: Engine, exp: Experiment, family: str, params: dict) -> None:
    try:
        ensure_jobs(engine, exp, family, params)
    except IntegrityError:
        log.debug("evaluation jobs of %s were created by another worker", family)


def claim_job(
    engine: Engine, exp: Experiment, worker_id: str, grace_period: int, dead_workers: set[str]
) -> Job | None:
    """Claim a pending repeat, or one whose worker went silent; repeats are spread over families.

    Silent: its heartbeat is older than ``grace_period`` on the database clock, or its worker is
    known dead (worker.dead_workers). A repeat reclaimed ``MAX_REPEAT_RECLAIMS`` times already
    is failed instead (its worker keeps dying), and the next one is tried.
    """
    while True:
        now = state.database_now(engine)
        stale = now - timedelta(seconds=grace_period)
        reclaimable = and_(
            EvaluationRunRow.status == "running",
            or_(
                EvaluationRunRow.heartbeat_at < stale,
                EvaluationRunRow.worker_id.in_(sorted(dead_workers) or [""]),
            ),
        )
        query = (
            select(EvaluationRunRow)
            .where(EvaluationRunRow.experiment_id == exp.id)
            .where(or_(EvaluationRunRow.status == "pending", reclaimable))
            .order_by(EvaluationRunRow.repeat, EvaluationRunRow.family)
            .limit(1)
        )
        url = engine.url.render_as_string(hide_password=False)
        if is_sqlite(url):
            with exclusive(engine, f"rnntune:eval-claim:{exp.name}"):
                job = _claim(engine, query, worker_id)
        else:
            job = _claim(engine, query.with_for_update(skip_locked=True), worker_id)
        if job is not _CAPPED:
            return job  # type: ignore[return-value]


_CAPPED = object()


def claim_group(
    engine: Engine,
    exp: Experiment,
    worker_id: str,
    grace_period: int,
    dead_workers: set[str],
    device: str,
    solo_families: frozenset[str] = frozenset(),
) -> list[Job]:
    """Claim up to k claimable repeats of one family in one transaction, to be trained as one
    ensemble (:func:`run_group`); k is :func:`group_size` of the family's configuration on
    ``device`` (1 for the families in ``solo_families``). Each repeat stays its own row: it is
    heartbeated, completed, handed back and reclaimed on its own, so a group whose worker dies
    is reclaimed repeat by repeat (as one group or several, or alone), each member resuming
    from its own checkpoint. The first repeat is chosen as :func:`claim_job` chooses; the
    others are that family's next claimable repeats. ``[]``: nothing to claim.
    """
    while True:
        now = state.database_now(engine)
        stale = now - timedelta(seconds=grace_period)
        claimable = and_(
            EvaluationRunRow.experiment_id == exp.id,
            or_(
                EvaluationRunRow.status == "pending",
                and_(
                    EvaluationRunRow.status == "running",
                    or_(
                        EvaluationRunRow.heartbeat_at < stale,
                        EvaluationRunRow.worker_id.in_(sorted(dead_workers) or [""]),
                    ),
                ),
            ),
        )

        def size(family: str, params: dict[str, Any]) -> int:
            if family in solo_families:
                return 1
            return group_size(family, params, exp.config, device)

        url = engine.url.render_as_string(hide_password=False)
        if is_sqlite(url):
            with exclusive(engine, f"rnntune:eval-claim:{exp.name}"):
                jobs = _claim_group(engine, claimable, worker_id, size, skip_locked=False)
        else:
            jobs = _claim_group(engine, claimable, worker_id, size, skip_locked=True)
        if jobs is not _CAPPED:
            return jobs  # type: ignore[return-value]


def _claim_group(
    engine: Engine,
    claimable: Any,
    worker_id: str,
    size: Callable[[str, dict[str, Any]], int],
    skip_locked: bool,
) -> list[Job] | object:
    def locked(q: Any) -> Any:
        return q.with_for_update(skip_locked=True) if skip_locked else q

    with session_scope(engine) as s:
        first = s.scalars(
            locked(
                select(EvaluationRunRow)
                .where(claimable)
                .order_by(EvaluationRunRow.repeat, EvaluationRunRow.family)
                .limit(1)
            )
        ).first()
        if first is None:
            return []
        rows = [first]
        k = size(first.family, dict(first.params))
        if k > 1:
            rows += s.scalars(
                locked(
                    select(EvaluationRunRow)
                    .where(
                        claimable,
                        EvaluationRunRow.family == first.family,
                        EvaluationRunRow.id != first.id,
                    )
                    .order_by(EvaluationRunRow.repeat)
                    .limit(k - 1)
                )
            ).all()
        taken = [_take(row, worker_id) for row in rows]
        jobs = [j for j in taken if j is not _CAPPED]
        return jobs if jobs or len(taken) == 0 else _CAPPED


def group_size(family: str, params: dict[str, Any], cfg: ExperimentConfig, device: str) -> int:
    """How many repeats of ``family`` to train as one ensemble on ``device`` (at most the
    experiment's repeats)."""
    from rnntune import ensemble

    if getattr(cfg, "resplit", False):
        return 1  # --resplit: each repeat trains on its own split, so members share no data
    model_cfg, _ = model_and_train_config(family, params, cfg, 1, 0, device)
    return max(1, min(cfg.repeats, ensemble.group_size(model_cfg, device)))


def _claim(engine: Engine, query: Any, worker_id: str) -> Job | None | object:
    with session_scope(engine) as s:
        row = s.scalars(query).first()
        if row is None:
            return None
        return _take(row, worker_id)


def _take(row: EvaluationRunRow, worker_id: str) -> Job | object:
    """Claim ``row`` (locked in the caller's transaction) for ``worker_id``; ``_CAPPED`` if it
    was failed instead because its workers keep going silent."""
    if row.status == "running":
        if row.reclaims >= state.MAX_REPEAT_RECLAIMS:
            log.error(
                "%s repeat %d: its worker went silent %d times running it; failed",
                row.family,
                row.repeat,
                row.reclaims + 1,
            )
            row.status = "failed"
            row.error = (
                f"its worker went silent {row.reclaims + 1} times running it (killed, out of "
                "memory?): see the workers' logs"
            )
            row.worker_id = None
            row.heartbeat_at = None
            return _CAPPED
        log.warning(
            "reclaiming %s repeat %d from silent worker %s",
            row.family,
            row.repeat,
            row.worker_id,
        )
        row.reclaims += 1
    row.status = "running"
    row.worker_id = worker_id
    row.heartbeat_at = db_now()
    if row.started_at is None:
        row.started_at = db_now()
    return Job(row.id, row.family, row.repeat, row.seed, dict(row.params), row.attempts)


def heartbeat(engine: Engine, job_id: int | Sequence[int], worker_id: str) -> bool:
    """Refresh the claim on one job or a group's (one statement); False means another worker
    has reclaimed one of them."""
    ids = [job_id] if isinstance(job_id, int) else list(job_id)
    with session_scope(engine) as s:
        res = s.execute(
            update(EvaluationRunRow)
            .where(
                EvaluationRunRow.id.in_(ids),
                EvaluationRunRow.worker_id == worker_id,
                EvaluationRunRow.status == "running",
            )
            .values(heartbeat_at=db_now())
        )
        assert isinstance(res, CursorResult)  # an UPDATE's result: it has a rowcount
        return res.rowcount == len(ids)


def release(engine: Engine, job: Job, worker_id: str, error: str | None = None) -> None:
    """Give the job back: stopping (no error: not counted), or after an error (counted; failed
    for good at ``MAX_REPEAT_ERRORS``)."""
    values: dict[str, Any] = {"status": "pending", "worker_id": None, "heartbeat_at": None}
    if error is not None:
        errors = job.attempts + 1
        values.update(
            attempts=errors,
            error=error,
            status="failed" if errors >= state.MAX_REPEAT_ERRORS else "pending",
        )
    with session_scope(engine) as s:
        s.execute(
            update(EvaluationRunRow)
            .where(
                EvaluationRunRow.id == job.id,
                EvaluationRunRow.worker_id == worker_id,
                EvaluationRunRow.status == "running",
            )
            .values(**values)
        )


def release_group(engine: Engine, jobs: Sequence[Job], worker_id: str) -> None:
    """Hand a group's unfinished repeats back in one transaction (stopping, a worker fault, or
    a training error whose member is not known: nothing is counted against them)."""
    if not jobs:
        return
    with session_scope(engine) as s:
        s.execute(
            update(EvaluationRunRow)
            .where(
                EvaluationRunRow.id.in_([j.id for j in jobs]),
                EvaluationRunRow.worker_id == worker_id,
                EvaluationRunRow.status == "running",
            )
            .values(status="pending", worker_id=None, heartbeat_at=None)
        )


def complete(engine: Engine, job: Job, worker_id: str, result: dict[str, Any]) -> bool:
    """Store the result if this worker still holds the claim. False: someone else owns it now."""
    with session_scope(engine) as s:
        res = s.execute(
            update(EvaluationRunRow)
            .where(
                EvaluationRunRow.id == job.id,
                EvaluationRunRow.worker_id == worker_id,
                EvaluationRunRow.status == "running",
            )
            .values(
                status="done", finished_at=db_now(), heartbeat_at=db_now(), error=None, **result
            )
        )
        assert isinstance(res, CursorResult)  # an UPDATE's result: it has a rowcount
        return res.rowcount == 1


def checkpoint_path(artifacts: str, cfg: ExperimentConfig, job: Job) -> Path:
    return (
        Path(artifacts)
        / "checkpoints"
        / cfg.name
        / "evaluation"
        / (f"{job.family}-repeat-{job.repeat:03d}.pt")
    )


def run_job(
    job: Job, exp: Experiment, splits: Any, runtime: Runtime, should_stop: Callable[[], bool]
) -> dict[str, Any]:
    """Train the family's best configuration from scratch with the repeat's seed; test it."""
    cfg = exp.config
    model_cfg, train_cfg = model_and_train_config(
        job.family, job.params, cfg, splits.X_train.shape[2], job.seed, runtime.device
    )
    ckpt = checkpoint_path(runtime.artifacts, cfg, job)
    result = fit(
        model_cfg,
        train_cfg,
        *splits.fit_parts(),
        checkpoint_path=ckpt,
        on_epoch=lambda _r: failpoint("repeat.after_checkpoint"),
        should_stop=should_stop,
    )
    # The checkpoint stays until the result is stored (remove_checkpoint, after complete()):
    # a worker killed in between resumes from the last epoch instead of retraining the repeat.
    return _tested(result, splits, runtime.device)


def run_group(
    jobs: Sequence[Job],
    exp: Experiment,
    splits: Any,
    runtime: Runtime,
    should_stop: Callable[[], bool],
    on_done: Callable[[Job, dict[str, Any]], None],
) -> None:
    """Train a claimed group of one family's repeats as one ensemble (``train.fit_ensemble``):
    each member as :func:`run_job` would train it alone, to within fp32 rounding. ``on_done``
    gets each repeat's tested result as soon as that member has finished, while the others
    may still train; every member's epoch checkpoint is at its solo path."""
    cfg = exp.config
    family = jobs[0].family
    model_cfg = None
    train_cfgs = []
    for job in jobs:
        model_cfg, train_cfg = model_and_train_config(
            family, job.params, cfg, splits.X_train.shape[2], job.seed, runtime.device
        )
        train_cfgs.append(train_cfg)
    assert model_cfg is not None
    fit_ensemble(
        model_cfg,
        train_cfgs,
        *splits.fit_parts(),
        checkpoint_paths=[checkpoint_path(runtime.artifacts, cfg, job) for job in jobs],
        on_epoch=lambda _results: failpoint("group.after_checkpoint"),
        on_member_done=lambda i, r: on_done(jobs[i], _tested(r, splits, runtime.device)),
        should_stop=should_stop,
    )


def _tested(result: FitResult, splits: Any, device: str) -> dict[str, Any]:
    """A repeat's stored result: test metrics of the trained model and its training history."""
    # The test split is used here, and only here.
    proba = predict_proba(result.model, splits.X_test, device=device)
    metrics = classification_metrics(splits.y_test, proba)
    confusion = metrics.pop("confusion_matrix")
    report_text = metrics.pop("classification_report")
    out = {
        "metrics": {k: float(v) for k, v in metrics.items()},
        "confusion_matrix": confusion,
        "classification_report": report_text,
        "epochs_trained": result.epochs_trained,
        "epochs_history": [
            {
                "epoch": h.epoch,
                "train_loss": h.train_loss,
                "val_metric": h.val_metric,
                "val_loss": h.val_loss,
            }
            for h in result.history
        ],
        "train_seconds": round(result.train_seconds, 3),
    }
    return out


def remove_checkpoint(runtime: Runtime, cfg: ExperimentConfig, job: Job) -> None:
    try:
        checkpoint_path(runtime.artifacts, cfg, job).unlink(missing_ok=True)
    except OSError:  # a checkpoint left behind costs disk, not correctness
        log.warning("could not remove the checkpoint of %s repeat %d", job.family, job.repeat)


def progress(engine: Engine, exp: Experiment) -> dict[str, EvalCounts]:
    return state.eval_counts(engine, exp)


def all_done(engine: Engine, exp: Experiment, families: list[str]) -> bool:
    """Every repeat of ``families`` is done or failed for good."""
    prog = state.eval_counts(engine, exp)
    return all(prog[f].over(exp.config.repeats) for f in families)


def runs(engine: Engine, exp: Experiment) -> list[EvaluationRunRow]:
    return state.eval_runs(engine, exp)
