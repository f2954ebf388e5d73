"""What a data spec names (``synthetic:``, ``npz:``, ``csv:``, ``ucr:``) and the dataset it
loads into: parsing and normalising specs, :class:`DataSpec`, :class:`Dataset`, part codes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from rnntune.exceptions import ConfigError

KINDS = ("synthetic", "npz", "csv", "ucr")

# The original study's test set was 23,971 Normal / 9,884 Abnormal sequences: 29.2 % abnormal.
SYNTHETIC_DEFAULTS: dict[str, int | float] = {
    "abnormal_rate": 0.29,
    "features": 4,
    "length": 50,
    "n": 4000,
    "seed": 0,
}
_SYNTHETIC_TYPES: dict[str, type] = {k: type(v) for k, v in SYNTHETIC_DEFAULTS.items()}
_SPEC_EXAMPLE = (
    "e.g. synthetic:n=4000,length=50,features=4,seed=0, npz:data.npz, csv:data.csv or "
    "ucr:data/NAME_TRAIN.tsv,normal=1"
)


TRAIN, VAL, TEST = 0, 1, 2  # ``Dataset.part`` codes
PART_NAMES = ("train", "val", "test")

_UCR_EXAMPLE = "ucr:data/NAME_TRAIN.tsv,normal=1"


@dataclass(frozen=True)
class DataSpec:
    """Where the data comes from: ``synthetic`` (with parameters), ``npz:PATH``, ``csv:PATH`` or
    ``ucr:PATH[,normal=A|B]`` (the UCR/UEA archive formats; ``normal`` names the normal classes).

    Synthetic parameters are completed with their defaults and sorted by name, so that
    ``DataSpec("synthetic")`` equals ``parse_data_spec("synthetic:n=4000")``.
    """

    kind: str
    path: str | None = None
    params: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown data kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.kind == "synthetic":
            if self.path is not None:
                raise ConfigError("synthetic data takes no path; drop it or use npz:/csv:")
            object.__setattr__(self, "params", _normalise_synthetic(dict(self.params)))
        elif self.kind == "ucr":
            if not self.path:
                raise ConfigError("ucr data needs a path, e.g. ucr:data/NAME_TRAIN.tsv")
            object.__setattr__(self, "params", _normalise_ucr(dict(self.params)))
        else:
            if not self.path:
                raise ConfigError(
                    f"{self.kind} data needs a path, e.g. {self.kind}:data.{self.kind}"
                )
            if self.params:
                raise ConfigError(f"{self.kind} data takes no parameters; remove them")

    def to_string(self) -> str:
        """Canonical text form; ``parse_data_spec(spec.to_string()) == spec``."""
        if self.kind == "synthetic":
            return "synthetic:" + ",".join(f"{k}={v!r}" for k, v in self.params)
        return f"{self.kind}:{self.path}" + "".join(f",{k}={v}" for k, v in self.params)

    def identity(self) -> dict[str, Any]:
        """What enters the fingerprint: kind and parameters, not the path.

        Workers mount the same file at other paths; the bytes decide whether it is the same data.
        """
        return {"kind": self.kind, "params": dict(self.params)}


def _normalise_synthetic(given: dict[str, object]) -> tuple[tuple[str, object], ...]:
    unknown = sorted(set(given) - set(SYNTHETIC_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"unknown synthetic parameter(s) {', '.join(unknown)}; "
            f"use {', '.join(SYNTHETIC_DEFAULTS)}"
        )
    values: dict[str, int | float] = dict(SYNTHETIC_DEFAULTS)
    for key, raw in given.items():
        values[key] = _coerce_param(key, raw)
    _check_synthetic_values(**values)  # type: ignore[arg-type]
    return tuple(sorted(values.items()))


def _coerce_param(key: str, raw: object) -> int | float:
    want = _SYNTHETIC_TYPES[key]
    try:
        if want is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            return int(raw)  # type: ignore[call-overload]
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        kind = "an integer" if want is int else "a number"
        raise ConfigError(
            f"bad synthetic parameter {key}={raw!r}: expected {kind}, "
            f"e.g. synthetic:{key}={SYNTHETIC_DEFAULTS[key]}"
        ) from None
    return value


# Every worker builds and holds the whole synthetic set: 2**28 float32 values are 1 GiB.
MAX_SYNTHETIC_VALUES = 2**28


def _check_synthetic_values(
    n: int, length: int, features: int, seed: int, abnormal_rate: float
) -> None:
    problems = []
    if n < 2:
        problems.append(f"n={n} (need >= 2)")
    if length < 8:
        problems.append(f"length={length} (need >= 8 time steps)")
    if features < 1:
        problems.append(f"features={features} (need >= 1)")
    if seed < 0:
        problems.append(f"seed={seed} (need >= 0)")
    if not 0.0 < abnormal_rate < 1.0:
        problems.append(f"abnormal_rate={abnormal_rate} (need 0 < rate < 1)")
    if not problems and n * length * features > MAX_SYNTHETIC_VALUES:
        problems.append(
            f"n*length*features = {n * length * features:,} values "
            f"({n * length * features * 4 / 2**30:.1f} GiB as float32) is above the limit of "
            f"{MAX_SYNTHETIC_VALUES:,} (every worker holds all of it in memory); lower n, "
            "length or features"
        )
    if problems:
        raise ConfigError(f"bad synthetic parameter(s): {'; '.join(problems)}")


def parse_data_spec(text: str) -> DataSpec:
    """Parse ``synthetic[:k=v,...]``, ``npz:PATH`` or ``csv:PATH`` into a :class:`DataSpec`."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"empty data spec; {_SPEC_EXAMPLE}")
    text = text.strip()
    kind, sep, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ConfigError(f"unknown data kind {kind!r} in {text!r}; {_SPEC_EXAMPLE}")
    if kind == "ucr":
        return _parse_ucr_spec(text, rest)
    if kind != "synthetic":
        path = os.path.expanduser(rest.strip())
        if not path:
            raise ConfigError(f"data spec {text!r} has no path; write {kind}:PATH")
        return DataSpec(kind, path=path)
    params: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))) if sep else ():
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"bad synthetic parameter {item!r} in {text!r}; write key=value")
        if key in params:
            raise ConfigError(f"synthetic parameter {key!r} given twice in {text!r}; keep one")
        params[key] = value.strip()
    return DataSpec("synthetic", params=tuple(params.items()))


