"""Schema upgrades for rnntune's tables (Alembic, with a version table of its own).

Only ``rnntune init`` upgrades; other processes check and refuse to run on an old schema, so no
process ever races another to create tables.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from rnntune.exceptions import StorageError

from ._locks import exclusive

VERSION_TABLE = "rnntune_alembic_version"


def _config() -> Config:
    import rnntune.migrations

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(rnntune.migrations.__file__).parent))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Bring rnntune's tables to the newest revision (idempotent, serialised across processes)."""
    with exclusive(engine, "rnntune:migrate"):
        cfg = _config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")


def check_schema(engine: Engine) -> None:
    current = current_revision(engine)
    if current != head_revision():
        raise StorageError(
            f"rnntune's tables are at revision {current or 'none'}, this version needs "
            f"{head_revision()}: run `rnntune init` against this storage first"
        )
