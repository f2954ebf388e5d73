"""`rnntune run`: N local worker processes (the same code path as `rnntune worker`), progress
lines while they work, then the report. And the final export shared with `rnntune evaluate`."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rnntune import live as live_mod
from rnntune.config import Runtime, worker_options
from rnntune.exceptions import RnntuneError, first_line
from rnntune.experiment import (
    Experiment,
    find_or_raise_by_name,
    load_data,
    mark_finished,
    store_reference_points,
    verify_data,
)
from rnntune.report import Report, build_report, write_all

log = logging.getLogger(__name__)

REPORT_FORMATS = ("md", "json", "html")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # A worker must not outlive a SIGKILLed `rnntune run`: it would keep claiming work that the
    # next `rnntune run` expects to reclaim. PR_SET_PDEATHSIG = 1.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


def worker_command(experiment: str, rt: Runtime, data: str | None) -> list[str]:
    """A worker's argv: ``rnntune worker`` with ``rt`` as its options (config.worker_options owns
    that mapping). No storage URL in it: argv is public (``ps``, /proc/PID/cmdline) and the URL
    may hold the database password, so it goes in the child's environment instead
    (:func:`worker_env`)."""
    return [sys.executable, "-m", "rnntune", "worker", *worker_options(experiment, rt, data)]


def worker_env(storage_url: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker process: ours, with the storage URL in RNNTUNE_STORAGE (which
    only this user and root can read) and the *_FILE variables dropped, as the URL is already
    resolved."""
    env = dict(os.environ if base is None else base)
    env.pop("RNNTUNE_STORAGE_FILE", None)
    env.pop("RNNTUNE_STORAGE_PASSWORD_FILE", None)
    env["RNNTUNE_STORAGE"] = storage_url
    env.setdefault("RNNTUNE_LOG_LEVEL", "WARNING")
    return env


def run_workers(
    storage: Any,
    storage_url: str,
    exp: Experiment,
    rt: Runtime,
    n_workers: int,
    data_override: str | None,
    echo: Callable[[str], None],
    poll: float = 2.0,
    display: live_mod.Display | None = None,
) -> None:
    """Start ``n_workers`` worker processes and show progress until they have all exited.

    ``display``: where the live view goes (default: stdout, redrawn in place on a terminal).
    """
    display = display or live_mod.Display(sys.stdout)
    env = worker_env(storage_url)
    cmd = worker_command(exp.name, rt, data_override)
    # On a terminal the workers' messages go through the display, which prints them above the
    # view it redraws: written straight to the terminal, they would be drawn over.
    err = subprocess.PIPE if display.tty else None
    procs = [
        subprocess.Popen(  # noqa: PLW1509
            cmd, env=env, preexec_fn=_die_with_parent, stderr=err, text=True, errors="replace"
        )
        for _ in range(n_workers)
    ]
    relays = [
        threading.Thread(target=_relay, args=(p.stderr, display), daemon=True)
        for p in procs
        if p.stderr is not None
    ]
    for t in relays:
        t.start()
    stopping = False

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    started = time.monotonic()

    def show() -> None:
        view: live_mod.Live | str
        try:
            view = live_mod.snapshot(storage, exp)
        except Exception as e:  # noqa: BLE001 - progress display must not stop the run
            view = f"(progress unavailable: {first_line(e)})"
        display.show(view, time.monotonic() - started)

    try:
        while any(p.poll() is None for p in procs):
            show()
            time.sleep(poll)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for t in relays:
            t.join(timeout=5)
        for p in procs:
            if p.stderr is not None:
                p.stderr.close()
    codes = [p.returncode for p in procs]
    if stopping:
        raise RnntuneError(
            "interrupted: finished work is stored; run the same `rnntune run` again to continue"
        )
    if any(codes):
        raise RnntuneError(
            f"{sum(1 for c in codes if c)} of {n_workers} worker(s) failed (exit codes {codes}); "
            "see the messages above, fix the cause, and rerun `rnntune run` to continue"
        )
    show()
    display.release()


def _relay(stream: Any, display: live_mod.Display) -> None:
    """Forward a worker's stderr, line by line, to ``display`` (until the worker exits)."""
    for text in iter(stream.readline, ""):
        display.message(text.rstrip("\n"))


def finalize(
    storage: Any,
    exp: Experiment,
    out_dir: str | Path,
    artifacts: str | None,
    device: str = "cpu",
    *,
    data: str | None = None,
    splits: Any = None,
) -> tuple[Report, dict[str, Path]]:
    """Write report.md/.json/.html into ``out_dir`` and publish them to the dashboard.

    ``device``: what the work ran on, as the report should say it (already resolved). The
    reference points are computed here once, from ``splits`` (or the experiment's data, at
    ``data`` if given), and stored with the experiment for every later report.
    """
    exp = find_or_raise_by_name(storage.engine, exp.name)
    if "baselines" not in (exp.data_summary or {}):
        ensure_reference_points(storage.engine, exp, data=data, splits=splits)
        exp = find_or_raise_by_name(storage.engine, exp.name)
    report = build_report(storage, exp, device=device)
    paths, plots = write_all(report, out_dir, REPORT_FORMATS)
    mark_finished(storage.engine, exp, str(paths["md"]))
    if artifacts:
        from rnntune.publish import publish

        try:
            publish(storage, exp, report, paths, plots, artifacts)
        except Exception as e:  # noqa: BLE001 - the files on disk are the primary result
            log.warning("could not publish the report to the dashboard: %s", e)
    return report, paths


def ensure_reference_points(
    engine: Any, exp: Experiment, *, data: str | None = None, splits: Any = None
) -> None:
    """Compute the majority-class and classical baselines on the experiment's split and store
    them (``rnntune.baselines``: numpy and scikit-learn only). A failure costs the report its
    reference points, not the report: it is logged and the report says they are missing."""
    from rnntune.baselines import reference_points

    try:
        if splits is None:
            loaded = load_data(exp.config, data)
            verify_data(exp, loaded)
            splits = loaded.splits
        t0 = time.perf_counter()
        points = reference_points(
            splits.X_train, splits.y_train, splits.X_test, splits.y_test, seed=exp.config.seed
        )
        points["seconds"] = round(time.perf_counter() - t0, 3)
        if exp.config.resplit:
            points["note"] = (
                "measured on the fixed split (tuning's); with --resplit each repeat tests on its "
                "own split, so these are a guide, not the same test sequences"
            )
    except Exception as e:  # noqa: BLE001 - the trained families are the primary result
        log.warning("no reference points for the report: %s", e)
        return
    store_reference_points(engine, exp, points)


def summary_table(report: Mapping[str, Any]) -> str:
    rows = [f"{'family':<7}{'best val':>10}{'accuracy':>18}{'macro F1':>18}{'ROC AUC':>18}"]
    for family, fam in report["families"].items():
        s = fam["summary"]

        def cell(metric: str, s: dict = s) -> str:
            m = s.get(metric)
            return f"{m['mean']:.4f} ± {m['std']:.4f}" if m else "-"

        best = f"{fam['best_value']:.4f}" if fam["best_value"] is not None else "-"
        rows.append(
            f"{family:<7}{best:>10}{cell('accuracy'):>18}{cell('macro_f1'):>18}"
            f"{cell('roc_auc'):>18}"
        )
    rows.append(report["verdict"])
    return "\n".join(rows)
