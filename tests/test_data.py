"""Data specs, the synthetic generator, NPZ/CSV loading with its one-line errors, splits and
fingerprints."""

from __future__ import annotations

import csv
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from rnntune import data
from rnntune.data import (
    Dataset,
    DataSpec,
    fingerprint,
    load_dataset,
    make_synthetic,
    parse_data_spec,
    split_dataset,
)
from rnntune.exceptions import ConfigError, DataError, RnntuneError

GOLDEN_FINGERPRINT = "sha256:edaea41236c96d2e640c2b0472c937c93c9844989455f4102ee720386e7b6366"

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _xy(n: int = 40, T: int = 6, F: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, T, F)).astype(np.float32)
    y = (np.arange(n) % 3 == 0).astype(np.int64)  # 1/3 abnormal
    return X, y


def _write_npz(path: pathlib.Path, **arrays: object) -> str:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return str(path)


def _write_csv(path: pathlib.Path, header: list[str], rows: list[list[object]]) -> str:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def _long_rows(X: np.ndarray, y: np.ndarray, words: bool = True) -> list[list[object]]:
    """(sequence_id, t, f0..fk, label) rows for X [N, T, F]."""
    rows: list[list[object]] = []
    for i in range(X.shape[0]):
        label = ("abnormal" if y[i] else "normal") if words else int(y[i])
        for t in range(X.shape[1]):
            rows.append([f"s{i:03d}", t, *(repr(float(v)) for v in X[i, t]), label])
    return rows


def _header(F: int) -> list[str]:
    return ["sequence_id", "t", *(f"f{j}" for j in range(F)), "label"]


def _one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------


