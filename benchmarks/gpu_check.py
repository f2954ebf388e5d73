"""The GPU check of issue 10 (part 4): one run, about 5 minutes, sized for an 8-minute window.

Prints, on the GPU against the CPU (1 thread, rnntune's fast GRU/RNN kernel):

1. training throughput (sequences/s) of every family on the default data shape
   (50 steps x 4 features), rnntune's own epoch loop (``train_epoch``);
2. the speed-up of training a family's repeats as one vectorised ensemble on the GPU: the
   project's ensemble (``rnntune.ensemble``) when it is installed, else independent models
   batched with ``torch.func.stack_module_state`` + ``vmap`` (labelled as such);
3. how many concurrent workers it takes to fill the GPU (aggregate throughput of 1, 2, 4, 8
   processes training at once);
4. a projected wall time for the seed-scale study (``synthetic:n=170000``, 30 trials per
   family, 10 epochs, 10 repeats) from the measured slice: every (hidden, batch) cell of the
   default search space timed on the GPU, no pruning or early stopping assumed (an upper
   bound), divided by the measured concurrency gain.

Without a CUDA GPU it runs the CPU parts on a small slice and says that the GPU parts were
skipped, so the script is exercised everywhere.

    bash benchmarks/gpu_check.sh            # what a GPU machine runs (time-limited)
    python benchmarks/gpu_check.py --quick  # the same, smaller slices
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from rnntune.data import SYNTHETIC_DEFAULTS, make_synthetic
from rnntune.models import FAMILIES, ModelConfig, RecurrentClassifier
from rnntune.train import make_optimizer, set_threads, train_epoch

LENGTH, FEATURES = int(SYNTHETIC_DEFAULTS["length"]), int(SYNTHETIC_DEFAULTS["features"])
# The seed-scale study: synthetic:n=170000 split 70/15/15; the default search space.
STUDY_N, TRIALS, EPOCHS, REPEATS = 170_000, 30, 10, 10
TRAIN_N, VAL_N, TEST_N = int(STUDY_N * 0.70), int(STUDY_N * 0.15), int(STUDY_N * 0.15)
HIDDEN, BATCH = (16, 32, 64), (16, 32, 64)


def _data(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    X, y = make_synthetic(n, LENGTH, FEATURES, seed=0)
    X = (X - X.mean(axis=(0, 1))) / X.std(axis=(0, 1))
    return (
        torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device),
        torch.from_numpy(y).to(device),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rate(cell: str, hidden: int, batch: int, X: torch.Tensor, y: torch.Tensor) -> float:
    """Training sequences/s of one epoch of rnntune's loop over ``X`` (after a warm-up)."""
    device = X.device
    torch.manual_seed(0)
    model = RecurrentClassifier(ModelConfig(cell, FEATURES, hidden)).to(device)
    optimizer = make_optimizer(model, 1e-3)
    gen = torch.Generator().manual_seed(0)
    float(train_epoch(model, optimizer, X[: 8 * batch], y[: 8 * batch], batch, gen))
    _sync(device)
    start = time.perf_counter()
    float(train_epoch(model, optimizer, X, y, batch, gen))
    _sync(device)
    return X.shape[0] / (time.perf_counter() - start)


def eval_rate(cell: str, hidden: int, X: torch.Tensor) -> float:
    """Validation sequences/s (inference in batches of 4096, as ``fit`` does)."""
    torch.manual_seed(0)
    model = RecurrentClassifier(ModelConfig(cell, FEATURES, hidden)).to(X.device).eval()
    with torch.inference_mode():
        model(X[:64])
        _sync(X.device)
        start = time.perf_counter()
        for xb in X.split(4096):
            torch.softmax(model(xb), -1)
        _sync(X.device)
    return X.shape[0] / (time.perf_counter() - start)


# --------------------------------------------------------------------------------------------
# Repeats as one ensemble
# --------------------------------------------------------------------------------------------


def _ensemble_step_project(cell: str, hidden: int, k: int, device: torch.device) -> Callable:
    from rnntune import ensemble  # the project's, once merged (helper "answers")

    config = ModelConfig(cell, FEATURES, hidden)
    states = []
    for i in range(k):
        torch.manual_seed(i)
        states.append(RecurrentClassifier(config).to(device).state_dict())
    params = [p.requires_grad_(True) for p in ensemble.stack(config, states)]
    optimizer = torch.optim.Adam(params, lr=1e-3)

    def step(xb: torch.Tensor, yb: torch.Tensor) -> None:  # xb (k, B, T, F), yb (k, B)
        loss = ensemble.member_losses(ensemble.logits(config, params, xb), yb).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _ensemble_step_vmap(cell: str, hidden: int, k: int, device: torch.device) -> Callable:
    from torch.func import functional_call, grad, stack_module_state, vmap

    config = ModelConfig(cell, FEATURES, hidden)
    models = []
    for i in range(k):
        torch.manual_seed(i)
        m = RecurrentClassifier(config).to(device)
        # torch's own layer: a custom autograd.Function (rnntune's CPU kernel) has no vmap rule.
        plain = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](
            FEATURES, hidden, batch_first=True
        ).to(device)
        plain.load_state_dict(m.rnn.state_dict())
        m.rnn = plain
        models.append(m)
    params, buffers = stack_module_state(models)
    base = models[0]
    names = list(params)
    optimizer = torch.optim.Adam(list(params.values()), lr=1e-3)

    def loss_of(p: dict, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(base, (p, buffers), (xb,)), yb)

    member_grads = vmap(grad(loss_of), in_dims=(0, 0, 0))

    def step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        grads = member_grads(params, xb, yb)
        for name in names:
            params[name].grad = grads[name]
        optimizer.step()

    return step


