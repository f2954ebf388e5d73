"""Training and evaluation of a :class:`~rnntune.models.RecurrentClassifier`.

The loop is built for many short runs (an Optuna trial is tens of epochs of a small model),
where per-batch overhead is a large share of the time:

* the data is moved to the device once; each epoch does one permutation gather and then
  trains on contiguous slices of the permuted tensor (no ``DataLoader``, no collation);
* the loss is accumulated as a tensor, so there is one host sync per epoch, not per batch;
* validation runs in large ``inference_mode`` batches.

Every epoch ends with an atomic checkpoint (weights, optimizer, RNG states, early-stopping
state, history, the configs that made it), so a killed worker resumes bit-identically on CPU.

Torch only: no Optuna, no database.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import pathlib
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from rnntune.exceptions import ConfigError, DataError, Interrupted, TrainingError
from rnntune.models import ModelConfig, RecurrentClassifier
from rnntune.stopping import MIN_DELTA, EarlyStopping

if TYPE_CHECKING:
    from rnntune.config import ExperimentConfig

__all__ = [
    "METRICS",
    "TARGET_NAMES",
    "TrainConfig",
    "model_and_train_config",
    "EpochResult",
    "FitResult",
    "resolve_device",
    "set_threads",
    "make_optimizer",
    "train_epoch",
    "fit",
    "fit_ensemble",
    "predict_proba",
    "score",
    "classification_metrics",
]

logger = logging.getLogger(__name__)

METRICS = ("macro_f1", "weighted_f1", "accuracy", "roc_auc")
TARGET_NAMES = ("Normal", "Abnormal")
# 2: the early-stopping state is an EarlyStopping's state_dict, and epochs record val_loss.
_CHECKPOINT_FORMAT = 2
_EVAL_BATCH = 4096


# --------------------------------------------------------------------------------------------
# Configuration and results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """How to train; validated on construction (the device is checked by :func:`fit`).

    ``patience`` and ``min_delta``: the early-stopping rule of :mod:`rnntune.stopping` (the
    patience used is at least a quarter of ``max_epochs``). ``seed`` fixes the initial
    weights, the batch order and dropout.
    """

    learning_rate: float
    batch_size: int
    max_epochs: int
    patience: int = 3
    seed: int = 0
    metric: str = "macro_f1"
    device: str = "cpu"
    min_delta: float = MIN_DELTA

    def __post_init__(self) -> None:
        if not (isinstance(self.learning_rate, int | float) and 0 < self.learning_rate < math.inf):
            raise ConfigError(
                f"learning_rate must be a positive finite number, got {self.learning_rate!r}"
            )
        for name, low in (("batch_size", 1), ("max_epochs", 1), ("patience", 0), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.metric not in METRICS:
            raise ConfigError(f"unknown metric {self.metric!r}; use one of {', '.join(METRICS)}")
        if not (isinstance(self.min_delta, int | float) and 0 <= self.min_delta < math.inf):
            raise ConfigError(f"min_delta must be a finite number >= 0, got {self.min_delta!r}")


def model_and_train_config(
    family: str,
    params: Mapping[str, Any],
    cfg: ExperimentConfig,
    n_features: int,
    seed: int,
    device: str,
) -> tuple[ModelConfig, TrainConfig]:
    """The model and how to train it, from Optuna ``params`` and the experiment: the one
    mapping, shared by tuning (a trial) and evaluation (a repeat of the best trial)."""
    model_cfg = ModelConfig.from_params(family, params, n_features)
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
class EpochResult:
    """One finished epoch (``epoch`` is 1-based); ``val_loss`` is the validation cross-entropy."""

    epoch: int
    train_loss: float
    val_metric: float
    seconds: float
    val_loss: float = math.nan


@dataclass
class FitResult:
    """The outcome of :func:`fit`; ``model`` holds the best epoch's weights."""

    model: RecurrentClassifier
    best_val_metric: float
    best_epoch: int
    epochs_trained: int
    resumed_from_epoch: int
    epochs_this_run: list[int]
    history: list[EpochResult]
    stopped_early: bool
    train_seconds: float


