"""Load the dataset a spec names and validate it (finite, both classes, ``[N, T, F]``)."""

from __future__ import annotations

import logging

import numpy as np

from rnntune.data._files import _check_given_parts, _read_csv, _read_npz_with_parts
from rnntune.data._spec import Dataset, DataSpec, parse_data_spec
from rnntune.data._ucr import _read_ucr
from rnntune.data.synthetic import make_synthetic
from rnntune.exceptions import DataError

logger = logging.getLogger("rnntune.data")

_LABEL_WORDS = {"normal": 0, "abnormal": 1, "0": 0, "1": 1}


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
