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
    python benchmarks/evaluation_speed.py --ceiling-only        # the batching ceiling alone
    python benchmarks/evaluation_speed.py --one-by-one torch    # against torch's own layers

``--one-by-one torch`` trains the one-after-another side with torch's ``nn.GRU``/``nn.RNN``
instead of ``rnntune.fastrnn``'s layers (same parameters, initialisation and seeds): what a
repeat cost before the fast layer and the ensemble, so the ratio is the evaluation phase's whole
speed-up, not only the ensemble's.

It ends with the *batching ceiling* of this CPU: a step of a recurrent layer is one matrix
product with the recurrent weights and a few elementwise ops on the gates, and batching k
members can at most turn k small ops into one k times larger. For each hidden size it times the
two primitives of a GRU step (the ``(3H, H) @ (H, B)`` product and a sigmoid over the ``(3H, B)``
gates), k times on one member's tensors against once on the k members' stacked tensors. Their
ratio bounds what any batched implementation can gain over a lean one-at-a-time layer whose
steps are those same primitives (as ``rnntune.fastrnn``'s are): where it is near 1, the
one-at-a-time layer is already arithmetic-bound, not overhead-bound.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from torch import nn

from rnntune import ensemble, models
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
    ap.add_argument(
        "--one-by-one",
        choices=["fast", "torch"],
        default="fast",
        help="the layers of the one-after-another side: rnntune's fast ones or torch's own",
    )
    ap.add_argument(
        "--ceiling-only", action="store_true", help="print only the batching ceiling (seconds)"
    )
    args = ap.parse_args()

    set_threads(args.threads)
    warm_up()
    if args.ceiling_only:
        ceiling(args.hidden, args.batch_size, args.repeats)
        return
    splits = split_dataset(load_dataset(args.data), seed=0)
    X_train, y_train, X_val, y_val = splits.fit_parts()
    n, T, F = X_train.shape
    print(
        f"evaluation speed: {args.repeats} repeats per family, data {args.data} "
        f"(train {n} x {T} steps x {F}), batch {args.batch_size}, at most {args.max_epochs} "
        f"epochs (patience {args.patience}), {args.threads} thread(s), torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}; one by one with "
        + ("torch's own GRU/RNN layers" if args.one_by_one == "torch" else "rnntune's fast layers")
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
            with _torch_layers() if args.one_by_one == "torch" else nullcontext():
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
    forced = f"{statistics.geometric_mean(ratios.values()):.2f}x"
    if args.one_by_one == "torch":
        # Where a worker trains one at a time it uses the fast layer, not torch's: that ratio
        # is benchmarks/gru_kernel.py's, not measured here.
        print(f"geometric mean speed-up, ensemble forced everywhere: {forced}")
    else:
        used = [
            r if ensemble.group_size(ModelConfig(f, 1, h), "cpu") > 1 else 1.0
            for (f, h), r in ratios.items()
        ]
        print(
            f"geometric mean speed-up, ensemble forced everywhere: {forced}; "
            f"as workers choose (one by one: 1.0x): {statistics.geometric_mean(used):.2f}x"
        )
    ceiling(args.hidden, args.batch_size, args.repeats)


@contextmanager
def _torch_layers() -> Iterator[None]:
    """Models built meanwhile use torch's nn.GRU / nn.RNN (same parameters and init)."""
    saved = dict(models._CELLS)
    models._CELLS.update(rnn=nn.RNN, gru=nn.GRU)
    try:
        yield
    finally:
        models._CELLS.update(saved)


def _per_call(fn, budget: float = 0.4) -> float:  # noqa: ANN001
    """Median CPU seconds per call of ``fn`` over 5 rounds of about ``budget / 5`` s each."""
    rounds = []
    for _ in range(5):
        n, c0 = 0, time.process_time()
        while time.process_time() - c0 < budget / 5:
            fn()
            n += 1
        rounds.append((time.process_time() - c0) / n)
    return statistics.median(rounds)


def ceiling(hiddens: list[int], batch: int, k: int) -> None:
    """The batching ceiling: k one-member primitives against one k-member primitive."""
    print(
        f"\nbatching ceiling, {k} members, batch {batch}, one GRU step's primitives, "
        "CPU time per call (k one-member calls : one k-member call)"
    )
    print(f"{'hidden':>6} {'matmul k x 1':>13} {'k-batched':>10} {'ratio':>6} "
          f"{'sigmoid k x 1':>14} {'k-batched':>10} {'ratio':>6}")  # fmt: skip
    for H in hiddens:
        w1, h1, o1 = torch.randn(3 * H, H), torch.randn(H, batch), torch.randn(3 * H, batch)
        wk, hk, ok = (
            torch.randn(k, 3 * H, H),
            torch.randn(k, H, batch),
            torch.randn(k, 3 * H, batch),
        )
        g1, gk = torch.randn(3 * H, batch), torch.randn(k, 3 * H, batch)
        mm1 = k * _per_call(lambda o1=o1, w1=w1, h1=h1: torch.addmm(o1, w1, h1, out=o1))
        mmk = _per_call(lambda ok=ok, wk=wk, hk=hk: torch.baddbmm(ok, wk, hk, out=ok))
        sg1 = k * _per_call(lambda g1=g1: torch.sigmoid(g1, out=g1))
        sgk = _per_call(lambda gk=gk: torch.sigmoid(gk, out=gk))
        print(
            f"{H:>6} {mm1 * 1e6:>11.1f}us {mmk * 1e6:>8.1f}us {mm1 / mmk:>5.2f}x "
            f"{sg1 * 1e6:>12.1f}us {sgk * 1e6:>8.1f}us {sg1 / sgk:>5.2f}x"
        )


if __name__ == "__main__":
    main()
