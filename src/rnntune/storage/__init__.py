"""The study database: URLs, engine, Optuna storage, rnntune's tables, locks and migrations."""

from ._engine import (
    MAX_OVERFLOW,
    POOL_SIZE,
    artifact_store,
    check_local_filesystem,
    engine_kwargs,
    filesystem_type,
    load_study,
    open_optuna_storage,
)
from ._locks import exclusive
from ._migrate import check_schema, current_revision, head_revision, upgrade
from ._roles import ensure_roles, read_role_password, scram_verifier
from ._session import session_scope
from ._tables import Base, EvaluationRunRow, ExperimentRow, WorkerRow, db_now, utcnow
from ._url import (
    DEFAULT_STORAGE,
    is_sqlite,
    mask_url,
    normalize_url,
    sqlite_path,
    storage_from_env,
)

__all__ = [
    "DEFAULT_STORAGE",
    "MAX_OVERFLOW",
    "MAX_RETRY",
    "POOL_SIZE",
    "Base",
    "EvaluationRunRow",
    "ExperimentRow",
    "WorkerRow",
    "artifact_store",
    "check_local_filesystem",
    "check_schema",
    "current_revision",
    "db_now",
    "engine_kwargs",
    "ensure_roles",
    "filesystem_type",
    "exclusive",
    "head_revision",
    "is_sqlite",
    "load_study",
    "mask_url",
    "normalize_url",
    "read_role_password",
    "scram_verifier",
    "open_optuna_storage",
    "session_scope",
    "sqlite_path",
    "storage_from_env",
    "upgrade",
    "utcnow",
]


def __getattr__(name: str) -> object:
    # The retry limits are set in rnntune.state (which imports this package): re-exported lazily.
    if name == "MAX_RETRY":
        from rnntune.state import MAX_RETRY

        return MAX_RETRY
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
