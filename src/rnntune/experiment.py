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
from rnntune.config import (
    DEFAULT_GRACE_PERIOD,
    DEFAULT_HEARTBEAT_INTERVAL,
    ExperimentConfig,
    build,
)
from rnntune.exceptions import (
    ConfigError,
    ExperimentMismatchError,
    ExperimentNotFoundError,
    FingerprintMismatchError,
)
from rnntune.faults import failpoint
from rnntune.storage import (
    ExperimentRow,
    exclusive,
    mask_url,
    session_scope,
    study_id,
    upgrade,
)

log = logging.getLogger(__name__)


def check_policy(
    heartbeat_interval: int | None, grace_period: int | None
) -> tuple[int | None, int | None]:
    """Validate the heartbeat settings a process was given (None: not given)."""
    if heartbeat_interval is not None and heartbeat_interval < 1:
        raise ConfigError("--heartbeat-interval must be at least 1 second")
    if grace_period is not None and grace_period < 1:
        raise ConfigError("--grace-period must be at least 1 second")
    hb = heartbeat_interval or DEFAULT_HEARTBEAT_INTERVAL
    grace = grace_period or DEFAULT_GRACE_PERIOD
    if (heartbeat_interval is not None or grace_period is not None) and grace <= hb:
        raise ConfigError(
            f"--grace-period ({grace}s) must exceed --heartbeat-interval ({hb}s), or live "
            "trials would be failed as stale"
        )
    return heartbeat_interval, grace_period


def resolve_policy(
    exp: Experiment, heartbeat_interval: int | None, grace_period: int | None
) -> tuple[int, int]:
    """The experiment's heartbeat interval and grace period; refuse settings that contradict it.

    Every worker judges the others' work stale by the same grace period, so it is part of the
    experiment: a process that was not given the settings takes the stored ones.
    """
    given = {"--heartbeat-interval": heartbeat_interval, "--grace-period": grace_period}
    stored = {"--heartbeat-interval": exp.heartbeat_interval, "--grace-period": exp.grace_period}
    wrong = [f"{k} {v}" for k, v in given.items() if v is not None and v != stored[k]]
    if wrong:
        raise ExperimentMismatchError(
            f"experiment {exp.name!r} runs with --heartbeat-interval {exp.heartbeat_interval} "
            f"and --grace-period {exp.grace_period} (stored at init), this process was given "
            f"{' and '.join(wrong)}: drop the option (and RNNTUNE_HEARTBEAT_INTERVAL / "
            "RNNTUNE_GRACE_PERIOD) to use the experiment's"
        )
    return exp.heartbeat_interval, exp.grace_period


@dataclass(frozen=True)
class Experiment:
    id: int
    config: ExperimentConfig
    data_fingerprint: str
    data_summary: dict[str, Any]
    created_at: datetime
    finished_at: datetime | None
    report_path: str | None
    # The liveness policy every worker of this experiment follows (stored at init).
    heartbeat_interval: int = DEFAULT_HEARTBEAT_INTERVAL
    grace_period: int = DEFAULT_GRACE_PERIOD

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
            heartbeat_interval=row.heartbeat_interval,
            grace_period=row.grace_period,
        )


@dataclass(frozen=True)
class LoadedData:
    splits: data_mod.Splits
    fingerprint: str
    shape: tuple[int, ...]
    labels_note: str | None = None
    # Kept only with --resplit: the repeats draw their own splits from it.
    dataset: data_mod.Dataset | None = None


def load_data(cfg: ExperimentConfig, spec_override: str | None = None) -> LoadedData:
    """Load and split the experiment's data (``spec_override``: the same data at another path)."""
    ds = data_mod.load_dataset(spec_override or cfg.data)
    fp = data_mod.fingerprint(ds)
    splits = data_mod.split_dataset(
        ds, seed=cfg.split_seed, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction
    )
    return LoadedData(
        splits=splits,
        fingerprint=fp,
        shape=tuple(ds.X.shape),
        labels_note=ds.labels_note,
        dataset=ds if cfg.resplit else None,
    )


def repeat_splits(cfg: ExperimentConfig, loaded: LoadedData, repeat: int) -> data_mod.Splits:
    """The split evaluation repeat ``repeat`` trains and tests on.

    The fixed split (tuning's) by default; with ``resplit``, split *repeat*, drawn with
    :meth:`ExperimentConfig.resplit_seed` - the same for every family, so repeats stay paired.
    """
    if not cfg.resplit:
        return loaded.splits
    assert loaded.dataset is not None, "load_data keeps the dataset when resplit is on"
    return data_mod.resplit_dataset(
        loaded.dataset,
        seed=cfg.resplit_seed(repeat),
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
    )


