"""Datasets for Normal/Abnormal sequence classification: a synthetic generator, NPZ and CSV
loaders that validate what they read, the UCR/UEA archive formats (TSV pair and ``.ts``),
stratified splits with a train-only scaler (or the file's own train/val/test split), and a
fingerprint that lets a worker prove it loaded the data the experiment was registered with.

Pure numpy + scikit-learn: no torch, no database.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from rnntune.exceptions import ConfigError, DataError

__all__ = [
    "KINDS",
    "SYNTHETIC_DEFAULTS",
    "DataSpec",
    "Dataset",
    "Splits",
    "parse_data_spec",
    "load_dataset",
    "make_synthetic",
    "fingerprint",
    "split_dataset",
    "resplit_dataset",
    "split_source_text",
]

logger = logging.getLogger(__name__)

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

_LABEL_WORDS = {"normal": 0, "abnormal": 1, "0": 0, "1": 1}
_CSV_REQUIRED = ("sequence_id", "t", "label")
_CSV_SPLIT = "split"  # optional: train/val/test per sequence, the file's own split


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


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


def load_dataset(spec: DataSpec | str) -> Dataset:
    """Build or read the dataset a spec names, validated (finite, both classes, [N, T, F])."""
    if isinstance(spec, str):
        spec = parse_data_spec(spec)
    part: np.ndarray | None = None
    note: str | None = None
    if spec.kind == "synthetic":
        X, y = make_synthetic(**dict(spec.params))  # type: ignore[arg-type]
    elif spec.kind == "npz":
        X, y, part = _read_npz_with_parts(spec.path)  # type: ignore[arg-type]
    elif spec.kind == "ucr":
        X, y, part, note = _read_ucr(spec)
    else:
        X, y, part = _read_csv(spec.path)  # type: ignore[arg-type]
    X, y = _validate(X, y, source=spec.to_string())
    if part is not None:
        _check_given_parts(y, part, source=spec.to_string())
    logger.info("loaded %s: X %s, %d abnormal", spec.to_string(), X.shape, int(y.sum()))
    return Dataset(X=X, y=y, spec=spec, part=part, labels_note=note)


def _validate(X: np.ndarray, y: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Shapes, dtypes, finiteness and labels; returns ``(float32 [N,T,F], int64 [N])``."""
    if X.dtype.kind not in "biuf":
        raise DataError(f"{source}: X has dtype {X.dtype}, need numbers; store X as float32")
    if X.ndim == 2:  # [N, T]: one feature
        X = X[:, :, None]
    if X.ndim != 3 or 0 in X.shape:
        raise DataError(
            f"{source}: X has shape {X.shape}, need [N, T, F] or [N, T] with no empty axis"
        )
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{source}: y has shape {y.shape}, need one label per sequence [N]")
    if len(y) != len(X):
        raise DataError(
            f"{source}: X has {len(X)} sequences but y has {len(y)} labels; "
            "they must be the same length"
        )
    with np.errstate(over="ignore"):
        X = np.ascontiguousarray(X, dtype=np.float32)
    bad = ~np.isfinite(X)
    if bad.any():
        n_nan = int(np.isnan(X).sum())
        i, t, f = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(
            f"{source}: X has {n_nan} NaN and {int(bad.sum()) - n_nan} infinite values "
            f"(outside float32 range counts as infinite) in {int(bad.any(axis=(1, 2)).sum())} "
            f"sequences, first at sequence {i}, t={t}, feature {f}; clean or impute them"
        )
    y = _labels_to_int(y, source)
    counts = np.bincount(y, minlength=2)
    if counts.min() == 0:
        only = "Normal" if counts[0] else "Abnormal"
        raise DataError(
            f"{source}: all {len(y)} sequences are {only}; the task needs both Normal and "
            "Abnormal sequences"
        )
    return X, y


