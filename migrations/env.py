"""Alembic environment for rnntune's own tables.

rnntune's schema is versioned in its own table (``rnntune_alembic_version``) so it never collides
with Optuna's schema management, which lives in the same database.
"""

from __future__ import annotations

from alembic import context

from rnntune.storage import Base
from rnntune.storage._migrate import VERSION_TABLE

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only `rnntune init` runs migrations
    raise RuntimeError("run migrations through `rnntune init`, which passes a connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    # Only our tables: Optuna's tables in the same database are not ours to diff or touch.
    include_name=lambda name, type_, _parent: type_ != "table" or name.startswith("rnntune_"),
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
