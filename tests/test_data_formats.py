"""Data with its own split (NPZ split keys, CSV `split` column), the UCR/UEA archive formats
(2018 TSV pair, sktime/UEA .ts) and --resplit, on small real-format files written here."""

from __future__ import annotations

import csv
import pathlib

import numpy as np
import pytest

from rnntune.config import ExperimentConfig
from rnntune.data import (
    SPLIT_GIVEN,
    SPLIT_GIVEN_CARVED,
    SPLIT_RANDOM,
    SPLIT_RESPLIT,
    TEST,
    TRAIN,
    fingerprint,
    load_dataset,
    parse_data_spec,
    resplit_dataset,
    split_dataset,
)
from rnntune.exceptions import ConfigError, DataError
from rnntune.experiment import load_data, repeat_splits

# --------------------------------------------------------------------------------------------
# Fixture files in the archives' own formats
# --------------------------------------------------------------------------------------------


def _series(n: int, T: int, seed: int, labels: list[str]) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    y = [labels[i % len(labels)] for i in range(n)]
    X = rng.normal(size=(n, T)).round(4)
    return X, y


def write_ucr_tsv(
    folder: pathlib.Path, name: str, n_train: int, n_test: int, T: int, labels: list[str]
) -> tuple[pathlib.Path, pathlib.Path]:
    """The UCR 2018 layout: NAME_TRAIN.tsv + NAME_TEST.tsv, label first, tabs, no header."""
    paths = []
    for part, n, seed in (("TRAIN", n_train, 0), ("TEST", n_test, 1)):
        X, y = _series(n, T, seed, labels)
        path = folder / f"{name}_{part}.tsv"
        path.write_text(
            "".join(
                f"{lab}\t" + "\t".join(map(str, row)) + "\n" for lab, row in zip(y, X, strict=True)
            )
        )
        paths.append(path)
    return paths[0], paths[1]


