"""NPZ and CSV files, validated as read, with or without their own train/val/test split."""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections import Counter
from typing import Any

import numpy as np

from rnntune.data._spec import PART_NAMES
from rnntune.exceptions import DataError

_CSV_REQUIRED = ("sequence_id", "t", "label")
_CSV_SPLIT = "split"  # optional: train/val/test per sequence, the file's own split


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