def test_spec_round_trip_and_defaults() -> None:
    spec = parse_data_spec("synthetic:n=6000,length=50,features=4,seed=0")
    assert dict(spec.params) == {
        "abnormal_rate": 0.29,
        "features": 4,
        "length": 50,
        "n": 6000,
        "seed": 0,
    }
    assert [k for k, _ in spec.params] == sorted(k for k, _ in spec.params)
    assert parse_data_spec(spec.to_string()) == spec
    assert parse_data_spec("synthetic") == DataSpec("synthetic") == parse_data_spec("synthetic:")
    assert parse_data_spec("synthetic:n=4000").to_string() == DataSpec("synthetic").to_string()
    rate = parse_data_spec("synthetic:abnormal_rate=0.5")
    assert dict(rate.params)["abnormal_rate"] == 0.5
    assert parse_data_spec(rate.to_string()) == rate

    npz = parse_data_spec("npz:/data/a.npz")
    assert (npz.kind, npz.path, npz.to_string()) == ("npz", "/data/a.npz", "npz:/data/a.npz")
    assert parse_data_spec(npz.to_string()) == npz
    # The path is not part of the identity: workers mount the data at other paths.
    assert npz.identity() == parse_data_spec("npz:/mnt/other/b.npz").identity()
    assert parse_data_spec("CSV:x.csv") == DataSpec("csv", path="x.csv")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty data spec"),
        ("parquet:x.parquet", "unknown data kind 'parquet'"),
        ("npz:", "has no path"),
        ("synthetic:n=abc", "n='abc': expected an integer"),
        ("synthetic:abnormal_rate=lots", "expected a number"),
        ("synthetic:n=1.5", "expected an integer"),
        ("synthetic:width=3", "unknown synthetic parameter(s) width"),
        ("synthetic:n", "write key=value"),
        ("synthetic:n=5,n=6", "given twice"),
        ("synthetic:n=0", "n=0 (need >= 2)"),
        ("synthetic:abnormal_rate=1", "need 0 < rate < 1"),
        ("synthetic:length=3", "need >= 8 time steps"),
    ],
)
def test_bad_spec_strings(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_data_spec(text)
    assert needle in _one_line(err)


def test_spec_constructor_validates() -> None:
    with pytest.raises(ConfigError, match="unknown data kind"):
        DataSpec("hdf5", path="x")
    with pytest.raises(ConfigError, match="needs a path"):
        DataSpec("npz")
    with pytest.raises(ConfigError, match="takes no path"):
        DataSpec("synthetic", path="x.npz")
    with pytest.raises(ConfigError, match="unknown data kind"):
        load_dataset("tsv:x.tsv")


# --------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------


def test_synthetic_shape_dtype_rate_and_determinism() -> None:
    X, y = make_synthetic(n=1000, length=50, features=4, seed=3)
    assert X.shape == (1000, 50, 4) and X.dtype == np.float32 and X.flags.c_contiguous
    assert y.shape == (1000,) and y.dtype == np.int64 and set(np.unique(y)) == {0, 1}
    assert y.sum() == 290  # round(n * 0.29): the class ratio is exact, not sampled
    assert np.isfinite(X).all()
    X2, y2 = make_synthetic(n=1000, length=50, features=4, seed=3)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    X3, _ = make_synthetic(n=1000, length=50, features=4, seed=4)
    assert not np.array_equal(X, X3)
    X1, _ = make_synthetic(n=50, length=20, features=1, seed=0, abnormal_rate=0.5)
    assert X1.shape == (50, 20, 1)


def test_synthetic_does_not_depend_on_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    X, y = make_synthetic(n=300, length=30, features=3, seed=1)
    monkeypatch.setattr(data.synthetic, "_CHUNK", 7)
    X2, y2 = make_synthetic(n=300, length=30, features=3, seed=1)
    np.testing.assert_allclose(X, X2, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(y, y2)


def test_synthetic_patterns_need_memory() -> None:
    """Each abnormal pattern is present, and none is a single late spike: the strongest
    transients of event windows come early; benign late spikes occur in both classes."""
    X, y, pattern = data.synthetic._synthetic(3000, 50, 4, 0, 0.29)
    assert set(np.unique(pattern[y == 1])) == {0, 1, 2}
    assert (pattern[y == 0] == -1).all()
    # Where along the window is each window's largest step-to-step jump?
    jump = np.abs(np.diff(X, axis=1)).max(axis=2)  # (N, T-1)
    where = jump.argmax(axis=1)
    event = pattern == 0
    assert np.median(where[event]) < 0.3 * 50
    late_normal = np.mean(where[y == 0] > 25)
    assert late_normal > 0.15  # distractors: Normal windows with a late spike
    # Drift windows: the drifting channel's mean moves from the first to the last fifth.
    first, last = X[:, :10].mean(axis=1), X[:, -10:].mean(axis=1)  # (N, F)
    shift = np.abs(last - first).max(axis=1)
    assert np.median(shift[pattern == 1]) > np.median(shift[y == 0])


def _cpu_features() -> dict[str, bool]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        return {}
    return dict(__cpu_features__)


@pytest.mark.skipif(
    not _cpu_features().get("X86_V3"), reason="needs an x86-64-v3 CPU to compare with"
)
def test_synthetic_is_bit_identical_without_simd_kernels() -> None:
    """np.sin/np.exp results differ in the last bit between SIMD targets; the generator's must
    not, or workers on other hardware fail the fingerprint check. Emulate an older CPU."""
    code = (
        "from rnntune.data import fingerprint, load_dataset; "
        "print(fingerprint(load_dataset('synthetic:n=300,length=20,features=3,seed=2')))"
    )
    env = os.environ | {"NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    here = fingerprint(load_dataset("synthetic:n=300,length=20,features=3,seed=2"))
    assert out.stdout.strip() == here


def test_synthetic_data_is_pinned() -> None:
    # Changing the generator changes the data, hence the fingerprint, of every registered
    # synthetic experiment: workers of an older version would refuse it. Change it on purpose.
    ds = load_dataset("synthetic:n=300,length=20,features=3,seed=2")
    assert fingerprint(ds) == GOLDEN_FINGERPRINT


def test_synthetic_large_is_fast_and_compact() -> None:
    start = time.perf_counter()
    X, y = make_synthetic(n=170_000, length=50, features=4, seed=0)
    elapsed = time.perf_counter() - start
    assert X.dtype == np.float32 and X.nbytes == 170_000 * 50 * 4 * 4
    assert abs(y.mean() - 0.29) < 1e-4
    assert elapsed < 30  # a few seconds on 2 idle cores; generous for a loaded CI machine


def test_load_synthetic_dataset() -> None:
    ds = load_dataset("synthetic:n=200,length=20,features=3,seed=5")
    assert isinstance(ds, Dataset) and ds.shape == (200, 20, 3)
    assert ds.spec.kind == "synthetic"
    X, y = make_synthetic(200, 20, 3, 5)
    np.testing.assert_array_equal(ds.X, X)
    np.testing.assert_array_equal(ds.y, y)


# --------------------------------------------------------------------------------------------
# NPZ
# --------------------------------------------------------------------------------------------


def test_npz_round_trip_with_int_labels(tmp_path: pathlib.Path) -> None:
    X, y = _xy()
    ds = load_dataset(f"npz:{_write_npz(tmp_path / 'd.npz', X=X.astype(np.float64), y=y)}")
    assert ds.X.dtype == np.float32 and ds.y.dtype == np.int64
    np.testing.assert_array_equal(ds.X, X)
    np.testing.assert_array_equal(ds.y, y)


def test_npz_string_labels_any_case_and_2d_X(tmp_path: pathlib.Path) -> None:
    X, y = _xy(F=1)
    words = np.array([" Abnormal" if v else "NORMAL" for v in y])
    ds = load_dataset(f"npz:{_write_npz(tmp_path / 'd.npz', X=X[:, :, 0], y=words)}")
    assert ds.X.shape == (40, 6, 1)
    np.testing.assert_array_equal(ds.y, y)
    bools = load_dataset(f"npz:{_write_npz(tmp_path / 'b.npz', X=X, y=y.astype(bool))}")
    np.testing.assert_array_equal(bools.y, y)


def test_npz_missing_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")
    assert "data file not found" in _one_line(err) and "nope.npz" in str(err.value)


def test_npz_directory(tmp_path: pathlib.Path) -> None:
    with pytest.raises(DataError, match="is a directory"):
        load_dataset(f"npz:{tmp_path}")


def test_npz_unreadable(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(DataError) as err:
        load_dataset(f"npz:{path}")
    assert "cannot read" in _one_line(err) and "numpy.savez" in str(err.value)
    truncated = tmp_path / "cut.npz"
    X, y = _xy()
    full = pathlib.Path(_write_npz(tmp_path / "full.npz", X=X, y=y)).read_bytes()
    truncated.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="cannot read"):
        load_dataset(f"npz:{truncated}")


def test_npz_single_array_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((3, 4)))
    with pytest.raises(DataError) as err:
        load_dataset(f"npz:{path}")
    assert "not an .npz archive" in _one_line(err)


def test_npz_without_X(tmp_path: pathlib.Path) -> None:
    X, y = _xy()
    with pytest.raises(DataError) as err:
        load_dataset(f"npz:{_write_npz(tmp_path / 'd.npz', data=X, y=y)}")
    msg = _one_line(err)
    assert "no array 'X'" in msg and "found: data, y" in msg and "numpy.savez" in msg


def test_npz_object_labels(tmp_path: pathlib.Path) -> None:
    X, y = _xy()
    path = tmp_path / "d.npz"
    np.savez(path, X=X, y=np.array(["normal", None] * 20, dtype=object))
    with pytest.raises(DataError) as err:
        load_dataset(f"npz:{path}")
    assert "object arrays" in _one_line(err)


def test_npz_nan_and_inf(tmp_path: pathlib.Path) -> None:
    X, y = _xy()
    X[3, 2, 1] = np.nan
    X[5, 0, 0] = np.nan
    X[7, 1, 0] = np.inf
    with pytest.raises(DataError) as err:
        load_dataset(f"npz:{_write_npz(tmp_path / 'd.npz', X=X, y=y)}")
    msg = _one_line(err)
    assert "2 NaN and 1 infinite values" in msg and "3 sequences" in msg
    assert "first at sequence 3, t=2, feature 1" in msg and "impute" in msg


def test_npz_values_beyond_float32(tmp_path: pathlib.Path) -> None:
    X, y = _xy()
    X64 = X.astype(np.float64)
    X64[0, 0, 0] = 1e300
    with pytest.raises(DataError, match="1 infinite values"):
        load_dataset(f"npz:{_write_npz(tmp_path / 'd.npz', X=X64, y=y)}")


@pytest.mark.parametrize(
    ("X", "needle"),
    [
        (np.zeros(40), "X has shape (40,)"),
        (np.zeros((40, 2, 2, 2)), "need [N, T, F] or [N, T]"),
        (np.zeros((40, 0, 2)), "no empty axis"),
        (np.array(["a"] * 40), "need numbers"),
    ],
)
def test_npz_wrong_X_shapes(tmp_path: pathlib.Path, X: np.ndarray, needle: str) -> None:
    _, y = _xy()
    with pytest.raises(DataError) as err:
        load_dataset(f"npz:{_write_npz(tmp_path / 'd.npz', X=X, y=y)}")
    assert needle in _one_line(err)


def test_npz_wrong_y_shape(tmp_path: pathlib.Path) -> None:
    X, y = _xy()
    with pytest.raises(DataError) as err:
        load_dataset(f"npz:{_write_npz(tmp_path / 'd.npz', X=X, y=y[:, None])}")
    assert "y has shape (40, 1)" in _one_line(err)


def test_npz_lengths_disagree(tmp_path: pathlib.Path) -> None:
    X, y = _xy()
    with pytest.raises(DataError) as err:
        load_dataset(f"npz:{_write_npz(tmp_path / 'd.npz', X=X, y=y[:-3])}")
    assert "X has 40 sequences but y has 37 labels" in _one_line(err)


def test_one_class_only(tmp_path: pathlib.Path) -> None:
    X, y = _xy()
    with pytest.raises(DataError) as err:
        load_dataset(f"npz:{_write_npz(tmp_path / 'd.npz', X=X, y=np.zeros_like(y))}")
    assert "all 40 sequences are Normal" in _one_line(err)
    with pytest.raises(DataError, match="are Abnormal"):
        load_dataset(f"npz:{_write_npz(tmp_path / 'e.npz', X=X, y=np.ones_like(y))}")


def test_unknown_label_values(tmp_path: pathlib.Path) -> None:
    X, y = _xy()
    words = np.array(["normal", "abnormal", "faulty", "broken", "?"] * 8)
    with pytest.raises(DataError) as err:
        load_dataset(f"npz:{_write_npz(tmp_path / 'd.npz', X=X, y=words)}")
    msg = _one_line(err)
    assert "'?', 'broken', 'faulty'" in msg and "(3 distinct)" in msg and "normal/abnormal" in msg
    with pytest.raises(DataError, match=r"unknown label values 2, 7 \(2 distinct\)"):
        load_dataset(f"npz:{_write_npz(tmp_path / 'e.npz', X=X, y=np.where(y, 7, 2) * (y < 2))}")


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------


def test_csv_round_trip_any_row_order(tmp_path: pathlib.Path) -> None:
    X, y = _xy(n=12, T=5, F=3)
    rows = _long_rows(X, y)
    rng = np.random.default_rng(0)
    shuffled = [rows[i] for i in rng.permutation(len(rows))]
    # Columns in any order, too.
    header = ["label", "f2", "t", "sequence_id", "f0", "f1"]
    reorder = [[r[-1], r[4], r[1], r[0], r[2], r[3]] for r in shuffled]
    ds = load_dataset(f"csv:{_write_csv(tmp_path / 'd.csv', header, reorder)}")
    assert ds.shape == (12, 5, 3)
    np.testing.assert_array_equal(ds.X[:, :, [1, 2, 0]], X)  # features in header order
    np.testing.assert_array_equal(ds.y, y)


def test_csv_numeric_ids_sort_numerically_and_01_labels(tmp_path: pathlib.Path) -> None:
    X, y = _xy(n=12, T=4, F=1)
    rows = [[i, t, repr(float(X[i, t, 0])), int(y[i])] for i in range(12) for t in range(4)]
    ds = load_dataset(f"csv:{_write_csv(tmp_path / 'd.csv', _header(1), rows[::-1])}")
    np.testing.assert_array_equal(ds.X, X)  # 10 and 11 after 9, not after 1
    np.testing.assert_array_equal(ds.y, y)


def test_csv_quoting_blank_lines_bom_and_hash(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "d.csv"
    text = (
        "\ufeffsequence_id, t ,f0,label\n"
        '"unit 7, run #2",1,0.5,Abnormal\n'
        "\n"
        '"unit 7, run #2",0,1.5,Abnormal\n'
        "b,0,2.5,NORMAL\n"
        "b,1,3.5,normal\n"
    )
    path.write_text(text, encoding="utf-8")
    ds = load_dataset(f"csv:{path}")
    np.testing.assert_array_equal(ds.X[:, :, 0], [[2.5, 3.5], [1.5, 0.5]])  # "b" sorts first
    np.testing.assert_array_equal(ds.y, [0, 1])


def test_csv_missing_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(DataError, match="data file not found"):
        load_dataset(f"csv:{tmp_path / 'nope.csv'}")


def test_csv_unreadable(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfe\x00\x81binary")
    with pytest.raises(DataError) as err:
        load_dataset(f"csv:{path}")
    assert "cannot read" in _one_line(err)


def test_csv_empty(tmp_path: pathlib.Path) -> None:
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_dataset(f"csv:{tmp_path / 'e.csv'}")
    (tmp_path / "h.csv").write_text("sequence_id,t,f0,label\n")
    with pytest.raises(DataError, match="no rows"):
        load_dataset(f"csv:{tmp_path / 'h.csv'}")


def test_csv_missing_columns(tmp_path: pathlib.Path) -> None:
    path = _write_csv(tmp_path / "d.csv", ["id", "t", "f0"], [["a", 0, 1.0]])
    with pytest.raises(DataError) as err:
        load_dataset(f"csv:{path}")
    msg = _one_line(err)
    assert "lacks column(s) sequence_id, label" in msg and "header: id, t, f0" in msg


def test_csv_no_feature_columns(tmp_path: pathlib.Path) -> None:
    path = _write_csv(tmp_path / "d.csv", ["sequence_id", "t", "label"], [["a", 0, "normal"]])
    with pytest.raises(DataError, match="no feature columns"):
        load_dataset(f"csv:{path}")


def test_csv_ragged_row(tmp_path: pathlib.Path) -> None:
    rows: list[list[object]] = [["a", 0, 1.0, "normal"], ["a", 1, 2.0]]
    with pytest.raises(DataError) as err:
        load_dataset(f"csv:{_write_csv(tmp_path / 'd.csv', _header(1), rows)}")
    assert "data row 2 has 3 fields, the header has 4" in _one_line(err)


def test_csv_non_numeric_value(tmp_path: pathlib.Path) -> None:
    rows: list[list[object]] = [["a", 0, 1.0, "normal"], ["a", 1, "n/a", "normal"]]
    with pytest.raises(DataError) as err:
        load_dataset(f"csv:{_write_csv(tmp_path / 'd.csv', _header(1), rows)}")
    assert "column 'f0', data row 2: 'n/a' is not a number" in _one_line(err)


def test_csv_nan_values(tmp_path: pathlib.Path) -> None:
    X, y = _xy(n=9, T=3, F=2)
    rows = _long_rows(X, y)
    rows[4][3] = "nan"  # sequence s001, t=1, feature f1
    with pytest.raises(DataError) as err:
        load_dataset(f"csv:{_write_csv(tmp_path / 'd.csv', _header(2), rows)}")
    assert "1 NaN" in _one_line(err) and "sequence 1, t=1, feature 1" in str(err.value)


def test_csv_different_lengths(tmp_path: pathlib.Path) -> None:
    X, y = _xy(n=9, T=4, F=1)
    rows = [r for r in _long_rows(X, y) if not (r[0] == "s002" and r[1] == 3)]
    rows = [r for r in rows if not (r[0] == "s005" and r[1] >= 2)]
    with pytest.raises(DataError) as err:
        load_dataset(f"csv:{_write_csv(tmp_path / 'd.csv', _header(1), rows)}")
    msg = _one_line(err)
    assert "most have 4 rows but s002 has 3, s005 has 2" in msg and "(2 of 9 differ)" in msg


def test_csv_duplicate_rows(tmp_path: pathlib.Path) -> None:
    X, y = _xy(n=9, T=3, F=1)
    rows = _long_rows(X, y)
    rows.append(list(rows[4]))
    with pytest.raises(DataError) as err:
        load_dataset(f"csv:{_write_csv(tmp_path / 'd.csv', _header(1), rows)}")
    assert "1 duplicate (sequence_id, t) rows, e.g. (s001, t=1)" in _one_line(err)


def test_csv_label_changes_within_sequence(tmp_path: pathlib.Path) -> None:
    X, y = _xy(n=9, T=3, F=1)
    rows = _long_rows(X, y)
    rows[4][-1] = "abnormal" if rows[4][-1] == "normal" else "normal"
    with pytest.raises(DataError) as err:
        load_dataset(f"csv:{_write_csv(tmp_path / 'd.csv', _header(1), rows)}")
    assert "label changes within 1 sequence(s) (s001)" in _one_line(err)


def test_csv_unknown_labels(tmp_path: pathlib.Path) -> None:
    X, y = _xy(n=9, T=2, F=1)
    rows = _long_rows(X, y)
    for r in rows[:2]:
        r[-1] = "weird"
    with pytest.raises(DataError, match="unknown label values 'weird'"):
        load_dataset(f"csv:{_write_csv(tmp_path / 'd.csv', _header(1), rows)}")


def test_all_data_errors_are_rnntune_errors() -> None:
    assert issubclass(DataError, RnntuneError) and issubclass(ConfigError, RnntuneError)


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def _tagged_dataset(n: int = 400) -> Dataset:
    """A dataset whose X[i, 0, 0] is i, to trace which sequences land in which part."""
    X, y = make_synthetic(n=n, length=10, features=2, seed=0)
    X[:, 0, 0] = np.arange(n)
    return Dataset(X=X, y=y, spec=DataSpec("synthetic"))


def _ids(split_X: np.ndarray, splits: data.Splits) -> set[int]:
    raw = split_X[:, 0, 0] * splits.std[0] + splits.mean[0]
    return set(np.rint(raw).astype(int).tolist())


def test_split_is_stratified_disjoint_and_complete() -> None:
    ds = _tagged_dataset()
    s = split_dataset(ds, seed=0)
    train, val, test = _ids(s.X_train, s), _ids(s.X_val, s), _ids(s.X_test, s)
    assert not (train & test) and not (val & test) and not (train & val)
    assert train | val | test == set(range(400))
    desc = s.describe()
    assert {k: v["n"] for k, v in desc.items()} == {"train": 280, "val": 60, "test": 60}
    for part in desc.values():  # stratified: 29 % abnormal in every part, to rounding
        assert part["normal"] + part["abnormal"] == part["n"]
        assert abs(part["abnormal"] - 0.29 * part["n"]) <= 1
    assert sum(part["abnormal"] for part in desc.values()) == 116
    assert s.X_train.dtype == np.float32 and s.y_train.dtype == np.int64
    # Same seed, same split; another seed, another split.
    again = split_dataset(ds, seed=0)
    np.testing.assert_array_equal(again.X_test, s.X_test)
    other = split_dataset(ds, seed=1)
    assert _ids(other.X_test, other) != test


def test_scaler_is_fit_on_train_only() -> None:
    ds = _tagged_dataset()
    s = split_dataset(ds, seed=0)
    np.testing.assert_allclose(s.X_train.mean(axis=(0, 1)), 0.0, atol=1e-4)
    np.testing.assert_allclose(s.X_train.std(axis=(0, 1)), 1.0, atol=1e-4)
    assert s.mean.shape == s.std.shape == (2,)
    # Changing only test rows changes neither the scaler nor the train/val arrays.
    test_rows = sorted(_ids(s.X_test, s))
    X = ds.X.copy()
    X[test_rows] += 1000.0
    s2 = split_dataset(Dataset(X=X, y=ds.y, spec=ds.spec), seed=0)
    np.testing.assert_array_equal(s2.mean, s.mean)
    np.testing.assert_array_equal(s2.std, s.std)
    np.testing.assert_array_equal(s2.X_train, s.X_train)
    np.testing.assert_array_equal(s2.X_val, s.X_val)
    assert not np.array_equal(s2.X_test, s.X_test)


def test_constant_feature_does_not_divide_by_zero() -> None:
    X, y = _xy(n=60)
    X[:, :, 1] = 5.0
    s = split_dataset(Dataset(X=X, y=y, spec=DataSpec("synthetic")), seed=0)
    assert np.isfinite(s.X_train).all() and (s.X_train[:, :, 1] == 0).all()


def test_too_few_sequences_to_split() -> None:
    X, y = _xy(n=20)  # 7 abnormal
    ds = Dataset(X=X, y=y, spec=DataSpec("synthetic"))
    with pytest.raises(DataError) as err:
        split_dataset(ds, seed=0)
    msg = _one_line(err)
    assert "13 Normal and 7 Abnormal" in msg and "need at least 8 of each class" in msg
    split_dataset(ds, seed=0, val_fraction=0.3, test_fraction=0.3)  # 1/0.3 -> 5 per class


def test_bad_split_fractions() -> None:
    ds = _tagged_dataset()
    with pytest.raises(ConfigError, match="bad split fractions"):
        split_dataset(ds, seed=0, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ConfigError, match="bad split fractions"):
        split_dataset(ds, seed=0, val_fraction=0.0)


# --------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------


def test_fingerprint_same_data_same_print() -> None:
    a = load_dataset("synthetic:n=300,length=20")
    b = load_dataset("synthetic:length=20,n=300")
    fp = fingerprint(a)
    assert fp.startswith("sha256:") and len(fp) == len("sha256:") + 64
    assert fingerprint(b) == fp


def test_fingerprint_changes_with_one_value() -> None:
    ds = load_dataset("synthetic:n=300,length=20")
    X = ds.X.copy()
    X[123, 4, 2] = np.nextafter(X[123, 4, 2], np.float32(np.inf))
    assert fingerprint(Dataset(X=X, y=ds.y, spec=ds.spec)) != fingerprint(ds)
    y = ds.y.copy()
    y[0] = 1 - y[0]
    assert fingerprint(Dataset(X=ds.X, y=y, spec=ds.spec)) != fingerprint(ds)
    other_seed = load_dataset("synthetic:n=300,length=20,seed=1")
    assert fingerprint(other_seed) != fingerprint(ds)


def test_fingerprint_ignores_where_the_npz_lives(tmp_path: pathlib.Path) -> None:
    X, y = _xy()
    first = _write_npz(tmp_path / "a.npz", X=X, y=y)
    (tmp_path / "moved").mkdir()
    moved = tmp_path / "moved" / "renamed.npz"
    pathlib.Path(first).rename(moved)
    _write_npz(tmp_path / "a.npz", X=X, y=y)
    assert fingerprint(load_dataset(f"npz:{first}")) == fingerprint(load_dataset(f"npz:{moved}"))
    # Same numbers from a CSV are another source kind, hence another fingerprint.
    csv_path = _write_csv(tmp_path / "d.csv", _header(2), _long_rows(X, y))
    assert fingerprint(load_dataset(f"csv:{csv_path}")) != fingerprint(load_dataset(f"npz:{first}"))