def write_ts(
    path: pathlib.Path, n: int, T: int, dims: int, labels: list[str], seed: int = 0
) -> np.ndarray:
    """A multichannel sktime/UEA .ts file; returns X as [n, T, dims]."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, T, dims)).round(4)
    head = [
        "# written by rnntune's tests",
        "@problemName Toy",
        "@timeStamps false",
        "@missing false",
        f"@univariate {'true' if dims == 1 else 'false'}",
        f"@dimensions {dims}",
        "@equalLength true",
        f"@seriesLength {T}",
        f"@classLabel true {' '.join(sorted(set(labels)))}",
        "@data",
    ]
    lines = [
        ":".join(",".join(str(v) for v in X[i, :, d]) for d in range(dims))
        + f":{labels[i % len(labels)]}"
        for i in range(n)
    ]
    path.write_text("\n".join(head + lines) + "\n")
    return X


def _one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


# --------------------------------------------------------------------------------------------
# NPZ and CSV with their own split
# --------------------------------------------------------------------------------------------


def _xy(n: int, T: int = 5, F: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, T, F)).astype(np.float32), (np.arange(n) % 3 == 0).astype(int)


def test_npz_with_train_and_test_keeps_the_test_part_and_carves_val(tmp_path: pathlib.Path) -> None:
    Xtr, ytr = _xy(60, seed=0)
    Xte, yte = _xy(30, seed=1)
    path = tmp_path / "own.npz"
    np.savez(path, X_train=Xtr, y_train=ytr, X_test=Xte, y_test=yte)
    ds = load_dataset(f"npz:{path}")
    assert ds.part is not None and (ds.part == TRAIN).sum() == 60 and (ds.part == TEST).sum() == 30

    sp = split_dataset(ds, seed=0)
    assert sp.source == SPLIT_GIVEN_CARVED
    # The test part is exactly the file's test part (scaled with the train-only scaler).
    np.testing.assert_allclose(sp.X_test * sp.std + sp.mean, Xte, atol=1e-5)
    np.testing.assert_array_equal(sp.y_test, yte)
    # Val is carved from the given train part: stratified, with rnntune's 70:15 ratio.
    assert len(sp.y_train) + len(sp.y_val) == 60
    assert len(sp.y_val) == round(60 * 0.15 / 0.85)
    assert set(sp.y_val.tolist()) == {0, 1}
    # The scaler saw the training part only.
    train_rows = sp.X_train * sp.std + sp.mean
    np.testing.assert_allclose(train_rows.mean(axis=(0, 1)), sp.mean, atol=1e-4)
    # Seeded: the same seed carves the same val, another seed another one.
    again, other = split_dataset(ds, seed=0), split_dataset(ds, seed=7)
    np.testing.assert_array_equal(again.X_val, sp.X_val)
    assert not np.array_equal(other.X_val, sp.X_val)
    np.testing.assert_array_equal(other.y_test, sp.y_test)


def test_npz_with_all_three_parts_uses_them_as_given(tmp_path: pathlib.Path) -> None:
    (Xtr, ytr), (Xva, yva), (Xte, yte) = _xy(40, seed=0), _xy(12, seed=1), _xy(15, seed=2)
    path = tmp_path / "three.npz"
    np.savez(path, X_train=Xtr, y_train=ytr, X_val=Xva, y_val=yva, X_test=Xte, y_test=yte)
    sp = split_dataset(load_dataset(f"npz:{path}"), seed=0)
    assert sp.source == SPLIT_GIVEN
    assert sp.describe()["val"]["n"] == 12 and sp.describe()["test"]["n"] == 15
    np.testing.assert_allclose(sp.X_val * sp.std + sp.mean, Xva, atol=1e-5)


def test_fingerprint_covers_the_split(tmp_path: pathlib.Path) -> None:
    X, y = _xy(90)
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, X_train=X[:60], y_train=y[:60], X_test=X[60:], y_test=y[60:])
    np.savez(b, X_train=X[:59], y_train=y[:59], X_test=X[59:], y_test=y[59:])
    plain = tmp_path / "plain.npz"
    np.savez(plain, X=X, y=y)
    prints = {fingerprint(load_dataset(f"npz:{p}")) for p in (a, b, plain)}
    assert len(prints) == 3  # same sequences, other split: other data


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"X_train": 1, "y_train": 1}, "lacks X_test, y_test"),
        ({"X_train": 1, "y_train": 1, "X_test": 1, "y_test": 1, "X": 1, "y": 1}, "both X/y and"),
        ({"X_train": 1, "y_train": 1, "X_test": 1, "y_test": 1, "X_val": 1}, "lacks y_val"),
    ],
)
def test_npz_split_layout_errors(tmp_path: pathlib.Path, arrays: dict, expected: str) -> None:
    X, y = _xy(30)
    path = tmp_path / "bad.npz"
    np.savez(path, **{k: (X if k.startswith("X") else y) for k in arrays})
    with pytest.raises(DataError) as err:
        load_dataset(f"npz:{path}")
    assert expected in _one_line(err)


def test_npz_given_test_part_without_abnormal_is_an_error(tmp_path: pathlib.Path) -> None:
    X, y = _xy(60)
    path = tmp_path / "onlynormal.npz"
    np.savez(path, X_train=X[:40], y_train=y[:40], X_test=X[40:], y_test=np.zeros(20, int))
    with pytest.raises(DataError) as err:
        load_dataset(f"npz:{path}")
    assert "given test part (20 sequences) has no Abnormal sequence" in _one_line(err)


def _csv_rows(X: np.ndarray, y: np.ndarray, parts: list[str]) -> list[list[object]]:
    rows: list[list[object]] = []
    for i in range(len(X)):
        for t in range(X.shape[1]):
            rows.append([f"s{i}", t, *X[i, t].tolist(), "abnormal" if y[i] else "normal", parts[i]])
    return rows


def _write_csv(path: pathlib.Path, F: int, rows: list[list[object]]) -> str:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sequence_id", "t", *(f"f{j}" for j in range(F)), "label", "split"])
        w.writerows(rows)
    return f"csv:{path}"


def test_csv_split_column(tmp_path: pathlib.Path) -> None:
    X, y = _xy(80)
    parts = ["test" if i >= 60 else "Val " if i >= 48 else "train" for i in range(80)]
    spec = _write_csv(tmp_path / "d.csv", 2, _csv_rows(X, y, parts))
    ds = load_dataset(spec)
    assert ds.shape == (80, 5, 2)  # `split` is not a feature
    sp = split_dataset(ds, seed=3)
    assert sp.source == SPLIT_GIVEN
    assert [sp.describe()[p]["n"] for p in ("train", "val", "test")] == [48, 12, 20]
    # Sequence ids sort as strings (s0, s1, s10, ...): compare as sets of rows.
    assert {tuple(r.ravel()) for r in np.round(sp.X_test * sp.std + sp.mean, 4)} == {
        tuple(r.ravel()) for r in np.round(X[60:], 4)
    }


def test_csv_split_errors(tmp_path: pathlib.Path) -> None:
    X, y = _xy(40)
    bad_word = ["train"] * 30 + ["holdout"] * 10
    with pytest.raises(DataError) as err:
        load_dataset(_write_csv(tmp_path / "a.csv", 2, _csv_rows(X, y, bad_word)))
    assert "unknown split value(s) 'holdout'; use train, val or test" in _one_line(err)

    rows = _csv_rows(X, y, ["train"] * 30 + ["test"] * 10)
    rows[1][-1] = "test"  # sequence s0 changes part mid-way
    with pytest.raises(DataError) as err:
        load_dataset(_write_csv(tmp_path / "b.csv", 2, rows))
    assert "the split changes within 1 sequence(s) (s0)" in _one_line(err)

    with pytest.raises(DataError) as err:
        load_dataset(_write_csv(tmp_path / "c.csv", 2, _csv_rows(X, y, ["train"] * 40)))
    assert "has no test part" in _one_line(err)


# --------------------------------------------------------------------------------------------
# UCR/UEA: the TSV pair
# --------------------------------------------------------------------------------------------


def test_ucr_tsv_pair_binary_takes_majority_as_normal(tmp_path: pathlib.Path) -> None:
    train, _ = write_ucr_tsv(tmp_path, "Heartbeats", 30, 20, 12, ["1", "1", "2"])
    ds = load_dataset(f"ucr:{train}")
    assert ds.shape == (50, 12, 1)
    assert (ds.part == TRAIN).sum() == 30 and (ds.part == TEST).sum() == 20
    assert ds.labels_note is not None and ds.labels_note.startswith(
        "Normal = class 1 (the majority"
    )
    assert int(ds.y[:30].sum()) == 10  # class 2 (every third) is abnormal
    sp = split_dataset(ds, seed=0)
    assert sp.source == SPLIT_GIVEN_CARVED and sp.describe()["test"]["n"] == 20
    # The TEST file also names the pair, and the folder does too (the archive's layout).
    (tmp_path / "Heartbeats").mkdir()
    for f in tmp_path.glob("Heartbeats_*.tsv"):
        f.rename(tmp_path / "Heartbeats" / f.name)
    a = load_dataset(f"ucr:{tmp_path / 'Heartbeats' / 'Heartbeats_TEST.tsv'}")
    b = load_dataset(f"ucr:{tmp_path / 'Heartbeats'}")
    assert fingerprint(a) == fingerprint(b) == fingerprint(ds)  # the path is not the identity


def test_ucr_normal_classes_and_multi_class_error(tmp_path: pathlib.Path) -> None:
    train, _ = write_ucr_tsv(tmp_path, "Toy", 30, 30, 8, ["1", "2", "3"])
    with pytest.raises(DataError) as err:
        load_dataset(f"ucr:{train}")
    msg = _one_line(err)
    assert "has 3 classes: 1 (10 in train), 2 (10 in train), 3 (10 in train)" in msg
    assert "normal=" in msg

    ds = load_dataset(f"ucr:{train},normal=3|1")
    assert ds.spec.to_string().endswith(",normal=1|3")  # canonical: sorted
    assert int(ds.y.sum()) == 20  # class 2 in both parts
    assert "Normal = classes 1, 3 (as named by normal=); Abnormal = class 2" == ds.labels_note
    assert parse_data_spec(ds.spec.to_string()) == ds.spec
    # Another choice of normal class is other data.
    assert fingerprint(load_dataset(f"ucr:{train},normal=2")) != fingerprint(ds)

    with pytest.raises(DataError) as err:
        load_dataset(f"ucr:{train},normal=7")
    assert "normal=7 is not a class of this data (classes found: 1, 2, 3)" in _one_line(err)
    with pytest.raises(DataError) as err:
        load_dataset(f"ucr:{train},normal=1|2|3")
    assert "normal= names every class" in _one_line(err)
    with pytest.raises(ConfigError) as err:
        parse_data_spec(f"ucr:{train},normal=1,2")
    assert "separate several normal classes with '|'" in _one_line(err)
    with pytest.raises(ConfigError) as err:
        parse_data_spec(f"ucr:{train},abnormal=2")
    assert "unknown ucr parameter(s) abnormal" in _one_line(err)


def test_ucr_float_labels_of_older_archives(tmp_path: pathlib.Path) -> None:
    train, _ = write_ucr_tsv(tmp_path, "Old", 20, 20, 6, ["-1.0000000e+00", "1.0000000e+00", "1"])
    ds = load_dataset(f"ucr:{train},normal=1")
    assert "Abnormal = class -1" in (ds.labels_note or "")


def test_ucr_tsv_errors(tmp_path: pathlib.Path) -> None:
    train, test = write_ucr_tsv(tmp_path, "E", 20, 20, 6, ["a", "a", "b"])
    lines = train.read_text().splitlines()

    train.write_text("\n".join(lines[:3] + [lines[3] + "\t0.5"] + lines[4:]) + "\n")
    with pytest.raises(DataError) as err:
        load_dataset(f"ucr:{train}")
    assert "series differ in length (line 1 has 6 values, line 4 has 7)" in _one_line(err)

    train.write_text("\n".join(lines[:2] + [lines[2].rsplit("\t", 1)[0] + "\tNaN"] + lines[3:]))
    with pytest.raises(DataError) as err:
        load_dataset(f"ucr:{train}")
    assert "missing values (NaN or '?') in 1 series, first line 3 value 6" in _one_line(err)

    train.write_text("\n".join(lines[:2] + [lines[2].rsplit("\t", 1)[0] + "\t?"] + lines[3:]))
    with pytest.raises(DataError):
        load_dataset(f"ucr:{train}")

    train.write_text("\n".join(lines))
    test.unlink()
    with pytest.raises(DataError) as err:
        load_dataset(f"ucr:{train}")
    assert f"data file not found: {test}" in _one_line(err)

    with pytest.raises(DataError) as err:
        load_dataset(f"ucr:{tmp_path / 'nothing.tsv'}")
    assert "NAME_TRAIN/NAME_TEST pair" in _one_line(err)


def test_ucr_train_and_test_must_match(tmp_path: pathlib.Path) -> None:
    train, test = write_ucr_tsv(tmp_path, "M", 20, 20, 6, ["a", "a", "b"])
    test.write_text("".join("a\t" + "\t".join(["1.0"] * 8) + "\n" for _ in range(5)))
    with pytest.raises(DataError) as err:
        load_dataset(f"ucr:{train}")
    assert "has series of length 8 with 1 dimension(s)" in _one_line(err)


# --------------------------------------------------------------------------------------------
# UCR/UEA: the .ts format
# --------------------------------------------------------------------------------------------


def test_ts_multichannel_pair(tmp_path: pathlib.Path) -> None:
    Xtr = write_ts(tmp_path / "Toy_TRAIN.ts", 24, 10, 3, ["up", "up", "down"], seed=0)
    Xte = write_ts(tmp_path / "Toy_TEST.ts", 12, 10, 3, ["up", "up", "down"], seed=1)
    ds = load_dataset(f"ucr:{tmp_path / 'Toy_TRAIN.ts'}")
    assert ds.shape == (36, 10, 3)
    np.testing.assert_allclose(ds.X[:24], Xtr, atol=1e-6)  # dimension d is feature d
    np.testing.assert_allclose(ds.X[24:], Xte, atol=1e-6)
    assert "Normal = class up" in (ds.labels_note or "")
    assert split_dataset(ds, seed=0).describe()["test"]["n"] == 12


def _ts_with(path: pathlib.Path, replace: tuple[str, str] | None = None, append: str = "") -> None:
    write_ts(path, 12, 5, 2, ["x", "y"])
    text = path.read_text()
    if replace:
        text = text.replace(*replace, 1)
    path.write_text(text + append)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"append": "1,2,3,4,5:1,2,3:x\n"}, "series differ in length (3 to 5 values)"),
        ({"append": "1,2,?,4,5:1,2,3,4,5:x\n"}, "missing values (NaN or '?') in 1 cases"),
        ({"append": "1,2,3,4,5:x\n"}, "different numbers of dimensions"),
        ({"append": "1,2,3,4,5:1,2,3,4,5:z\n"}, "class 'z' is not declared in @classLabel"),
        ({"replace": ("@timeStamps false", "@timeStamps true")}, "uses @timeStamps true"),
        ({"replace": ("@classLabel true x y", "@classLabel false")}, "declares no class labels"),
        ({"replace": ("@data", "@nodata")}, "line 11: data before @data"),
    ],
)
def test_ts_errors(tmp_path: pathlib.Path, edit: dict, expected: str) -> None:
    _ts_with(tmp_path / "T_TRAIN.ts", **edit)
    write_ts(tmp_path / "T_TEST.ts", 12, 5, 2, ["x", "y"])
    with pytest.raises(DataError) as err:
        load_dataset(f"ucr:{tmp_path / 'T_TRAIN.ts'}")
    assert expected in _one_line(err)


# --------------------------------------------------------------------------------------------
# --resplit
# --------------------------------------------------------------------------------------------


def test_resplit_repeats_draw_their_own_paired_splits() -> None:
    cfg = ExperimentConfig(data="synthetic:n=300,length=8,features=2,seed=0", resplit=True)
    loaded = load_data(cfg)
    assert loaded.splits.source == SPLIT_RANDOM
    s0, s1, s0_again = (repeat_splits(cfg, loaded, r) for r in (0, 1, 0))
    assert s0.source == s1.source == SPLIT_RESPLIT
    np.testing.assert_array_equal(s0.X_test, s0_again.X_test)  # split i is a function of i
    assert not np.array_equal(s0.X_test, s1.X_test)
    assert not np.array_equal(s0.X_test, loaded.splits.X_test)  # not tuning's split
    assert len(s0.y_test) == len(loaded.splits.y_test) and set(s0.y_test.tolist()) == {0, 1}
    # A second worker (another process in real life) draws the very same split i.
    other = repeat_splits(cfg, load_data(cfg), 1)
    np.testing.assert_array_equal(other.X_test, s1.X_test)
    # Without --resplit every repeat gets the fixed split itself.
    fixed = ExperimentConfig(data=cfg.data)
    loaded_fixed = load_data(fixed)
    assert repeat_splits(fixed, loaded_fixed, 3) is loaded_fixed.splits
    assert loaded_fixed.dataset is None  # nothing kept that is not needed


def test_resplit_of_data_with_its_own_split_keeps_the_part_sizes(tmp_path: pathlib.Path) -> None:
    train, _ = write_ucr_tsv(tmp_path, "R", 40, 25, 6, ["1", "1", "2"])
    ds = load_dataset(f"ucr:{train}")
    given = split_dataset(ds, seed=0)
    r = resplit_dataset(ds, seed=901)
    assert [len(p) for p in (r.y_train, r.y_val, r.y_test)] == [
        len(p) for p in (given.y_train, given.y_val, given.y_test)
    ]
    assert r.source == SPLIT_RESPLIT
    # Pooled: the redrawn test part mixes the file's train and test sequences.
    given_test = {tuple(row.ravel()) for row in np.round(given.X_test * given.std + given.mean, 3)}
    drawn_test = {tuple(row.ravel()) for row in np.round(r.X_test * r.std + r.mean, 3)}
    assert drawn_test - given_test and drawn_test & given_test


def test_resplit_seed_differs_from_the_fixed_split_and_keeps_digest() -> None:
    cfg = ExperimentConfig(seed=0)
    assert cfg.split_seed not in {cfg.resplit_seed(r) for r in range(100)}
    assert "resplit" not in cfg.identity()  # experiments from before the option keep their digest
    assert ExperimentConfig(resplit=True).digest() != cfg.digest()


# --------------------------------------------------------------------------------------------
# Through the CLI: options, environment, experiment file, report
# --------------------------------------------------------------------------------------------


def test_cli_ucr_data_with_resplit_from_the_environment(tmp_path: pathlib.Path) -> None:
    from tests.helpers import rnntune

    write_ucr_tsv(tmp_path, "Toy", 60, 40, 10, ["1", "2", "3"])
    url = f"sqlite:///{tmp_path / 'study.db'}"
    bad = rnntune(
        "init", "--storage", url, "--data", "ucr:Toy_TRAIN.tsv", cwd=tmp_path, check=False
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.splitlines()[-1] == (
        "Error: ucr:Toy_TRAIN.tsv has 3 classes: 1 (20 in train), 2 (20 in train), 3 (20 in "
        "train); name the normal class(es) with normal= (e.g. ucr:Toy_TRAIN.tsv,normal=1; "
        "several: normal=1|2), every other class is abnormal"
    )
    status = rnntune("status", "--storage", url, cwd=tmp_path, check=False)
    assert "no experiment 'default'" in status.stderr  # nothing was registered

    rnntune(
        "init", "--storage", url, "--data", "ucr:Toy_TRAIN.tsv,normal=1|2", cwd=tmp_path,
        env={"RNNTUNE_RESPLIT": "1"},
    )  # fmt: skip
    md = rnntune("report", "--storage", url, cwd=tmp_path).stdout
    assert "| Classes | Normal = classes 1, 2 (as named by normal=); Abnormal = class 3 |" in md
    assert "| Split | train and test parts as given by the data file; validation carved" in md
    assert "re-split per repeat (--resplit)" in md and "may hold sequences that tuning" in md
    assert "pooled and redrawn" in md
    # The stored experiment says resplit; resuming without the option keeps it.
    again = rnntune(
        "init", "--storage", url, "--data", "ucr:Toy_TRAIN.tsv,normal=1|2", cwd=tmp_path
    )
    assert "already registered (unchanged)" in again.stdout
    changed = rnntune(
        "init", "--storage", url, "--data", "ucr:Toy_TRAIN.tsv,normal=1|2", "--fixed-split",
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert changed.returncode == 1 and "resplit: True -> False" in changed.stderr


def test_cli_resplit_from_the_experiment_file_and_fixed_by_default(tmp_path: pathlib.Path) -> None:
    from tests.conftest import TINY_DATA
    from tests.helpers import rnntune

    (tmp_path / "exp.toml").write_text('[experiment]\nresplit = true\nname = "r"\n')
    url = f"sqlite:///{tmp_path / 'study.db'}"
    rnntune("init", "--storage", url, "--data", TINY_DATA, "--config", "exp.toml", cwd=tmp_path)
    rnntune("init", "--storage", url, "--data", TINY_DATA, "--experiment", "f", cwd=tmp_path)
    r = rnntune("report", "--storage", url, "--experiment", "r", cwd=tmp_path).stdout
    f = rnntune("report", "--storage", url, "--experiment", "f", cwd=tmp_path).stdout
    assert "re-split per repeat" in r and "re-split" not in f
    assert "fixed split: tuning and every repeat use the split below" in f
    assert "rnntune's stratified, seeded split 70%/15%/15%" in f
    bad = tmp_path / "bad.toml"
    bad.write_text("[experiment]\nresplit = 'sometimes'\n")
    proc = rnntune("init", "--storage", url, "--config", str(bad), cwd=tmp_path, check=False)
    assert proc.stderr.splitlines()[-1] == "Error: resplit must be true or false, got 'sometimes'"
