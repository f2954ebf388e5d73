"""Time to answer: the original study's protocol against `rnntune run`, same data and budget.

The original protocol, reimplemented here as a faithful, separate baseline (it imports nothing
from rnntune's training code, only the data loader and split, so both sides see the same data):

* one process, Optuna with in-memory storage and its default TPE sampler (seeded);
* per family, ``trials`` trials over the default search space (hidden size {16, 32, 64},
  learning rate log-uniform [1e-4, 1e-2], batch size {16, 32, 64}); each trial trains
  ``nn.RNN``/``nn.GRU``/``nn.LSTM`` + a linear head on the last step with ``torch.optim.Adam``
  (defaults) through ``DataLoader(TensorDataset(X, y), shuffle=True)`` for exactly
  ``max_epochs`` epochs (no pruning, no early stopping), objective: validation macro F1;
* then the best configuration trained ``repeats`` times (seeds paired with rnntune's), each
  tested on the test split.

It runs at 1 thread and at torch's default thread count, and rnntune is compared with the
faster of the two. rnntune runs as a user runs it: ``rnntune run`` (its defaults for local
workers, SQLite, pruning, early stopping, repeats trained as ensembles) in a subprocess; its
wall time includes start-up, init and the report.

For each seed (``--seeds``; the split, the samplers and the repeat seeds follow it) it prints the
wall time of each side and the ratio, and per family the mean test accuracy and macro F1 with
95% CIs (t-interval over the repeats, as rnntune's report computes them) side by side; then the
median ratio over the seeds.

    python benchmarks/vs_seed_protocol.py                                    # the seed's budget
    python benchmarks/vs_seed_protocol.py --trials 4 --repeats 3 --max-epochs 3 \\
        --data synthetic:n=1000,length=140,features=1                         # a small budget

The original protocol is the slow side (about 55 minutes a seed at the seed's budget on one
core). ``--results DIR`` keeps each side's result per seed (keyed by data, budget, seed and
threads) and reuses it on the next run, and ``--only baseline`` runs just that side, so two
seeds' baselines can run side by side, one core each, and the comparison afterwards (rnntune's
whole report, with each family's best configuration and compute, is kept there too):

    B="python benchmarks/vs_seed_protocol.py --baseline-threads 1 --results runs/"
    $B --only baseline --seeds 1 & $B --only baseline --seeds 2 & wait
    $B --seeds 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rnntune.data import load_dataset, split_dataset
from rnntune.report.stats import summarize

FAMILIES = ("rnn", "gru", "lstm")
CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
# An ECG-benchmark-shaped default: thousands of single-channel beats of 140 steps.
DEFAULT_DATA = "synthetic:n=5000,length=140,features=1"


class Classifier(nn.Module):
    def __init__(self, cell: str, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.rnn = CELLS[cell](input_size, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def _train(cell: str, params: dict, seed: int, splits, epochs: int) -> Classifier:  # noqa: ANN001
    torch.manual_seed(seed)
    model = Classifier(cell, splits.X_train.shape[2], params["hidden_size"])
    optimizer = torch.optim.Adam(model.parameters(), lr=params["learning_rate"])
    loader = DataLoader(
        TensorDataset(torch.from_numpy(splits.X_train), torch.from_numpy(splits.y_train)),
        batch_size=params["batch_size"],
        shuffle=True,
    )
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
    return model


def _predict(model: Classifier, X: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(X)).argmax(-1).numpy()


def _macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    return float(f1_score(y, pred, labels=[0, 1], average="macro", zero_division=0))


def seed_protocol(splits, args: argparse.Namespace, seed: int) -> dict:  # noqa: ANN001
    """The original protocol, in this process; returns per family the test metrics."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = {}
    for i, cell in enumerate(FAMILIES):

        def objective(trial: optuna.Trial, cell: str = cell) -> float:
            params = {
                "hidden_size": trial.suggest_categorical("hidden_size", [16, 32, 64]),
                "learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True),
                "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64]),
            }
            model = _train(cell, params, seed * 1000 + trial.number, splits, args.max_epochs)
            return _macro_f1(splits.y_val, _predict(model, splits.X_val))

        study = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed * 10 + i)
        )
        study.optimize(objective, n_trials=args.trials)
        accs, f1s = [], []
        for r in range(args.repeats):
            model = _train(cell, study.best_params, seed * 1000 + 100 + r, splits, args.max_epochs)
            pred = _predict(model, splits.X_test)
            accs.append(float(accuracy_score(splits.y_test, pred)))
            f1s.append(_macro_f1(splits.y_test, pred))
        out[cell] = {"accuracy": summarize(accs), "macro_f1": summarize(f1s)}
    return out


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_rnntune(args: argparse.Namespace, seed: int, tmp: Path) -> tuple[float, float, dict]:
    cmd = [
        sys.executable, "-m", "rnntune", "run",
        "--storage", f"sqlite:///{tmp / f'vs-{seed}.db'}",
        "--experiment", f"vs-{seed}",
        "--data", args.data,
        "--trials", str(args.trials),
        "--repeats", str(args.repeats),
        "--max-epochs", str(args.max_epochs),
        "--seed", str(seed),
        "--artifacts", str(tmp / f"art-{seed}"),
        "--out", str(tmp / f"reports-{seed}"),
    ]  # fmt: skip
    t0, c0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    wall, cpu = time.perf_counter() - t0, _children_cpu() - c0
    if proc.returncode != 0:
        sys.exit(f"rnntune run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report_path = tmp / f"reports-{seed}" / "report.json"
    if args.results is not None:  # the whole report: best configurations, the compute ledger
        kept = _result_path(args, "rnntune-report", seed)
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(report_path, kept.with_suffix(".partial"))
        os.replace(kept.with_suffix(".partial"), kept)
    report = json.loads(report_path.read_text())
    out = {}
    for cell in FAMILIES:
        summary = report["families"][cell]["summary"]
        out[cell] = {m: summary[m] for m in ("accuracy", "macro_f1")}
    return wall, cpu, out


def _fmt(s: dict) -> str:
    lo, hi = s["ci95"]
    if lo is None or hi is None:
        return f"{s['mean']:.3f}"
    return f"{s['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def _result_path(args: argparse.Namespace, side: str, seed: int) -> Path:
    budget = f"{args.trials}t-{args.repeats}r-{args.max_epochs}e"
    data = args.data.replace(":", "_").replace(",", "_")
    return Path(args.results) / f"{side}-seed{seed}-{budget}-{data}.json"


def _kept(args: argparse.Namespace, side: str, seed: int, compute):  # noqa: ANN001, ANN202
    """``compute()`` -> (wall, cpu, result), kept under ``--results`` and reused from there."""
    if args.results is None:
        return compute()
    path = _result_path(args, side, seed)
    if path.exists():
        kept = json.loads(path.read_text())
        print(f"  {side}, seed {seed}: reusing {path} (measured {kept['at']})", flush=True)
        return kept["wall"], kept["cpu"], kept["result"]
    wall, cpu, result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    at = time.strftime("%Y-%m-%d %H:%M:%S")
    load = os.getloadavg()[0]
    record = {"wall": wall, "cpu": cpu, "result": result, "at": at, "load_at_end": load}
    # Whole or not at all: a run killed while writing must not leave a half file that the next
    # run would try to reuse (the baseline behind it took up to an hour).
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record, indent=1))
    os.replace(partial, path)
    return wall, cpu, result


