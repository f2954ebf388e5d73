"""The report's data formats: JSON (its serialisation) and CSV (one row per repeat).

JSON writes :meth:`Report.as_dict` as it is; any other mapping (a stored report) is written as
given. Nothing here computes a statistic.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import pathlib
from collections.abc import Mapping
from typing import Any, TypeGuard

import numpy as np

from rnntune.names import KNOWN_METRICS
from rnntune.report.model import Report, as_report

__all__ = ["to_csv", "to_json"]

_CSV_FIXED = ("family", "repeat", "seed", "status", "epochs_trained", "train_seconds")


def _jsonable(value: Any) -> Any:
    """Plain JSON types; non-finite floats become None (JSON has no NaN or Infinity)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, _dt.datetime | _dt.date):
        return value.isoformat()
    if isinstance(value, pathlib.PurePath):
        return str(value)
    return value


def to_json(report: Report | Mapping[str, Any]) -> str:
    """The report (or any mapping) as indented JSON; NaN and infinities are written as ``null``.

    A :class:`Report` is written as its serialised form, :meth:`Report.as_dict`.
    """
    if isinstance(report, Report):
        report = report.as_dict()
    # allow_nan=False: anything non-finite left over is a bug here, not invalid JSON out there.
    return json.dumps(_jsonable(report), indent=2, allow_nan=False)


def _is_number(value: object) -> TypeGuard[float]:
    """A real number (int, float or numpy scalar), not a bool."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value


def to_csv(report: Report | Mapping[str, Any]) -> str:
    """One row per (family, repeat): identity, status, training cost, then every metric.

    Columns: family, repeat, seed, status, epochs_trained, train_seconds, then the metric names
    sorted (the known ones always, plus any other numeric metric present). Floats are written
    at full precision; missing or non-finite values are empty cells.
    """
    rep = as_report(report)
    repeats = [(name, r) for name in rep.order for r in rep.families[name].by_repeat]
    extra = {k for _, r in repeats for k, v in r.metrics.items() if _is_number(v)}
    metrics = sorted(set(KNOWN_METRICS) | extra)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*_CSV_FIXED, *metrics])
    for name, r in repeats:
        row = [name] + [_csv_value(getattr(r, col)) for col in _CSV_FIXED[1:]]
        row += [_csv_value(r.metrics.get(m)) for m in metrics]
        writer.writerow(row)
    return out.getvalue()