# --------------------------------------------------------------------------------------------
# Devices and threads
# --------------------------------------------------------------------------------------------


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda[:N]``."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {text!r} asked for but torch sees no CUDA GPU; use device cpu or auto"
            )
        device = torch.device(text)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {text!r} does not exist ({torch.cuda.device_count()} GPU(s)); "
                "use cuda:0 or auto"
            )
        return device
    raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda[:N]")


_interop_threads: int | None = None


def set_threads(n: int) -> None:
    """Set torch's intra-op threads, and its inter-op threads the first time only.

    torch refuses to change inter-op threads once set or once parallel work has started, so
    later calls change the intra-op count only.
    """
    global _interop_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"threads must be a positive integer, got {n!r}")
    torch.set_num_threads(n)
    if _interop_threads is None:
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError as e:
            logger.debug("inter-op threads stay at %d: %s", torch.get_num_interop_threads(), e)
        _interop_threads = torch.get_num_interop_threads()


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------


def make_optimizer(model: torch.nn.Module, learning_rate: float) -> torch.optim.Adam:
    """Adam, with the fused kernel: one kernel per parameter instead of about ten small ops,
    a measurable share of a step for the small models tuned here (CPU support: torch >= 2.4).
    """
    return torch.optim.Adam(model.parameters(), lr=learning_rate, fused=True)


def warm_up(device: str = "cpu") -> None:
    """Pay torch's one-off costs once per process, before any trial's clock starts: the first
    fused Adam step imports ``torch._dynamo`` (about 3 s on a small CPU) and sets up kernels."""
    model = torch.nn.GRU(1, 1, batch_first=True).to(device)
    optimizer = make_optimizer(model, 1e-3)
    out, _ = model(torch.zeros(1, 2, 1, device=device))
    out.sum().backward()
    optimizer.step()


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    X: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """One pass over ``(X, y)`` (already on the model's device) in a fresh random order.

    Returns the mean training loss as a 0-dim tensor: reading it is the epoch's only sync.
    Raises :class:`Interrupted` between batches once ``should_stop()`` is true.
    """
    n = X.shape[0]
    # The permutation comes from a CPU generator so the order is the same on every device.
    perm = torch.randperm(n, generator=generator).to(X.device, non_blocking=True)
    X_perm = X.index_select(0, perm)  # (N, T, F): one gather, then contiguous slices
    y_perm = y.index_select(0, perm)  # (N,)
    total = torch.zeros((), dtype=torch.float32, device=X.device)
    model.train()
    for xb, yb in zip(X_perm.split(batch_size), y_perm.split(batch_size), strict=True):
        if should_stop is not None and should_stop():
            raise Interrupted(
                "training was asked to stop; the last finished epoch's checkpoint is kept, "
                "run again to resume"
            )
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total.add_(loss.detach(), alpha=len(yb))  # stays on the device: no sync per batch
    return total / n


@dataclass
class _Progress:
    """Everything besides weights, optimizer and RNG that a resumed run must restore."""

    stopper: EarlyStopping
    epoch: int = 0
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[EpochResult] = field(default_factory=list)

    @property
    def stopped_early(self) -> bool:
        return self.stopper.stopped


