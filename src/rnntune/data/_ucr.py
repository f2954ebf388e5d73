"""The UCR/UEA archive formats: the 2018 TSV pair and the ``.ts`` format."""

from __future__ import annotations

import os
import re
from collections import Counter

import numpy as np

from rnntune.data._files import _check_file
from rnntune.data._spec import TEST, TRAIN, DataSpec, _canon_label, _natural_sorted
from rnntune.exceptions import DataError

_MISSING_WORDS = ("nan", "?", "", "na")


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
