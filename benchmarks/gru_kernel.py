"""Training speed of rnntune's CPU GRU/RNN kernel (rnntune.fastrnn) against torch's nn.GRU/nn.RNN.

Both sides train the project's own model (RecurrentClassifier: the recurrent layer, a linear
head on the last step) with the project's own epoch loop (``rnntune.train.train_epoch``: fused
Adam, cross-entropy) from the same initial weights on the same data, in the same run; the only
difference is the recurrent layer: ``FastGRU``/``FastRNN`` (what rnntune uses) or a plain
``nn.GRU``/``nn.RNN`` loaded with the same state dict. Every family x shape x hidden x batch
cell is timed ``--repeats`` times, alternating which side goes first; each repeat gives a
ratio of the two, and the table shows the medians and the spread of the ratio (the machine is
shared: the spread says how noisy the run was). The clock is this process's CPU time, which
other processes inflate far less than wall time (1 thread).

Shapes: ``ecg`` is 140 steps x 1 channel (a heartbeat), ``synthetic`` the project's default
synthetic data (50 steps x 4 features).

    python benchmarks/gru_kernel.py            # about 5 minutes of CPU time
    python benchmarks/gru_kernel.py --quick    # fewer sequences and repeats, ~1-2 minutes
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from rnntune.data import SYNTHETIC_DEFAULTS, make_synthetic
from rnntune.models import ModelConfig, RecurrentClassifier
from rnntune.train import make_optimizer, set_threads, train_epoch

SHAPES = {
    "ecg": (140, 1),
    "synthetic": (int(SYNTHETIC_DEFAULTS["length"]), int(SYNTHETIC_DEFAULTS["features"])),
}
TORCH_LAYERS = {"gru": nn.GRU, "rnn": nn.RNN}


def _data(n: int, length: int, features: int) -> tuple[torch.Tensor, torch.Tensor]:
    X, y = make_synthetic(n, length, features, seed=0)
    X = (X - X.mean(axis=(0, 1))) / X.std(axis=(0, 1))
    return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)), torch.from_numpy(y)


def _models(config: ModelConfig) -> dict[str, RecurrentClassifier]:
    """rnntune's model and the same model with torch's layer, from the same weights."""
    torch.manual_seed(0)
    fast = RecurrentClassifier(config)
    plain = RecurrentClassifier(config)
    rnn = fast.rnn
    plain.rnn = TORCH_LAYERS[config.cell](
        rnn.input_size, rnn.hidden_size, num_layers=rnn.num_layers, batch_first=True
    )
    plain.load_state_dict(fast.state_dict())
    assert type(fast.rnn) is not type(plain.rnn)
    return {"fast": fast, "torch": plain}


def _loop(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch: int) -> Callable[[], None]:
    optimizer = make_optimizer(model, 1e-3)
    generator = torch.Generator().manual_seed(0)

    def run() -> None:
        float(train_epoch(model, optimizer, X, y, batch, generator))

    return run


def measure(
    cell: str, hidden: int, batch: int, X: torch.Tensor, y: torch.Tensor, repeats: int
) -> tuple[float, float, list[float]]:
    """Median sequences/s of (fast, torch) and the per-repeat ratios fast/torch."""
    config = ModelConfig(cell=cell, input_size=X.shape[2], hidden_size=hidden)
    models = _models(config)
    warm = {k: _loop(m, X[: 4 * batch], y[: 4 * batch], batch) for k, m in models.items()}
    for run in warm.values():
        run()  # one-off costs (allocator, kernel choice, workspaces) stay untimed
    loops = {k: _loop(m, X, y, batch) for k, m in models.items()}
    seconds: dict[str, list[float]] = {"fast": [], "torch": []}
    for r in range(repeats):
        for name in ("fast", "torch") if r % 2 == 0 else ("torch", "fast"):
            start = time.process_time()
            loops[name]()
            seconds[name].append(time.process_time() - start)
    n = X.shape[0]
    ratios = [t / f for f, t in zip(seconds["fast"], seconds["torch"], strict=True)]
    return n / statistics.median(seconds["fast"]), n / statistics.median(seconds["torch"]), ratios


def _gmean(values: list[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else math.nan


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _words(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--n", type=int, default=512, help="training sequences per timed epoch")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per side and cell")
    parser.add_argument("--families", type=_words, default=list(TORCH_LAYERS))
    parser.add_argument("--shapes", type=_words, default=list(SHAPES))
    parser.add_argument("--hidden", type=_ints, default=[16, 32, 64])
    parser.add_argument("--batch", type=_ints, default=[16, 32, 64])
    parser.add_argument("--quick", action="store_true", help="--n 256 --repeats 3")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.repeats = 256, 3
    for name in args.families:
        if name not in TORCH_LAYERS:
            parser.error(f"unknown family {name!r}; use gru or rnn (torch fuses lstm already)")
    for name in args.shapes:
        if name not in SHAPES:
            parser.error(f"unknown shape {name!r}; use {' or '.join(SHAPES)}")

    set_threads(1)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}; n={args.n} sequences per epoch, "
        f"{args.repeats} repeats, CPU-time clock; ratio = fast / torch sequences per second"
    )
    header = (
        f"{'shape':<10}{'family':<7}{'hidden':>7}{'batch':>6}{'fast seq/s':>12}"
        f"{'torch seq/s':>13}{'ratio':>7}  {'spread':<11}"
    )
    print(header)
    print("-" * len(header))
    results: list[tuple[str, str, int, int, float]] = []
    started = time.perf_counter()
    for shape in args.shapes:
        length, features = SHAPES[shape]
        X, y = _data(args.n, length, features)
        for cell in args.families:
            for hidden in args.hidden:
                for batch in args.batch:
                    fast, plain, ratios = measure(cell, hidden, batch, X, y, args.repeats)
                    ratio = statistics.median(ratios)
                    results.append((shape, cell, hidden, batch, ratio))
                    print(
                        f"{shape:<10}{cell:<7}{hidden:>7}{batch:>6}{fast:>12,.0f}{plain:>13,.0f}"
                        f"{ratio:>7.2f}  {min(ratios):.2f}-{max(ratios):.2f}",
                        flush=True,
                    )
    print("-" * len(header))
    print("geometric mean of the ratio (targets: >= 2.0 at hidden <= 32, >= 1.2 at hidden 64)")
    for shape in args.shapes:
        for cell in args.families:
            small = [r for s, c, h, _, r in results if (s, c) == (shape, cell) and h <= 32]
            large = [r for s, c, h, _, r in results if (s, c) == (shape, cell) and h > 32]
            both = small + large
            print(
                f"  {shape:<10}{cell:<5} hidden<=32 {_gmean(small):.2f}   hidden 64 "
                f"{_gmean(large):.2f}   all {_gmean(both):.2f}"
            )
    print(f"total {time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
