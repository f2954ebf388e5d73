"""rnntune's tables: experiments, evaluation runs, workers.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rnntune_experiments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("config_hash", sa.String(80), nullable=False),
        sa.Column("data_spec", sa.Text(), nullable=False),
        sa.Column("data_fingerprint", sa.String(80), nullable=False),
        sa.Column("data_summary", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("report_path", sa.Text(), nullable=True),
    )
    op.create_table(
        "rnntune_evaluation_runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "experiment_id",
            sa.Integer(),
            sa.ForeignKey("rnntune_experiments.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("family", sa.String(16), nullable=False),
        sa.Column("repeat", sa.Integer(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("worker_id", sa.String(255), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("confusion_matrix", sa.JSON(), nullable=True),
        sa.Column("classification_report", sa.Text(), nullable=True),
        sa.Column("epochs_trained", sa.Integer(), nullable=True),
        sa.Column("epochs_history", sa.JSON(), nullable=True),
        sa.Column("train_seconds", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.UniqueConstraint("experiment_id", "family", "repeat", name="uq_eval_repeat"),
    )
    op.create_index(
        "ix_rnntune_evaluation_runs_experiment_id", "rnntune_evaluation_runs", ["experiment_id"]
    )
    op.create_index("ix_rnntune_evaluation_runs_status", "rnntune_evaluation_runs", ["status"])
    op.create_table(
        "rnntune_workers",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column(
            "experiment_id",
            sa.Integer(),
            sa.ForeignKey("rnntune_experiments.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("process_token", sa.String(255), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("task", sa.String(255), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(), nullable=True),
        sa.Column("trials_done", sa.Integer(), nullable=False),
        sa.Column("repeats_done", sa.Integer(), nullable=False),
    )
    op.create_index("ix_rnntune_workers_experiment_id", "rnntune_workers", ["experiment_id"])


def downgrade() -> None:
    op.drop_table("rnntune_workers")
    op.drop_table("rnntune_evaluation_runs")
    op.drop_table("rnntune_experiments")
