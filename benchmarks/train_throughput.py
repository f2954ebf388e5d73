"""Training throughput of rnntune's epoch loop against the common DataLoader loop.

Both loops train the same model (same initial weights) with Adam and cross-entropy on the same
data, in the same run, for every family x hidden size x batch size:

* rnntune: :func:`rnntune.train.train_epoch`, as :func:`rnntune.train.fit` runs it: tensors on
  the device once, one permutation gather per epoch, contiguous slices, fused Adam, the loss
  summed on the device (one sync per epoch);
* baseline: ``DataLoader(TensorDataset(X, y), batch_size, shuffle=True)``, each batch moved to
  the device, ``torch.optim.Adam`` defaults, ``loss.item()`` per batch.

Each cell is timed ``--repeats`` times, alternating which loop goes first, and the best time
of each loop is kept (the least disturbed by other processes). With one CPU thread the clock
is this process's CPU time (``--clock``), which other processes on a shared machine inflate
far less than wall time. ``--same-optimizer`` gives the baseline rnntune's fused Adam too,
isolating the loop itself.

    python benchmarks/train_throughput.py --quick
    python benchmarks/train_throughput.py --threads 2 --check
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from rnntune.data import make_synthetic
from rnntune.models import FAMILIES, ModelConfig, RecurrentClassifier
from rnntune.train import make_optimizer, resolve_device, set_threads, train_epoch

LEARNING_RATE = 1e-3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rnntune_loop(
    model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int
) -> Callable[[int], None]:
    """``run(epochs)`` for rnntune's loop; ``X``, ``y`` already on the model's device."""
    optimizer = make_optimizer(model, LEARNING_RATE)
    generator = torch.Generator().manual_seed(0)

    def run(epochs: int) -> None:
        for _ in range(epochs):
            float(train_epoch(model, optimizer, X, y, batch_size, generator))  # fit's one sync

    return run


def baseline_loop(
    model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int, same_optimizer: bool
) -> Callable[[int], None]:
    """``run(epochs)`` for the usual DataLoader loop: data on the CPU, each batch moved."""
    device = next(model.parameters()).device
    loader = DataLoader(TensorDataset(X, y), batch_size=batch_size, shuffle=True)
    optimizer = (
        make_optimizer(model, LEARNING_RATE)
        if same_optimizer
        else torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    )
    loss_fn = torch.nn.CrossEntropyLoss()

    def run(epochs: int) -> None:
        for _ in range(epochs):
            model.train()
            running = 0.0
            for xb, yb in loader:
                xb, yb = xb.to(device), yb.to(device)
                optimizer.zero_grad()
                loss = loss_fn(model(xb), yb)
                loss.backward()
                optimizer.step()
                running += loss.item() * len(yb)

    return run


def _loops(
    config: ModelConfig,
    state: dict[str, torch.Tensor],
    X: torch.Tensor,
    y: torch.Tensor,
    batch: int,
    device: torch.device,
    same_optimizer: bool,
) -> dict[str, Callable[[int], None]]:
    """Both loops, each with its own copy of the model, from the same initial weights."""
    models = []
    for _ in range(2):
        model = RecurrentClassifier(config).to(device)
        model.load_state_dict(state)
        models.append(model)
    return {
        "rnntune": rnntune_loop(models[0], X.to(device), y.to(device), batch),
        "baseline": baseline_loop(models[1], X, y, batch, same_optimizer),
    }


def measure(
    cell: str,
    hidden: int,
    batch: int,
    X: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    epochs: int,
    repeats: int,
    same_optimizer: bool,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[float, float]:
    """Best sequences/second of (rnntune, baseline) for one cell, timed by ``clock``."""
    torch.manual_seed(0)
    config = ModelConfig(cell=cell, input_size=X.shape[2], hidden_size=hidden)
    state = RecurrentClassifier(config).state_dict()
    # A few batches of each first: one-off costs (kernel selection, allocator) stay untimed.
    for run in _loops(
        config, state, X[: 8 * batch], y[: 8 * batch], batch, device, same_optimizer
    ).values():
        run(1)
    runs = _loops(config, state, X, y, batch, device, same_optimizer)
    best = {"rnntune": math.inf, "baseline": math.inf}
    for r in range(repeats):
        for name in ("rnntune", "baseline") if r % 2 == 0 else ("baseline", "rnntune"):
            _sync(device)
            start = clock()
            runs[name](epochs)
            _sync(device)
            best[name] = min(best[name], clock() - start)
    n = X.shape[0] * epochs
    return n / best["rnntune"], n / best["baseline"]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=20_000, help="training sequences")
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--features", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timed run")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs per loop, best kept [3; quick: 5]"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--hidden", type=_ints, default=[16, 32, 64])
    parser.add_argument("--batch", type=_ints, default=[16, 32, 64])
    parser.add_argument(
        "--same-optimizer",
        action="store_true",
        help="give the baseline rnntune's fused Adam too (compare the loops alone)",
    )
    parser.add_argument(
        "--clock",
        choices=("auto", "wall", "cpu"),
        default="auto",
        help="cpu: this process's CPU time, which other processes on a shared machine do not "
        "inflate (auto: cpu for one CPU thread, else wall)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="n=2000 (short epochs, more repeats): ~1-2 min"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if any CPU ratio rnntune/baseline < 1.0"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.n = min(args.n, 2000)
    if args.repeats is None:
        args.repeats = 5 if args.quick else 3

    set_threads(args.threads)
    device = resolve_device(args.device)
    if args.clock == "auto":
        args.clock = "cpu" if device.type == "cpu" and args.threads == 1 else "wall"
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    X_np, y_np = make_synthetic(args.n, args.length, args.features, seed=0)
    X_np = (X_np - X_np.mean(axis=(0, 1))) / X_np.std(axis=(0, 1))
    X, y = torch.from_numpy(np.ascontiguousarray(X_np)), torch.from_numpy(y_np)
    families = [f.strip() for f in args.families.split(",") if f.strip()]

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    print(
        f"device: {device} ({name or 'unknown CPU'}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}); torch {torch.__version__}, {torch.get_num_threads()} "
        f"thread(s); n={args.n} length={args.length} features={args.features} "
        f"epochs={args.epochs} repeats={args.repeats} clock={args.clock}"
    )
    print(
        "rnntune: train_epoch (device tensors, permutation gather, slices, fused Adam); "
        "baseline: DataLoader(shuffle=True) + "
        + ("the same fused Adam" if args.same_optimizer else "torch.optim.Adam defaults")
    )
    header = f"{'family':<7}{'hidden':>7}{'batch':>6}{'rnntune seq/s':>15}{'baseline seq/s':>16}"
    print(header + f"{'ratio':>8}")
    print("-" * (len(header) + 8))
    ratios: dict[str, list[float]] = {f: [] for f in families}
    started = time.perf_counter()
    for cell in families:
        for hidden in args.hidden:
            for batch in args.batch:
                ours, theirs = measure(
                    cell,
                    hidden,
                    batch,
                    X,
                    y,
                    device,
                    args.epochs,
                    args.repeats,
                    args.same_optimizer,
                    clock,
                )
                ratios[cell].append(ours / theirs)
                print(
                    f"{cell:<7}{hidden:>7}{batch:>6}{ours:>15,.0f}{theirs:>16,.0f}"
                    f"{ours / theirs:>8.2f}",
                    flush=True,
                )
    print("-" * (len(header) + 8))
    for cell, values in ratios.items():
        gmean = math.exp(sum(map(math.log, values)) / len(values))
        print(f"{cell:<7} ratio geometric mean {gmean:.2f} (min {min(values):.2f})")
    print(f"total {time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.1f}")

    worst = min(min(v) for v in ratios.values())
    if args.check and device.type == "cpu" and worst < 1.0:
        print(f"check failed: rnntune is slower than the baseline in a cell (ratio {worst:.2f})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
