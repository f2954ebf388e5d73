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
]


class RnntuneError(Exception):
    """Base class: an error the user can act on (the message names the fix)."""


class ConfigError(RnntuneError):
    """A bad option, environment variable or experiment file."""


class DataError(RnntuneError):
    """The data cannot be loaded or does not fit the task."""


class StorageError(RnntuneError):
    """The study database cannot be reached or is in a bad state."""


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
