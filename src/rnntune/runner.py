"""`rnntune run`: N local worker processes (the same code path as `rnntune worker`), progress
lines while they work, then the report. And the final export shared with `rnntune evaluate`."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rnntune import progress as progress_mod
from rnntune.config import Runtime
from rnntune.exceptions import RnntuneError
from rnntune.experiment import Experiment, find_or_raise_by_name, mark_finished
from rnntune.report import build_report, write_all

log = logging.getLogger(__name__)

REPORT_FORMATS = ("md", "json", "html")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # A worker must not outlive a SIGKILLed `rnntune run`: it would keep claiming work that the
    # next `rnntune run` expects to reclaim. PR_SET_PDEATHSIG = 1.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


def worker_command(storage: str, experiment: str, rt: Runtime, data: str | None) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "rnntune",
        "worker",
        "--storage",
        storage,
        "--experiment",
        experiment,
        "--artifacts",
        rt.artifacts,
        "--device",
        rt.device,
        "--threads",
        str(rt.threads),
    ]
    # Unset: the worker takes the experiment's (the parent checked what was given against it).
    if rt.heartbeat_interval is not None:
        cmd += ["--heartbeat-interval", str(rt.heartbeat_interval)]
    if rt.grace_period is not None:
        cmd += ["--grace-period", str(rt.grace_period)]
    if data:
        cmd += ["--data", data]
    return cmd


def run_workers(
    storage: Any,
    storage_url: str,
    exp: Experiment,
    rt: Runtime,
    n_workers: int,
    data_override: str | None,
    echo: Callable[[str], None],
    poll: float = 2.0,
) -> None:
    """Start ``n_workers`` worker processes and print progress until they have all exited."""
    env = dict(os.environ)
    env.setdefault("RNNTUNE_LOG_LEVEL", "WARNING")
    cmd = worker_command(storage_url, exp.name, rt, data_override)
    procs = [
        subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent)  # noqa: PLW1509
        for _ in range(n_workers)
    ]
    stopping = False

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    last = ""
    started = time.monotonic()
    try:
        while any(p.poll() is None for p in procs):
            try:
                line = progress_mod.read(storage, exp).line()
            except Exception as e:  # noqa: BLE001 - progress display must not stop the run
                line = f"(progress unavailable: {str(e).splitlines()[0]})"
            if line != last:
                echo(f"[{_clock(time.monotonic() - started)}] {line}")
                last = line
            time.sleep(poll)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
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
    echo(f"[{_clock(time.monotonic() - started)}] {progress_mod.read(storage, exp).line()}")


def finalize(
    storage: Any, exp: Experiment, out_dir: str | Path, artifacts: str | None, device: str = "cpu"
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Write report.md/.json/.html into ``out_dir`` and publish them to the dashboard.

    ``device``: what the work ran on, as the report should say it (already resolved).
    """
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


def summary_table(report: dict[str, Any]) -> str:
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


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m:02d}:{s:02d}"