def _timed_baseline(splits, args, seed: int, threads: int) -> tuple[float, float, dict]:  # noqa: ANN001
    def compute() -> tuple[float, float, dict]:
        torch.set_num_threads(threads)
        t0, c0 = time.perf_counter(), time.process_time()
        result = seed_protocol(splits, args, seed)
        return time.perf_counter() - t0, time.process_time() - c0, result

    return _kept(args, f"original-{threads}threads", seed, compute)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--max-epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--baseline-threads",
        choices=["both", "1", "default"],
        default="both",
        help="run the original protocol at 1 thread, torch's default, or both (the faster counts)",
    )
    ap.add_argument(
        "--results",
        metavar="DIR",
        help="keep each side's result per seed here and reuse a kept one instead of rerunning it",
    )
    ap.add_argument(
        "--only",
        choices=["baseline", "rnntune"],
        help="run just one side (with --results, to combine later)",
    )
    args = ap.parse_args()
    if args.only and not args.results:
        ap.error("--only needs --results DIR, where the other side's run will find this result")
    default_threads = torch.get_num_threads()
    print(
        f"vs seed protocol: data {args.data}, {args.trials} trials, {args.repeats} repeats, "
        f"{args.max_epochs} epochs per family; seeds {args.seeds}; {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} (default {default_threads} threads)"
    )
    ratios = []
    with tempfile.TemporaryDirectory(prefix="rnntune-vs-") as tmp_name:
        tmp = Path(tmp_name)
        for seed in args.seeds:
            splits = split_dataset(load_dataset(args.data), seed=seed)
            base = {}
            if args.only != "rnntune":
                if args.baseline_threads in ("both", "1"):
                    base["1 thread"] = _timed_baseline(splits, args, seed, 1)
                if args.baseline_threads in ("both", "default"):
                    base[f"{default_threads} threads"] = _timed_baseline(
                        splits, args, seed, default_threads
                    )
            torch.set_num_threads(default_threads)
            if args.only == "baseline":
                print(f"seed {seed}: original protocol kept in {args.results}", flush=True)
                continue
            wall, cpu, ours = _kept(
                args, "rnntune", seed, lambda seed=seed: run_rnntune(args, seed, tmp)
            )
            if args.only == "rnntune":
                print(f"seed {seed}: rnntune run {wall:.0f} s kept in {args.results}", flush=True)
                continue
            best_name = min(base, key=lambda k: base[k][0])
            best_wall, best_cpu, theirs = base[best_name]
            ratio = best_wall / wall
            ratios.append(ratio)
            timings = ", ".join(f"{k} {v[0]:.0f} s (CPU {v[1]:.0f} s)" for k, v in base.items())
            print(
                f"\nseed {seed}: original protocol {timings}; rnntune run {wall:.0f} s "
                f"(CPU {cpu:.0f} s); ratio {ratio:.2f}x wall against the original's {best_name} "
                f"({best_cpu / cpu:.2f}x in CPU time)",
                flush=True,
            )
            print(
                f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end",
            )
            print(
                f"  {'family':<6} {'accuracy: original':>26} {'rnntune':>24}   "
                f"{'macro F1: original':>26} {'rnntune':>24}"
            )
            for cell in FAMILIES:
                print(
                    f"  {cell:<6} {_fmt(theirs[cell]['accuracy']):>26} "
                    f"{_fmt(ours[cell]['accuracy']):>24}   {_fmt(theirs[cell]['macro_f1']):>26} "
                    f"{_fmt(ours[cell]['macro_f1']):>24}",
                    flush=True,
                )
    if not ratios:
        return
    listed = ", ".join(f"{r:.2f}x" for r in ratios)
    print(f"\nratios {listed}; median {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
