"""The one place rnntune reaches into Optuna's private API.

Optuna's public API has no way to name a study's or a trial's row, to get the RDBStorage under a
study, or to query heartbeats on the database's clock, and the claim protocol needs all three.
Every such use is here, each with why and the Optuna version it was checked against (read in the
installed package's source), so an Optuna upgrade is checked in one file: re-read each cited
source line, then run tests/test_claim_protocol.py and tests/test_faults.py.

Layering: imports Optuna and SQLAlchemy only (nothing of rnntune's), so any module may use it.
"""

from __future__ import annotations

from typing import Any

from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, Trial, TrialState
from sqlalchemy import Executable, select

__all__ = [
    "OPTUNA_CHECKED",
    "rdb_storage",
    "running_trial_heartbeats",
    "study_id",
    "study_storage",
    "trial_id",
]

OPTUNA_CHECKED = "5.0.0"  # the Optuna version every use below was checked against


def study_storage(study: Any) -> BaseStorage:
    """The storage a study writes through (Optuna's cache layer over the RDBStorage).

    Why: rnntune reads all trials without copying them and writes trial/study system attributes
    by id, which ``optuna.Study`` does not offer. Through the cache, as Optuna's own ``Trial``
    does, so what a worker reads agrees with what its ``Trial`` objects wrote.
    Checked against Optuna 5.0.0: ``Study.__init__`` sets ``self._storage`` (study/study.py).
    """
    storage: BaseStorage = study._storage
    return storage


def rdb_storage(study: Any) -> RDBStorage:
    """The RDBStorage under a study, past Optuna's cache layer.

    Why: the claim protocol needs the engine (family lock, heartbeat query) and uncached reads of
    one trial (another worker may have changed it). Checked against Optuna 5.0.0:
    ``storages.get_storage`` wraps an RDBStorage in ``_CachedStorage``, which keeps it as
    ``self._backend`` (storages/__init__.py, storages/_cached_storage.py).
    """
    storage = study_storage(study)
    backend = getattr(storage, "_backend", storage)
    assert isinstance(backend, RDBStorage), "rnntune studies live in an RDB storage"
    return backend


def study_id(study: Any) -> int:
    """A study's row id (what every storage method takes).

    Why: the storage methods rnntune calls take the id, and ``Study`` has no public one.
    Checked against Optuna 5.0.0: ``Study.__init__`` sets ``self._study_id`` (study/study.py).
    """
    return int(study._study_id)


def trial_id(trial: Trial | FrozenTrial) -> int:
    """A trial's row id (``number`` counts within a study; the storage needs the row).

    Why: heartbeats, system attributes and state changes of a trial by id, for trials this worker
    did not ask for itself (stale ones, retries). Checked against Optuna 5.0.0: ``Trial.__init__``
    and ``FrozenTrial.__init__`` both set ``self._trial_id`` (trial/_trial.py, trial/_frozen.py).
    """
    return int(trial._trial_id)


def running_trial_heartbeats(sid: int) -> Executable:
    """``(trial_id, last heartbeat or None)`` of a study's RUNNING trials, as one query.

    Why: staleness must be judged on the database's clock with the experiment's grace period,
    and a RUNNING trial without any heartbeat told apart (an orphaned claim); Optuna's
    ``_get_stale_trial_ids`` does neither. Checked against Optuna 5.0.0:
    ``optuna.storages._rdb.models`` has ``TrialModel(trial_id, study_id, state)`` and
    ``TrialHeartbeatModel(trial_id, heartbeat)``, the heartbeat stamped with the database's
    ``current_timestamp()`` (storages/_rdb/models.py).
    """
    from optuna.storages._rdb import models

    trial, beat = models.TrialModel, models.TrialHeartbeatModel
    return (
        select(trial.trial_id, beat.heartbeat)
        .outerjoin(beat, beat.trial_id == trial.trial_id)
        .where(trial.study_id == sid, trial.state == TrialState.RUNNING)
    )
