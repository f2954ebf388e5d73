"""The final stage: each family's best configuration trained and tested ``repeats`` times.

Every (family, repeat) is a row in ``rnntune_evaluation_runs``: a job claimed by one worker at a
time (``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL; on SQLite the claim runs under the
database-wide file lock and BEGIN IMMEDIATE), kept alive by the worker's heartbeat, reclaimed when
that heartbeat goes stale, and resumed from its per-epoch checkpoint. A result is written only by
the worker that still holds the claim, so each repeat completes exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from rnntune.config import ExperimentConfig, Runtime
from rnntune.experiment import Experiment
from rnntune.storage import EvaluationRunRow, exclusive, is_sqlite, session_scope, utcnow
from rnntune.train import classification_metrics, fit, predict_proba
from rnntune.tuning import model_and_train_config

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5  # a repeat that raises this often is marked failed instead of looping forever


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
    """Claim a pending repeat, or one whose worker went silent; repeats are spread over families."""
    now = utcnow()
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
            return _claim(engine, query, worker_id, now)
    return _claim(engine, query.with_for_update(skip_locked=True), worker_id, now)


def _claim(engine: Engine, query: Any, worker_id: str, now: Any) -> Job | None:
    with session_scope(engine) as s:
        row = s.scalars(query).first()
        if row is None:
            return None
        if row.status == "running":
            log.warning(
                "reclaiming %s repeat %d from silent worker %s",
                row.family,
                row.repeat,
                row.worker_id,
            )
        row.status = "running"
        row.worker_id = worker_id
        row.heartbeat_at = now
        row.attempts += 1
        row.started_at = row.started_at or now
        return Job(row.id, row.family, row.repeat, row.seed, dict(row.params), row.attempts)


def heartbeat(engine: Engine, job_id: int, worker_id: str) -> bool:
    """Refresh the claim; False means another worker has reclaimed this job."""
    with session_scope(engine) as s:
        res = s.execute(
            update(EvaluationRunRow)
            .where(
                EvaluationRunRow.id == job_id,
                EvaluationRunRow.worker_id == worker_id,
                EvaluationRunRow.status == "running",
            )
            .values(heartbeat_at=utcnow())
        )
        return res.rowcount == 1


def release(engine: Engine, job: Job, worker_id: str, error: str | None = None) -> None:
    """Give the job back (stopping, or after an error: failed for good after MAX_ATTEMPTS)."""
    status = "failed" if error is not None and job.attempts >= MAX_ATTEMPTS else "pending"
    with session_scope(engine) as s:
        s.execute(
            update(EvaluationRunRow)
            .where(
                EvaluationRunRow.id == job.id,
                EvaluationRunRow.worker_id == worker_id,
                EvaluationRunRow.status == "running",
            )
            .values(status=status, worker_id=None, heartbeat_at=None, error=error)
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
                status="done", finished_at=utcnow(), heartbeat_at=utcnow(), error=None, **result
            )
        )
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
        should_stop=should_stop,
    )
    # The test split is used here, and only here.
    proba = predict_proba(result.model, splits.X_test, device=runtime.device)
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
    ckpt.unlink(missing_ok=True)
    return out


@dataclass(frozen=True)
class EvalCounts:
    done: int = 0
    running: int = 0
    pending: int = 0
    failed: int = 0


def progress(engine: Engine, exp: Experiment) -> dict[str, EvalCounts]:
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


def all_done(engine: Engine, exp: Experiment, families: list[str]) -> bool:
    """Every repeat of ``families`` is done or failed for good."""
    prog = progress(engine, exp)
    return all(prog[f].done + prog[f].failed >= exp.config.repeats for f in families)


def runs(engine: Engine, exp: Experiment) -> list[EvaluationRunRow]:
    with session_scope(engine) as s:
        return list(
            s.scalars(
                select(EvaluationRunRow)
                .where(EvaluationRunRow.experiment_id == exp.id)
                .order_by(EvaluationRunRow.family, EvaluationRunRow.repeat)
            )
        )
