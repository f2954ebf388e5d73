"""The experiment's configuration: frozen dataclasses, built in one place.

Precedence, stated once: command line > ``RNNTUNE_*`` environment variable > experiment file
(``--config FILE.toml``) > default. Click resolves the first two (``envvar=``, with no defaults
of its own: the ``DEFAULT_*`` constants and the dataclass fields below are the only defaults, and
the options show them); :func:`explicit_settings` lays the result over the file, and
:func:`build` over the defaults. Only values the user gave explicitly are compared against a
stored experiment, so ``rnntune run`` on an existing experiment resumes it as it was registered.

How a process runs (:class:`Runtime`) is resolved here too (:func:`runtime`), and handed to the
worker processes of ``rnntune run`` as command-line options by :func:`worker_options`, from the
same table (:data:`RUNTIME_OPTIONS`) the CLI declares those options with.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from rnntune.exceptions import ConfigError
from rnntune.names import FAMILIES

METRICS: tuple[str, ...] = ("macro_f1", "weighted_f1", "accuracy", "roc_auc")
PRUNERS: tuple[str, ...] = ("median", "percentile", "hyperband", "none")
# Parameters the model and training loop understand, with the types they may be sampled as.
TUNABLE: dict[str, tuple[str, ...]] = {
    "hidden_size": ("categorical", "int"),
    "learning_rate": ("float", "categorical"),
    "batch_size": ("categorical", "int"),
    "num_layers": ("categorical", "int"),
    "dropout": ("float", "categorical"),
    "readout": ("categorical",),
}
READOUTS: tuple[str, ...] = ("last", "mean")  # as models.READOUTS (config does not import torch)
REQUIRED_PARAMS = ("hidden_size", "learning_rate", "batch_size")

# The original study's search space, exactly.
DEFAULT_SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "hidden_size": {"type": "categorical", "choices": [16, 32, 64]},
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "batch_size": {"type": "categorical", "choices": [16, 32, 64]},
}

DEFAULT_DATA = "synthetic"
DEFAULT_EXPERIMENT = "default"

# Defaults of the process settings (not part of an experiment's identity). The CLI's options
# show these and leave unset values None, so the defaults are applied here, in one place.
DEFAULT_ARTIFACTS = "rnntune-artifacts"
DEFAULT_DEVICE = "auto"
DEFAULT_OUT = "reports"  # report directory of `run` and `evaluate`
DEFAULT_WORKERS = 2  # local worker processes of `rnntune run`
DEFAULT_WORKER_THREADS = 1  # torch threads of a `rnntune worker` (it cannot know its neighbours)
DEFAULT_DASHBOARD_HOST = "127.0.0.1"  # optuna-dashboard has no login: local by default
DEFAULT_DASHBOARD_PORT = 8080
# The liveness policy, stored with an experiment when it is registered (rnntune.experiment).
DEFAULT_HEARTBEAT_INTERVAL = 5
DEFAULT_GRACE_PERIOD = 30


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

    name: str = DEFAULT_EXPERIMENT
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
    # False: one fixed split (tuning and every repeat). True: repeat i tests on split i
    # (--resplit, the original study's protocol); tuning keeps the fixed split.
    resplit: bool = False

    # -- derived -------------------------------------------------------------------------
    @property
    def split_seed(self) -> int:
        return self.seed

    def repeat_seed(self, repeat: int) -> int:
        """Repeat *i* has the same seed in every family, so the repeats are paired."""
        return self.seed * 1000 + 100 + repeat

    def resplit_seed(self, repeat: int) -> int:
        """With ``resplit``, repeat *i* draws split *i* with this seed: the same in every family,
        so the repeats stay paired, and never the fixed split's seed."""
        return self.seed * 1000 + 900_000 + repeat

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
        if not d["resplit"]:  # the default: experiments registered before the option keep
            d.pop("resplit")  # their digest
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
    "resplit": bool,
}