@dataclass(frozen=True)
class Dataset:
    """Sequences ``X`` (float32 ``[N, T, F]``), labels ``y`` (int64 0 = Normal, 1 = Abnormal).

    ``part``: the file's own split, one code per sequence (:data:`TRAIN`, :data:`VAL`,
    :data:`TEST`), or None when the file has none and rnntune splits it. ``labels_note``: how
    the file's classes became Normal/Abnormal, when that took a rule (UCR/UEA data).
    """

    X: np.ndarray
    y: np.ndarray
    spec: DataSpec
    part: np.ndarray | None = None
    labels_note: str | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        n, t, f = self.X.shape
        return int(n), int(t), int(f)


def _normalise_ucr(given: dict[str, object]) -> tuple[tuple[str, object], ...]:
    unknown = sorted(set(given) - {"normal"})
    if unknown:
        raise ConfigError(
            f"unknown ucr parameter(s) {', '.join(unknown)}; the one parameter is normal=, "
            f"e.g. {_UCR_EXAMPLE} (several normal classes: normal=1|2)"
        )
    if "normal" not in given:
        return ()
    classes = [_canon_label(c) for c in str(given["normal"]).split("|")]
    if not all(classes):
        raise ConfigError(
            f"ucr parameter normal={given['normal']!r} names an empty class; write normal=A "
            "or normal=A|B"
        )
    return (("normal", "|".join(_natural_sorted(set(classes)))),)


def _parse_ucr_spec(text: str, rest: str) -> DataSpec:
    """``ucr:PATH[,normal=A|B]``: ``|`` separates classes, since ``,`` separates parameters."""
    path, _, params_text = rest.partition(",")
    path = os.path.expanduser(path.strip())
    if not path:
        raise ConfigError(f"data spec {text!r} has no path; write {_UCR_EXAMPLE}")
    params: dict[str, object] = {}
    for item in filter(None, (p.strip() for p in params_text.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(
                f"bad ucr parameter {item!r} in {text!r}; write normal=A, and separate several "
                "normal classes with '|' (normal=1|2), not ','"
            )
        if key.strip() in params:
            raise ConfigError(f"ucr parameter {key.strip()!r} given twice in {text!r}; keep one")
        params[key.strip()] = value.strip()
    return DataSpec("ucr", path=path, params=tuple(params.items()))


def _canon_label(text: str) -> str:
    """One spelling per class: ``1``, ``1.0`` and ``1.0000000e+00`` (older archives) are ``1``."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        return text
    if math.isfinite(value) and value.is_integer():
        return str(int(value))
    return text


def _natural_sorted(labels: Any) -> list[str]:
    def key(label: str) -> tuple[int, float, str]:
        try:
            return (0, float(label), label)
        except ValueError:
            return (1, 0.0, label)

    return sorted(labels, key=key)
