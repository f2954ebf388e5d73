"""rnntune's error hierarchy.

Every message says what is wrong *and* what to do about it, in one line: the CLI prints it as
``Error: <message>`` and exits non-zero, without a traceback.
"""

from __future__ import annotations

__all__ = [
    "RnntuneError",
    "ConfigError",
    "DataError",
    "StorageError",
    "ExperimentNotFoundError",
    "ExperimentMismatchError",
    "FingerprintMismatchError",
    "TrainingError",
    "WorkerFaultError",
    "Interrupted",
    "DatabaseUnavailableError",
    "first_line",
    "error_reason",
]


class RnntuneError(Exception):
    """Base class: an error the user can act on (the message names the fix)."""


class ConfigError(RnntuneError):
    """A bad option, environment variable or experiment file."""


class DataError(RnntuneError):
    """The data cannot be loaded or does not fit the task."""


class StorageError(RnntuneError):
    """The study database cannot be reached or is in a bad state."""


class DatabaseUnavailableError(StorageError):
    """The study database stopped answering (a restart, a network cut): worth waiting out.

    Told apart from other StorageErrors by its type, never by its message: a worker's retry
    loop waits these out and gives up on every other StorageError at once.
    """


class ExperimentNotFoundError(RnntuneError):
    """No experiment of that name in the storage."""


class ExperimentMismatchError(RnntuneError):
    """An experiment name reused with a different configuration."""


class FingerprintMismatchError(RnntuneError):
    """The data a worker loaded is not the data the experiment was registered with."""


class TrainingError(RnntuneError):
    """Training diverged (NaN/inf loss) or failed in a way that retrying will not fix."""


class WorkerFaultError(RnntuneError):
    """This worker cannot do work (unwritable or full artifact directory, lost database).

    Not the trial's fault: the trial is handed back for another worker, and this one exits.
    """


class Interrupted(RnntuneError):  # noqa: N818 - it is a control-flow signal, not a failure
    """Raised inside a training loop when the process was asked to stop (SIGTERM/SIGINT)."""


def first_line(e: BaseException) -> str:
    """The first non-blank line of an error's message, or its type name when it has none.

    For a database error (SQLAlchemy's wrapper) the driver's own message is used: the wrapper's
    adds the SQL statement and a link on further lines. The one place this is done: an empty or
    blank message must not raise IndexError inside an error handler.
    """
    text = str(getattr(e, "orig", None) or e)
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return type(e).__name__


def error_reason(e: BaseException, limit: int = 500) -> str:
    """``Type: first line`` of an error, at most ``limit`` characters: a failed trial's or
    repeat's stored reason."""
    name, line = type(e).__name__, first_line(e)
    return (name if line == name else f"{name}: {line}")[:limit]
