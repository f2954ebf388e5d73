"""`rnntune run` SIGKILLed during tuning and again during evaluation, then rerun: exact counts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rnntune import evaluation
from rnntune.experiment import find_or_raise_by_name
from rnntune.storage import open_optuna_storage
from tests.conftest import rnntune
from tests.helpers import FAST, assert_exact, finished

pytestmark = pytest.mark.slow

DATA = "synthetic:n=600,length=24,features=3,seed=2"


def _args(url: str, cwd: Path) -> list[str]:
    return [
        "run",
        "--storage",
        url,
        "--data",
        DATA,
        "--trials",
        "4",
        "--repeats",
        "3",
        "--max-epochs",
        "3",
        "--workers",
        "2",
        "--artifacts",
        str(cwd / "artifacts"),
        *FAST,
    ]


def _start(url: str, cwd: Path) -> subprocess.Popen[str]:
    """A real `rnntune run`; its output goes to a file the test shows if the run misbehaves."""
    log = cwd / f"run-{len(list(cwd.glob('run-*.log')))}.log"
    with log.open("w") as out:
        p = subprocess.Popen(
            [sys.executable, "-m", "rnntune", *_args(url, cwd)],
            cwd=cwd,
            text=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RNNTUNE_LOG_LEVEL": "INFO"},
        )
    p.log = log  # type: ignore[attr-defined]
    return p


def _wait_alive(p: subprocess.Popen[str], pred, timeout: float, interval: float = 0.3) -> None:  # noqa: ANN001
    """Wait for ``pred`` while the run is alive; fail at once, with its output, if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _safe(pred):
            return
        if p.poll() is not None:
            break
        time.sleep(interval)
    _sigkill(p)
    raise AssertionError(
        f"run exited with {p.returncode} or timed out after {timeout}s before the condition;"
        f" its output:\n{p.log.read_text()[-4000:]}"  # type: ignore[attr-defined]
    )


def _repeats_done(url: str) -> int:
    st = open_optuna_storage(url, read_only=True)
    try:
        exp = find_or_raise_by_name(st.engine, "default")
    except Exception:  # noqa: BLE001 - not registered yet
        return 0
    return sum(c.done for c in evaluation.progress(st.engine, exp).values())


def _sigkill(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
    p.wait(10)


def test_sigkill_during_tuning_and_evaluation_then_resume(storage_url: str, tmp_path: Path) -> None:
    # 1. Kill the whole `rnntune run` (its workers die with it) in the middle of tuning.
    p = _start(storage_url, tmp_path)
    _wait_alive(p, lambda: sum(finished(storage_url).values()) >= 3, timeout=180)
    _sigkill(p)
    mid = finished(storage_url)
    assert sum(mid.values()) < 12, "killed too late to test anything"

    # 2. Resume; kill again once evaluation has started but is not finished.
    p = _start(storage_url, tmp_path)
    _wait_alive(p, lambda: _repeats_done(storage_url) >= 1, timeout=300, interval=0.1)
    _sigkill(p)
    assert _repeats_done(storage_url) < 9, "killed too late to test anything"
    # Trials finished before each kill are kept.
    after = finished(storage_url)
    assert all(after[f] >= mid[f] for f in mid)

    # 3. Resume to the end: exact budgets, each repeat once.
    proc = rnntune(*_args(storage_url, tmp_path), cwd=tmp_path, timeout=400)
    assert "resuming experiment 'default'" in proc.stdout
    assert_exact(storage_url, budget=4, repeats=3)


def _safe(fn):  # noqa: ANN001, ANN202
    try:
        return fn()
    except Exception:  # noqa: BLE001 - the database may not exist yet
        return False