def _labels_to_int(y: np.ndarray, source: str) -> np.ndarray:
    if y.dtype.kind == "b":
        return y.astype(np.int64)
    if y.dtype.kind in "iuf":
        ok = np.isin(y, (0, 1))
        if not ok.all():
            bad = np.unique(y[~ok])
            shown = ", ".join(repr(v.item()) for v in bad[:5])
            raise DataError(
                f"{source}: unknown label values {shown}{' ...' if len(bad) > 5 else ''} "
                f"({len(bad)} distinct); use 0/1 or normal/abnormal"
            )
        return y.astype(np.int64)
    if y.dtype.kind == "S":  # bytes (numpy.savez of b"normal", or of str encoded by hand)
        try:
            y = np.char.decode(y, "utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"{source}: labels are bytes that are not UTF-8 text (byte {e.object[e.start]:#x}"
                f" at position {e.start}); store labels as str (normal/abnormal) or 0/1 integers"
            ) from None
    if y.dtype.kind == "O":
        if not all(isinstance(v, str) for v in y.tolist()):
            raise DataError(
                f"{source}: labels mix types; store labels as str (normal/abnormal) or 0/1"
            )
        y = y.astype(str)
    if y.dtype.kind == "U":
        words = np.char.lower(np.char.strip(y))
        uniq, inverse = np.unique(words, return_inverse=True)
        unknown = [w for w in uniq if w not in _LABEL_WORDS]
        if unknown:
            shown = ", ".join(repr(str(w)) for w in unknown[:5])
            raise DataError(
                f"{source}: unknown label values {shown}{' ...' if len(unknown) > 5 else ''} "
                f"({len(unknown)} distinct); use normal/abnormal (any case) or 0/1"
            )
        codes = np.array([_LABEL_WORDS[str(w)] for w in uniq], dtype=np.int64)
        return codes[inverse.reshape(-1)]
    raise DataError(f"{source}: labels have dtype {y.dtype}; use 0/1 or normal/abnormal")


# --------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------

# Noise and effect sizes are tuned so a well-tuned recurrent model reaches a macro F1 of about
# 0.8-0.95 (not 1.0): the comparison between families is only informative below the ceiling.
_NOISE_STD = 0.3
_NOISE_AR = 0.6  # AR(1) coefficient: neighbouring steps share noise, like a real sensor
_DISTRACTOR_RATE = 0.3  # benign late spikes, in Normal and Abnormal windows alike
_CHUNK = 16_384  # sequences per block of signal synthesis: bounds temporaries (~13 MB each)
# Ranges of per-window parameters, drawn uniformly. The main component has at least two
# cycles per window, so that a drift is not just a slow sinusoid; effect sizes are wide, so
# that strong cases are learnt in a few epochs and weak ones keep the ceiling below 1.0.
_RANGES: dict[str, tuple[float, float]] = {
    "main_cycles": (2.0, 4.0),  # main component, cycles per window
    "minor_cycles": (8.0, 11.0),
    "main_amp": (0.7, 1.3),
    "minor_amp": (0.05, 0.2),
    "event_height": (3.0, 5.0),  # early transient (and benign late spike) height
    "event_gain_up": (2.0, 3.0),  # after the event the next channel gets louder ...
    "event_gain_down": (0.1, 0.35),  # ... or quieter
    "drift": (1.0, 3.0),  # total drift across the window
    "freq_factor": (2.2, 3.2),  # main frequency after a change / before (a slow-down is
    # hardly learnable in 50 steps: too little of a slow cycle is left to see)
}
_OFFSET_STD = 0.25


def make_synthetic(
    n: int, length: int, features: int, seed: int, abnormal_rate: float = 0.29
) -> tuple[np.ndarray, np.ndarray]:
    """Sensor-like windows ``X`` (float32 ``[n, length, features]``) and labels ``y`` (int64).

    Every channel is a sum of two sinusoids (random frequency, phase and amplitude per window
    and channel), a random offset and AR(1) noise; 30 % of all windows carry a benign
    spike in their second half. ``round(n * abnormal_rate)`` windows are Abnormal, each with
    one of three patterns that a model only sees by remembering across the window:

    * **early event** - a transient in the first 20 % on one channel, after which the next
      channel's main component changes amplitude and phase (late spikes are the distractor);
    * **drift** - one channel drifts linearly across the window, by less than the noise per
      step: visible only by integrating over many steps;
    * **frequency change** - one channel's main frequency jumps up mid-window (phase-continuous).

    Deterministic in ``seed`` and bit-identical across CPUs (see :func:`_sin`); vectorised
    over windows, so 170,000 windows take a few seconds.
    """
    X, y, _ = _synthetic(n, length, features, seed, abnormal_rate)
    return X, y


def _synthetic(
    n: int, length: int, features: int, seed: int, abnormal_rate: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`make_synthetic`, plus each window's pattern (-1 Normal, 0 event, 1 drift, 2 freq)."""
    _check_synthetic_values(n, length, features, seed, abnormal_rate)
    rng = np.random.default_rng(seed)
    T, F, R = length, features, _RANGES

    n_abnormal = min(max(round(n * abnormal_rate), 1), n - 1)
    y = np.zeros(n, dtype=np.int64)
    y[rng.permutation(n)[:n_abnormal]] = 1

    def signs() -> np.ndarray:
        return rng.choice((-1.0, 1.0), n)

    def either(p: float, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
        return np.where(rng.random(n) < p, rng.uniform(*a, n), rng.uniform(*b, n))

    # Every parameter is drawn for every sequence, in a fixed order, and used where it
    # applies: the stream of draws (hence the data) does not depend on the chunking below.
    params = {
        "pattern": np.where(y == 1, rng.integers(0, 3, n), -1),  # 0 event, 1 drift, 2 freq
        # Per channel, (n, F): the main and a minor sinusoid (cycles per window), an offset.
        "f1": rng.uniform(*R["main_cycles"], (n, F)),
        "f2": rng.uniform(*R["minor_cycles"], (n, F)),
        "a1": rng.uniform(*R["main_amp"], (n, F)),
        "a2": rng.uniform(*R["minor_amp"], (n, F)),
        "p1": rng.uniform(0.0, 2 * np.pi, (n, F)),
        "p2": rng.uniform(0.0, 2 * np.pi, (n, F)),
        "offset": rng.normal(0.0, _OFFSET_STD, (n, F)),
        # Per sequence, (n,): where and how strongly the pattern acts.
        "ch": rng.integers(0, F, n),
        "event_t": rng.uniform(0.04, 0.2, n) * T,
        "event_h": rng.uniform(*R["event_height"], n) * signs(),
        "event_gain": either(0.5, R["event_gain_up"], R["event_gain_down"]),
        "drift": rng.uniform(*R["drift"], n) * signs(),
        "change_t": rng.uniform(0.3, 0.55, n) * T,
        "change_f": rng.uniform(*R["freq_factor"], n),
        "has_spike": rng.random(n) < _DISTRACTOR_RATE,
        "spike_t": rng.uniform(0.55, 0.95, n) * T,
        "spike_h": rng.uniform(*R["event_height"], n) * signs(),
        "spike_ch": rng.integers(0, F, n),
    }

    # Stationary AR(1) noise, filtered in a time-major buffer so that each step is one
    # contiguous vectorised update (3x faster than a strided loop or scipy's lfilter).
    noise = rng.standard_normal((T, n, F), dtype=np.float32)
    noise[1:] *= np.float32(math.sqrt(1.0 - _NOISE_AR**2))
    for t in range(1, T):
        noise[t] += np.float32(_NOISE_AR) * noise[t - 1]
    noise *= np.float32(_NOISE_STD)
    X = np.ascontiguousarray(noise.transpose(1, 0, 2))  # (n, T, F)
    del noise

    for lo in range(0, n, _CHUNK):
        s = slice(lo, min(lo + _CHUNK, n))
        X[s] += _signal({k: v[s] for k, v in params.items()}, T, F)
    return X, y, params["pattern"]


# sin(r) on [-pi/2, pi/2]: Taylor coefficients up to r^13 (error < 1e-9, far below float32).
_SIN_COEFFS = tuple(np.float32((-1) ** i / math.factorial(2 * i + 1)) for i in range(7))


def _sin(x: np.ndarray) -> np.ndarray:
    """sin(x) for float32 ``x`` from +, -, * and rint alone.

    IEEE 754 makes these bit-identical on every machine, whereas np.sin and np.exp dispatch to
    SIMD kernels that differ in the last bit between CPU generations (AVX2 vs AVX-512, ARM):
    a worker on other hardware would then build different "synthetic" data, and fail the
    experiment's fingerprint check.
    """
    k = np.rint(x * np.float32(1 / math.pi))  # x = k*pi + r, |r| <= pi/2
    # Cody-Waite: pi split in two floats, so k*pi is subtracted without losing r's precision.
    r = x - k * np.float32(3.140625)
    r -= k * np.float32(math.pi - 3.140625)
    r2 = r * r
    poly = r2 * _SIN_COEFFS[-1]
    for c in _SIN_COEFFS[-2:0:-1]:
        poly += c
        poly *= r2
    poly += _SIN_COEFFS[0]
    poly *= r
    # sin(r + k*pi) = (-1)^k sin(r); integer parity (np.remainder on floats is 40x slower).
    poly *= (1 - 2 * (k.astype(np.int32) & 1)).astype(np.float32)
    return poly


def _signal(p: dict[str, np.ndarray], T: int, F: int) -> np.ndarray:
    """The deterministic part of a block of windows, ``(c, T, F)`` float32.

    The plain signal is computed for all windows at once; each pattern then rewrites only the
    (window, channel) rows it acts on, which keeps the full-size work to two sines.
    """
    p = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in p.items()}
    steps = np.arange(1, T + 1, dtype=np.float32)  # (T,)
    w = np.float32(2 * np.pi / T)

    def bump(centre: np.ndarray, height: np.ndarray) -> np.ndarray:  # (k, T)
        z = (steps - 1 - centre[:, None]) / np.float32(0.8)
        z2p1 = np.float32(1.0) + z * z
        return height[:, None] / (z2p1 * z2p1)  # a bell about two steps wide

    main = p["a1"][:, :, None] * _sin(w * p["f1"][:, :, None] * steps + p["p1"][:, :, None])
    sig = main + p["a2"][:, :, None] * _sin(w * p["f2"][:, :, None] * steps + p["p2"][:, :, None])
    sig += p["offset"][:, :, None]  # (c, F, T)

    pattern, ch = p["pattern"], p["ch"]
    # Early event: a transient on one channel; from one step later the next channel's main
    # component is louder/quieter and shifted by a quarter period.
    k = np.flatnonzero(pattern == 0)
    later = (ch[k] + 1) % F
    after = steps - 1 >= p["event_t"][k, None] + 1  # (k, T)
    gain = np.where(after, p["event_gain"][k, None], np.float32(1.0))
    shifted = _sin(
        w * p["f1"][k, later, None] * steps
        + p["p1"][k, later, None]
        + after * np.float32(np.pi / 2)
    )
    sig[k, later] += p["a1"][k, later, None] * gain * shifted - main[k, later]
    sig[k, ch[k]] += bump(p["event_t"][k], p["event_h"][k])
    # Drift: a ramp from 0 to `drift` across the window.
    k = np.flatnonzero(pattern == 1)
    sig[k, ch[k]] += p["drift"][k, None] * (steps - 1) / np.float32(T - 1)
    # Frequency change through the instantaneous frequency, so the phase stays continuous (an
    # abrupt phase jump would be a one-step giveaway).
    k = np.flatnonzero(pattern == 2)
    freq = p["f1"][k, ch[k], None] * np.where(
        steps - 1 >= p["change_t"][k, None], p["change_f"][k, None], np.float32(1.0)
    )  # (k, T)
    changed = _sin(w * np.cumsum(freq, axis=1) + p["p1"][k, ch[k], None])
    sig[k, ch[k]] += p["a1"][k, ch[k], None] * changed - main[k, ch[k]]
    # Benign late spikes, in either class.
    k = np.flatnonzero(p["has_spike"])
    sig[k, p["spike_ch"][k]] += bump(p["spike_t"][k], p["spike_h"][k])
    return sig.transpose(0, 2, 1)  # (c, T, F)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _check_file(path: str, kind: str) -> None:
    if not os.path.exists(path):
        raise DataError(
            f"data file not found: {path}; check the path (every worker needs it at this path)"
        )
    if os.path.isdir(path):
        raise DataError(f"{path} is a directory; point {kind}: at a .{kind} file")


def _read_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    _check_file(path, "npz")
    try:
        # Our own file handle: np.load leaks its handle when a damaged archive fails to open.
        with open(path, "rb") as fh:
            archive = np.load(fh, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):  # a plain .npy holds one array
                raise DataError(
                    f"{path} holds a single array, not an .npz archive; "
                    "save it with numpy.savez(path, X=X, y=y)"
                )
            with archive:
                missing = [k for k in ("X", "y") if k not in archive.files]
                if missing:
                    raise DataError(
                        f"{path} has no array {' or '.join(map(repr, missing))} "
                        f"(found: {', '.join(archive.files) or 'nothing'}); "
                        "save it with numpy.savez(path, X=X, y=y)"
                    )
                _check_fits_in_memory(archive, path)
                X, y = archive["X"], archive["y"]
                if not isinstance(X, np.ndarray) or not isinstance(y, np.ndarray):
                    # NpzFile hands back a member that is not .npy data as raw bytes.
                    raise DataError(
                        f"{path}: X or y is not a numpy array (a damaged or hand-made archive); "
                        "save it with numpy.savez(path, X=X, y=y)"
                    )
    except DataError:
        raise
    except ValueError as e:
        if "Object arrays" in str(e):
            raise DataError(
                f"{path} stores Python object arrays; save labels as strings or 0/1 integers "
                "and X as float32"
            ) from e
        raise DataError(f"cannot read {path} as .npz ({e}); write it with numpy.savez") from e
    except Exception as e:
        # Corrupt or foreign files surface as BadZipFile, OSError, EOFError, KeyError, ...
        raise DataError(
            f"cannot read {path} as .npz ({type(e).__name__}: {e}); write it with numpy.savez"
        ) from e
    return X, y


# A worker holds X as float32 about three times (as read, split, scaled): refuse, with the
# numbers, a file that cannot fit, instead of an OOM kill without a message.
_COPIES = 3


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _check_fits_in_memory(archive: Any, path: str) -> None:
    try:
        with archive.zip.open("X.npy") as f:
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, _ = read(f)
    except Exception:  # noqa: BLE001 - a damaged member is reported when it is loaded
        return
    values = int(np.prod(shape, dtype=np.float64)) if shape else 1
    need, have = values * 4 * _COPIES, _available_memory()
    if have is not None and need > have:
        raise DataError(
            f"{path}: X has shape {tuple(shape)} ({values:,} values), which needs about "
            f"{need / 2**30:.1f} GiB of memory in each worker, and this machine has "
            f"{have / 2**30:.1f} GiB available; use a sample of the data, or a machine with more "
            "memory"
        )


def _read_csv(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Long format: one row per (sequence_id, t), feature columns, a per-sequence label, and
    optionally a per-sequence ``split`` column (train/val/test: the file's own split).

    Columns are parsed by numpy's C reader, one group at a time: a 170,000 x 50-step file
    (8.5 M rows) needs a few hundred MB, where a list of csv rows would need several GB.
    """
    _check_file(path, "csv")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            first_row = next((r for r in reader if r), None)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path} as UTF-8 CSV ({e}); re-export it as CSV") from e
    if header is None:
        raise DataError(f"{path} is empty; write a header: sequence_id,t,<features>,label")
    header = [h.strip() for h in header]
    missing = [c for c in _CSV_REQUIRED if c not in header]
    if missing:
        raise DataError(
            f"{path} lacks column(s) {', '.join(missing)} (header: {', '.join(header)}); "
            "write sequence_id,t,<feature columns>,label"
        )
    dupes = [h for h, k in Counter(header).items() if k > 1]
    if dupes:
        raise DataError(f"{path} repeats column(s) {', '.join(dupes)}; give columns unique names")
    features = [h for h in header if h not in _CSV_REQUIRED and h != _CSV_SPLIT]
    if not features:
        raise DataError(f"{path} has no feature columns; add at least one besides {_CSV_REQUIRED}")
    if first_row is None:
        raise DataError(f"{path} has a header but no rows; add data")

    col = {h: i for i, h in enumerate(header)}
    numeric = _csv_columns(path, header, [col["t"], *(col[h] for h in features)], np.float64)
    t, values = numeric[:, 0], numeric[:, 1:]
    ids = _csv_columns(path, header, [col["sequence_id"]], None)[:, 0]
    labels = _csv_columns(path, header, [col["label"]], None)[:, 0]
    if labels.dtype.kind == "U":  # "Normal" and "normal " are one label
        labels = np.char.lower(np.char.strip(labels))
    split = None
    if _CSV_SPLIT in col:
        split = _csv_columns(path, header, [col[_CSV_SPLIT]], str)[:, 0]
        split = np.char.lower(np.char.strip(split))

    # Sort by sequence id (numerically when the ids are numbers), then by t.
    if ids.dtype.kind == "f":
        id_key, shown_ids = ids, np.char.mod("%g", ids)
    else:
        shown_ids = np.char.strip(ids)
        _, id_key = np.unique(shown_ids, return_inverse=True)
    order = np.lexsort((t, id_key))
    id_key, shown_ids, t, values, labels = (
        a[order] for a in (id_key, shown_ids, t, values, labels)
    )
    if split is not None:
        split = split[order]

    same = (id_key[1:] == id_key[:-1]) & (t[1:] == t[:-1])
    if same.any():
        where = np.flatnonzero(same)[:3]
        example = ", ".join(f"({shown_ids[i]}, t={t[i]:g})" for i in where)
        raise DataError(
            f"{path} has {int(same.sum())} duplicate (sequence_id, t) rows, e.g. {example}; "
            "keep one row per time step"
        )
    starts = np.flatnonzero(np.r_[True, id_key[1:] != id_key[:-1]])
    lengths = np.diff(np.r_[starts, len(id_key)])
    if (lengths != lengths[0]).any():
        common = Counter(lengths.tolist()).most_common(1)[0][0]
        odd = np.flatnonzero(lengths != common)
        example = ", ".join(f"{shown_ids[starts[i]]} has {lengths[i]}" for i in odd[:5])
        raise DataError(
            f"{path}: sequences differ in length: most have {common} rows but {example}"
            f"{' ...' if len(odd) > 5 else ''} ({len(odd)} of {len(starts)} differ); "
            "pad or trim them to one length"
        )
    n, T = len(starts), int(lengths[0])

    per_seq = labels.reshape(n, T)
    mixed = np.flatnonzero((per_seq != per_seq[:, :1]).any(axis=1))
    if len(mixed):
        example = ", ".join(str(shown_ids[starts[i]]) for i in mixed[:5])
        raise DataError(
            f"{path}: label changes within {len(mixed)} sequence(s) ({example}); "
            "give every row of a sequence the same label"
        )
    part = None
    if split is not None:
        part = _csv_split_codes(path, split.reshape(n, T), shown_ids[starts])
    return values.reshape(n, T, len(features)), per_seq[:, 0], part


# numpy's loadtxt messages (numpy >= 1.23): rows count data rows, 0-based in the first one.
_NOT_A_NUMBER = re.compile(r"could not convert string (.*) to float64 at row (\d+), column (\d+)")
_TOO_FEW_FIELDS = re.compile(r"invalid column index \d+ at row (\d+) with (\d+) columns")


def _csv_columns(
    path: str, header: list[str], usecols: list[int], dtype: type | None
) -> np.ndarray:
    """Columns ``usecols`` as a 2-D array: float64, or (``dtype=None``) float64 if every value
    is a number, else strings."""
    kwargs: dict[str, Any] = {
        "delimiter": ",",
        "skiprows": 1,
        "usecols": usecols,
        "ndmin": 2,
        "quotechar": '"',
        "comments": None,  # a '#' is data, not a comment
        "encoding": "utf-8-sig",
    }
    try:
        with warnings.catch_warnings():
            # numpy notes once per call that blank lines do not count as rows: harmless here.
            warnings.filterwarnings("ignore", "Input line", UserWarning)
            try:
                return np.loadtxt(path, dtype=dtype or np.float64, **kwargs)
            except ValueError:
                if dtype is not None:
                    raise
                return np.loadtxt(path, dtype=str, **kwargs)
    except ValueError as e:
        bad = _NOT_A_NUMBER.search(str(e))
        if bad:
            value, row, column = bad.group(1), int(bad.group(2)), int(bad.group(3))
            raise DataError(
                f"{path} column {header[column - 1]!r}, data row {row + 1}: {value} is not a "
                "number; fix the value (write nan for missing and impute it)"
            ) from None
        short = _TOO_FEW_FIELDS.search(str(e))
        if short:
            raise DataError(
                f"{path} data row {short.group(1)} has {short.group(2)} fields, the header has "
                f"{len(header)}; fix the row"
            ) from None
        raise DataError(f"cannot parse {path} ({str(e).rstrip('.')}); fix the file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} as UTF-8 CSV ({e}); re-export it as CSV") from e


# --------------------------------------------------------------------------------------------
# Data with its own split (NPZ split keys, CSV `split` column)
# --------------------------------------------------------------------------------------------

TRAIN, VAL, TEST = 0, 1, 2  # ``Dataset.part`` codes
PART_NAMES = ("train", "val", "test")
_NPZ_PARTS = ("train", "val", "test")


def _read_npz_with_parts(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``X``/``y`` (rnntune splits), or ``X_train``/``y_train``/``X_test``/``y_test`` and
    optionally ``X_val``/``y_val`` (the file's own split, pooled here with a part code each)."""
    _check_file(path, "npz")
    try:
        with open(path, "rb") as fh:
            archive = np.load(fh, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                names: list[str] = []
            else:
                with archive:
                    names = list(archive.files)
    except Exception:  # noqa: BLE001 - _read_npz reports a damaged file with its own message
        names = []
    split_keys = [k for k in names if k.rsplit("_", 1)[-1] in _NPZ_PARTS and k[:2] in ("X_", "y_")]
    if not split_keys:
        X, y = _read_npz(path)
        return X, y, None
    if "X" in names or "y" in names:
        raise DataError(
            f"{path} has both X/y and split arrays ({', '.join(sorted(split_keys))}); "
            "keep one layout: X, y (rnntune splits) or X_train, y_train, X_test, y_test"
        )
    want = [f"{a}_{p}" for p in ("train", "test") for a in ("X", "y")]
    if ("X_val" in names) != ("y_val" in names):
        want += ["X_val", "y_val"]
    missing = [k for k in want if k not in names]
    if missing:
        raise DataError(
            f"{path} lacks {', '.join(missing)} (found: {', '.join(names)}); a file with its own "
            "split needs X_train, y_train, X_test, y_test (and optionally X_val, y_val)"
        )
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in names if k in want or k in ("X_val", "y_val")}
    except ValueError as e:
        raise DataError(
            f"cannot read {path} ({e}); save labels as strings or 0/1 integers and X as float32"
        ) from e
    Xs, ys, parts = [], [], []
    shape: tuple[int, ...] | None = None
    for code, name in enumerate(PART_NAMES):
        if f"X_{name}" not in arrays:
            continue
        X, y = arrays[f"X_{name}"], np.asarray(arrays[f"y_{name}"])
        if X.ndim == 2:
            X = X[:, :, None]
        if y.ndim != 1 or len(y) != len(X):
            raise DataError(
                f"{path}: X_{name} has {len(X)} sequences but y_{name} has shape {y.shape}; "
                f"give one label per sequence"
            )
        if shape is not None and X.shape[1:] != shape:
            raise DataError(
                f"{path}: X_{name} has sequences of shape {X.shape[1:]} but X_train has {shape}; "
                "every part needs the same length and features"
            )
        shape = X.shape[1:]
        Xs.append(X)
        ys.append(y)
        parts.append(np.full(len(y), code, dtype=np.int8))
    if len({y.dtype.kind for y in ys}) > 1:  # e.g. int labels in train, strings in test
        ys = [y.astype(str) for y in ys]
    return np.concatenate(Xs), np.concatenate(ys), np.concatenate(parts)


def _csv_split_codes(path: str, split: np.ndarray, seq_ids: np.ndarray) -> np.ndarray:
    """Per-sequence part codes from a CSV ``split`` column (``split``: [N, T] lower-case)."""
    mixed = np.flatnonzero((split != split[:, :1]).any(axis=1))
    if len(mixed):
        example = ", ".join(str(i) for i in seq_ids[mixed[:5]])
        raise DataError(
            f"{path}: the split changes within {len(mixed)} sequence(s) ({example}); "
            "give every row of a sequence the same split"
        )
    words = split[:, 0]
    unknown = sorted(set(words.tolist()) - set(PART_NAMES))
    if unknown:
        raise DataError(
            f"{path}: unknown split value(s) {', '.join(map(repr, unknown[:5]))}; "
            "use train, val or test"
        )
    return np.array([PART_NAMES.index(w) for w in words.tolist()], dtype=np.int8)


def _check_given_parts(y: np.ndarray, part: np.ndarray, source: str) -> None:
    """The file's own split needs a train and a test part, each with both classes."""
    for code, name in enumerate(PART_NAMES):
        here = part == code
        if not here.any():
            if name == "val":
                continue  # carved from train
            raise DataError(
                f"{source}: the data's own split has no {name} part; give train and test "
                "sequences (val is optional: it is carved from train)"
            )
        counts = np.bincount(y[here], minlength=2)
        if counts.min() == 0:
            missing = "Normal" if counts[0] == 0 else "Abnormal"
            raise DataError(
                f"{source}: the given {name} part ({int(here.sum())} sequences) has no {missing} "
                "sequence; every given part needs both classes"
            )


# --------------------------------------------------------------------------------------------
# UCR/UEA archive formats: the 2018 TSV pair and the .ts format
# --------------------------------------------------------------------------------------------

_UCR_EXAMPLE = "ucr:data/NAME_TRAIN.tsv,normal=1"
_MISSING_WORDS = ("nan", "?", "", "na")


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


def _ucr_pair(path: str) -> tuple[str, str]:
    """``(train, test)`` file paths: ``PATH`` names either file (or the folder holding them)."""
    if os.path.isdir(path):
        base = os.path.basename(os.path.normpath(path))
        for ext in (".tsv", ".ts"):
            candidate = os.path.join(path, f"{base}_TRAIN{ext}")
            if os.path.exists(candidate):
                path = candidate
                break
        else:
            raise DataError(
                f"{path} is a folder without {base}_TRAIN.tsv or {base}_TRAIN.ts; point ucr: at "
                "the NAME_TRAIN file"
            )
    name = os.path.basename(path)
    m = re.search(r"_(TRAIN|TEST)(?=(\.[^.]*)?$)", name, re.IGNORECASE)
    if m is None:
        raise DataError(
            f"{path}: ucr: data is a NAME_TRAIN/NAME_TEST pair; name the NAME_TRAIN.tsv or "
            "NAME_TRAIN.ts file (its NAME_TEST file must lie beside it)"
        )
    word = m.group(1)
    swap = {"TRAIN": "TEST", "TEST": "TRAIN"}[word.upper()]
    swap = swap if word.isupper() else swap.lower() if word.islower() else swap.title()
    other = os.path.join(os.path.dirname(path), name[: m.start(1)] + swap + name[m.end(1) :])
    train, test = (path, other) if word.upper() == "TRAIN" else (other, path)
    for f in (train, test):
        if not os.path.exists(f):
            raise DataError(
                f"data file not found: {f}; ucr: data needs the NAME_TRAIN and NAME_TEST files "
                "side by side (every worker needs them at this path)"
            )
    return train, test


def _read_ucr(spec: DataSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The TRAIN/TEST pair pooled, with the file's split as part codes, labels mapped to
    Normal/Abnormal, and a sentence saying how."""
    train_path, test_path = _ucr_pair(spec.path)  # type: ignore[arg-type]
    read = _read_ts if train_path.lower().endswith(".ts") else _read_ucr_tsv
    X_train, labels_train = read(train_path)
    X_test, labels_test = read(test_path)
    if X_train.shape[1:] != X_test.shape[1:]:
        raise DataError(
            f"{test_path} has series of length {X_test.shape[1]} with {X_test.shape[2]} "
            f"dimension(s), {train_path} has {X_train.shape[1]} with {X_train.shape[2]}; both "
            "files need equal-length series of the same dimensions"
        )
    normal = dict(spec.params).get("normal")
    normal_set = set(str(normal).split("|")) if normal else None
    y_all, note = _ucr_binary(labels_train, labels_test, normal_set, spec)
    part = np.r_[
        np.full(len(labels_train), TRAIN, dtype=np.int8),
        np.full(len(labels_test), TEST, dtype=np.int8),
    ]
    return np.concatenate([X_train, X_test]), y_all, part, note


def _ucr_binary(
    train: np.ndarray, test: np.ndarray, normal: set[str] | None, spec: DataSpec
) -> tuple[np.ndarray, str]:
    """Map the archive's classes to 0 = Normal / 1 = Abnormal.

    ``normal=`` names the normal class(es); every other class is abnormal. Without it, a
    two-class set takes the majority class of its training part as normal (the usual reading of
    "normal" in anomaly data; a tie is an error), and a set of more classes is an error.
    """
    source = spec.to_string()
    counts = Counter(train.tolist())
    classes = _natural_sorted(set(counts) | set(test.tolist()))
    shown = ", ".join(f"{c} ({counts.get(c, 0)} in train)" for c in classes)
    if normal is not None:
        unknown = _natural_sorted(normal - set(classes))
        if unknown:
            raise DataError(
                f"{source}: normal={'|'.join(unknown)} is not a class of this data (classes "
                f"found: {', '.join(classes)}); name existing classes in normal="
            )
        if set(classes) <= normal:
            raise DataError(
                f"{source}: normal= names every class ({', '.join(classes)}); leave at least "
                "one class abnormal"
            )
        rule = "as named by normal="
    elif len(classes) > 2:
        raise DataError(
            f"{source} has {len(classes)} classes: {shown}; name the normal class(es) with "
            f"normal= (e.g. ucr:{spec.path},normal={classes[0]}; several: normal="
            f"{classes[0]}|{classes[1]}), every other class is abnormal"
        )
    elif len(classes) < 2:
        raise DataError(
            f"{source}: every sequence has class {classes[0] if classes else '?'}; the task "
            "needs two classes"
        )
    else:
        a, b = classes
        if counts.get(a, 0) == counts.get(b, 0):
            raise DataError(
                f"{source}: classes {a} and {b} are equally frequent in the training part, so "
                f"which is normal is not clear; say it with normal= (e.g. ucr:{spec.path},"
                f"normal={a})"
            )
        normal = {a if counts.get(a, 0) > counts.get(b, 0) else b}
        rule = "the majority class of the training part; choose another with normal="
    normal_list = _natural_sorted(normal)
    abnormal_list = [c for c in classes if c not in normal]
    note = (
        f"Normal = class{'es' if len(normal_list) > 1 else ''} {', '.join(normal_list)} ({rule}); "
        f"Abnormal = class{'es' if len(abnormal_list) > 1 else ''} {', '.join(abnormal_list)}"
    )
    labels = np.concatenate([train, test])
    y = (~np.isin(labels, normal_list)).astype(np.int64)
    return y, note


def _ucr_missing(path: str, where: str) -> DataError:
    return DataError(
        f"{path}: missing values (NaN or '?') {where}; rnntune needs complete series of one "
        "length (the archive pads variable-length sets with NaN): impute or resample them first"
    )


def _read_ucr_tsv(path: str) -> tuple[np.ndarray, np.ndarray]:
    """UCR 2018 TSV (also the 2015 comma-separated files): label, then the values; no header."""
    _check_file(path, "tsv")
    try:
        with open(path, encoding="utf-8-sig") as fh:
            lines = [(i, line) for i, line in enumerate(fh, 1) if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} as UTF-8 text ({e}); check the file") from e
    if not lines:
        raise DataError(f"{path} is empty; a UCR file has one series per line: label, values")
    first = lines[0][1]
    delim = "\t" if "\t" in first else "," if "," in first else None
    rows = [line.strip().split(delim) for _, line in lines]
    lengths = np.array([len(r) for r in rows])
    if lengths[0] < 2:
        raise DataError(f"{path} line {lines[0][0]} has no values after the label; check the file")
    odd = np.flatnonzero(lengths != lengths[0])
    if len(odd):
        i = int(odd[0])
        raise DataError(
            f"{path}: series differ in length (line {lines[0][0]} has {lengths[0] - 1} values, "
            f"line {lines[i][0]} has {lengths[i] - 1}); rnntune needs series of one length: "
            "pad, trim or resample them first"
        )
    cells = np.array([r[1:] for r in rows])
    missing = np.isin(np.char.lower(np.char.strip(cells)), _MISSING_WORDS)
    if missing.any():
        i, j = (int(v) for v in np.argwhere(missing)[0])
        n_bad = int(missing.any(axis=1).sum())
        raise _ucr_missing(path, f"in {n_bad} series, first line {lines[i][0]} value {j + 1}")
    try:
        values = cells.astype(np.float64)
    except ValueError:
        for i, row in enumerate(rows):
            for j, cell in enumerate(row[1:]):
                try:
                    float(cell)
                except ValueError:
                    raise DataError(
                        f"{path} line {lines[i][0]} value {j + 1}: {cell!r} is not a number; "
                        "a UCR file holds the label, then numbers, separated by tabs"
                    ) from None
        raise
    labels = np.array([_canon_label(r[0]) for r in rows])
    return values[:, :, None], labels


def _read_ts(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The sktime/UEA ``.ts`` format: ``@`` header lines, then ``@data``; one case per line,
    dimensions separated by ``:``, values by ``,``, the class label last."""
    _check_file(path, "ts")
    header: dict[str, str] = {}
    cases: list[tuple[int, str]] = []
    try:
        with open(path, encoding="utf-8-sig") as fh:
            in_data = False
            for lineno, raw in enumerate(fh, 1):
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                if in_data:
                    cases.append((lineno, line))
                elif line.startswith("@"):
                    key, _, value = line[1:].partition(" ")
                    if key.lower() == "data":
                        in_data = True
                    else:
                        header[key.lower()] = value.strip()
                else:
                    raise DataError(
                        f"{path} line {lineno}: data before @data; a .ts file has @ header "
                        "lines, then @data, then one case per line"
                    )
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} as UTF-8 text ({e}); check the file") from e
    if not in_data:
        raise DataError(f"{path} has no @data line; is it a .ts file (sktime/UEA format)?")
    class_label = header.get("classlabel", "").split()
    if not class_label or class_label[0].lower() != "true":
        raise DataError(
            f"{path} declares no class labels (@classLabel true ...); rnntune needs labelled "
            "classification data"
        )
    declared = {_canon_label(c) for c in class_label[1:]}
    if header.get("timestamps", "false").lower() == "true":
        raise DataError(
            f"{path} uses @timeStamps true; rnntune reads series of plain values sampled at "
            "equal steps: export it without time stamps"
        )
    if not cases:
        raise DataError(f"{path} has no cases after @data; add data")
    series: list[list[list[str]]] = []
    labels: list[str] = []
    for lineno, line in cases:
        *dims, label = line.split(":")
        if not dims:
            raise DataError(f"{path} line {lineno} has no values before its label; check it")
        series.append([d.split(",") for d in dims])
        labels.append(_canon_label(label))
        if labels[-1] not in declared and declared:
            raise DataError(
                f"{path} line {lineno}: class {labels[-1]!r} is not declared in @classLabel "
                f"({', '.join(_natural_sorted(declared))}); fix the line or the header"
            )
    n_dims = {len(s) for s in series}
    if len(n_dims) > 1:
        raise DataError(
            f"{path}: cases have different numbers of dimensions ({sorted(n_dims)}); every case "
            "needs the same dimensions"
        )
    lengths = {len(d) for s in series for d in s}
    if len(lengths) > 1:
        raise DataError(
            f"{path}: series differ in length ({min(lengths)} to {max(lengths)} values); "
            "rnntune needs series of one length: pad, trim or resample them first"
        )
    cells = np.array(series)  # (N, F, T) strings
    missing = np.isin(np.char.lower(np.char.strip(cells)), _MISSING_WORDS)
    if missing.any():
        i = int(np.argwhere(missing)[0][0])
        n_bad = int(missing.any(axis=(1, 2)).sum())
        raise _ucr_missing(path, f"in {n_bad} cases, first line {cases[i][0]}")
    try:
        values = cells.astype(np.float64)
    except ValueError:
        bad = next(
            (lineno, c)
            for (lineno, _), s in zip(cases, series, strict=True)
            for d in s
            for c in d
            if not _is_float(c)
        )
        raise DataError(
            f"{path} line {bad[0]}: {bad[1]!r} is not a number (time-stamped or other "
            ".ts variants are not supported); fix the value"
        ) from None
    return values.transpose(0, 2, 1), np.array(labels)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Fingerprint and splits
# --------------------------------------------------------------------------------------------


def fingerprint(ds: Dataset) -> str:
    """``sha256:<hex>`` over the spec's identity, the array shapes and the exact bytes of X, y
    (and of the file's own split, when it has one: moving a sequence between parts is other data).
    """
    h = hashlib.sha256()
    header: dict[str, Any] = {
        "identity": ds.spec.identity(),
        "X": list(ds.X.shape),
        "y": list(ds.y.shape),
    }
    if ds.part is not None:  # absent otherwise: fingerprints of unsplit data stay as they were
        header["part"] = list(ds.part.shape)
    h.update(json.dumps(header, sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(ds.X, dtype="<f4").data)
    h.update(np.ascontiguousarray(ds.y, dtype="<i8").data)
    if ds.part is not None:
        h.update(np.ascontiguousarray(ds.part, dtype="i1").data)
    return f"sha256:{h.hexdigest()}"


# Where a split came from (``Splits.source``).
SPLIT_RANDOM = "random"  # rnntune's stratified split of unsplit data (val/test fractions)
SPLIT_GIVEN = "given"  # train, val and test as the file gives them
SPLIT_GIVEN_CARVED = "given-carved"  # train and test from the file, val carved from train
SPLIT_RESPLIT = "resplit"  # drawn anew for one evaluation repeat (--resplit)


def split_source_text(source: str, val_fraction: float = 0.15, test_fraction: float = 0.15) -> str:
    """One sentence for the report: where the train/val/test parts came from."""
    train = 1.0 - val_fraction - test_fraction
    if source == SPLIT_GIVEN:
        return "train, validation and test parts as given by the data file"
    if source == SPLIT_GIVEN_CARVED:
        return (
            "train and test parts as given by the data file; validation carved from the given "
            f"training part (stratified, seeded; train:val = {train:.0%}:{val_fraction:.0%})"
        )
    if source == SPLIT_RESPLIT:
        return "drawn anew for each evaluation repeat (--resplit)"
    return (
        f"rnntune's stratified, seeded split {train:.0%}/{val_fraction:.0%}/{test_fraction:.0%} "
        "(train/val/test)"
    )


@dataclass(frozen=True)
class Splits:
    """Stratified train/val/test parts, standardised with a per-feature scaler fit on train."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    seed: int
    mean: np.ndarray = field(repr=False)
    std: np.ndarray = field(repr=False)
    source: str = SPLIT_RANDOM

    def fit_parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``X_train, y_train, X_val, y_val``: all that training and model selection may see
        (the test part is for the final evaluation only)."""
        return self.X_train, self.y_train, self.X_val, self.y_val

    def describe(self) -> dict[str, dict[str, int]]:
        """Sizes and class counts per part."""
        return {
            name: {"n": len(y), "normal": int((y == 0).sum()), "abnormal": int((y == 1).sum())}
            for name, y in (("train", self.y_train), ("val", self.y_val), ("test", self.y_test))
        }


def split_dataset(
    ds: Dataset, seed: int, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> Splits:
    """The parts tuning and evaluation use; the scaler (mean/std per feature) sees train only.

    Data without a split of its own: a stratified split by ``seed``. Data with one: its test
    part as given (untouched by tuning), its val part as given or carved from its training part
    (stratified by ``seed``, the same train:val ratio as rnntune's own split).
    """
    _check_fractions(val_fraction, test_fraction)
    fractions = f"val_fraction={val_fraction}, test_fraction={test_fraction}"
    if ds.part is None:
        n = len(ds.y)
        # Sizes as counts: a fraction of the remainder can round up (0.15 / 0.85 * 340 -> 61).
        n_test, n_val = round(n * test_fraction), round(n * val_fraction)
        need = _need(val_fraction, test_fraction)
        train, val, test = _draw(ds.y, np.arange(n), n_val, n_test, seed, need, fractions)
        return _scaled(ds, train, val, test, seed, SPLIT_RANDOM)
    test = np.flatnonzero(ds.part == TEST)
    if (ds.part == VAL).any():
        train, val = np.flatnonzero(ds.part == TRAIN), np.flatnonzero(ds.part == VAL)
        return _scaled(ds, train, val, test, seed, SPLIT_GIVEN)
    given_train = np.flatnonzero(ds.part == TRAIN)
    n_val = _carved_val_size(len(given_train), val_fraction, test_fraction)
    need = _need(n_val / max(len(given_train), 1))
    train, val, _ = _draw(ds.y, given_train, n_val, 0, seed, need, "the given training part")
    return _scaled(ds, train, val, test, seed, SPLIT_GIVEN_CARVED)


def resplit_dataset(
    ds: Dataset, seed: int, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> Splits:
    """A fresh stratified split of all of ``ds`` by ``seed`` (``--resplit``: one per repeat).

    Data with a split of its own is pooled and redrawn with the sizes of its parts (the
    resampling protocol of the UCR/UEA "bake off", Bagnall et al. 2017), so every repeat tests on
    as many sequences as the given test part holds.
    """
    _check_fractions(val_fraction, test_fraction)
    n = len(ds.y)
    if ds.part is None:
        n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    else:
        n_test = int((ds.part == TEST).sum())
        n_val = int((ds.part == VAL).sum()) or _carved_val_size(
            int((ds.part == TRAIN).sum()), val_fraction, test_fraction
        )
    need = _need(n_val / n, n_test / n)
    what = f"re-splitting with val={n_val}, test={n_test} sequences"
    train, val, test = _draw(ds.y, np.arange(n), n_val, n_test, seed, need, what)
    return _scaled(ds, train, val, test, seed, SPLIT_RESPLIT)


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(
            f"bad split fractions val={val_fraction}, test={test_fraction}; "
            "each must be in (0, 1) and their sum below 1"
        )


def _carved_val_size(n_train: int, val_fraction: float, test_fraction: float) -> int:
    """Validation carved from a given training part keeps rnntune's train:val ratio (70:15)."""
    return max(2, round(n_train * val_fraction / (1.0 - test_fraction)))


def _need(*fractions: float) -> int:
    """Members a class needs for the smallest part to get at least one of them."""
    return math.ceil(1.0 / max(min(fractions), 1e-9)) + 1


def _draw(
    y: np.ndarray, pool: np.ndarray, n_val: int, n_test: int, seed: int, need: int, what: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified ``train, val, test`` indices (sorted) from ``pool``; ``n_test=0``: no test.

    Every part needs both classes (val decides early stopping, test is reported per class).
    """
    counts = np.bincount(y[pool], minlength=2)
    too_few = "too few sequences to split: {}; need at least {} of each class for " + (
        f"{what}: add data or raise the fractions"
    )
    if counts.min() < need or n_val + n_test >= len(pool):
        have = f"{counts[0]} Normal and {counts[1]} Abnormal"
        raise DataError(too_few.format(have, need))
    test = pool[:0]
    rest = pool
    if n_test:
        rest, test = train_test_split(pool, test_size=n_test, stratify=y[pool], random_state=seed)
    train, val = train_test_split(rest, test_size=n_val, stratify=y[rest], random_state=seed)
    parts = (("train", train), ("val", val)) + ((("test", test),) if n_test else ())
    for name, part in parts:
        part_counts = np.bincount(y[part], minlength=2)
        if part_counts.min() == 0:
            raise DataError(too_few.format(f"the {name} part got {part_counts.tolist()}", need))
    return np.sort(train), np.sort(val), np.sort(test)


def _scaled(
    ds: Dataset, train: np.ndarray, val: np.ndarray, test: np.ndarray, seed: int, source: str
) -> Splits:
    X_train = ds.X[train]
    mean = X_train.mean(axis=(0, 1), dtype=np.float64)  # (F,)
    std = X_train.std(axis=(0, 1), dtype=np.float64)
    std = np.where(std > 1e-8, std, 1.0)  # a constant feature stays constant, not NaN

    mean32, std32 = mean.astype(np.float32), std.astype(np.float32)

    def scale(X: np.ndarray) -> np.ndarray:
        return (X - mean32) / std32  # float32 throughout: no float64 copy of the data

    return Splits(
        X_train=scale(X_train),
        y_train=ds.y[train],
        X_val=scale(ds.X[val]),
        y_val=ds.y[val],
        X_test=scale(ds.X[test]),
        y_test=ds.y[test],
        seed=seed,
        mean=mean32,
        std=std32,
        source=source,
    )
