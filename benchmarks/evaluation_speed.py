"""Evaluation-phase speed-up: a family's repeats trained as one ensemble vs one after another.

For each family (and hidden size), the same k repeats (same hyperparameters, seeds 0..k-1) are
trained on the same data twice in this run, on one thread:

* one after another: ``rnntune.train.fit`` per seed, as a worker trains a repeat alone;
* as one ensemble: ``rnntune.train.fit_ensemble`` with the k seeds, as a worker trains a group.

Both use early stopping (so the members stop when their solo runs stop: the test suite checks
that they are the same models), and both are timed in process CPU time, which other processes on
a shared machine inflate far less than wall time (wall time is printed too). The last column
says what a worker does with that family on this device (``ensemble.group_size``).

    python benchmarks/evaluation_speed.py                      # ECG-shaped data, hidden 32
    python benchmarks/evaluation_speed.py --hidden 16 64 --data synthetic:n=4000,length=50
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from rnntune import ensemble
from rnntune.data import load_dataset, split_dataset
from rnntune.models import FAMILIES, ModelConfig
from rnntune.train import TrainConfig, fit, fit_ensemble, predict_proba, set_threads, warm_up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="synthetic:n=2000,length=140,features=1,seed=0")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--hidden", nargs="+", type=int, default=[32])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--learning-rate", type=float, default=3e-3)
    ap.add_argument("--repeats", type=int, default=10, help="k: members / repeats per family")
    ap.add_argument("--max-epochs", type=int, default=4)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    set_threads(args.threads)
    warm_up()
    splits = split_dataset(load_dataset(args.data), seed=0)
    X_train, y_train, X_val, y_val = splits.fit_parts()
    n, T, F = X_train.shape
    print(
        f"evaluation speed: {args.repeats} repeats per family, data {args.data} "
        f"(train {n} x {T} steps x {F}), batch {args.batch_size}, at most {args.max_epochs} "
        f"epochs (patience {args.patience}), {args.threads} thread(s), torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}"
    )
    print(
        f"{'family':<6} {'hidden':>6} {'epochs':>7} {'one by one':>11} {'ensemble':>9} "
        f"{'speed-up':>8} {'wall':>6} {'max |dp|':>9}  worker uses"
    )
    ratios = {}
    for family in args.families:
        for hidden in args.hidden:
            config = ModelConfig(family, F, hidden)
            configs = [
                TrainConfig(
                    args.learning_rate,
                    args.batch_size,
                    args.max_epochs,
                    patience=args.patience,
                    seed=seed,
                )
                for seed in range(args.repeats)
            ]
            c0, w0 = time.process_time(), time.perf_counter()
            solo = [fit(config, tc, X_train, y_train, X_val, y_val) for tc in configs]
            c_solo, w_solo = time.process_time() - c0, time.perf_counter() - w0
            c0, w0 = time.process_time(), time.perf_counter()
            members = fit_ensemble(config, configs, X_train, y_train, X_val, y_val)
            c_ens, w_ens = time.process_time() - c0, time.perf_counter() - w0
            diff = max(
                float(
                    np.abs(
                        predict_proba(a.model, splits.X_test)
                        - predict_proba(b.model, splits.X_test)
                    ).max()
                )
                for a, b in zip(members, solo, strict=True)
            )
            epochs = sum(r.epochs_trained for r in solo)
            k = ensemble.group_size(config, "cpu")
            ratios[(family, hidden)] = c_solo / c_ens
            print(
                f"{family:<6} {hidden:>6} {epochs:>7} {c_solo:>10.1f}s {c_ens:>8.1f}s "
                f"{c_solo / c_ens:>7.2f}x {w_solo / w_ens:>5.2f}x {diff:>9.1e}  "
                + (f"ensembles of {k}" if k > 1 else "one by one")
            )
    used = [
        r if ensemble.group_size(ModelConfig(f, 1, h), "cpu") > 1 else 1.0
        for (f, h), r in ratios.items()
    ]
    print(
        f"geometric mean speed-up, ensemble forced everywhere: "
        f"{statistics.geometric_mean(ratios.values()):.2f}x; "
        f"as workers choose (LSTM one by one on CPU): {statistics.geometric_mean(used):.2f}x"
    )


if __name__ == "__main__":
    main()
