"""The experiment's configuration: frozen dataclasses, built in one place.

Precedence, stated once: command line > ``RNNTUNE_*`` environment variable > experiment file
(``--config FILE.toml``) > default. Click resolves the first two (``envvar=``); :func:`build`
layers the result over the file and the defaults. Only values the user gave explicitly are
compared against a stored experiment, so ``rnntune run`` on an existing experiment resumes it as
it was registered.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rnntune.exceptions import ConfigError

FAMILIES: tuple[str, ...] = ("rnn", "gru", "lstm")
METRICS: tuple[str, ...] = ("macro_f1", "weighted_f1", "accuracy", "roc_auc")
PRUNERS: tuple[str, ...] = ("median", "percentile", "hyperband", "none")
# Parameters the model and training loop understand, with the types they may be sampled as.
TUNABLE: dict[str, tuple[str, ...]] = {
    "hidden_size": ("categorical", "int"),
    "learning_rate": ("float", "categorical"),
    "batch_size": ("categorical", "int"),
    "num_layers": ("categorical", "int"),
    "dropout": ("float", "categorical"),
}
REQUIRED_PARAMS = ("hidden_size", "learning_rate", "batch_size")

# The original study's search space, exactly.
DEFAULT_SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "hidden_size": {"type": "categorical", "choices": [16, 32, 64]},
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "batch_size": {"type": "categorical", "choices": [16, 32, 64]},
}

DEFAULT_DATA = "synthetic"


@dataclass(frozen=True)
class PrunerConfig:
    type: str = "median"
    n_startup_trials: int = 3
    n_warmup_steps: int = 1
    percentile: float = 50.0

    def describe(self) -> str:
        if self.type == "none":
            return "none"
        extra = f", percentile={self.percentile}" if self.type == "percentile" else ""
        return (
            f"{self.type} (n_startup_trials={self.n_startup_trials}, "
            f"n_warmup_steps={self.n_warmup_steps}{extra})"
        )


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines an experiment's results. Stored in the database with it."""

    name: str = "default"
    data: str = DEFAULT_DATA
    trials: int = 10
    repeats: int = 10
    max_epochs: int = 10
    patience: int = 3
    seed: int = 0
    objective: str = "macro_f1"
    families: tuple[str, ...] = FAMILIES
    search_space: dict[str, dict[str, Any]] = field(
        default_factory=lambda: json.loads(json.dumps(DEFAULT_SEARCH_SPACE))
    )
    pruner: PrunerConfig = PrunerConfig()
    tpe_startup_trials: int = 4
    val_fraction: float = 0.15
    test_fraction: float = 0.15

    # -- derived -------------------------------------------------------------------------
    @property
    def split_seed(self) -> int:
        return self.seed

    def repeat_seed(self, repeat: int) -> int:
        """Repeat *i* has the same seed in every family, so the repeats are paired."""
        return self.seed * 1000 + 100 + repeat

    def trial_seed(self, original_trial_number: int) -> int:
        """A trial's training seed; a retry keeps its original trial's seed (and checkpoint)."""
        return self.seed * 1000 + 500_000 + original_trial_number

    def study_name(self, family: str) -> str:
        return f"{self.name}.{family}"

    # -- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["families"] = list(self.families)
        return d

    def identity(self) -> dict[str, Any]:
        """What must match for two runs to be the same experiment (the name is the key)."""
        d = self.to_dict()
        d.pop("name")
        return d

    def digest(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        d = dict(d)
        d["families"] = tuple(d.get("families", FAMILIES))
        d["pruner"] = PrunerConfig(**d.get("pruner", {}))
        return validate(cls(**d))


# Options a user can give (CLI / env / file [experiment] table) and their types.
OPTION_TYPES: dict[str, type] = {
    "name": str,
    "data": str,
    "trials": int,
    "repeats": int,
    "max_epochs": int,
    "patience": int,
    "seed": int,
    "objective": str,
    "tpe_startup_trials": int,
}


def read_file(path: str | Path) -> dict[str, Any]:
    """Read an experiment file into explicit overrides (the same keys as :func:`build` takes)."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"experiment file {p} does not exist: check the --config path") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read experiment file {p} ({e}): check its permissions") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"experiment file {p} is not valid TOML ({e}): fix the syntax") from e
    out: dict[str, Any] = {}
    unknown = set(raw) - {"experiment", "search_space", "pruner"}
    if unknown:
        raise ConfigError(
            f"experiment file {p} has unknown table(s) {sorted(unknown)}: "
            "use [experiment], [search_space] and [pruner]"
        )
    exp = dict(raw.get("experiment", {}))
    allowed = set(OPTION_TYPES) | {"families"}
    bad = set(exp) - allowed
    if bad:
        raise ConfigError(
            f"experiment file {p}: unknown key(s) {sorted(bad)} in [experiment]; "
            f"known keys: {', '.join(sorted(allowed))}"
        )
    out.update(exp)
    if "families" in out:
        out["families"] = tuple(out["families"])
    if "search_space" in raw:
        out["search_space"] = raw["search_space"]
    if "pruner" in raw:
        known = {f.name for f in fields(PrunerConfig)}
        bad = set(raw["pruner"]) - known
        if bad:
            raise ConfigError(
                f"experiment file {p}: unknown key(s) {sorted(bad)} in [pruner]; "
                f"known keys: {', '.join(sorted(known))}"
            )
        out["pruner"] = raw["pruner"]
    return out


def build(explicit: dict[str, Any], base: ExperimentConfig | None = None) -> ExperimentConfig:
    """Layer ``explicit`` values (CLI/env over file, merged by the caller) over ``base``."""
    cfg = base or ExperimentConfig()
    values: dict[str, Any] = {}
    for key, value in explicit.items():
        if value is None:
            continue
        if key == "pruner":
            pr = value if isinstance(value, dict) else {"type": value}
            values["pruner"] = replace(cfg.pruner, **pr) if base is not None else PrunerConfig(**pr)
        elif key == "families":
            values["families"] = tuple(value)
        elif key == "search_space":
            # Entries replace or add parameters: a file that only adds `num_layers` keeps the
            # original study's space for the rest.
            values["search_space"] = json.loads(json.dumps({**cfg.search_space, **value}))
        elif key in OPTION_TYPES:
            values[key] = _coerce(key, value)
        else:
            raise ConfigError(f"unknown experiment setting {key!r}")
    return validate(replace(cfg, **values))


def _coerce(key: str, value: Any) -> Any:
    typ = OPTION_TYPES[key]
    try:
        return typ(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key} must be {typ.__name__}, got {value!r}") from e


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    if not cfg.name or any(c in cfg.name for c in "/\\ \t\n") or len(cfg.name) > 200:
        raise ConfigError(
            f"experiment name {cfg.name!r} is not usable: use letters, digits, '-', '_' or '.'"
        )
    for key, low in (("trials", 1), ("repeats", 1), ("max_epochs", 1), ("patience", 1)):
        if getattr(cfg, key) < low:
            raise ConfigError(
                f"--{key.replace('_', '-')} must be at least {low}, got {getattr(cfg, key)}"
            )
    if cfg.seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {cfg.seed}")
    if cfg.objective not in METRICS:
        raise ConfigError(
            f"unknown objective {cfg.objective!r}: choose one of {', '.join(METRICS)}"
        )
    if (
        not cfg.families
        or set(cfg.families) - set(FAMILIES)
        or len(set(cfg.families)) != len(cfg.families)
    ):
        raise ConfigError(
            f"families must be distinct names among {', '.join(FAMILIES)}, got {list(cfg.families)}"
        )
    if cfg.pruner.type not in PRUNERS:
        raise ConfigError(f"unknown pruner {cfg.pruner.type!r}: choose one of {', '.join(PRUNERS)}")
    if not (0 < cfg.val_fraction < 0.5 and 0 < cfg.test_fraction < 0.5):
        raise ConfigError("val_fraction and test_fraction must each be between 0 and 0.5")
    validate_search_space(cfg.search_space)
    return cfg


def validate_search_space(space: dict[str, dict[str, Any]]) -> None:
    missing = [p for p in REQUIRED_PARAMS if p not in space]
    if missing:
        raise ConfigError(
            f"search space lacks {', '.join(missing)}: every experiment tunes "
            f"{', '.join(REQUIRED_PARAMS)} (add them under [search_space])"
        )
    for name, spec in space.items():
        where = f"search_space.{name}"
        if name not in TUNABLE:
            raise ConfigError(f"{where}: unknown parameter; tunable ones are {', '.join(TUNABLE)}")
        if not isinstance(spec, dict) or "type" not in spec:
            raise ConfigError(f'{where}: give a table with type = "categorical"|"float"|"int"')
        kind = spec["type"]
        if kind not in TUNABLE[name]:
            raise ConfigError(
                f"{where}: type {kind!r} not allowed; use {' or '.join(TUNABLE[name])}"
            )
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{where}: categorical needs a non-empty list `choices`")
            for c in choices:
                _check_value(name, c, where)
        else:
            low, high = spec.get("low"), spec.get("high")
            if not isinstance(low, int | float) or not isinstance(high, int | float) or low > high:
                raise ConfigError(
                    f"{where}: needs numbers low <= high, got low={low!r} high={high!r}"
                )
            if spec.get("log") and low <= 0:
                raise ConfigError(f"{where}: a log scale needs low > 0")
            _check_value(name, low, where)
            _check_value(name, high, where)


def _check_value(name: str, v: Any, where: str) -> None:
    if name in ("hidden_size", "batch_size", "num_layers"):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{where}: values must be positive integers, got {v!r}")
    elif name == "learning_rate":
        if not isinstance(v, int | float) or not (0 < v < 10) or math.isnan(v):
            raise ConfigError(f"{where}: learning rates must be in (0, 10), got {v!r}")
    elif name == "dropout":
        if not isinstance(v, int | float) or not (0 <= v < 1):
            raise ConfigError(f"{where}: dropout must be in [0, 1), got {v!r}")


@dataclass(frozen=True)
class Runtime:
    """How this process runs (not part of the experiment: workers may differ).

    Except the heartbeat interval and grace period, which belong to the experiment (stored at
    init): None means "the experiment's"; a value given is checked against the stored one.
    """

    storage: str
    artifacts: str = "rnntune-artifacts"
    device: str = "auto"
    threads: int = 1
    heartbeat_interval: int | None = None
    grace_period: int | None = None
    poll_interval: float = 1.0

    def __post_init__(self) -> None:
        hb, grace = self.heartbeat_interval, self.grace_period
        if hb is not None and hb < 1:
            raise ConfigError("--heartbeat-interval must be at least 1 second")
        if grace is not None and grace < 1:
            raise ConfigError("--grace-period must be at least 1 second")
        if (hb is not None or grace is not None) and (grace or 30) <= (hb or 5):
            raise ConfigError(
                f"--grace-period ({grace or 30}s) must exceed --heartbeat-interval "
                f"({hb or 5}s), or live trials would be failed as stale"
            )
        if self.threads < 1:
            raise ConfigError("--threads must be at least 1")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"unknown device {self.device!r}: use auto, cpu or cuda")
