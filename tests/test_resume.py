"""`rnntune run` SIGKILLed during tuning and again during evaluation, then rerun: exact counts.

Where the kills land is held in place by failpoints, not left to the machine's speed: the
workers pause (``sleep``) after their second finished trial, then after their first finished
repeat, and the test kills the run while they are there."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rnntune import evaluation
from rnntune.experiment import find_or_raise_by_name
from rnntune.storage import StorageRole, open_optuna_storage
from tests.helpers import FAST, assert_exact, finished, kill, output, rnntune, spawn, wait_for

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


def _start(url: str, cwd: Path, pause_at: str) -> object:
    """A real `rnntune run` whose workers pause for a minute at ``pause_at`` (NAME@N); reaped by
    the conftest fixture, pass or fail."""
    return spawn(
        [sys.executable, "-m", "rnntune", *_args(url, cwd)],
        cwd=cwd,
        env={
            "RNNTUNE_LOG_LEVEL": "INFO",
            "RNNTUNE_FAILPOINTS": pause_at.replace("@", "=sleep:60@"),
        },
        log=cwd / f"run-{len(list(cwd.glob('run-*.log')))}.log",
    )


def _repeats_done(url: str) -> int:
    st = open_optuna_storage(url, StorageRole.WORK)
    try:
        exp = find_or_raise_by_name(st.engine, "default")
        return sum(c.done for c in evaluation.progress(st.engine, exp).values())
    except Exception:  # noqa: BLE001 - not registered yet
        return 0
    finally:
        st.engine.dispose()  # polled: leave no connection behind


@pytest.mark.timeout(900)
def test_sigkill_during_tuning_and_evaluation_then_resume(storage_url: str, tmp_path: Path) -> None:
    # 1. Kill the whole `rnntune run` (its workers die with it) in the middle of tuning.
    # Each worker pauses after its second finished trial: at most 4 of the 12 are finished.
    p = _start(storage_url, tmp_path, "tell.after@2")
    wait_for(lambda: sum(finished(storage_url).values()) >= 3, timeout=180, alive=[p])
    kill(p)
    mid = finished(storage_url)
    assert 3 <= sum(mid.values()) <= 4, mid

    # 2. Resume; kill again once evaluation has started but is not finished.
    # Each worker pauses after its first finished repeat: at most 2 of the 9 are done.
    p = _start(storage_url, tmp_path, "repeat.after_complete@1")
    wait_for(lambda: _repeats_done(storage_url) >= 1, timeout=300, interval=0.1, alive=[p])
    kill(p)
    assert 1 <= _repeats_done(storage_url) <= 2, output(p)[-3000:]
    # Trials finished before each kill are kept.
    after = finished(storage_url)
    assert all(after[f] >= mid[f] for f in mid)

    # 3. Resume to the end: exact budgets, each repeat once.
    proc = rnntune(*_args(storage_url, tmp_path), cwd=tmp_path, timeout=400)
    assert "resuming experiment 'default'" in proc.stdout
    assert_exact(storage_url, budget=4, repeats=3)
