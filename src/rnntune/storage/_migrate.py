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
from sqlalchemy.exc import OperationalError

from rnntune.exceptions import DatabaseUnavailableError, StorageError, first_line
from rnntune.faults import failpoint

from ._locks import exclusive
from ._url import mask_url

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


def _known(revision: str) -> bool:
    try:
        return ScriptDirectory.from_config(_config()).get_revision(revision) is not None
    except Exception:  # noqa: BLE001 - alembic raises several types for an unknown revision
        return False


def _newer_schema(engine: Engine, current: str) -> StorageError:
    return StorageError(
        f"rnntune's tables at {mask_url(str(engine.url))} are at revision {current}, which this "
        f"rnntune ({_version()}) does not know: a newer rnntune upgraded them; install that "
        "version here (every process on a study must run the same rnntune)"
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rnntune")
    except PackageNotFoundError:
        return "unknown version"


def upgrade(engine: Engine) -> None:
    """Bring rnntune's tables to the newest revision (idempotent, serialised across processes)."""
    current = current_revision(engine)
    if current is not None and not _known(current):
        raise _newer_schema(engine, current)
    with exclusive(engine, "rnntune:migrate"):
        cfg = _config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            # The whole upgrade is one transaction: stopped here, it is rolled back.
            failpoint("migrate.before_commit")


def check_schema(engine: Engine) -> None:
    try:
        current = current_revision(engine)
    except OperationalError as e:
        # The same type as session_scope's, so a worker's db_retry waits the outage out.
        raise DatabaseUnavailableError(
            f"lost the study database at {mask_url(str(engine.url))} "
            f"({first_line(e)}): check that it is "
            "running and reachable, then rerun"
        ) from e
    if current is None:
        raise StorageError(
            f"the database at {mask_url(str(engine.url))} has no rnntune tables (it may be "
            "another application's Optuna database): point --storage at rnntune's database, or "
            "run `rnntune init` on this one first"
        )
    if not _known(current):
        raise _newer_schema(engine, current)
    if current != head_revision():
        raise StorageError(
            f"rnntune's tables are at revision {current or 'none'}, this version needs "
            f"{head_revision()}: run `rnntune init` against this storage first"
        )