def ensemble_speedup(
    cell: str, hidden: int, batch: int, k: int, X: torch.Tensor, y: torch.Tensor, steps: int
) -> tuple[str, float, float, float]:
    """(method, solo seq/s, ensemble member-seq/s, speed-up) for k members on X's device."""
    device = X.device
    solo = train_rate(cell, hidden, batch, X[: steps * batch], y[: steps * batch])
    try:
        step, method = _ensemble_step_project(cell, hidden, k, device), "rnntune.ensemble"
    except ImportError:
        step, method = (
            _ensemble_step_vmap(cell, hidden, k, device),
            "torch.func vmap stand-in (rnntune.ensemble not installed)",
        )
    xb = X[: k * batch].reshape(k, batch, LENGTH, FEATURES)
    yb = y[: k * batch].reshape(k, batch)
    for _ in range(3):
        step(xb, yb)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(xb, yb)
    _sync(device)
    rate = k * batch * steps / (time.perf_counter() - start)
    return method, solo, rate, rate / solo


# --------------------------------------------------------------------------------------------
# Concurrent workers on one GPU
# --------------------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> int:
    """A child process: warm up, wait for the common start, train for ``--seconds``."""
    device = torch.device(args.device)
    X, y = _data(args.worker_n, device)
    torch.manual_seed(0)
    model = RecurrentClassifier(ModelConfig(args.cell, FEATURES, args.hidden)).to(device)
    optimizer = make_optimizer(model, 1e-3)
    Xs, ys = X.split(args.batch), y.split(args.batch)
    model.train()

    def one(i: int) -> None:
        loss = F.cross_entropy(model(Xs[i % len(Xs)]), ys[i % len(ys)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(20):
        one(i)
    _sync(device)
    time.sleep(max(0.0, args.start_at - time.time()))
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < args.seconds:
        for _ in range(20):
            one(done)
            done += 1
        _sync(device)
    print(f"RATE {done * args.batch / (time.perf_counter() - start):.1f}", flush=True)
    return 0


def concurrent_rate(n_workers: int, cell: str, hidden: int, batch: int, seconds: float) -> float:
    """Aggregate training sequences/s of ``n_workers`` processes sharing the GPU."""
    start_at = time.time() + 12 + 2 * n_workers  # after every child has started and warmed up
    cmd = [sys.executable, __file__, "--worker", "--device", "cuda", "--cell", cell]
    cmd += ["--hidden", str(hidden), "--batch", str(batch), "--seconds", str(seconds)]
    cmd += ["--start-at", str(start_at), "--worker-n", "4096"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for _ in range(n_workers)
    ]
    total = 0.0
    try:
        for p in procs:
            out, _ = p.communicate(timeout=start_at - time.time() + seconds + 60)
            rates = [float(line.split()[1]) for line in out.splitlines() if line.startswith("RATE")]
            if p.returncode != 0 or not rates:
                raise RuntimeError(f"worker failed (exit {p.returncode}): {out.strip()[-500:]}")
            total += rates[0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return total


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller slices (~2 minutes on a GPU)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--cell", default="gru", help=argparse.SUPPRESS)
    parser.add_argument("--hidden", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=8.0, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--worker-n", type=int, default=4096, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    set_threads(1)
    if args.worker:
        return worker(args)

    started = time.perf_counter()
    gpu = torch.cuda.is_available()
    print(f"torch {torch.__version__}; CPU: 1 thread of {os.cpu_count()} cores")
    if gpu:
        props = torch.cuda.get_device_properties(0)
        print(f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB")
    else:
        print("GPU: none (torch sees no CUDA device): the GPU parts below are SKIPPED")
    cpu_n = 512 if args.quick else 1024
    gpu_n = 8192 if args.quick else 32768
    X_cpu, y_cpu = _data(cpu_n, torch.device("cpu"))

    # 1. Throughput per family, GPU against CPU, at hidden 32 / batch 32 and batch 64.
    print("\n1. training sequences/s, rnntune's loop, 50 steps x 4 features")
    print(f"{'family':<7}{'hidden':>7}{'batch':>6}{'CPU (1 thread)':>16}{'GPU':>10}{'GPU/CPU':>9}")
    X_gpu = y_gpu = None
    if gpu:
        X_gpu, y_gpu = _data(gpu_n, torch.device("cuda"))
    for cell in FAMILIES:
        for batch in (32, 64):
            cpu = train_rate(cell, 32, batch, X_cpu, y_cpu)
            line = f"{cell:<7}{32:>7}{batch:>6}{cpu:>16,.0f}"
            if gpu:
                g = train_rate(cell, 32, batch, X_gpu, y_gpu)
                line += f"{g:>10,.0f}{g / cpu:>9.1f}"
            else:
                line += f"{'skipped':>10}"
            print(line, flush=True)

    # 2. Repeats as one ensemble.
    k = 10
    print(f"\n2. {k} repeats trained as one ensemble vs one by one (hidden 32, batch 32)")
    devices = [("CPU", X_cpu, y_cpu, 10)] + ([("GPU", X_gpu, y_gpu, 50)] if gpu else [])
    for name, X, y, steps in devices:
        for cell in FAMILIES:
            try:
                method, solo, rate, gain = ensemble_speedup(cell, 32, 32, k, X, y, steps)
                print(
                    f"  {name} {cell:<5} one by one {solo:>9,.0f} seq/s   ensemble "
                    f"{rate:>9,.0f} member-seq/s   speed-up {gain:.1f}x   [{method}]",
                    flush=True,
                )
            except Exception as e:  # a missing batching rule or API: say so, carry on
                print(f"  {name} {cell:<5} not measured: {type(e).__name__}: {e}"[:300])
    if not gpu:
        print("  GPU: SKIPPED (no CUDA device)")

    # 3 and 4 need the GPU.
    if not gpu:
        print("\n3. workers per GPU: SKIPPED (no CUDA device)")
        print("4. projected seed-scale study on the GPU: SKIPPED (no CUDA device)")
        print(f"\ntotal {time.perf_counter() - started:.0f} s")
        return 0

    print("\n3. aggregate training sequences/s of N workers sharing the GPU (gru, 32, 32)")
    seconds = 5.0 if args.quick else 8.0
    aggregate: dict[int, float] = {}
    for n in (1, 2, 4, 8):
        try:
            aggregate[n] = concurrent_rate(n, "gru", 32, 32, seconds)
        except Exception as e:
            print(f"  {n} workers: not measured: {e}"[:300])
            break
        print(f"  {n} worker(s): {aggregate[n]:>10,.0f} seq/s   x{aggregate[n] / aggregate[1]:.2f}")
    best = max(aggregate, key=lambda n: aggregate[n])
    enough = min(n for n in aggregate if aggregate[n] >= 0.9 * aggregate[best])
    gain = aggregate[enough] / aggregate[1]
    print(f"  -> {enough} worker(s) per GPU reach 90% of the best aggregate (x{gain:.2f})")

    # 4. Projection from every cell of the search space, timed on the GPU.
    print(
        f"\n4. projected seed-scale study: n={STUDY_N:,} ({TRAIN_N:,} train), {TRIALS} trials x "
        f"{EPOCHS} epochs per family, {REPEATS} repeats; no pruning (an upper bound)"
    )
    slice_n = 4096 if args.quick else 8192
    total_one = 0.0
    repeats_part = 0.0
    for cell in FAMILIES:
        epoch_s = []
        for hidden in HIDDEN:
            val = eval_rate(cell, hidden, X_gpu[:VAL_N] if X_gpu.shape[0] >= 8192 else X_gpu)
            for batch in BATCH:
                rate = train_rate(cell, hidden, batch, X_gpu[:slice_n], y_gpu[:slice_n])
                epoch_s.append(TRAIN_N / rate + VAL_N / val)
        mean_epoch = statistics.mean(epoch_s)
        tuning = TRIALS * EPOCHS * mean_epoch
        repeats = REPEATS * EPOCHS * mean_epoch
        total_one += tuning + repeats
        repeats_part += repeats
        print(
            f"  {cell:<5} epoch {min(epoch_s):.1f}-{max(epoch_s):.1f} s (mean {mean_epoch:.1f}); "
            f"tuning {_minutes(tuning)}, repeats {_minutes(repeats)} on one worker"
        )
    print(f"  one worker: {_minutes(total_one)}")
    print(
        f"  {enough} workers sharing the GPU (x{gain:.2f}): {_minutes(total_one / gain)} "
        "(target: <= 15 min on one H200)"
    )
    print(
        "  (pruning and early stopping only shorten this; the repeats part "
        f"({_minutes(repeats_part / gain)} of it) shrinks by section 2's ensemble speed-up)"
    )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