def read_file(path: str | Path) -> dict[str, Any]:
    """Read an experiment file into explicit overrides (the same keys as :func:`build` takes)."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"experiment file {p} does not exist: check the --config path") from e
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"experiment file {p} is not UTF-8 text (byte {e.object[e.start]:#x} at position "
            f"{e.start}): save it as UTF-8"
        ) from e
    except IsADirectoryError as e:
        raise ConfigError(f"experiment file {p} is a directory: pass the .toml file") from e
    except OSError as e:
        raise ConfigError(
            f"cannot read experiment file {p} ({e.strerror or e}): check its permissions"
        ) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"experiment file {p} is not valid TOML ({e}): fix the syntax") from e
    out: dict[str, Any] = {}
    for table in ("experiment", "search_space", "pruner"):
        if table in raw and not isinstance(raw[table], dict):
            raise ConfigError(
                f"experiment file {p}: {table} must be a table ([{table}]), got "
                f"{_tname(raw[table])}; write it as a [{table}] section"
            )
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


def explicit_settings(
    name: str, config_file: str | Path | None, given: dict[str, Any]
) -> dict[str, Any]:
    """The experiment settings a user gave explicitly: the experiment file's, overridden by the
    command line's and environment's (``given``, already merged by click; None = not given).

    :func:`build` lays the result over the defaults; a stored experiment compares only these.
    """
    explicit: dict[str, Any] = read_file(config_file) if config_file else {}
    # The default name does not override a name the file gives.
    if name != DEFAULT_EXPERIMENT or "name" not in explicit:
        explicit["name"] = name
    for key, value in given.items():
        if value is None:
            continue
        # The command line names a pruner by its type; the file's [pruner] table says more.
        explicit[key] = {"type": value} if key == "pruner" else value
    return explicit


def build(explicit: dict[str, Any], base: ExperimentConfig | None = None) -> ExperimentConfig:
    """Layer ``explicit`` values (CLI/env over file, merged by the caller) over ``base``."""
    cfg = base or ExperimentConfig()
    values: dict[str, Any] = {}
    for key, value in explicit.items():
        if value is None:
            continue
        if key == "pruner":
            pr = value if isinstance(value, dict) else {"type": value}
            values["pruner"] = _pruner(pr, cfg.pruner if base is not None else PrunerConfig())
        elif key == "families":
            if isinstance(value, str) or not isinstance(value, list | tuple):
                raise ConfigError(
                    f"families must be a list of names among {', '.join(FAMILIES)}, got "
                    f'{value!r}; write families = ["gru", "lstm"]'
                )
            values["families"] = tuple(value)
        elif key == "search_space":
            if not isinstance(value, dict):
                raise ConfigError(
                    f"search_space must be a table of parameters, got {_tname(value)}; "
                    "write [search_space.hidden_size] sections"
                )
            # Entries replace or add parameters: a file that only adds `num_layers` keeps the
            # original study's space for the rest.
            values["search_space"] = json.loads(json.dumps({**cfg.search_space, **value}))
        elif key in OPTION_TYPES:
            values[key] = _coerce(key, value)
        else:
            raise ConfigError(f"unknown experiment setting {key!r}")
    return validate(replace(cfg, **values))


def _tname(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _coerce(key: str, value: Any) -> Any:
    """CLI and env values arrive as their declared type; file values may be anything TOML has.
    A bool is not an integer and 10.9 is not 10: both are refused rather than converted."""
    typ = OPTION_TYPES[key]
    if typ is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            return int(value)
        raise ConfigError(
            f"{key} must be a whole number, got {_tname(value)} {value!r}; write {key} = 10"
        )
    if not isinstance(value, str):
        raise ConfigError(
            f'{key} must be a string, got {_tname(value)} {value!r}; write {key} = "..."'
        )
    return value


def _pruner(given: dict[str, Any], base: PrunerConfig) -> PrunerConfig:
    known = {f.name for f in fields(PrunerConfig)}
    bad = set(given) - known
    if bad:
        raise ConfigError(
            f"unknown pruner setting(s) {sorted(bad)}; known settings: {', '.join(sorted(known))}"
        )
    return replace(base, **given)


NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME = 200
# Repeat seeds (seed*1000+100+r) are stored as 32-bit integers and split seeds go to numpy
# (< 2**32): with seed <= MAX_SEED, repeats <= MAX_REPEATS and trial seeds
# (seed*1000+500000+n) every derived seed stays below 2**31.
MAX_SEED = 2_000_000
MAX_REPEATS = 1000
MAX_TRIALS = 100_000
MAX_EPOCHS = 100_000


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    if not isinstance(cfg.name, str) or not NAME_RE.fullmatch(cfg.name) or len(cfg.name) > MAX_NAME:
        raise ConfigError(
            f"experiment name {cfg.name!r} is not usable: start with a letter or digit and use "
            f"only letters, digits, '-', '_' or '.' (at most {MAX_NAME} characters)"
        )
    for key, low, high in (
        ("trials", 1, MAX_TRIALS),
        ("repeats", 1, MAX_REPEATS),
        ("max_epochs", 1, MAX_EPOCHS),
        ("patience", 1, MAX_EPOCHS),
        ("seed", 0, MAX_SEED),
        ("tpe_startup_trials", 0, MAX_TRIALS),
    ):
        value = getattr(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a whole number, got {value!r}")
        if value < low:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least {low}, got {value}")
        if value > high:
            raise ConfigError(
                f"--{key.replace('_', '-')} must be at most {high:,}, got {value:,}; "
                f"pass a value in {low}..{high}"
            )
    if cfg.objective not in METRICS:
        raise ConfigError(
            f"unknown objective {cfg.objective!r}: choose one of {', '.join(METRICS)}"
        )
    if (
        not cfg.families
        or not all(isinstance(f, str) for f in cfg.families)
        or set(cfg.families) - set(FAMILIES)
        or len(set(cfg.families)) != len(cfg.families)
    ):
        raise ConfigError(
            f"families must be distinct names among {', '.join(FAMILIES)}, got {list(cfg.families)}"
        )
    if not isinstance(cfg.data, str) or not cfg.data.strip():
        raise ConfigError(f"data must be a data spec string, got {cfg.data!r}")
    if not (0 < cfg.val_fraction < 0.5 and 0 < cfg.test_fraction < 0.5):
        raise ConfigError("val_fraction and test_fraction must each be between 0 and 0.5")
    validate_pruner(cfg.pruner, cfg.max_epochs)
    validate_search_space(cfg.search_space)
    return cfg


def validate_pruner(p: PrunerConfig, max_epochs: int = 10) -> None:
    if p.type not in PRUNERS:
        raise ConfigError(f"unknown pruner {p.type!r}: choose one of {', '.join(PRUNERS)}")
    for key in ("n_startup_trials", "n_warmup_steps"):
        v = getattr(p, key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ConfigError(
                f"pruner.{key} must be a whole number >= 0, got {v!r}; e.g. {key} = 3"
            )
    pc = p.percentile
    if not isinstance(pc, int | float) or isinstance(pc, bool) or not 0 <= pc <= 100:
        raise ConfigError(f"pruner.percentile must be a number in 0..100, got {pc!r}")
    # Build it, so a pruner `init` accepts can never crash a worker.
    try:
        build_pruner(p, max_epochs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"pruner settings are not usable ({e}); fix the [pruner] table") from e


def build_pruner(p: PrunerConfig, max_epochs: int) -> Any:
    """The Optuna pruner of a pruner config (validation builds it once; workers use it)."""
    import optuna

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
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs)


def build_distributions(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The Optuna distributions of a search space (validation builds them; workers use them)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, Any] = {}
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
        if not isinstance(kind, str) or kind not in TUNABLE[name]:
            raise ConfigError(
                f"{where}: type {kind!r} not allowed; use {' or '.join(TUNABLE[name])}"
            )
        allowed = (
            {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log", "step"}
        )
        extra = set(spec) - allowed
        if extra:
            raise ConfigError(
                f"{where}: unknown key(s) {sorted(extra)} for type {kind!r}; "
                f"use {', '.join(sorted(allowed))}"
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
            if isinstance(low, bool) or isinstance(high, bool):
                raise ConfigError(f"{where}: low and high must be numbers, not booleans")
            if not isinstance(spec.get("log", False), bool):
                raise ConfigError(f"{where}: log must be true or false, got {spec['log']!r}")
            step = spec.get("step")
            if step is not None:
                if not isinstance(step, int | float) or isinstance(step, bool) or not step > 0:
                    raise ConfigError(f"{where}: step must be a number > 0, got {step!r}")
                if spec.get("log"):
                    raise ConfigError(f"{where}: give either log = true or a step, not both")
                if kind == "int" and not isinstance(step, int):
                    raise ConfigError(f"{where}: an int parameter needs a whole-number step")
                # Optuna would silently lower `high` to the last multiple of step: say so.
                span = Decimal(str(high)) - Decimal(str(low))
                if span % Decimal(str(step)) != 0:
                    fixed = span // Decimal(str(step)) * Decimal(str(step)) + Decimal(str(low))
                    raise ConfigError(
                        f"{where}: high - low ({high} - {low}) is not a multiple of step {step}; "
                        f"use high = {fixed}"
                    )
            if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
                raise ConfigError(f"{where}: an int parameter needs whole-number low and high")
            if spec.get("log") and low <= 0:
                raise ConfigError(f"{where}: a log scale needs low > 0")
            _check_value(name, low, where)
            _check_value(name, high, where)
    try:
        build_distributions(space)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"search space is not usable ({e}); fix the [search_space] table") from e


def _check_value(name: str, v: Any, where: str) -> None:
    if name in ("hidden_size", "batch_size", "num_layers"):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{where}: values must be positive integers, got {v!r}")
    elif name == "learning_rate":
        if not isinstance(v, int | float) or isinstance(v, bool) or not (0 < v < 10):
            raise ConfigError(f"{where}: learning rates must be in (0, 10), got {v!r}")
    elif name == "dropout":
        if not isinstance(v, int | float) or isinstance(v, bool) or not (0 <= v < 1):
            raise ConfigError(f"{where}: dropout must be in [0, 1), got {v!r}")
    elif name == "readout":
        if v not in READOUTS:
            raise ConfigError(f"{where}: readout must be one of {', '.join(READOUTS)}, got {v!r}")


@dataclass(frozen=True)
class Runtime:
    """How this process runs (not part of the experiment: workers may differ).

    Except the heartbeat interval and grace period, which belong to the experiment (stored at
    init): None means "the experiment's"; a value given is checked against the stored one.
    """

    storage: str
    artifacts: str = DEFAULT_ARTIFACTS
    device: str = DEFAULT_DEVICE
    threads: int = DEFAULT_WORKER_THREADS
    heartbeat_interval: int | None = None
    grace_period: int | None = None
    poll_interval: float = 1.0

    def __post_init__(self) -> None:
        hb, grace = self.heartbeat_interval, self.grace_period
        if hb is not None and hb < 1:
            raise ConfigError("--heartbeat-interval must be at least 1 second")
        if grace is not None and grace < 1:
            raise ConfigError("--grace-period must be at least 1 second")
        eff_hb, eff_grace = hb or DEFAULT_HEARTBEAT_INTERVAL, grace or DEFAULT_GRACE_PERIOD
        if (hb is not None or grace is not None) and eff_grace <= eff_hb:
            raise ConfigError(
                f"--grace-period ({eff_grace}s) must exceed --heartbeat-interval "
                f"({eff_hb}s), or live trials would be failed as stale"
            )
        if self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")
        if self.threads > 1024:
            raise ConfigError(f"--threads must be at most 1024, got {self.threads}")
        if grace is not None and grace > 7 * 24 * 3600:
            raise ConfigError(f"--grace-period must be at most one week (604800 s), got {grace}")
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]{1,3})?", self.device):
            raise ConfigError(
                f"unknown device {self.device!r}: use auto, cpu, cuda or cuda:N (N a GPU number)"
            )


def runtime(
    storage: str,
    *,
    artifacts: str | None = None,
    device: str | None = None,
    threads: int | None = None,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    workers: int | None = None,
) -> Runtime:
    """This process's settings, defaults filled in. Unset threads: the machine's cores shared by
    the ``workers`` processes started here (`run`: its workers; `evaluate`: 1), or, for a
    ``rnntune worker`` (``workers=None``), :data:`DEFAULT_WORKER_THREADS`. The heartbeat interval
    and grace period stay None unless given: the experiment's (checked against it later)."""
    if threads is None:
        cores = os.cpu_count() or 1
        threads = DEFAULT_WORKER_THREADS if workers is None else max(1, cores // max(1, workers))
    return Runtime(
        storage=storage,
        artifacts=DEFAULT_ARTIFACTS if artifacts is None else artifacts,
        device=DEFAULT_DEVICE if device is None else device,
        threads=threads,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
    )


# The Runtime fields a worker process takes on its command line, and their options: the CLI
# declares `rnntune worker`'s options from this table and `rnntune run` hands its resolved
# settings to its workers through it (worker_options), so the two cannot drift apart. The
# storage URL is not here on purpose: argv is public (ps, /proc/PID/cmdline) and the URL may hold
# a password; it travels in the worker's environment (runner.worker_env).
RUNTIME_OPTIONS: dict[str, str] = {
    "artifacts": "--artifacts",
    "device": "--device",
    "threads": "--threads",
    "heartbeat_interval": "--heartbeat-interval",
    "grace_period": "--grace-period",
}


def worker_options(experiment: str, rt: Runtime, data: str | None = None) -> list[str]:
    """The options of ``rnntune worker`` that give a worker ``rt`` (its storage excepted), for
    ``experiment`` with its data at ``data`` if given. A setting left None is left out: the
    worker then takes the experiment's (the heartbeat interval and grace period)."""
    args = ["--experiment", experiment]
    for name, option in RUNTIME_OPTIONS.items():
        value = getattr(rt, name)
        if value is not None:
            args += [option, str(value)]
    if data:
        args += ["--data", data]
    return args


def check_writable_dir(path: str | Path, option: str) -> Path:
    """Create ``path`` if needed and prove it writable by writing a file there, or raise a
    ConfigError naming ``option``. Called before anything is stored, so a bad ``--out`` or
    ``--artifacts`` is refused at the start instead of after hours of work."""
    import tempfile

    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".rnntune-write-test-", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(
            f"{option} {p} is not a writable directory ({reason}): pass {option} DIR pointing "
            "at a directory you can write to"
        ) from e
    return p
