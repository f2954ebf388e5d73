"""What the early-stopping rule costs and buys: epochs trained and best validation metric under
the rule (rnntune.stopping) against the previous one (patience 3 on the objective alone).

Each configuration is trained once under the rule; the previous rule's stop is read off the same
history (training is deterministic and the previous rule never stops later), so both columns
come from one run. Example:

    python benchmarks/early_stopping.py                 # default synthetic data, 10 epochs
    python benchmarks/early_stopping.py --data synthetic:n=5000,length=500,features=1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from rnntune.data import load_dataset, split_dataset
from rnntune.models import FAMILIES, ModelConfig
from rnntune.train import TrainConfig, fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers import previous_stopping_rule  # noqa: E402

# (learning rate, batch size, hidden size): a fast learner and a slow starter from the
# default search space.
CONFIGS = ((3e-3, 32, 32), (1e-3, 64, 16))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--max-epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    s = split_dataset(load_dataset(args.data), seed=0)
    print(f"{args.data}: train {s.X_train.shape}, val {s.X_val.shape}; 1 thread")
    head = f"{'family':<6} {'lr':>7} {'batch':>5} {'hidden':>6}"
    print(f"{head}  epochs now/before  best val now/before")
    totals = [0, 0]
    for family in FAMILIES:
        for seed, (lr, batch, hidden) in enumerate(CONFIGS):
            t0 = time.perf_counter()
            model = ModelConfig(family, s.X_train.shape[2], hidden)
            config = TrainConfig(lr, batch, args.max_epochs, patience=3, seed=seed)
            result = fit(model, config, *s.fit_parts())
            before, best_before = previous_stopping_rule(result.history)
            totals[0] += result.epochs_trained
            totals[1] += before
            print(
                f"{family:<6} {lr:>7g} {batch:>5} {hidden:>6}  {result.epochs_trained:>6} / "
                f"{before:<6}      {result.best_val_metric:.4f} / {best_before:.4f}"
                f"   ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    print(f"epochs in all: {totals[0]} now, {totals[1]} before (ratio {totals[0] / totals[1]:.2f})")


if __name__ == "__main__":
    main()
