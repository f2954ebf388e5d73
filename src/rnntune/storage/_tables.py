"""rnntune's own tables, beside Optuna's. Alembic migrations in ``migrations/`` create them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    # Naive UTC everywhere: SQLite has no time zones and the two backends must compare alike.
    return datetime.now(UTC).replace(tzinfo=None)


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
    # pending -> running -> done; a stale running claim goes back to pending (reclaimed).
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending", index=True)
    worker_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
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
    status: Mapped[str] = mapped_column(String(32), nullable=False, default="starting")
    task: Mapped[str | None] = mapped_column(String(255), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    trials_done: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    repeats_done: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
