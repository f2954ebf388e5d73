"""rnntune's own tables, beside Optuna's. Alembic migrations in ``migrations/`` create them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement


def utcnow() -> datetime:
    # Naive UTC everywhere: SQLite has no time zones and the two backends must compare alike.
    return datetime.now(UTC).replace(tzinfo=None)


class db_now(FunctionElement[datetime]):  # noqa: N801 - reads as a SQL function
    """The database's clock, as naive UTC: the one clock every staleness rule is judged by.

    Hosts' clocks drift apart; the database's is one clock for everyone. Heartbeats are written
    with it, and compared with it (``SELECT db_now()`` then ``heartbeat_at < now - grace``), so a
    host whose clock is off never reclaims live work nor loses its own.
    """

    type = DateTime()
    inherit_cache = True


@compiles(db_now, "postgresql")
def _db_now_pg(_element: db_now, _compiler: SQLCompiler, **_kw: Any) -> str:
    return "(now() AT TIME ZONE 'UTC')"


@compiles(db_now)
def _db_now_sqlite(_element: db_now, _compiler: SQLCompiler, **_kw: Any) -> str:
    # SQLite's 'now' is UTC; %f keeps milliseconds (CURRENT_TIMESTAMP has whole seconds).
    return "strftime('%Y-%m-%d %H:%M:%f', 'now')"


class Base(DeclarativeBase):
    pass


class ExperimentRow(Base):
    """An experiment: the whole configuration a worker needs, so workers hold no state."""

    __tablename__ = "rnntune_experiments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    config_hash: Mapped[str] = mapped_column(String(80), nullable=False)
    data_spec: Mapped[str] = mapped_column(Text, nullable=False)
    data_fingerprint: Mapped[str] = mapped_column(String(80), nullable=False)
    data_summary: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    report_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The liveness policy, part of the experiment (every worker judges staleness alike).
    heartbeat_interval: Mapped[int] = mapped_column(Integer, nullable=False, default=5)
    grace_period: Mapped[int] = mapped_column(Integer, nullable=False, default=30)


class EvaluationRunRow(Base):
    """One (family, repeat) of the final evaluation: a job claimed by one worker at a time."""

    __tablename__ = "rnntune_evaluation_runs"
    __table_args__ = (UniqueConstraint("experiment_id", "family", "repeat", name="uq_eval_repeat"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("rnntune_experiments.id", ondelete="CASCADE"), nullable=False, index=True
    )
    family: Mapped[str] = mapped_column(String(16), nullable=False)
    repeat: Mapped[int] = mapped_column(Integer, nullable=False)
    seed: Mapped[int] = mapped_column(Integer, nullable=False)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    # pending -> running -> done | failed; a stale running claim is reclaimed (running again).
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending", index=True)
    worker_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # Errors raised by its training (not claims): failed for good at state.MAX_REPEAT_ERRORS.
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # Times it was taken from a worker that went silent: failed at state.MAX_REPEAT_RECLAIMS.
    reclaims: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    confusion_matrix: Mapped[list[list[int]] | None] = mapped_column(JSON, nullable=True)
    classification_report: Mapped[str | None] = mapped_column(Text, nullable=True)
    epochs_trained: Mapped[int | None] = mapped_column(Integer, nullable=True)
    epochs_history: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    train_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class WorkerRow(Base):
    """A worker process seen alive: for `rnntune status` and for reaping a dead local worker."""

    __tablename__ = "rnntune_workers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("rnntune_experiments.id", ondelete="CASCADE"), nullable=False, index=True
    )
    hostname: Mapped[str] = mapped_column(String(255), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    # Identifies the process beyond its pid (pid reuse): the kernel boot id + process start time.
    process_token: Mapped[str] = mapped_column(String(255), nullable=False)
    # Where that pid means something: the kernel (boot id) and the PID namespace (inode of
    # /proc/self/ns/pid). Only a reader in both may judge the pid; None: it cannot be judged.
    boot_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    pid_namespace: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    status: Mapped[str] = mapped_column(String(32), nullable=False, default="starting")
    task: Mapped[str | None] = mapped_column(String(255), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    trials_done: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    repeats_done: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
