"""Helpers for the multi-process tests: start real workers, kill them, read exact counts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from rnntune import evaluation
from rnntune.experiment import find_or_raise_by_name
from rnntune.storage import open_optuna_storage

FAST = ["--heartbeat-interval", "1", "--grace-period", "4"]


_logs: dict[int, Path] = {}


def start_worker(
    url: str, cwd: Path, *extra: str, command: str = "worker", experiment: str = "default"
) -> subprocess.Popen[str]:
    """A real worker process; its output goes to a file (a full pipe would block it)."""
    env = {**os.environ, "RNNTUNE_LOG_LEVEL": "INFO"}
    log = cwd / f"{command}-{len(_logs)}-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rnntune",
                command,
                "--storage",
                url,
                "--experiment",
                experiment,
                "--artifacts",
                str(cwd / "artifacts"),
                "--threads",
                "1",
                *FAST,
                *extra,
            ],
            cwd=cwd,
            env=env,
            text=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _logs[p.pid] = log
    return p


def output(p: subprocess.Popen[str]) -> str:
    return _logs[p.pid].read_text()


def kill(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)


def wait_all(procs: list[subprocess.Popen[str]], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                kill(q)
            raise AssertionError(
                "workers did not finish in time:\n"
                + "\n=====\n".join(output(q)[-2000:] for q in procs)
            ) from None
    return [output(p) for p in procs]


def trials(url: str, family: str, experiment: str = "default") -> list[optuna.trial.FrozenTrial]:
    st = open_optuna_storage(url, read_only=True, reader=True)
    return optuna.load_study(study_name=f"{experiment}.{family}", storage=st).get_trials()


def finished(url: str, experiment: str = "default") -> dict[str, int]:
    return {
        f: sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials(url, f))
        for f in ("rnn", "gru", "lstm")
    }


def wait_for(pred: Any, timeout: float, interval: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met in {timeout}s")


def assert_exact(url: str, budget: int, repeats: int, experiment: str = "default") -> dict:
    """Exactly ``budget`` finished trials per family, nothing live left, each repeat once."""
    st = open_optuna_storage(url, read_only=True, reader=True)
    exp = find_or_raise_by_name(st.engine, experiment)
    out: dict[str, Any] = {}
    for family in exp.config.families:
        ts = trials(url, family, experiment)
        states = Counter(t.state for t in ts)
        assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == budget, (family, states)
        assert states[TrialState.RUNNING] == 0 and states[TrialState.WAITING] == 0, states
        # No two trials share parameters unless one is a retry of the other.
        firsts = [t for t in ts if "failed_trial" not in t.system_attrs]
        keys = [tuple(sorted(t.params.items())) for t in firsts]
        assert len(keys) == len(set(keys)), f"{family}: duplicate parameters sampled"
        out[family] = ts
    runs = evaluation.runs(st.engine, exp)
    seen = Counter((r.family, r.repeat) for r in runs)
    expected = {(f, r) for f in exp.config.families for r in range(repeats)}
    assert set(seen) == expected and all(n == 1 for n in seen.values())
    assert all(r.status == "done" for r in runs), [(r.family, r.repeat, r.status) for r in runs]
    seeds = {(r.repeat, r.seed) for r in runs}
    assert len(seeds) == repeats, "repeat i must share its seed across families"
    out["runs"] = runs
    return out
