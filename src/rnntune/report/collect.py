"""Build the report (:class:`~rnntune.report.model.Report`) once, from the study database.

A reader: it counts through :mod:`rnntune.state` and never imports the writers (tuning,
evaluation, train, worker) nor torch.
"""

from __future__ import annotations

import logging
import platform
import warnings
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import TrialState

from rnntune import __version__, state, stopping
from rnntune.experiment import Experiment
from rnntune.report.model import Report
from rnntune.storage import load_study, mask_url

log = logging.getLogger(__name__)


def build_report(storage: Any, exp: Experiment, device: str = "cpu") -> Report:
    """Everything the formats show, with numbers only from stored rows and trials."""
    cfg = exp.config
    engine = storage.engine
    runs = state.eval_runs(engine, exp)
    families: dict[str, Any] = {}
    missing: list[str] = []
    for family in cfg.families:
        study = load_study(storage, cfg.study_name(family))
        trials = study.get_trials(deepcopy=False)
        counts = state.count_trials(study)
        best = state.best_trial(study)
        fam_runs = [r for r in runs if r.family == family]
        repeats = [
            {
                "repeat": r.repeat,
                "seed": r.seed,
                "status": r.status,
                "error": r.error if r.status == "failed" else None,
                "metrics": r.metrics or {},
                "confusion_matrix": r.confusion_matrix,
                "classification_report": r.classification_report or "",
                "epochs_trained": r.epochs_trained,
                "train_seconds": r.train_seconds,
            }
            for r in fam_runs
        ]
        done = [r for r in fam_runs if r.status == "done"]
        tuning_state = state.tuning_state(cfg.trials, counts)
        short = state.shortfall(cfg.trials, counts)
        if short is not None:
            missing.append(f"{family}: {short}")
        if len(done) < cfg.repeats:
            failed = [r for r in fam_runs if r.status == "failed"]
            why = f" ({len(failed)} failed; last: {failed[-1].error})" if failed else ""
            missing.append(f"{family}: {len(done)}/{cfg.repeats} evaluation repeats done{why}")
        families[family] = {
            "study_name": study.study_name,
            "best_params": dict(best.params) if best else None,
            "best_value": best.value if best else None,
            "best_trial": best.number if best else None,
            "trials": counts.as_dict(),
            "tuning_state": tuning_state,
            "history": [
                {
                    "number": t.number,
                    "state": t.state.name,
                    "value": t.value,
                    "params": t.params,
                    "duration_s": t.duration.total_seconds() if t.duration else None,
                    "datetime_complete": _iso(t.datetime_complete),
                }
                for t in trials
            ],
            "importances": _importances(study),
            "tuning_seconds": _seconds_of_trials(trials),
            "evaluation_seconds": {
                "wall": _span([r.started_at for r in done], [r.finished_at for r in done]),
                "compute": round(sum(r.train_seconds or 0.0 for r in done), 3),
            },
            "repeats": repeats,
        }
    # Computed once by the final job from the splits (rnntune.baselines) and stored with the
    # experiment; None until then.
    references = exp.data_summary.get("baselines")
    return Report.build(
        experiment={
            "name": cfg.name,
            "created_at": _iso(exp.created_at),
            "storage": mask_url(str(engine.url)),
            "data": {
                "spec": cfg.data,
                "fingerprint": exp.data_fingerprint,
                "splits": exp.data_summary.get("splits", {}),
                "shape": exp.data_summary.get("shape"),
                # Experiments registered before data could bring its own split: rnntune's split.
                "split": exp.data_summary.get("split") or _legacy_split(cfg),
                "labels": exp.data_summary.get("labels"),
            },
            "search_space": cfg.search_space,
            "trials": cfg.trials,
            "repeats": cfg.repeats,
            "max_epochs": cfg.max_epochs,
            "patience": cfg.patience,
            "early_stopping": stopping.describe(cfg.patience, cfg.max_epochs, cfg.objective),
            "objective": cfg.objective,
            "pruner": cfg.pruner.describe(),
            "seed": cfg.seed,
            "split_seed": cfg.split_seed,
            "repeat_seeds": [cfg.repeat_seed(i) for i in range(cfg.repeats)],
            "device": device,
            "heartbeat_interval": exp.heartbeat_interval,
            "grace_period": exp.grace_period,
            "retry_limits": state.limits(cfg.trials),
            "versions": _versions(),
        },
        complete=not missing,
        missing=missing,
        families=families,
        baselines=references,
        metric="macro_f1",  # summaries, comparison, ranking and verdicts: Report.build
    )


def _legacy_split(cfg: Any) -> dict[str, Any]:
    from rnntune.data import SPLIT_RANDOM, split_source_text

    return {
        "source": SPLIT_RANDOM,
        "text": split_source_text(SPLIT_RANDOM, cfg.val_fraction, cfg.test_fraction),
        "protocol": "fixed",
        "protocol_text": "fixed split: tuning and every repeat use the split below; its test "
        "part is never seen by tuning.",
    }


def _importances(study: optuna.Study) -> dict[str, float] | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 3:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(study)
        return {k: float(v) for k, v in imp.items()}
    except (RuntimeError, ValueError) as e:  # e.g. a parameter with a single value
        log.info("no importances for %s: %s", study.study_name, e)
        return None


def _seconds_of_trials(trials: list[optuna.trial.FrozenTrial]) -> dict[str, float]:
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    compute = sum(t.duration.total_seconds() for t in trials if t.duration)
    return {"wall": _span(starts, ends), "compute": round(compute, 3)}


def _span(starts: Sequence[datetime | None], ends: Sequence[datetime | None]) -> float:
    s = [x for x in starts if x is not None]
    e = [x for x in ends if x is not None]
    if not s or not e:
        return 0.0
    return round(max(0.0, (max(e) - min(s)).total_seconds()), 3)


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat(timespec="seconds") if dt else None


def _versions() -> dict[str, str]:
    # From the installed metadata: a reader never imports torch (seconds, and memory).
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {
        "python": platform.python_version(),
        "torch": v("torch"),
        "optuna": optuna.__version__,
        "sklearn": v("scikit-learn"),
        "rnntune": __version__,
    }
