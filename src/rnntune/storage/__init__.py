"""The study database: URLs, engine, Optuna storage, rnntune's tables, locks and migrations.

Also the two boundaries every other module goes through: :mod:`._optuna` (the only use of
Optuna's private API) and :mod:`._errors` (which database errors are an outage, by type).
"""

from ._engine import (
    MAX_OVERFLOW,
    POOL_SIZE,
    StorageRole,
    artifact_store,
    check_local_filesystem,
    engine_kwargs,
    filesystem_type,
    load_study,
    open_optuna_storage,
)
from ._errors import DATABASE_ERRORS, is_transient
from ._locks import exclusive
from ._migrate import check_schema, current_revision, head_revision, upgrade
from ._optuna import (
    OPTUNA_CHECKED,
    rdb_storage,
    running_trial_heartbeats,
    study_id,
    study_storage,
    trial_id,
)
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
    "DATABASE_ERRORS",
    "DEFAULT_STORAGE",
    "MAX_OVERFLOW",
    "OPTUNA_CHECKED",
    "POOL_SIZE",
    "StorageRole",
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
    "is_transient",
    "rdb_storage",
    "running_trial_heartbeats",
    "study_id",
    "study_storage",
    "trial_id",
    "utcnow",
]