def split_summary(cfg: ExperimentConfig, splits: data_mod.Splits) -> dict[str, Any]:
    """Where the split came from and the evaluation protocol, as the report states them."""
    if cfg.resplit:
        pooled = (
            " The file's own parts are pooled and redrawn with their sizes."
            if splits.source in (data_mod.SPLIT_GIVEN, data_mod.SPLIT_GIVEN_CARVED)
            else ""
        )
        protocol = (
            f"re-split per repeat (--resplit): repeat i trains and tests on split i, drawn "
            f"stratified with seed {cfg.resplit_seed(0)} + i (the same for every family, so "
            "repeats stay paired). Tuning used the fixed split below, so a re-split test part "
            "may hold sequences that tuning trained or validated on; the spread includes the "
            f"luck of the split.{pooled}"
        )
    else:
        protocol = (
            "fixed split: tuning and every repeat use the split below; its test part is never "
            "seen by tuning."
        )
    return {
        "source": splits.source,
        "text": data_mod.split_source_text(splits.source, cfg.val_fraction, cfg.test_fraction),
        "protocol": "resplit" if cfg.resplit else "fixed",
        "protocol_text": protocol,
    }


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
    storage: RDBStorage,
    explicit: dict[str, Any],
    data_override: str | None = None,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
) -> tuple[Experiment, bool]:
    """Create the experiment (schema, row, one study per family) or check it against ``explicit``.

    Idempotent and safe to run from several processes at once. Returns (experiment, created).
    The heartbeat interval and grace period are stored with a new experiment (defaults 5 / 30 s)
    and checked against an existing one. On an existing experiment, a family that gave up is
    given another chance (its errors so far are forgiven): a rerun can finish it.
    """
    check_policy(heartbeat_interval, grace_period)
    engine = storage.engine
    upgrade(engine)
    failpoint("init.after_migrate")
    name = explicit.get("name") or "default"
    # The data is loaded before the lock (it may take minutes; every other init of this
    # experiment waits on the lock) and again under it only if a racing init changed what to load.
    planned = _planned_config(find_by_name(engine, name), explicit, name)
    preloaded = load_data(planned, data_override)

    def data_for(cfg: ExperimentConfig) -> LoadedData:
        same = _data_inputs(cfg) == _data_inputs(planned)
        return preloaded if same else load_data(cfg, data_override)

    with exclusive(engine, f"rnntune:experiment:{name}"):
        existing = find_by_name(engine, name)
        if existing is not None:
            _planned_config(existing, explicit, name)  # a racing init may have made it
            resolve_policy(existing, heartbeat_interval, grace_period)
            loaded = data_for(existing.config)
            verify_data(existing, loaded)
            _check_studies(storage, existing.config)
            _create_studies(storage, existing.config)
            _forgive_given_up(storage, existing.config)
            return existing, False
        cfg = build(explicit)
        _check_studies(storage, cfg)
        loaded = data_for(cfg)
        _create_studies(storage, cfg)
        failpoint("init.after_studies")
        summary = {
            "spec": cfg.data,
            "shape": list(loaded.shape),
            "splits": loaded.splits.describe(),
            "split": split_summary(cfg, loaded.splits),
        }
        if loaded.labels_note:
            summary["labels"] = loaded.labels_note
        with session_scope(engine) as s:
            row = ExperimentRow(
                name=cfg.name,
                config=cfg.to_dict(),
                config_hash=cfg.digest(),
                data_spec=cfg.data,
                data_fingerprint=loaded.fingerprint,
                data_summary=summary,
                heartbeat_interval=heartbeat_interval or DEFAULT_HEARTBEAT_INTERVAL,
                grace_period=grace_period or DEFAULT_GRACE_PERIOD,
            )
            s.add(row)
            s.flush()
            exp = Experiment.from_row(row)
        log.info("registered experiment %s (%s)", cfg.name, loaded.fingerprint[:19])
        return exp, True


def _planned_config(
    existing: Experiment | None, explicit: dict[str, Any], name: str
) -> ExperimentConfig:
    """The configuration ``explicit`` asks for, given the experiment stored under ``name``."""
    if existing is None:
        return build(explicit)
    merged = build(explicit, base=existing.config)
    if merged.digest() != existing.config.digest():
        raise ExperimentMismatchError(
            f"experiment {name!r} already exists with a different configuration "
            f"({_diff(existing.config, merged)}): use a new --experiment name, or drop "
            "the differing options to resume it as it was"
        )
    return existing.config


def _data_inputs(cfg: ExperimentConfig) -> tuple[Any, ...]:
    """What :func:`load_data` reads from a configuration."""
    return (cfg.data, cfg.split_seed, cfg.val_fraction, cfg.test_fraction, cfg.resplit)


def _check_studies(storage: RDBStorage, cfg: ExperimentConfig) -> None:
    """Refuse to adopt a study of the same name that this experiment did not create.

    ``create_study(load_if_exists=True)`` would take any study called ``<name>.<family>``: its
    trials would count toward the budget, and a ``minimize`` study's best trial is the worst
    configuration. An empty study without rnntune's attributes is our own half-made one (a
    crash between creating it and tagging it), and is adopted.
    """
    for family in cfg.families:
        name = cfg.study_name(family)
        try:
            sid = storage.get_study_id_from_name(name)
        except KeyError:
            continue
        owner = storage.get_study_user_attrs(sid).get("rnntune_experiment")
        directions = storage.get_study_directions(sid)
        problem = None
        if directions != [optuna.study.StudyDirection.MAXIMIZE]:
            problem = f"its direction is {', '.join(d.name.lower() for d in directions)}"
        elif owner is not None and owner != cfg.name:
            problem = f"it belongs to rnntune experiment {owner!r}"
        elif owner is None and storage.get_all_trials(sid, deepcopy=False):
            problem = "it has trials but was not created by rnntune"
        if problem:
            raise ExperimentMismatchError(
                f"a study named {name!r} already exists in {mask_url(str(storage.engine.url))} "
                f"and {problem}; nothing was changed: use a new --experiment name (or delete "
                "that study if it is yours to delete)"
            )


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


def _forgive_given_up(storage: RDBStorage, cfg: ExperimentConfig) -> None:
    from rnntune import state

    for family in cfg.families:
        study = optuna.load_study(study_name=cfg.study_name(family), storage=storage)
        counts = state.count_trials(study)
        if state.tuning_state(cfg.trials, counts) == state.GAVE_UP:
            storage.set_study_system_attr(study_id(study), state.FORGIVEN_ATTR, counts.errors)
            log.warning(
                "%s gave up after %d trial errors at %d/%d finished trials; trying again",
                study.study_name,
                counts.counted_errors,
                counts.finished,
                cfg.trials,
            )


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
