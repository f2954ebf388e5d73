"""Register, load and verify experiments: the rows that make workers stateless."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import optuna
from optuna.storages import RDBStorage
from sqlalchemy import select
from sqlalchemy.engine import Engine

from rnntune import data as data_mod
from rnntune.config import ExperimentConfig, build
from rnntune.exceptions import (
    ExperimentMismatchError,
    ExperimentNotFoundError,
    FingerprintMismatchError,
)
from rnntune.storage import (
    ExperimentRow,
    exclusive,
    mask_url,
    session_scope,
    upgrade,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Experiment:
    id: int
    config: ExperimentConfig
    data_fingerprint: str
    data_summary: dict[str, Any]
    created_at: datetime
    finished_at: datetime | None
    report_path: str | None

    @property
    def name(self) -> str:
        return self.config.name

    @classmethod
    def from_row(cls, row: ExperimentRow) -> Experiment:
        return cls(
            id=row.id,
            config=ExperimentConfig.from_dict(row.config),
            data_fingerprint=row.data_fingerprint,
            data_summary=row.data_summary,
            created_at=row.created_at,
            finished_at=row.finished_at,
            report_path=row.report_path,
        )


@dataclass(frozen=True)
class LoadedData:
    splits: data_mod.Splits
    fingerprint: str
    shape: tuple[int, ...]


def load_data(cfg: ExperimentConfig, spec_override: str | None = None) -> LoadedData:
    """Load and split the experiment's data (``spec_override``: the same data at another path)."""
    ds = data_mod.load_dataset(spec_override or cfg.data)
    fp = data_mod.fingerprint(ds)
    splits = data_mod.split_dataset(
        ds, seed=cfg.split_seed, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction
    )
    return LoadedData(splits=splits, fingerprint=fp, shape=tuple(ds.X.shape))


def find_by_name(engine: Engine, name: str) -> Experiment | None:
    with session_scope(engine) as s:
        row = s.scalars(select(ExperimentRow).where(ExperimentRow.name == name)).one_or_none()
        return Experiment.from_row(row) if row is not None else None


def find_or_raise_by_name(engine: Engine, name: str) -> Experiment:
    exp = find_by_name(engine, name)
    if exp is None:
        with session_scope(engine) as s:
            known = list(s.scalars(select(ExperimentRow.name).order_by(ExperimentRow.name)))
        hint = f" (experiments here: {', '.join(known)})" if known else ""
        raise ExperimentNotFoundError(
            f"no experiment {name!r} in {mask_url(str(engine.url))}{hint}: "
            f"run `rnntune init --experiment {name}` first, or pass the right --experiment"
        )
    return exp


def verify_data(exp: Experiment, loaded: LoadedData) -> None:
    if loaded.fingerprint != exp.data_fingerprint:
        raise FingerprintMismatchError(
            f"the data loaded from {exp.config.data!r} has fingerprint {loaded.fingerprint[:19]}, "
            f"but experiment {exp.name!r} was registered with {exp.data_fingerprint[:19]}: "
            "point --data at the experiment's original data, or start a new --experiment"
        )


def register(
    storage: RDBStorage, explicit: dict[str, Any], data_override: str | None = None
) -> tuple[Experiment, bool]:
    """Create the experiment (schema, row, one study per family) or check it against ``explicit``.

    Idempotent and safe to run from several processes at once. Returns (experiment, created).
    """
    engine = storage.engine
    upgrade(engine)
    name = explicit.get("name") or "default"
    with exclusive(engine, f"rnntune:experiment:{name}"):
        existing = find_by_name(engine, name)
        if existing is not None:
            merged = build(explicit, base=existing.config)
            if merged.digest() != existing.config.digest():
                raise ExperimentMismatchError(
                    f"experiment {name!r} already exists with a different configuration "
                    f"({_diff(existing.config, merged)}): use a new --experiment name, or drop "
                    "the differing options to resume it as it was"
                )
            loaded = load_data(existing.config, data_override)
            verify_data(existing, loaded)
            _create_studies(storage, existing.config)
            return existing, False
        cfg = build(explicit)
        loaded = load_data(cfg, data_override)
        _create_studies(storage, cfg)
        summary = {
            "spec": cfg.data,
            "shape": list(loaded.shape),
            "splits": loaded.splits.describe(),
        }
        with session_scope(engine) as s:
            row = ExperimentRow(
                name=cfg.name,
                config=cfg.to_dict(),
                config_hash=cfg.digest(),
                data_spec=cfg.data,
                data_fingerprint=loaded.fingerprint,
                data_summary=summary,
            )
            s.add(row)
            s.flush()
            exp = Experiment.from_row(row)
        log.info("registered experiment %s (%s)", cfg.name, loaded.fingerprint[:19])
        return exp, True


def _create_studies(storage: RDBStorage, cfg: ExperimentConfig) -> None:
    for family in cfg.families:
        study = optuna.create_study(
            storage=storage,
            study_name=cfg.study_name(family),
            direction="maximize",
            load_if_exists=True,
        )
        if study.metric_names != [cfg.objective]:
            # The dashboard labels the objective with this instead of "Objective 0".
            study.set_metric_names([cfg.objective])
        if study.user_attrs.get("rnntune_experiment") != cfg.name:
            study.set_user_attr("rnntune_experiment", cfg.name)
            study.set_user_attr("family", family)
            study.set_user_attr("budget", cfg.trials)
            study.set_user_attr("objective", cfg.objective)
            study.set_user_attr("search_space", cfg.search_space)


def mark_finished(engine: Engine, exp: Experiment, report_path: str) -> None:
    from rnntune.storage import utcnow

    with session_scope(engine) as s:
        row = s.get(ExperimentRow, exp.id)
        assert row is not None
        if row.finished_at is None:
            row.finished_at = utcnow()
        row.report_path = report_path


def store_reference_points(engine: Engine, exp: Experiment, points: dict[str, Any]) -> None:
    """Keep the report's reference points (``rnntune.baselines``) with the experiment's data
    summary: they depend on the split only, so they are computed once, by the final job."""
    with session_scope(engine) as s:
        row = s.get(ExperimentRow, exp.id)
        assert row is not None
        row.data_summary = {**(row.data_summary or {}), "baselines": points}


def _diff(a: ExperimentConfig, b: ExperimentConfig) -> str:
    da, db = a.to_dict(), b.to_dict()
    parts = [f"{k}: {da[k]!r} -> {db[k]!r}" for k in da if da[k] != db[k]]
    text = "; ".join(parts)
    return text if len(text) < 300 else text[:297] + "..."
