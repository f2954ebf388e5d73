"""Fingerprint and splits: stratified splits with a train-only scaler, the file's own split,
or one drawn anew per evaluation repeat.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from rnntune.data._spec import TEST, TRAIN, VAL, Dataset
from rnntune.exceptions import ConfigError, DataError


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
