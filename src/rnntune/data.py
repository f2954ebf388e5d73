"""Datasets for Normal/Abnormal sequence classification: a synthetic generator, NPZ and CSV
loaders that validate what they read, stratified splits with a train-only scaler, and a
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
]

logger = logging.getLogger(__name__)

KINDS = ("synthetic", "npz", "csv")

# The original study's test set was 23,971 Normal / 9,884 Abnormal sequences: 29.2 % abnormal.
SYNTHETIC_DEFAULTS: dict[str, int | float] = {
    "abnormal_rate": 0.29,
    "features": 4,
    "length": 50,
    "n": 4000,
    "seed": 0,
}
_SYNTHETIC_TYPES: dict[str, type] = {k: type(v) for k, v in SYNTHETIC_DEFAULTS.items()}
_SPEC_EXAMPLE = "e.g. synthetic:n=4000,length=50,features=4,seed=0, npz:data.npz or csv:data.csv"

_LABEL_WORDS = {"normal": 0, "abnormal": 1, "0": 0, "1": 1}
_CSV_REQUIRED = ("sequence_id", "t", "label")


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """Where the data comes from: ``synthetic`` (with parameters), ``npz:PATH`` or ``csv:PATH``.

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
        return f"{self.kind}:{self.path}"

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
    """Sequences ``X`` (float32 ``[N, T, F]``), labels ``y`` (int64 0 = Normal, 1 = Abnormal)."""

    X: np.ndarray
    y: np.ndarray
    spec: DataSpec

    @property
    def shape(self) -> tuple[int, int, int]:
        n, t, f = self.X.shape
        return int(n), int(t), int(f)


def load_dataset(spec: DataSpec | str) -> Dataset:
    """Build or read the dataset a spec names, validated (finite, both classes, [N, T, F])."""
    if isinstance(spec, str):
        spec = parse_data_spec(spec)
    if spec.kind == "synthetic":
        X, y = make_synthetic(**dict(spec.params))  # type: ignore[arg-type]
    elif spec.kind == "npz":
        X, y = _read_npz(spec.path)  # type: ignore[arg-type]
    else:
        X, y = _read_csv(spec.path)  # type: ignore[arg-type]
    X, y = _validate(X, y, source=spec.to_string())
    logger.info("loaded %s: X %s, %d abnormal", spec.to_string(), X.shape, int(y.sum()))
    return Dataset(X=X, y=y, spec=spec)


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


def _read_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Long format: one row per (sequence_id, t), feature columns, a per-sequence label.

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
    features = [h for h in header if h not in _CSV_REQUIRED]
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
    return values.reshape(n, T, len(features)), per_seq[:, 0]


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
# Fingerprint and splits
# --------------------------------------------------------------------------------------------


def fingerprint(ds: Dataset) -> str:
    """``sha256:<hex>`` over the spec's identity, the array shapes and the exact bytes of X, y."""
    h = hashlib.sha256()
    header = {"identity": ds.spec.identity(), "X": list(ds.X.shape), "y": list(ds.y.shape)}
    h.update(json.dumps(header, sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(ds.X, dtype="<f4").data)
    h.update(np.ascontiguousarray(ds.y, dtype="<i8").data)
    return f"sha256:{h.hexdigest()}"


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
    """Stratified split; the scaler (mean/std per feature) sees the training part only."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(
            f"bad split fractions val={val_fraction}, test={test_fraction}; "
            "each must be in (0, 1) and their sum below 1"
        )
    counts = np.bincount(ds.y, minlength=2)
    # Every part needs both classes (val decides early stopping, test is reported per class):
    # a class needs about 1/fraction members for the smallest part to get one of them.
    need = math.ceil(1.0 / min(val_fraction, test_fraction)) + 1
    too_few = "too few sequences to split: {}; need at least {} of each class for " + (
        f"val_fraction={val_fraction}, test_fraction={test_fraction}: add data or raise "
        "the fractions"
    )
    if counts.min() < need:
        have = f"{counts[0]} Normal and {counts[1]} Abnormal"
        raise DataError(too_few.format(have, need))

    # Sizes as counts: a fraction of the remainder can round up (0.15 / 0.85 * 340 -> 61).
    n = len(ds.y)
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    rest, test = train_test_split(np.arange(n), test_size=n_test, stratify=ds.y, random_state=seed)
    train, val = train_test_split(rest, test_size=n_val, stratify=ds.y[rest], random_state=seed)
    for name, part in (("train", train), ("val", val), ("test", test)):
        part_counts = np.bincount(ds.y[part], minlength=2)
        if part_counts.min() == 0:
            raise DataError(too_few.format(f"the {name} part got {part_counts.tolist()}", need))
    train, val, test = np.sort(train), np.sort(val), np.sort(test)

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
    )