def fit(
    model_config: ModelConfig,
    train_config: TrainConfig,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    checkpoint_path: pathlib.Path | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_resume: Callable[[EpochResult], None] | None = None,
) -> FitResult:
    """Train with early stopping (:mod:`rnntune.stopping`); keep the best validation metric's
    weights (higher is better).

    With ``checkpoint_path``, every finished epoch is checkpointed atomically *before*
    ``on_epoch`` is called (which may raise, e.g. ``optuna.TrialPruned``: it propagates), and
    a checkpoint found at start is resumed from if it was made by the same configs and data;
    the result is then bit-identical to an uninterrupted run on CPU.

    ``on_resume`` gets the checkpoint's last epoch when a checkpoint was resumed from, before
    any training: the previous attempt may have been stopped between that checkpoint and its
    ``on_epoch`` (a pruning decision), which the caller then makes again.
    """
    started = time.perf_counter()
    device = resolve_device(train_config.device)
    _check_arrays(model_config, X_train, y_train, X_val, y_val)
    X_train, X_val = (np.ascontiguousarray(a, dtype=np.float32) for a in (X_train, X_val))
    y_train, y_val = (np.ascontiguousarray(a, dtype=np.int64) for a in (y_train, y_val))
    # Moved once; every epoch then gathers and slices on the device.
    X_t, y_t = torch.as_tensor(X_train, device=device), torch.as_tensor(y_train, device=device)
    X_v = torch.as_tensor(X_val, device=device)
    y_v = torch.as_tensor(y_val, device=device)
    if checkpoint_path is not None:
        checkpoint_path = pathlib.Path(checkpoint_path)
        remove_stale_temporaries(checkpoint_path)

    torch.manual_seed(train_config.seed)  # initial weights (and dropout, on CPU)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(train_config.seed)
    model = RecurrentClassifier(model_config).to(device)
    optimizer = make_optimizer(model, train_config.learning_rate)
    shuffle = torch.Generator().manual_seed(train_config.seed)

    meta = _meta(model_config, train_config, (X_train, y_train, X_val, y_val), checkpoint_path)
    tc = train_config
    progress = _Progress(_stopper(tc))
    if checkpoint_path is not None and checkpoint_path.exists():
        restored = _restore(checkpoint_path, meta, model, optimizer, shuffle, device)
        if restored is not None:
            progress = restored
            logger.info("resuming %s after epoch %d", checkpoint_path, progress.epoch)
    resumed_from = progress.epoch
    if on_resume is not None and resumed_from > 0 and progress.history:
        on_resume(progress.history[-1])

    epochs_this_run: list[int] = []
    while progress.epoch < tc.max_epochs and not progress.stopped_early:
        epoch = progress.epoch + 1
        t0 = time.perf_counter()
        train_loss = float(
            train_epoch(model, optimizer, X_t, y_t, tc.batch_size, shuffle, should_stop)
        )
        if not math.isfinite(train_loss):
            raise TrainingError(
                f"training loss became {train_loss} in epoch {epoch} "
                f"(learning_rate={tc.learning_rate:g}); lower the learning rate or check the "
                "data scale"
            )
        proba_t, val_loss_t = _validate(model, X_v, y_v)
        proba, val_loss = proba_t.cpu().numpy(), float(val_loss_t)
        if not np.isfinite(proba).all():
            raise TrainingError(
                f"the model outputs NaN/inf after epoch {epoch} "
                f"(learning_rate={tc.learning_rate:g}); lower the learning rate"
            )
        val_metric = score(tc.metric, y_val, proba)

        _record_epoch(
            progress, epoch, val_loss, val_metric, proba, lambda: _detached(model.state_dict())
        )
        result = EpochResult(epoch, train_loss, val_metric, time.perf_counter() - t0, val_loss)
        progress.history.append(result)
        epochs_this_run.append(epoch)
        logger.debug(
            "epoch %d/%d loss %.4f val loss %.4f %s %.4f (%.2fs)",
            epoch,
            tc.max_epochs,
            train_loss,
            val_loss,
            tc.metric,
            val_metric,
            result.seconds,
        )
        if checkpoint_path is not None:
            _save(checkpoint_path, meta, model, optimizer, shuffle, progress, device)
        if on_epoch is not None:
            on_epoch(result)

    if progress.best_state is not None:
        model.load_state_dict(progress.best_state)
    return FitResult(
        model=model,
        best_val_metric=(
            progress.stopper.best_metric if progress.best_state is not None else math.nan
        ),
        best_epoch=progress.best_epoch,
        epochs_trained=progress.epoch,
        resumed_from_epoch=resumed_from,
        epochs_this_run=epochs_this_run,
        history=list(progress.history),
        stopped_early=progress.stopped_early,
        train_seconds=time.perf_counter() - started,
    )


# --------------------------------------------------------------------------------------------
# Repeats trained as one ensemble
# --------------------------------------------------------------------------------------------


@dataclass
class _Member:
    """One member of :func:`fit_ensemble`: what a solo :func:`fit` would hold for it."""

    index: int
    config: TrainConfig
    path: pathlib.Path | None
    meta: dict[str, Any]
    shuffle: torch.Generator
    torch_rng: torch.Tensor  # the global RNG state a solo run would checkpoint
    progress: _Progress
    resumed_from: int
    state: dict[str, torch.Tensor]  # current weights (while not stacked)
    adam: list[tuple[float, torch.Tensor, torch.Tensor]]  # per parameter: step, m, v
    seconds: float = 0.0
    epochs_this_run: list[int] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.progress.stopped_early or self.progress.epoch >= self.config.max_epochs


