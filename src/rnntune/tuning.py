"""The only module that talks to Optuna's samplers and pruners: search space, claim, objective.

Exact budgets (issue: "the number of finished trials equals the budget"). ``MaxTrialsCallback``
overshoots by up to one trial per worker (optuna#3518) because the check and the creation of a
trial are separate steps. Here every step that changes the number of *live* trials of a family
(finished + running + waiting) happens under one cross-process lock per family
(:func:`rnntune.storage.exclusive`: a PostgreSQL advisory lock, or a file lock on SQLite):

* creating a trial (``study.ask()`` when no trial is WAITING) only while live < budget;
* popping a WAITING retry (``ask()`` pops before it creates) — no change in live;
* failing a stale trial and enqueueing its retry — no change in live, as one step.

A trial that finishes COMPLETE or PRUNED stays live; one that FAILs by an exception leaves the
count, so another trial is created in its place. Live therefore never exceeds the budget, and the
claim loop runs until finished == budget: exactly the budget, with any number of workers.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, Trial, TrialState

from rnntune.config import ExperimentConfig, Runtime
from rnntune.exceptions import Interrupted, TrainingError
from rnntune.storage import exclusive

if TYPE_CHECKING:  # torch is imported only where a model is trained
    from rnntune.models import ModelConfig
    from rnntune.train import EpochResult, FitResult, TrainConfig

log = logging.getLogger(__name__)

WORKER_ATTR = "rnntune:worker"
REASON_ATTR = "rnntune:fail_reason"
# User attributes that describe one attempt at a trial (not carried over to its retry).
ATTEMPT_ATTRS = frozenset(
    {"resumed_from_epoch", "epochs_this_run", "epochs_trained", "best_epoch", "fail_reason"}
)
LIVE_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


# -- search space ---------------------------------------------------------------------------
def distributions(space: dict[str, dict[str, Any]]) -> dict[str, BaseDistribution]:
    out: dict[str, BaseDistribution] = {}
    for name, spec in space.items():
        kind = spec["type"]
        if kind == "categorical":
            out[name] = CategoricalDistribution(list(spec["choices"]))
        elif kind == "float":
            out[name] = FloatDistribution(
                spec["low"], spec["high"], log=bool(spec.get("log", False)), step=spec.get("step")
            )
        else:
            out[name] = IntDistribution(
                spec["low"],
                spec["high"],
                log=bool(spec.get("log", False)),
                step=spec.get("step", 1),
            )
    return out


def make_sampler(cfg: ExperimentConfig, seed: int) -> optuna.samplers.BaseSampler:
    # Constant liar: running trials count as bad results, so parallel workers spread out.
    return optuna.samplers.TPESampler(
        seed=seed, constant_liar=True, n_startup_trials=cfg.tpe_startup_trials
    )


def make_pruner(cfg: ExperimentConfig) -> optuna.pruners.BasePruner:
    p = cfg.pruner
    if p.type == "none":
        return optuna.pruners.NopPruner()
    if p.type == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    if p.type == "percentile":
        return optuna.pruners.PercentilePruner(
            p.percentile, n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.max_epochs)


# -- counting and claiming ------------------------------------------------------------------
@dataclass(frozen=True)
class Counts:
    complete: int = 0
    pruned: int = 0
    fail: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned

    @property
    def live(self) -> int:
        return self.finished + self.running + self.waiting

    def as_dict(self) -> dict[str, int]:
        return {
            "complete": self.complete,
            "pruned": self.pruned,
            "fail": self.fail,
            "running": self.running,
            "waiting": self.waiting,
        }


def rdb(study: optuna.Study) -> RDBStorage:
    """The RDBStorage under the study (Optuna wraps it in a cache layer)."""
    storage = getattr(study._storage, "_backend", study._storage)
    assert isinstance(storage, RDBStorage), "rnntune studies live in an RDB storage"
    return storage


def count_trials(study: optuna.Study) -> Counts:
    n: dict[TrialState, int] = {}
    for t in study._storage.get_all_trials(study._study_id, deepcopy=False):
        n[t.state] = n.get(t.state, 0) + 1
    return Counts(
        complete=n.get(TrialState.COMPLETE, 0),
        pruned=n.get(TrialState.PRUNED, 0),
        fail=n.get(TrialState.FAIL, 0),
        running=n.get(TrialState.RUNNING, 0),
        waiting=n.get(TrialState.WAITING, 0),
    )


def family_done(cfg: ExperimentConfig, counts: Counts) -> bool:
    """Tuning of a family is over: its budget is finished, or it failed too often to go on."""
    return (counts.finished >= cfg.trials and counts.running == 0 and counts.waiting == 0) or (
        gave_up(cfg, counts)
    )


def gave_up(cfg: ExperimentConfig, counts: Counts) -> bool:
    # A search space where nearly every trial raises would otherwise sample forever.
    return counts.fail >= max(10, 3 * cfg.trials) and counts.running == 0


def requeue(study: optuna.Study, frozen: FrozenTrial, max_retry: int) -> None:
    """Enqueue a retry of a failed trial: same parameters, its reported epochs inherited."""
    # The retry inherits the failed trial's attributes; these describe that attempt, not the
    # retry (a retry killed before its first epoch must not look as if it had resumed).
    frozen.system_attrs = {
        k: v for k, v in frozen.system_attrs.items() if not k.startswith("rnntune:")
    }
    frozen.user_attrs = {k: v for k, v in frozen.user_attrs.items() if k not in ATTEMPT_ATTRS}
    RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)(
        study, frozen
    )


def fail_and_requeue(
    study: optuna.Study, trial_ids: list[int], reason: str, max_retry: int
) -> list[int]:
    """Fail RUNNING trials and enqueue their retries (call under the family lock)."""
    storage = rdb(study)
    done = []
    for trial_id in trial_ids:
        try:
            # The reason first: once FAIL, a trial can no longer be annotated.
            storage.set_trial_system_attr(trial_id, REASON_ATTR, reason)
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # it finished, or another worker failed it first: nothing left to do
        requeue(study, storage.get_trial(trial_id), max_retry)
        done.append(trial_id)
    return done


def stale_trial_ids(study: optuna.Study, dead_workers: set[str], grace_period: int) -> list[int]:
    """RUNNING trials whose heartbeat is older than the grace period, or whose worker is dead.

    Optuna's own check skips trials that never sent a heartbeat (a worker killed between claim and
    first heartbeat): those count as stale once they are older than the grace period.
    """
    storage = rdb(study)
    stale = set(storage._get_stale_trial_ids(study._study_id))
    from datetime import datetime, timedelta

    cutoff = datetime.now() - timedelta(seconds=grace_period)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.system_attrs.get(WORKER_ATTR)
        if owner in dead_workers:
            stale.add(t._trial_id)
        elif owner is None and t.datetime_start is not None and t.datetime_start < cutoff:
            stale.add(t._trial_id)
    return sorted(stale)


def claim_trial(
    study: optuna.Study,
    cfg: ExperimentConfig,
    worker_id: str,
    dead_workers: set[str],
    grace_period: int,
    max_retry: int,
) -> Trial | None:
    """Claim the next trial of this family, or None when its budget is fully claimed."""
    storage = rdb(study)
    with exclusive(storage.engine, f"rnntune:claim:{study.study_name}"):
        stale = stale_trial_ids(study, dead_workers, grace_period)
        if stale:
            failed = fail_and_requeue(study, stale, "heartbeat stale: worker died", max_retry)
            log.warning("%s: retrying stale trial(s) %s", study.study_name, failed)
        counts = count_trials(study)
        if counts.waiting == 0 and (counts.live >= cfg.trials or gave_up(cfg, counts)):
            return None
        trial = study.ask(fixed_distributions=distributions(cfg.search_space))
        # Tag and heartbeat before letting go of the lock, so that a worker killed right now
        # leaves a trial that other workers recognise as stale.
        storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, worker_id)
        storage.record_heartbeat(trial._trial_id)
        return trial


# -- the objective --------------------------------------------------------------------------
def original_number(trial: Trial | FrozenTrial) -> int:
    system_attrs = (
        trial.system_attrs
        if isinstance(trial, FrozenTrial)
        else trial.storage.get_trial_system_attrs(trial._trial_id)
    )
    root = system_attrs.get("failed_trial")
    return int(root) if root is not None else trial.number


def checkpoint_path(artifacts: str, cfg: ExperimentConfig, family: str, root: int) -> Path:
    return Path(artifacts) / "checkpoints" / cfg.name / family / f"trial-{root:05d}.pt"


def model_and_train_config(
    family: str,
    params: dict[str, Any],
    cfg: ExperimentConfig,
    n_features: int,
    seed: int,
    device: str,
) -> tuple[ModelConfig, TrainConfig]:
    from rnntune.models import ModelConfig
    from rnntune.train import TrainConfig

    model_cfg = ModelConfig(
        cell=family,
        input_size=n_features,
        hidden_size=int(params["hidden_size"]),
        num_layers=int(params.get("num_layers", 1)),
        dropout=float(params.get("dropout", 0.0)),
        readout=str(params.get("readout", "last")),
    )
    train_cfg = TrainConfig(
        learning_rate=float(params["learning_rate"]),
        batch_size=int(params["batch_size"]),
        max_epochs=cfg.max_epochs,
        patience=cfg.patience,
        seed=seed,
        metric=cfg.objective,
        device=device,
    )
    return model_cfg, train_cfg


@dataclass(frozen=True)
class TrialOutcome:
    number: int
    state: TrialState
    value: float | None
    epochs_this_run: list[int]
    resumed_from_epoch: int
    # Time in the training loop (incl. checkpoint writes), less its per-epoch database calls.
    fit_seconds: float = 0.0


def run_trial(
    study: optuna.Study,
    trial: Trial,
    family: str,
    cfg: ExperimentConfig,
    splits: Any,
    runtime: Runtime,
    should_stop: Callable[[], bool],
    db_retry: Callable[[Callable[[], Any]], Any],
) -> TrialOutcome:
    """Train one claimed trial, resuming from its retry chain's checkpoint; tell the result.

    Raises Interrupted (after the trial was failed and re-enqueued) when asked to stop.

    Raises UpdateFinishedTrialError when the trial was taken over while it ran: this worker's
    heartbeat stopped for longer than the grace period (a long database outage, a stalled host),
    so a peer failed and re-enqueued it, and the retry owns the trial and its checkpoint now.
    The checkpoint is left in place; the caller drops the attempt and goes on.
    """
    epochs: list[int] = []  # the epochs this attempt actually trained
    root = original_number(trial)
    params = dict(trial.params)
    ckpt = checkpoint_path(runtime.artifacts, cfg, family, root)
    model_cfg, train_cfg = model_and_train_config(
        family, params, cfg, splits.X_train.shape[2], cfg.trial_seed(root), runtime.device
    )

    in_storage = [0.0]  # seconds spent on the database from inside the training loop
    prunes = not isinstance(study.pruner, optuna.pruners.NopPruner)

    def on_epoch(r: EpochResult) -> None:
        t = time.perf_counter()
        if not epochs:
            # Recorded as soon as it is known, so a test (or a person) can see where a retry
            # picked up even if this attempt is killed too.
            db_retry(lambda: trial.set_user_attr("resumed_from_epoch", r.epoch - 1))
        epochs.append(r.epoch)
        db_retry(lambda: trial.report(r.val_metric, r.epoch))
        prune = prunes and db_retry(trial.should_prune)
        in_storage[0] += time.perf_counter() - t
        if prune:
            raise optuna.TrialPruned(f"pruned at epoch {r.epoch}")

    from rnntune.train import fit

    t0 = time.perf_counter()
    try:
        result: FitResult = fit(
            model_cfg,
            train_cfg,
            *splits.fit_parts(),
            checkpoint_path=ckpt,
            on_epoch=on_epoch,
            should_stop=should_stop,
        )
    except optuna.TrialPruned:
        frozen = db_retry(lambda: study._storage.get_trial(trial._trial_id))
        epochs_done = sorted(frozen.intermediate_values)
        _record(trial, db_retry, {"epochs_trained": len(epochs_done), "epochs_this_run": epochs})
        db_retry(lambda: _tell(study, trial, TrialState.PRUNED))
        _remove(ckpt)
        last = frozen.intermediate_values[epochs_done[-1]] if epochs_done else None
        resumed = epochs[0] - 1 if epochs else 0
        return TrialOutcome(
            trial.number,
            TrialState.PRUNED,
            last,
            epochs,
            resumed,
            time.perf_counter() - t0 - in_storage[0],
        )
    except Interrupted:
        with exclusive(rdb(study).engine, f"rnntune:claim:{study.study_name}"):
            fail_and_requeue(study, [trial._trial_id], "worker stopped (SIGTERM)", max_retry=10)
        raise
    except UpdateFinishedTrialError:
        raise  # taken over by a retry: see the docstring
    except (TrainingError, Exception) as e:  # noqa: BLE001 - any bug in a trial fails that trial
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        log.error("%s trial %d failed: %s", family, trial.number, reason)
        db_retry(lambda: study._storage.set_trial_system_attr(trial._trial_id, REASON_ATTR, reason))
        _record(trial, db_retry, {"fail_reason": reason, "epochs_this_run": epochs})
        db_retry(lambda: _tell(study, trial, TrialState.FAIL))
        _remove(ckpt)
        return TrialOutcome(
            trial.number, TrialState.FAIL, None, epochs, 0, time.perf_counter() - t0 - in_storage[0]
        )
    fit_seconds = time.perf_counter() - t0 - in_storage[0]
    _record(
        trial,
        db_retry,
        # Each attribute is a round trip: keep to what a reader of the trial needs
        # (resumed_from_epoch was written at the first epoch).
        {
            "epochs_trained": result.epochs_trained,
            "best_epoch": result.best_epoch,
            "epochs_this_run": result.epochs_this_run,
            # A retry whose checkpoint already held the last epoch trains none: say so here.
            **({} if epochs else {"resumed_from_epoch": result.resumed_from_epoch}),
        },
    )
    value = float(result.best_val_metric)
    if not math.isfinite(value):
        db_retry(lambda: _tell(study, trial, TrialState.FAIL))
        return TrialOutcome(trial.number, TrialState.FAIL, None, result.epochs_this_run, 0)
    db_retry(lambda: _tell(study, trial, TrialState.COMPLETE, value))
    _remove(ckpt)
    return TrialOutcome(
        trial.number,
        TrialState.COMPLETE,
        value,
        result.epochs_this_run,
        result.resumed_from_epoch,
        fit_seconds,
    )


def _record(trial: Trial, db_retry: Callable[[Callable[[], Any]], Any], attrs: dict) -> None:
    for k, v in attrs.items():
        db_retry(lambda k=k, v=v: trial.set_user_attr(k, v))


def _tell(study: optuna.Study, trial: Trial, state: TrialState, value: float | None = None) -> None:
    """Tell, tolerating a retry after a lost acknowledgement (the first tell went through)."""
    study.tell(
        trial, value if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True
    )


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # a checkpoint left behind costs disk, not correctness
        log.warning("could not remove checkpoint %s", path)


def clear_checkpoints(artifacts: str, cfg: ExperimentConfig) -> None:
    shutil.rmtree(Path(artifacts) / "checkpoints" / cfg.name, ignore_errors=True)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None
