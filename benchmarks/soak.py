"""Soak: one study on PostgreSQL with 4 workers, while a random worker is SIGKILLed every
10-40 s (and replaced) and PostgreSQL is restarted every few minutes; then the invariants of
the fault matrix (tests/test_faults.py) are checked, and the same study is run once more
undisturbed, in the same run, for the wall-time ratio.

It starts its OWN throwaway PostgreSQL cluster (initdb + pg_ctl from RNNTUNE_PG_BIN, default
/usr/lib/postgresql/15/bin, on a free port in a temporary directory; as root, run as user
postgres), never a shared server, and removes it at the end.

    python benchmarks/soak.py --minutes 30        # the soak (about 1 h: both runs)
    python benchmarks/soak.py --minutes 5         # a short proof that it works

The study is sized from a short calibration so that the undisturbed run takes about
``--minutes``; the disturbed run takes longer. Not in CI: it takes as long as it says.
Prints: kills survived, restarts survived, results lost, duplicates, wall time of each run and
their ratio. Exit status 1 when an invariant does not hold.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from optuna.trial import TrialState  # noqa: E402

from tests.helpers import (  # noqa: E402
    FAMILIES,
    PgCluster,
    assert_exact,
    check_retries,
    kill,
    output,
    reap_all,
    spawn,
    trials,
)
from tests.helpers import (  # noqa: E402
    rnntune as cli,
)

DATA = "synthetic:n=1200,length=40,features=2,seed=11"
EPOCHS, REPEATS = 4, 3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rnntune(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        return cli(*args, cwd=cwd, timeout=600, check=check)
    except AssertionError as e:  # the CLI failed: its output, without a traceback
        raise SystemExit(str(e)) from None


def _last_line(p: Any) -> str:
    lines = output(p).strip().splitlines()
    return lines[-1] if lines else ""


def calibrate(data: str, epochs: int) -> float:
    """Seconds of one training epoch of a middling configuration (GRU, hidden 32, batch 32)."""
    import torch

    from rnntune.config import build
    from rnntune.experiment import load_data
    from rnntune.models import ModelConfig
    from rnntune.train import TrainConfig, fit, set_threads, warm_up

    set_threads(1)
    warm_up()
    splits = load_data(build({"data": data})).splits
    cfg = ModelConfig(cell="gru", input_size=splits.X_train.shape[2], hidden_size=32)
    t0 = time.perf_counter()
    fit(cfg, TrainConfig(learning_rate=1e-3, batch_size=32, max_epochs=epochs, patience=epochs,
                         seed=0, device="cpu"), *splits.fit_parts())  # fmt: skip
    del torch
    return (time.perf_counter() - t0) / epochs


def size_study(minutes: float, workers: int, data: str) -> int:
    """Trials per family for an undisturbed run of about ``minutes`` with ``workers``."""
    per_epoch = calibrate(data, 2)
    parallel = max(1, min(workers, os.cpu_count() or 1))
    # Pruning and early stopping cut about a third of the epochs of a trial; repeats never prune.
    budget_s = minutes * 60 * parallel / per_epoch
    per_family = budget_s / len(FAMILIES) - REPEATS * EPOCHS
    trials = max(4, int(per_family / (EPOCHS * 0.7)))
    log(f"calibration: {per_epoch:.2f}s per epoch on 1 thread; {parallel} worker(s) in parallel "
        f"-> {trials} trials per family")  # fmt: skip
    return trials


class Run:
    """One run of the study on its own database of the cluster."""

    def __init__(self, cluster: PgCluster, root: Path, name: str, trials: int, workers: int,
                 heartbeat: int, grace: int) -> None:  # fmt: skip
        self.cluster, self.trials, self.workers = cluster, trials, workers
        self.cwd = root / name
        self.cwd.mkdir(parents=True)
        self.url = cluster.create_database(name)
        self.policy = ["--heartbeat-interval", str(heartbeat), "--grace-period", str(grace)]
        rnntune("init", "--storage", self.url, "--data", DATA, "--trials", str(trials),
                "--repeats", str(REPEATS), "--max-epochs", str(EPOCHS), *self.policy,
                cwd=self.cwd)  # fmt: skip
        self.kills = self.restarts = 0
        self.seconds = 0.0
        self.failed: list[str] = []  # last lines of workers that exited non-zero

    def worker(self) -> Any:
        return spawn(
            [sys.executable, "-m", "rnntune", "worker", "--storage", self.url, "--artifacts",
             str(self.cwd / "artifacts"), "--threads", "1", *self.policy],
            cwd=self.cwd,
            env={"RNNTUNE_LOG_LEVEL": "INFO"},
            log=self.cwd / f"worker-{time.monotonic_ns()}.log",
        )  # fmt: skip

    def go(self, kill_every: tuple[float, float] | None, restart_every: float | None,
           rng: random.Random, limit_s: float) -> None:  # fmt: skip
        t0 = time.monotonic()
        live = [self.worker() for _ in range(self.workers)]
        next_kill = t0 + rng.uniform(*kill_every) if kill_every else float("inf")
        next_restart = t0 + restart_every * rng.uniform(0.8, 1.2) if restart_every else float("inf")
        finishing = False
        while live:
            now = time.monotonic()
            if now - t0 > limit_s:
                raise SystemExit(f"the study did not finish in {limit_s:.0f}s: a hang")
            for p in [p for p in live if p.poll() is not None]:
                live.remove(p)
                if p.returncode == 0:
                    finishing = True  # a worker found nothing left to do: stop disturbing
                    log(f"a worker finished: {_last_line(p)}")
                elif p.returncode != -signal.SIGKILL:
                    # A worker started while the server restarts exits 1 with one Error line
                    # (an orchestrator restarts it); so does this loop.
                    self.failed.append(_last_line(p)[:300])
                    log(f"a worker exited {p.returncode}: {self.failed[-1]}")
                    live.append(self.worker())
            if not finishing and now >= next_kill and live:
                victim = rng.choice(live)
                kill(victim)
                live.remove(victim)
                live.append(self.worker())
                self.kills += 1
                next_kill = now + rng.uniform(*kill_every)  # type: ignore[misc]
            if not finishing and now >= next_restart:
                mode = "immediate" if self.restarts % 2 else "fast"
                log(f"restarting PostgreSQL ({mode}); {self.kills} kills so far")
                self.cluster.restart(mode)
                self.restarts += 1
                next_restart = time.monotonic() + restart_every * rng.uniform(0.8, 1.2)  # type: ignore[operator]
            time.sleep(0.5)
        self.seconds = time.monotonic() - t0

    def invariants(self) -> dict[str, Any]:
        """Counts of what the fault matrix forbids; each must be 0."""
        out: dict[str, Any] = {"lost": 0, "duplicates": 0, "problems": []}
        for f in FAMILIES:
            ts = trials(self.url, f)
            states = Counter(t.state for t in ts)
            n = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
            out["lost"] += max(0, self.trials - n)
            out["duplicates"] += max(0, n - self.trials)
        from rnntune import state
        from rnntune.experiment import find_or_raise_by_name
        from rnntune.storage import StorageRole, open_optuna_storage

        st = open_optuna_storage(self.url, StorageRole.READ)
        try:
            exp = find_or_raise_by_name(st.engine, "default")
            runs = state.eval_runs(st.engine, exp)
        finally:
            st.engine.dispose()
        seen = Counter((r.family, r.repeat) for r in runs if r.status == "done")
        out["lost"] += sum(1 for f in FAMILIES for r in range(REPEATS) if not seen[(f, r)])
        out["duplicates"] += sum(n - 1 for n in seen.values() if n > 1)
        out["reclaimed_repeats"] = sum(r.reclaims for r in runs)
        try:
            res = assert_exact(self.url, budget=self.trials, repeats=REPEATS)
            resumed = check_retries(res, dropped_ok=True)
            out["retries"] = len(resumed)
            out["resumed_from_a_checkpoint"] = sum(1 for _, start in resumed if start > 0)
        except AssertionError as e:
            out["problems"].append(f"invariant: {str(e).splitlines()[0]}")
        status = rnntune("status", "--storage", self.url, cwd=self.cwd).stdout
        if not status.startswith("experiment default: done"):
            out["problems"].append(f"status: {status.splitlines()[0]}")
        report = json.loads(rnntune("report", "--storage", self.url, "--format", "json",
                                    cwd=self.cwd).stdout)  # fmt: skip
        if not report["complete"] or report["missing"]:
            out["problems"].append(f"report: missing {report['missing']}")
        for f in FAMILIES:
            fin = (
                report["families"][f]["trials"]["complete"]
                + report["families"][f]["trials"]["pruned"]
            )
            if fin != self.trials:
                out["problems"].append(f"report: {f} has {fin} finished trials")
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="undisturbed study length")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument(
        "--kill-every", type=float, nargs=2, default=(10.0, 40.0), metavar=("MIN", "MAX")
    )
    ap.add_argument("--restart-every", type=float, default=180.0, help="seconds, +-20%%")
    ap.add_argument("--trials", type=int, help="trials per family [default: sized to --minutes]")
    ap.add_argument("--heartbeat-interval", type=int, default=5)
    ap.add_argument("--grace-period", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    why = PgCluster.available()
    if why:
        print(f"Error: cannot start a throwaway PostgreSQL cluster: {why}", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    trials = args.trials or size_study(args.minutes, args.workers, DATA)
    import tempfile

    # SIGTERM (or Ctrl-C) runs the `finally` below: workers reaped, the throwaway cluster stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runs = Path(tempfile.mkdtemp(prefix="rnntune-soak-"))  # workers' logs, kept
    cluster = PgCluster().start()
    log(f"throwaway PostgreSQL on port {cluster.port} in {cluster.root}")
    limit = max(3600.0, args.minutes * 60 * 6)
    keep = False
    try:
        storm = Run(cluster, runs, "storm", trials, args.workers,
                    args.heartbeat_interval, args.grace_period)  # fmt: skip
        log(f"disturbed run: {trials} trials x {len(FAMILIES)} families, {REPEATS} repeats, "
            f"{EPOCHS} epochs, {args.workers} workers; a kill every {args.kill_every[0]:.0f}-"
            f"{args.kill_every[1]:.0f}s, a restart every ~{args.restart_every:.0f}s")  # fmt: skip
        storm.go(tuple(args.kill_every), args.restart_every, rng, limit)
        log(f"disturbed run done in {storm.seconds:.0f}s")
        calm = Run(cluster, runs, "calm", trials, args.workers,
                   args.heartbeat_interval, args.grace_period)  # fmt: skip
        log("undisturbed run of the same study")
        calm.go(None, None, rng, limit)
        log(f"undisturbed run done in {calm.seconds:.0f}s")
        found = storm.invariants()
        calm_found = calm.invariants()
        # A violated invariant keeps the cluster's files, so the trials behind it can be read.
        keep = bool(found["problems"] or calm_found["problems"] or found["lost"]
                    or found["duplicates"])  # fmt: skip
    finally:
        reap_all()
        cluster.stop(keep=keep)
    if keep:
        print(f"cluster kept for a post-mortem: {cluster.root} (pg_ctl -D {cluster.data} start)")
    print()
    print(f"study: {trials} trials x {len(FAMILIES)} families, {REPEATS} repeats, {EPOCHS} epochs, "
          f"{args.workers} workers, data {DATA}")  # fmt: skip
    print(f"kills survived:       {storm.kills}")
    print(f"restarts survived:    {storm.restarts} (PostgreSQL, fast and immediate in turn)")
    print(f"results lost:         {found['lost']}")
    print(f"duplicates:           {found['duplicates']}")
    resumed, retries = found.get("resumed_from_a_checkpoint", "?"), found.get("retries", "?")
    print(f"retries resumed from a checkpoint: {resumed} of {retries}; repeats reclaimed: "
          f"{found['reclaimed_repeats']}")  # fmt: skip
    print(f"workers that exited 1: {len(storm.failed)} (started while the server restarted)")
    for line in sorted(set(storm.failed))[:3]:
        print(f"  {line}")
    print(f"wall time disturbed:  {storm.seconds:.0f}s")
    print(f"wall time undisturbed: {calm.seconds:.0f}s")
    print(f"ratio disturbed/undisturbed: {storm.seconds / calm.seconds:.2f}")
    problems = found["problems"] + [f"undisturbed {p}" for p in calm_found["problems"]]
    if calm_found["lost"] or calm_found["duplicates"]:
        problems.append(
            f"undisturbed run: lost {calm_found['lost']}, dup {calm_found['duplicates']}"
        )
    for p in problems:
        print(f"PROBLEM: {p}")
    print(f"logs: {runs}")
    bad = problems or found["lost"] or found["duplicates"]
    print("invariants: " + ("VIOLATED" if bad else "all hold"))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