_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults, as make_optimizer uses


def _adam_step(
    params: list[torch.Tensor],
    grads: tuple[torch.Tensor, ...],
    m: list[torch.Tensor],
    v: list[torch.Tensor],
    steps: torch.Tensor,
    lr: float,
) -> None:
    """Adam on stacked ``(k, ...)`` parameters with one step count per member (members resumed
    from different epochs differ): torch's fused Adam formula, member by member."""
    steps += 1
    bc1 = 1 - _BETA1**steps  # float64 (k,)
    bc2_sqrt = (1 - _BETA2**steps).sqrt()
    step_size = (lr / bc1).to(params[0].dtype)
    bc2_sqrt = bc2_sqrt.to(params[0].dtype)
    with torch.no_grad():
        for p, g, m_, v_ in zip(params, grads, m, v, strict=True):
            shape = (-1,) + (1,) * (p.dim() - 1)
            m_.lerp_(g, 1 - _BETA1)
            v_.mul_(_BETA2).addcmul_(g, g, value=1 - _BETA2)
            denom = (v_.sqrt() / bc2_sqrt.view(shape)).add_(_EPS)
            p.sub_(step_size.view(shape) * m_ / denom)


def fit_ensemble(
    model_config: ModelConfig,
    train_configs: list[TrainConfig],
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    checkpoint_paths: list[pathlib.Path | None] | None = None,
    on_epoch: Callable[[list[tuple[int, EpochResult]]], None] | None = None,
    on_member_done: Callable[[int, FitResult], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[FitResult]:
    """Train k models that differ only in their seed as one: what :func:`fit` gives for each
    ``train_configs[i]``, within fp32 rounding, at little more than the cost of one.

    Each member has the initial weights its seed gives alone, its own batch order, its own Adam
    state and its own early stopping: a member that stops keeps its best weights and leaves
    the ensemble (the others go on, faster). Each member's checkpoint is the one ``fit`` would
    write for it, at the same path: a member resumes here or alone, from either's checkpoint,
    and members resumed from different epochs train on together.

    ``on_epoch`` gets ``[(member, EpochResult), ...]`` after every member's checkpoint of that
    epoch is on disk; ``on_member_done(i, result)`` as soon as member ``i`` has finished (the
    others may still be training); both may raise, which propagates. The result's
    ``train_seconds`` is the member's share of the wall time (epochs are shared evenly among
    the members training in them), so the members' sum is the time spent.

    Within fp32 rounding: the batched products sum in another order than torch's per-model
    kernels, so while training is stable a member's weights and predictions agree with its solo
    run to about 1e-6, with the same epochs and decisions (tests/test_ensemble.py). Where
    training is chaotic (a loss that jumps up, e.g. a tanh RNN over 140 steps at a high learning
    rate), such differences grow as they would between two BLAS libraries or CPUs, and a member
    may then follow another trajectory of the same distribution.
    """
    from rnntune import ensemble

    started = time.perf_counter()
    if not train_configs:
        raise ConfigError("fit_ensemble needs at least one train config")
    base = train_configs[0]
    for tc in train_configs[1:]:
        if replace(tc, seed=base.seed) != base:
            raise ConfigError(
                f"members of an ensemble must differ only in their seed; got {base} and {tc}"
            )
    if not ensemble.supports(model_config):
        raise ConfigError(
            f"{model_config.cell} with dropout between layers cannot be trained as an ensemble "
            "(dropout masks come from torch's global random stream); train the repeats one by one"
        )
    paths = list(checkpoint_paths) if checkpoint_paths is not None else [None] * len(train_configs)
    if len(paths) != len(train_configs):
        raise ConfigError("give one checkpoint path (or None) per member")
    device = resolve_device(base.device)
    _check_arrays(model_config, X_train, y_train, X_val, y_val)
    X_train, X_val = (np.ascontiguousarray(a, dtype=np.float32) for a in (X_train, X_val))
    y_train, y_val = (np.ascontiguousarray(a, dtype=np.int64) for a in (y_train, y_val))
    X_t, y_t = torch.as_tensor(X_train, device=device), torch.as_tensor(y_train, device=device)
    X_v, y_v = torch.as_tensor(X_val, device=device), torch.as_tensor(y_val, device=device)
    arrays = (X_train, y_train, X_val, y_val)
    names = ensemble.param_names(model_config)

    # Each member starts exactly as fit would: seeded, built, maybe restored from its checkpoint.
    members: list[_Member] = []
    for i, (tc, path) in enumerate(zip(train_configs, paths, strict=True)):
        path = pathlib.Path(path) if path is not None else None
        if path is not None:
            remove_stale_temporaries(path)
        torch.manual_seed(tc.seed)
        if device.type == "cuda":
            torch.cuda.manual_seed_all(tc.seed)
        model = RecurrentClassifier(model_config).to(device)
        if [n for n, _ in model.named_parameters()] != names:
            raise ConfigError(
                "the model's parameters are not the ones the ensemble stacks "
                f"({[n for n, _ in model.named_parameters()]}); train the repeats one by one"
            )
        optimizer = make_optimizer(model, tc.learning_rate)
        shuffle = torch.Generator().manual_seed(tc.seed)
        meta = _meta(model_config, tc, arrays, path)
        progress = _Progress(_stopper(tc))
        if path is not None and path.exists():
            restored = _restore(path, meta, model, optimizer, shuffle, device)
            if restored is not None:
                progress = restored
                logger.info("resuming %s after epoch %d", path, progress.epoch)
        adam = []
        for p in model.parameters():
            st = optimizer.state.get(p)
            if st:
                adam.append((float(st["step"]), st["exp_avg"].detach(), st["exp_avg_sq"].detach()))
            else:
                adam.append((0.0, torch.zeros_like(p), torch.zeros_like(p)))
        members.append(
            _Member(
                index=i,
                config=tc,
                path=path,
                meta=meta,
                shuffle=shuffle,
                torch_rng=torch.get_rng_state(),
                progress=progress,
                resumed_from=progress.epoch,
                state=_detached(model.state_dict()),
                adam=adam,
            )
        )
    solo = RecurrentClassifier(model_config).to(device)  # to write checkpoints and results
    solo_optimizer = make_optimizer(solo, base.learning_rate)
    results: list[FitResult | None] = [None] * len(members)

    def finish(member: _Member) -> None:
        model = RecurrentClassifier(model_config).to(device)
        pr = member.progress
        model.load_state_dict(pr.best_state if pr.best_state is not None else member.state)
        results[member.index] = result = FitResult(
            model=model,
            best_val_metric=pr.stopper.best_metric if pr.best_state is not None else math.nan,
            best_epoch=pr.best_epoch,
            epochs_trained=pr.epoch,
            resumed_from_epoch=member.resumed_from,
            epochs_this_run=list(member.epochs_this_run),
            history=list(pr.history),
            stopped_early=pr.stopped_early,
            train_seconds=member.seconds,
        )
        if on_member_done is not None:
            on_member_done(member.index, result)

    def save(member: _Member) -> None:
        solo.load_state_dict(member.state)
        for p, (step, m, v) in zip(solo.parameters(), member.adam, strict=True):
            solo_optimizer.state[p] = {
                "step": torch.tensor(step, dtype=torch.float32, device=device),
                "exp_avg": m,
                "exp_avg_sq": v,
            }
        assert member.path is not None
        _save(
            member.path,
            member.meta,
            solo,
            solo_optimizer,
            member.shuffle,
            member.progress,
            device,
            torch_rng=member.torch_rng,
        )

    for member in members:
        if member.finished:
            finish(member)
    active = [m for m in members if not m.finished]
    n, bs, lr = X_t.shape[0], base.batch_size, base.learning_rate
    while active:
        # Stack the members still training: parameters, Adam moments, step counts.
        params = [torch.stack([m.state[name] for m in active]).requires_grad_() for name in names]
        exp_avg = [torch.stack([m.adam[j][1] for m in active]) for j in range(len(names))]
        exp_avg_sq = [torch.stack([m.adam[j][2] for m in active]) for j in range(len(names))]
        steps = torch.tensor([m.adam[0][0] for m in active], dtype=torch.float64)
        while True:
            t0 = time.perf_counter()
            perm = torch.stack([torch.randperm(n, generator=m.shuffle) for m in active])
            perm = perm.to(device, non_blocking=True)  # (k, N): each member its own order
            total = torch.zeros(len(active), dtype=torch.float32, device=device)
            for start in range(0, n, bs):
                if should_stop is not None and should_stop():
                    raise Interrupted(
                        "training was asked to stop; the last finished epoch's checkpoints "
                        "are kept, run again to resume"
                    )
                idx = perm[:, start : start + bs]  # (k, b)
                losses = ensemble.member_losses(
                    ensemble.logits(model_config, params, X_t[idx]), y_t[idx]
                )
                grads = torch.autograd.grad(losses.sum(), params)
                _adam_step(params, grads, exp_avg, exp_avg_sq, steps, lr)
                total.add_(losses.detach(), alpha=idx.shape[1])
            train_losses = (total / n).tolist()
            with torch.inference_mode():
                # k members hold k times one model's buffers: a k-th of its rows at a time.
                chunk = max(1, _EVAL_BATCH // len(active))
                val_logits = torch.cat(
                    [ensemble.logits(model_config, params, xb) for xb in X_v.split(chunk)],
                    dim=1,
                ).float()  # (k, N_val, C)
                val_losses = ensemble.member_losses(
                    val_logits, y_v.expand(len(active), -1)
                ).tolist()  # as fit's: the mean cross-entropy over the validation split
                proba = torch.softmax(val_logits, dim=-1)[..., 1].cpu().numpy()  # (k, N_val)
            seconds = (time.perf_counter() - t0) / len(active)
            epoch_results = []
            for j, m in enumerate(active):
                epoch = m.progress.epoch + 1
                if not math.isfinite(train_losses[j]):
                    raise TrainingError(
                        f"training loss became {train_losses[j]} in epoch {epoch} "
                        f"(learning_rate={lr:g}, seed {m.config.seed}); lower the learning "
                        "rate or check the data scale"
                    )
                if not np.isfinite(proba[j]).all():
                    raise TrainingError(
                        f"the model outputs NaN/inf after epoch {epoch} (learning_rate={lr:g}, "
                        f"seed {m.config.seed}); lower the learning rate"
                    )
                val_metric = score(base.metric, y_val, proba[j])
                m.state = {
                    name: p[j].detach().clone() for name, p in zip(names, params, strict=False)
                }
                m.adam = [
                    (float(steps[j]), a[j].clone(), b[j].clone())
                    for a, b in zip(exp_avg, exp_avg_sq, strict=True)
                ]
                _record_epoch(
                    m.progress,
                    epoch,
                    val_losses[j],
                    val_metric,
                    proba[j],
                    partial(dict, m.state),  # the state just set, copied if best
                )
                result = EpochResult(epoch, train_losses[j], val_metric, seconds, val_losses[j])
                m.progress.history.append(result)
                m.epochs_this_run.append(epoch)
                m.seconds += seconds
                epoch_results.append((m.index, result))
            for m in active:
                if m.path is not None:
                    save(m)
            if on_epoch is not None:
                on_epoch(epoch_results)
            done = [m for m in active if m.finished]
            if done:
                for m in done:
                    finish(m)
                active = [m for m in active if not m.finished]
                break  # restack the members left (if any)
    logger.debug("ensemble of %d trained in %.1fs", len(members), time.perf_counter() - started)
    return [r for r in results if r is not None]


def _detached(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def _stopper(tc: TrainConfig) -> EarlyStopping:
    return EarlyStopping.for_budget(tc.patience, tc.max_epochs, tc.min_delta)


def _record_epoch(
    progress: _Progress,
    epoch: int,
    val_loss: float,
    val_metric: float,
    proba: np.ndarray,
    best_state: Callable[[], dict[str, torch.Tensor]],
) -> None:
    """The early-stopping rule (:mod:`rnntune.stopping`), one epoch at a time, for ``fit`` and
    for each member of ``fit_ensemble``: keep the best epoch's weights, stop when the rule says."""
    progress.epoch = epoch
    predicted = len(np.unique(proba >= 0.5))  # 1: still on the majority-class plateau
    if progress.stopper.update(val_loss, val_metric, predicted).improved:
        progress.best_epoch = epoch
        progress.best_state = best_state()


def _meta(
    model_config: ModelConfig,
    train_config: TrainConfig,
    arrays: tuple[np.ndarray, ...],
    checkpoint_path: pathlib.Path | None,
) -> dict[str, Any]:
    """What a checkpoint must have been made by to be resumed from."""
    return {
        "format": _CHECKPOINT_FORMAT,
        "model_config": asdict(model_config),
        # The device is where, not what, a run trains: a trial checkpointed on a GPU worker
        # may be resumed on a CPU worker (exact bit-identity holds on one device only).
        "train_config": {k: v for k, v in asdict(train_config).items() if k != "device"},
        "data": _data_signature(*arrays) if checkpoint_path else "",
    }


def _check_arrays(config: ModelConfig, X_train: Any, y_train: Any, X_val: Any, y_val: Any) -> None:
    for name, X, y in (("train", X_train, y_train), ("val", X_val, y_val)):
        shape, labels = tuple(np.shape(X)), np.asarray(y)
        if len(shape) != 3 or shape[0] == 0 or shape[2] != config.input_size:
            raise DataError(
                f"X_{name} has shape {shape}, need (N>0, T, F={config.input_size}); "
                "the model's input_size must match the number of features"
            )
        if not np.isfinite(X).all():  # the data module rejects these too; fit may get raw arrays
            raise DataError(f"X_{name} holds NaN or infinite values; clean or impute them")
        if labels.shape != (shape[0],):
            raise DataError(f"y_{name} has shape {labels.shape}, need ({shape[0]},)")
        if labels.min() < 0 or labels.max() >= config.num_classes:
            raise DataError(
                f"y_{name} holds labels outside 0..{config.num_classes - 1}; encode them as ints"
            )


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _data_signature(*arrays: np.ndarray) -> str:
    """Shapes and a fast digest of the training data: a checkpoint must not outlive its data."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()


def _save(
    path: pathlib.Path,
    meta: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    shuffle: torch.Generator,
    progress: _Progress,
    device: torch.device,
    torch_rng: torch.Tensor | None = None,
) -> None:
    """Write the checkpoint to a temporary file and rename it over the old one: a kill at
    any moment leaves either the previous epoch's checkpoint or this one, never half a file."""
    state = {
        **meta,
        "epoch": progress.epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": {
            "shuffle": shuffle.get_state(),
            "torch": torch.get_rng_state() if torch_rng is None else torch_rng,
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        },
        "best": {"epoch": progress.best_epoch, "state": progress.best_state},
        "stopper": progress.stopper.state_dict(),
        "history": [asdict(r) for r in progress.history],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per writer: two containers both running as pid 1 may share the directory.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a power loss
    finally:
        tmp.unlink(missing_ok=True)


_TMP_SUFFIX = ".tmp"
STALE_TMP_SECONDS = 600.0  # a checkpoint write takes milliseconds: older is a killed writer's


def _fsync_dir(directory: pathlib.Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a platform or filesystem without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some network filesystems refuse a directory fsync; the rename was still made
    finally:
        os.close(fd)


def remove_stale_temporaries(path: pathlib.Path, older_than: float = STALE_TMP_SECONDS) -> int:
    """Remove the half-written temporaries of ``path``'s checkpoint left by killed writers.

    A SIGKILL between open and rename leaves ``.<name>.<pid>.<token>.tmp``; only files older than
    ``older_than`` seconds go, so a live writer's temporary is never pulled from under it.
    """
    removed = 0
    cutoff = time.time() - older_than
    for tmp in path.parent.glob(f".{path.name}.*{_TMP_SUFFIX}"):
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                removed += 1
        except OSError:
            continue  # gone already, or not ours to remove: it costs disk, not correctness
    return removed


def _restore(
    path: pathlib.Path,
    meta: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    shuffle: torch.Generator,
    device: torch.device,
) -> _Progress | None:
    """Load a checkpoint into model, optimizer and RNGs; ``None`` (and a warning) if it is
    unreadable or was made by other configs or data, in which case training starts fresh."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign or damaged file: training from scratch is always safe
        logger.warning("ignoring unreadable checkpoint %s (%s); starting fresh", path, e)
        return None
    differ = [k for k, v in meta.items() if not isinstance(state, dict) or state.get(k) != v]
    if differ:
        logger.warning(
            "ignoring checkpoint %s: made with a different %s; starting fresh",
            path,
            " and ".join(differ),
        )
        return None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    shuffle.set_state(state["rng"]["shuffle"])
    torch.set_rng_state(state["rng"]["torch"])
    if device.type == "cuda" and state["rng"]["cuda"] is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"], device)
    best = state["best"]
    return _Progress(
        stopper=EarlyStopping.from_state_dict(state["stopper"]),
        epoch=state["epoch"],
        best_epoch=best["epoch"],
        best_state=({k: v.to(device) for k, v in best["state"].items()} if best["state"] else None),
        history=[EpochResult(**r) for r in state["history"]],
    )


# --------------------------------------------------------------------------------------------
# Prediction and metrics
# --------------------------------------------------------------------------------------------


def _validate(
    model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = _EVAL_BATCH
):
    """P(abnormal) ``(N,)`` and the mean cross-entropy (0-dim) on ``X``/``y``, without syncing."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = torch.cat([model(xb) for xb in X.split(batch_size)])
            loss = F.cross_entropy(logits.float(), y)
            return torch.softmax(logits, dim=-1)[:, 1], loss
    finally:
        model.train(was_training)


def _predict_tensor(model: torch.nn.Module, X: torch.Tensor, batch_size: int = _EVAL_BATCH):
    """P(abnormal) for ``X`` already on the model's device, ``(N,)``, without syncing."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return torch.cat([torch.softmax(model(xb), dim=-1)[:, 1] for xb in X.split(batch_size)])
    finally:
        model.train(was_training)


def predict_proba(
    model: torch.nn.Module,
    X: np.ndarray,
    device: str | torch.device = "cpu",
    batch_size: int = _EVAL_BATCH,
) -> np.ndarray:
    """P(abnormal) per sequence, float64 ``[N]`` (moves the model to ``device``)."""
    dev = resolve_device(device)
    model.to(dev)
    X_t = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32), device=dev)
    if X_t.ndim != 3:
        raise DataError(f"X has shape {tuple(X_t.shape)}, need (N, T, F)")
    return _predict_tensor(model, X_t, batch_size).cpu().numpy().astype(np.float64)


def _binary(y_true: Any, proba: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(proba, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise DataError(f"{len(y)} labels but {len(p)} probabilities; pass one per sequence")
    return y, p, (p >= 0.5).astype(np.int64)


def _roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    # Undefined with one class present: NaN, not sklearn's warning (an error under pytest).
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else math.nan


def score(metric: str, y_true: Any, proba: Any) -> float:
    """One metric of P(abnormal) ``proba`` against 0/1 labels (threshold 0.5); higher is better."""
    y, p, pred = _binary(y_true, proba)
    if metric == "macro_f1":
        return float(f1_score(y, pred, labels=[0, 1], average="macro", zero_division=0))
    if metric == "weighted_f1":
        return float(f1_score(y, pred, labels=[0, 1], average="weighted", zero_division=0))
    if metric == "accuracy":
        return float(accuracy_score(y, pred))
    if metric == "roc_auc":
        return _roc_auc(y, p)
    raise ConfigError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")


def classification_metrics(y_true: Any, proba: Any) -> dict[str, Any]:
    """Flat float metrics (overall, macro, weighted, per class), the confusion matrix
    ``[[tn, fp], [fn, tp]]`` and sklearn's classification report text."""
    y, p, pred = _binary(y_true, proba)
    out: dict[str, Any] = {"accuracy": float(accuracy_score(y, pred)), "roc_auc": _roc_auc(y, p)}
    for average in ("macro", "weighted"):
        prec, rec, f1, _ = precision_recall_fscore_support(
            y, pred, labels=[0, 1], average=average, zero_division=0
        )
        out |= {f"{average}_precision": prec, f"{average}_recall": rec, f"{average}_f1": f1}
    prec, rec, f1, support = precision_recall_fscore_support(
        y, pred, labels=[0, 1], average=None, zero_division=0
    )
    for i, name in enumerate(("normal", "abnormal")):
        out |= {
            f"{name}_precision": prec[i],
            f"{name}_recall": rec[i],
            f"{name}_f1": f1[i],
            f"{name}_support": support[i],
        }
    out = {k: float(v) for k, v in out.items()}
    out["confusion_matrix"] = confusion_matrix(y, pred, labels=[0, 1]).tolist()
    out["classification_report"] = classification_report(
        y, pred, labels=[0, 1], target_names=list(TARGET_NAMES), digits=4, zero_division=0
    )
    return out
