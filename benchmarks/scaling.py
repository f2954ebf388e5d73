"""Trials per minute with 1 and with 2 workers, and storage time as a share of trial time,
on PostgreSQL and SQLite side by side, measured in one run.

Every trial costs the same (a one-point search space, no pruning, no early stopping), so the
throughput ratio measures the workers, not the sampler. Throughput is counted between the first
trial's start and the last trial's end (process start-up is excluded). Storage share: the time
a worker spends per trial outside the training loop (claim under the lock, per-epoch reports,
pruning checks, tell), as reported by each worker on exit.

    python benchmarks/scaling.py [--trials 8] [--epochs 3] [--n 3000]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import optuna  # noqa: E402
from _common import fresh_postgres, fresh_sqlite  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from rnntune.storage import StorageRole, open_optuna_storage  # noqa: E402

SPACE = """
[experiment]
families = ["gru", "lstm"]
patience = 1000
[pruner]
type = "none"
[search_space.hidden_size]
type = "categorical"
choices = [32]
[search_space.learning_rate]
type = "categorical"
choices = [0.003]
[search_space.batch_size]
type = "categorical"
choices = [32]
"""


def run_case(url: str, workers: int, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    cfg = tmp / "space.toml"
    cfg.write_text(SPACE)
    env = {**os.environ, "RNNTUNE_LOG_LEVEL": "WARNING"}
    base = [sys.executable, "-m", "rnntune"]
    subprocess.run(
        [
            *base,
            "init",
            "--storage",
            url,
            "--config",
            str(cfg),
            "--trials",
            str(args.trials),
            "--repeats",
            "1",
            "--max-epochs",
            str(args.epochs),
            "--data",
            f"synthetic:n={args.n},length={args.length},features=4,seed=0",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    procs = [
        subprocess.Popen(
            [
                *base,
                "worker",
                "--storage",
                url,
                "--threads",
                "1",
                "--artifacts",
                str(tmp / "artifacts"),
            ],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    shares = []
    for p in procs:
        _, err = p.communicate(timeout=3600)
        if p.returncode != 0:
            raise SystemExit(f"worker failed:\n{err[-3000:]}")
        m = re.search(r"storage ([0-9.]+)% of trial time", err)
        if m:
            shares.append(float(m.group(1)))
    st = open_optuna_storage(url, StorageRole.WORK)
    trials = []
    for family in ("gru", "lstm"):
        study = optuna.load_study(study_name=f"default.{family}", storage=st)
        trials += study.get_trials(states=(TrialState.COMPLETE,))
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    minutes = (end - start).total_seconds() / 60
    return {
        "trials": len(trials),
        "per_min": len(trials) / minutes,
        "storage_share": sum(shares) / len(shares) if shares else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8, help="budget per family (2 families)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--length", type=int, default=50)
    args = ap.parse_args()
    print(
        f"cores: {os.cpu_count()}; data n={args.n} length={args.length}; "
        f"{args.trials} trials x 2 families x {args.epochs} epochs; 1 torch thread per worker"
    )
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for backend in ("postgresql", "sqlite"):
            res = {}
            for workers in (1, 2):
                ctx = fresh_postgres() if backend == "postgresql" else fresh_sqlite(tmp)
                with ctx as url:
                    t0 = time.monotonic()
                    res[workers] = run_case(url, workers, args, tmp)
                    res[workers]["wall"] = time.monotonic() - t0
            rows.append((backend, res))
    print(
        f"\n{'backend':<11}{'workers':>8}{'trials':>8}{'trials/min':>12}{'speed-up':>10}"
        f"{'storage % of trial':>20}{'storage ms/trial':>18}"
    )
    for backend, res in rows:
        for w in (1, 2):
            r = res[w]
            speed = r["per_min"] / res[1]["per_min"]
            trial_s = 60 * w / r["per_min"]  # mean wall time of one trial on one worker
            print(
                f"{backend:<11}{w:>8}{r['trials']:>8}{r['per_min']:>12.2f}{speed:>9.2f}x"
                f"{r['storage_share']:>19.2f}%{10 * r['storage_share'] * trial_s:>18.0f}"
            )
    print(
        "\ntargets: speed-up with 2 workers >= 1.9x on 2 cores; storage < 1% of trial time\n"
        "(the storage cost per trial is roughly fixed: the share shrinks as trials get longer)"
    )


if __name__ == "__main__":
    main()
