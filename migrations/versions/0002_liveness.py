"""Liveness by the database clock: the experiment's heartbeat policy, where a worker's pid
means something (boot id + PID namespace), and stale reclaims of a repeat apart from its errors.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rnntune_experiments") as t:
        t.add_column(
            sa.Column("heartbeat_interval", sa.Integer(), nullable=False, server_default="5")
        )
        t.add_column(sa.Column("grace_period", sa.Integer(), nullable=False, server_default="30"))
    with op.batch_alter_table("rnntune_evaluation_runs") as t:
        t.add_column(sa.Column("reclaims", sa.Integer(), nullable=False, server_default="0"))
    # attempts counted claims (hand-backs and reclaims too); it counts errors from now on. The
    # past errors are not known: at least one where an error was recorded.
    op.execute(
        "UPDATE rnntune_evaluation_runs SET attempts = "
        "CASE WHEN error IS NULL THEN 0 ELSE 1 END WHERE status <> 'failed'"
    )
    with op.batch_alter_table("rnntune_workers") as t:
        t.add_column(sa.Column("boot_id", sa.String(64), nullable=True))
        t.add_column(sa.Column("pid_namespace", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rnntune_workers") as t:
        t.drop_column("pid_namespace")
        t.drop_column("boot_id")
    with op.batch_alter_table("rnntune_evaluation_runs") as t:
        t.drop_column("reclaims")
    with op.batch_alter_table("rnntune_experiments") as t:
        t.drop_column("grace_period")
        t.drop_column("heartbeat_interval")
