"""32 workers with a trivial objective against one PostgreSQL: trials/s, peak connections,
errors and exactness.

Each worker process uses rnntune's real claim path (tuning.claim_trial: the per-family advisory
lock, stale-trial reaping, ask) and its real storage factory (pool of 2 + 1 overflow, pre-ping),
plus a heartbeat thread like a real worker's; the "training" is a formula, so the database is
the only bottleneck. The parent samples pg_stat_activity every 50 ms for the peak.

    python benchmarks/many_workers.py [--workers 32] [--trials 150]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import fresh_postgres  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

FAMILIES = ("rnn", "gru", "lstm")


def worker(url: str, trials: int, index: int, errors: mp.Queue, counts: mp.Queue) -> None:
    import optuna
    from optuna.trial import TrialState

    from rnntune import tuning
    from rnntune.config import build
    from rnntune.storage import StorageRole, open_optuna_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    import warnings

    warnings.simplefilter("ignore")
    done = 0
    try:
        st = open_optuna_storage(url, StorageRole.WORK, heartbeat_interval=2, grace_period=30)
        cfg = build({"trials": trials, "name": "bench"})
        studies = {
            f: optuna.load_study(
                study_name=f"bench.{f}", storage=st, sampler=tuning.make_sampler(cfg, 1000 + index)
            )
            for f in FAMILIES
        }
        current: list[int | None] = [None]
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(2):
                tid = current[0]
                if tid is not None:
                    st.record_heartbeat(tid)

        hb = threading.Thread(target=beat, daemon=True)
        hb.start()
        active = list(FAMILIES)
        while active:
            family = active[(index + done) % len(active)]
            trial = tuning.claim_trial(studies[family], cfg, f"bench-{index}", set(), 30, 3)
            if trial is None:
                active.remove(family)
                continue
            current[0] = trial._trial_id
            value = (
                -((trial.params["learning_rate"] - 0.003) ** 2) + trial.params["hidden_size"] * 1e-6
            )
            studies[family].tell(trial, value, state=TrialState.COMPLETE)
            current[0] = None
            done += 1
        stop.set()
    except Exception as e:  # noqa: BLE001 - counted and reported, that is the point
        errors.put(f"worker {index}: {type(e).__name__}: {e}")
    counts.put(done)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--trials", type=int, default=150, help="budget per family (3 families)")
    args = ap.parse_args()
    import optuna
    from optuna.trial import TrialState

    from rnntune.config import build
    from rnntune.experiment import _create_studies
    from rnntune.storage import StorageRole, open_optuna_storage

    with fresh_postgres() as url:
        st = open_optuna_storage(url, StorageRole.MIGRATE)
        _create_studies(st, build({"trials": args.trials, "name": "bench"}))
        db = url.rsplit("/", 1)[1]
        probe = create_engine(url.rsplit("/", 1)[0] + "/postgres", pool_size=1)
        peak = [0]
        samples = [0]
        sampling = threading.Event()

        def sample() -> None:
            # autocommit: pg_stat_activity is a snapshot per transaction, so a long-lived
            # transaction would see the same numbers forever.
            with probe.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                while not sampling.is_set():
                    n = c.execute(
                        text("SELECT count(*) FROM pg_stat_activity WHERE datname=:d"), {"d": db}
                    ).scalar()
                    peak[0] = max(peak[0], int(n or 0))
                    samples[0] += 1
                    time.sleep(0.05)

        ctx = mp.get_context("spawn")
        errors, counts = ctx.Queue(), ctx.Queue()
        procs = [
            ctx.Process(target=worker, args=(url, args.trials, i, errors, counts))
            for i in range(args.workers)
        ]
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for p in procs:
            p.start()
        for p in procs:
            p.join(1800)
        sampling.set()
        sampler.join(5)
        errs = []
        while not errors.empty():
            errs.append(errors.get())
        exit_errors = sum(1 for p in procs if p.exitcode != 0)
        finished = {}
        first, last = None, None
        for f in FAMILIES:
            trials = optuna.load_study(study_name=f"bench.{f}", storage=st).get_trials()
            finished[f] = sum(t.state == TrialState.COMPLETE for t in trials)
            for t in trials:
                if t.datetime_start and (first is None or t.datetime_start < first):
                    first = t.datetime_start
                if t.datetime_complete and (last is None or t.datetime_complete > last):
                    last = t.datetime_complete
        total = sum(finished.values())
        secs = (last - first).total_seconds() if first and last else float("nan")
        print(f"workers: {args.workers}; budget {args.trials} per family x {len(FAMILIES)}")
        print(f"trials finished: {total} in {secs:.1f}s -> {total / secs:.1f} trials/s")
        print(
            f"peak PostgreSQL connections to the study database: {peak[0]} "
            f"(max_connections default 100; {samples[0]} samples; the parent holds "
            f"{st.engine.pool.checkedin() + st.engine.pool.checkedout()})"
        )
        print(f"errors: {len(errs) + exit_errors}")
        for e in errs[:10]:
            print("  ", e)
        exact = all(n == args.trials for n in finished.values())
        print(f"exact budgets: {'yes' if exact else 'NO'} {finished}")
        probe.dispose()
        if errs or exit_errors or not exact:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
