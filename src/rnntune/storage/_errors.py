"""Which database errors are an outage worth waiting out: decided by the error's type.

Never by its message: messages change with the driver, the server's version and its locale.
"""

from __future__ import annotations

from optuna.exceptions import StorageInternalError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from rnntune.exceptions import DatabaseUnavailableError, StorageError

__all__ = ["DATABASE_ERRORS", "is_transient"]

# The database, not the work, failed: never a trial's or a repeat's error.
# - OperationalError: SQLAlchemy's class for the DB-API's, which psycopg2 raises for SQLSTATE
#   classes 08 (connection), 53 (insufficient resources), 57 (operator intervention: a server
#   shutting down or restarting) and 40 (TransactionRollbackError: a serialization failure or
#   deadlock), and sqlite3 for "database is locked": each one passes.
# - InterfaceError: psycopg2's "connection already closed" after a server restart.
# - StorageInternalError: Optuna's wrapper of a failed commit (its cause is one of the above).
# - PoolTimeoutError: no pooled connection came free in time (the server is slow or away).
# - StorageError: rnntune's own wrapping (session_scope, check_schema).
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    StorageError,
    OperationalError,
    InterfaceError,
    StorageInternalError,
    PoolTimeoutError,
)


def is_transient(e: BaseException) -> bool:
    """A database outage (a restart, a network cut) worth waiting out, not an error to give up on.

    rnntune's own StorageErrors are transient only as DatabaseUnavailableError (a lost
    connection); the others (no tables, a newer schema, an outage past the worker's limit) are
    not.
    """
    if isinstance(e, StorageError):
        return isinstance(e, DatabaseUnavailableError)
    return isinstance(e, DATABASE_ERRORS)
