"""The pull loop: a stateless worker that claims trials, then evaluation repeats, until done.

A worker holds nothing that matters: the experiment comes from the database, each epoch's
checkpoint goes to the shared artifact store, every result is a row. Killing it at any moment
loses at most the epoch in progress.

Three parts: :class:`Worker` (one process: signals, waiting out database outages, attaching to
the experiment, its row in the worker table), :class:`PullLoop` (one unit of work at a time:
claim, train, tell or complete) and :class:`Heartbeat` (the supervised thread that keeps the
current claims and the worker's row alive). The worker table's SQL is in
:mod:`rnntune.worker_registry`.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage

from rnntune import evaluation, state, tuning
from rnntune.config import Runtime
from rnntune.exceptions import (
    Interrupted,
    StorageError,
    WorkerFaultError,
    error_reason,
    first_line,
)
from rnntune.experiment import (
    Experiment,
    find_or_raise_by_name,
    load_data,
    repeat_splits,
    resolve_policy,
    verify_data,
)
from rnntune.faults import failpoint
from rnntune.limits import DB_RETRY_FIRST_DELAY_S, DB_RETRY_MAX_DELAY_S, MAX_OUTAGE_S
from rnntune.storage import (
    DATABASE_ERRORS,
    StorageRole,
    check_schema,
    is_transient,
    load_study,
    mask_url,
    open_optuna_storage,
    trial_id,
)
from rnntune.train import resolve_device, set_threads, warm_up
from rnntune.worker_registry import (
    Identity,
    boot_id,
    dead_peers,
    mark_stopped,
    pid_namespace,
    process_token,
    record_beat,
    register,
    retire_silent,
)

__all__ = [
    "Heartbeat",
    "PullLoop",
    "Worker",
    "WorkerSummary",
    "boot_id",
    "check_artifacts_writable",
    "pid_namespace",
    "process_token",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


def check_artifacts_writable(path: str) -> None:
    """Fail fast, with the fix, when this worker could not write a checkpoint."""
    probe = Path(path) / "checkpoints" / f".rnntune-write-test.{os.getpid()}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"rnntune")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise WorkerFaultError(
            f"cannot write to the artifact directory {path} ({e.strerror or e}): pass --artifacts "
            "DIR (RNNTUNE_ARTIFACTS), a writable directory with free space shared by all workers"
        ) from e


@dataclass
class WorkerSummary:
    worker_id: str
    trials: int = 0
    repeats: int = 0
    stopped: bool = False
    finished: bool = False
    outcomes: list[Any] = field(default_factory=list)
    trial_seconds: float = 0.0  # claim to tell, per trial, summed
    fit_seconds: float = 0.0  # of which inside the training loop
    # What the final export needs from this run (rnntune.jobs.evaluate): the device it trained
    # on, resolved ("cpu", "cuda:0"), and the experiment's data split it loaded and verified.
    device: str | None = None
    splits: Any = None

    @property
    def storage_share(self) -> float:
        """Share of trial time spent outside training: claiming, reporting, telling."""
        if self.trial_seconds <= 0:
            return 0.0
        return max(0.0, self.trial_seconds - self.fit_seconds) / self.trial_seconds


class Heartbeat:
    """A thread that calls ``beat`` every ``interval`` seconds, whatever it raises.

    Optuna's own heartbeat thread dies on the first database error (optuna#4994); this one
    logs, keeps beating, and is restarted by :meth:`ensure_running` should it ever exit.
    """

    def __init__(self, beat: Callable[[], None], interval: float) -> None:
        self._beat = beat
        self._interval = interval
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def ensure_running(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._loop, name="rnntune-heartbeat", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self._beat()
                if failing:
                    log.warning("heartbeat restored")
                failing = False
            except Exception as e:  # noqa: BLE001 - the heartbeat must outlive any DB error
                if not failing:
                    log.warning("heartbeat failed (%s); will retry", first_line(e))
                failing = True
            self._stop.wait(self._interval)


class Worker:
    """One worker process. ``evaluate_only``: the final job, which waits for tuning instead."""

    def __init__(
        self,
        storage_url: str,
        experiment: str,
        runtime: Runtime,
        *,
        data_override: str | None = None,
        evaluate_only: bool = False,
        max_outage: float = MAX_OUTAGE_S,
        install_signal_handlers: bool = True,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.storage_url = storage_url
        self.experiment_name = experiment
        # Replaced by run() once the experiment's heartbeat policy and the device are resolved.
        self.runtime = runtime
        self.data_override = data_override
        self.evaluate_only = evaluate_only
        self.max_outage = max_outage
        self.on_event = on_event or (lambda msg: log.info("%s", msg))
        self.identity = Identity.of_this_process()
        self.worker_id = self.identity.worker_id
        self._stop = threading.Event()
        self._summary = WorkerSummary(self.worker_id)
        # What run() attached to, kept for its caller (`rnntune evaluate` exports from it).
        self._storage: RDBStorage | None = None
        self._exp: Experiment | None = None
        self.splits: Any = None
        if install_signal_handlers:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)

    @property
    def storage(self) -> RDBStorage:
        """The study database run() opened (for its caller, once run() attached)."""
        if self._storage is None:
            raise RuntimeError("Worker.storage is set by run()")
        return self._storage

    @property
    def exp(self) -> Experiment:
        """The experiment run() loaded (for its caller, once run() attached)."""
        if self._exp is None:
            raise RuntimeError("Worker.exp is set by run()")
        return self._exp

    # -- signals and stop ----------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        if not self._stop.is_set():
            self.on_event(
                f"received {signal.Signals(signum).name}: stopping after handing back "
                "the current work"
            )
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()

    def should_stop(self) -> bool:
        return self._stop.is_set()

    # -- database resilience -------------------------------------------------------------
    def db_retry(self, fn: Callable[[], T]) -> T:
        """Run ``fn``, waiting out a database outage with capped exponential backoff."""
        delay, waited = DB_RETRY_FIRST_DELAY_S, 0.0
        while True:
            try:
                return fn()
            except DATABASE_ERRORS as e:
                if not is_transient(e):
                    raise
                if waited >= self.max_outage:
                    raise StorageError(
                        f"the study database at {mask_url(self.storage_url)} has been unreachable "
                        f"for {waited:.0f}s: check the server, then restart the worker"
                    ) from e
                if self._stop.is_set() and waited >= 5:
                    raise Interrupted("stopping while the database is unreachable") from e
                if waited == 0:
                    log.warning("database unreachable (%s); retrying", first_line(e))
                time.sleep(delay)
                waited += delay
                delay = min(delay * 2, DB_RETRY_MAX_DELAY_S)

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> WorkerSummary:
        # We drive trials with ask/tell and run our own supervised heartbeat (see Heartbeat),
        # which is exactly what this warning asks for.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        loop = self._attach()
        self.db_retry(lambda: register(loop.engine, self.identity, loop.exp.id))
        loop.heartbeat.ensure_running()
        cfg, rt = loop.exp.config, loop.runtime
        self.on_event(
            f"worker {self.worker_id} on {mask_url(self.storage_url)}: experiment {cfg.name}, "
            f"device {rt.device}, {rt.threads} thread(s)"
        )
        try:
            while not self._stop.is_set():
                loop.heartbeat.ensure_running()
                if not self.db_retry(loop.step):
                    break
        except Interrupted:
            pass
        finally:
            self._summary.stopped = self._stop.is_set()
            loop.heartbeat.stop()
            try:
                mark_stopped(
                    loop.engine,
                    self.worker_id,
                    trials=self._summary.trials,
                    repeats=self._summary.repeats,
                )
            except Exception as e:  # noqa: BLE001 - the status row is informational
                log.warning("could not mark worker stopped: %s", first_line(e))
        return self._summary

    def _attach(self) -> PullLoop:
        """Open the database, load and verify the experiment and its data, load the studies."""
        rt = self.runtime
        # No Optuna heartbeat settings: rnntune records heartbeats itself and judges staleness
        # with the experiment's grace period on the database clock (rnntune.state).
        storage = self.db_retry(lambda: open_optuna_storage(self.storage_url, StorageRole.WORK))
        self._storage = storage
        self.db_retry(lambda: check_schema(storage.engine))
        exp: Experiment = self.db_retry(
            lambda: find_or_raise_by_name(storage.engine, self.experiment_name)
        )
        self._exp = exp
        cfg = exp.config
        hb, grace = resolve_policy(exp, rt.heartbeat_interval, rt.grace_period)
        check_artifacts_writable(rt.artifacts)
        device = str(resolve_device(rt.device))
        self.runtime = rt = Runtime(
            **{**rt.__dict__, "device": device, "heartbeat_interval": hb, "grace_period": grace}
        )
        if device == "cpu":
            set_threads(rt.threads)
        loaded = load_data(cfg, self.data_override)
        verify_data(exp, loaded)
        self.splits = loaded.splits
        self._summary.device, self._summary.splits = device, loaded.splits
        warm_up(device)
        seed = random.SystemRandom().randrange(2**31)

        def load(f: str, i: int) -> optuna.Study:
            return self.db_retry(
                lambda: load_study(
                    storage,
                    cfg.study_name(f),
                    sampler=tuning.make_sampler(cfg, seed + i),
                    pruner=tuning.make_pruner(cfg),
                )
            )

        studies = {f: load(f, i) for i, f in enumerate(cfg.families)}
        return PullLoop(
            storage=storage,
            exp=exp,
            runtime=rt,
            studies=studies,
            loaded=loaded,
            me=self.identity,
            summary=self._summary,
            stop=self._stop,
            db_retry=self.db_retry,
            on_event=self.on_event,
            evaluate_only=self.evaluate_only,
        )


class PullLoop:
    """One attached worker's units of work: :meth:`step` claims a trial (or a repeat, or a group
    of repeats), trains it and stores the result; the heartbeat keeps the claim alive."""

    def __init__(
        self,
        *,
        storage: RDBStorage,
        exp: Experiment,
        runtime: Runtime,
        studies: dict[str, optuna.Study],
        loaded: Any,
        me: Identity,
        summary: WorkerSummary,
        stop: threading.Event,
        db_retry: Callable[[Callable[[], Any]], Any],
        on_event: Callable[[str], None],
        evaluate_only: bool,
    ) -> None:
        self.storage = storage
        self.engine = storage.engine
        self.exp = exp
        self.runtime = runtime
        self.studies = studies
        self.loaded = loaded
        self.splits = loaded.splits
        self.me = me
        self.summary = summary
        self._stop = stop
        self.db_retry = db_retry
        self.on_event = on_event
        self.evaluate_only = evaluate_only
        self._repeat_split: tuple[int, Any] | None = None  # (repeat, splits) under --resplit
        self._jobs_created: set[str] = set()
        # Families whose ensemble raised here: their repeats are trained one at a time by this
        # worker from then on, so the error is charged to the repeat that raises it.
        self._solo_families: set[str] = set()
        self._last_wait_note = 0.0
        # What the heartbeat keeps alive, set by the main thread, read by the heartbeat's.
        self._lock = threading.Lock()
        self._task = "starting"
        self._current_trial: int | None = None
        self._current_jobs: list[int] = []
        self._retired_at = float("-inf")  # when this worker last retired silent peers' rows
        assert runtime.heartbeat_interval is not None, "resolved by Worker._attach"
        self.heartbeat = Heartbeat(self._beat, runtime.heartbeat_interval)

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def dead_workers(self) -> set[str]:
        """Peers known dead at once (worker_registry.dead_peers): a fast path for claims."""
        return dead_peers(self.engine, self.exp.id, self.me)

    # -- what the heartbeat keeps alive ------------------------------------------------------
    def _beat(self) -> None:
        with self._lock:
            tid, job_ids, task = self._current_trial, list(self._current_jobs), self._task
        if tid is not None:
            self.storage.record_heartbeat(tid)
        if job_ids:
            evaluation.heartbeat(self.engine, job_ids, self.me.worker_id)
        record_beat(
            self.engine,
            self.me.worker_id,
            stopping=self._stop.is_set(),
            task=task,
            trials=self.summary.trials,
            repeats=self.summary.repeats,
        )
        # The beat also retires the rows of peers silent past the grace period, at most once
        # per grace period (a row cannot turn silent faster than that): two round trips, not
        # two on every beat.
        grace = self.runtime.grace_period
        assert grace is not None  # resolved from the experiment when the worker attached
        if time.monotonic() - self._retired_at >= grace:
            retire_silent(self.engine, self.exp.id, grace)
            self._retired_at = time.monotonic()

    def _set_task(
        self, task: str, trial_id: int | None = None, job_ids: list[int] | None = None
    ) -> None:
        with self._lock:
            self._task, self._current_trial = task, trial_id
            self._current_jobs = list(job_ids or [])

    def _drop_job(self, job_id: int) -> None:
        """A member of this worker's group is finished: stop heartbeating it."""
        with self._lock:
            self._current_jobs = [j for j in self._current_jobs if j != job_id]

    # -- units of work -------------------------------------------------------------------------
    def step(self) -> bool:
        """Do one unit of work. False when the experiment has nothing left for this worker."""
        cfg = self.exp.config
        grace = self.exp.grace_period
        dead = self.dead_workers()
        counts = {f: state.count_trials(s) for f, s in self.studies.items()}
        if not self.evaluate_only:
            order = sorted(cfg.families, key=lambda f: (counts[f].live, random.random()))
            for family in order:
                if state.tuning_over(cfg.trials, counts[family]):
                    continue
                t0 = time.perf_counter()
                trial = tuning.claim_trial(
                    self.studies[family], cfg, self.me.worker_id, dead, grace
                )
                if trial is not None:
                    self._run_trial(family, trial)
                    self.summary.trial_seconds += time.perf_counter() - t0
                    return True
        over = [f for f in cfg.families if state.tuning_over(cfg.trials, counts[f])]
        # A family that gave up is reported incomplete and gets no repeats: a rerun may still
        # finish its tuning, and its repeats must evaluate the best of the finished budget.
        done_families = [f for f in over if state.tuning_state(cfg.trials, counts[f]) == state.DONE]
        for family in done_families:
            if family not in self._jobs_created:
                best = tuning.best_trial(self.studies[family])
                if best is not None:
                    evaluation.ensure_jobs_safely(self.engine, self.exp, family, best.params)
                    self._jobs_created.add(family)
        jobs = evaluation.claim_group(
            self.engine,
            self.exp,
            self.me.worker_id,
            grace,
            dead,
            self.runtime.device,
            frozenset(self._solo_families),
        )
        if len(jobs) == 1:
            failpoint("repeat.after_claim")
            self._run_job(jobs[0])
            return True
        if jobs:
            failpoint("group.after_claim")
            self._run_group(jobs)
            return True
        if len(over) == len(cfg.families) and evaluation.all_done(
            self.engine, self.exp, sorted(self._jobs_created)
        ):
            self.summary.finished = True
            return False
        self._set_task("waiting")
        if self.evaluate_only and time.monotonic() - self._last_wait_note > 30:
            self._last_wait_note = time.monotonic()
            waiting = ", ".join(
                f"{f} {counts[f].finished}/{cfg.trials}"
                for f in cfg.families
                if not state.tuning_over(cfg.trials, counts[f])
            )
            self.on_event(
                f"waiting for tuning ({waiting} trials finished) and for other "
                "workers' repeats; start `rnntune worker`s if none are running"
            )
        self._stop.wait(self.runtime.poll_interval)
        return True

    def _run_trial(self, family: str, trial: optuna.Trial) -> None:
        self._set_task(f"{family} trial {trial.number}", trial_id=trial_id(trial))
        t0 = time.perf_counter()
        try:
            outcome = tuning.run_trial(
                self.studies[family],
                trial,
                family,
                self.exp.config,
                self.splits,
                self.runtime,
                self.should_stop,
                self.db_retry,
            )
        except tuning.TrialHandedBack as e:
            # A database error under the training loop: the retry resumes from the checkpoint.
            self.summary.fit_seconds += time.perf_counter() - t0
            log.warning("%s; going on", e)
            return
        except UpdateFinishedTrialError:
            # A peer found this trial stale and re-enqueued it; its retry owns it now.
            self.summary.fit_seconds += time.perf_counter() - t0
            log.warning(
                "%s trial %d was taken over by a retry (its heartbeat went stale); dropping this "
                "attempt",
                family,
                trial.number,
            )
            return
        finally:
            self._set_task("idle")
        self.summary.trials += 1
        self.summary.fit_seconds += outcome.fit_seconds
        self.summary.outcomes.append(outcome)
        value = "" if outcome.value is None else f" value={outcome.value:.4f}"
        resumed = (
            f" (resumed after epoch {outcome.resumed_from_epoch})"
            if (outcome.resumed_from_epoch)
            else ""
        )
        self.on_event(
            f"{family} trial {outcome.number} {outcome.state.name.lower()}{value}{resumed}"
        )

    def _run_job(self, job: evaluation.Job) -> None:
        self._set_task(f"{job.family} repeat {job.repeat}", job_ids=[job.id])
        try:
            splits = self._splits_for(job.repeat)
            result = evaluation.run_job(job, self.exp, splits, self.runtime, self.should_stop)
        except Interrupted:
            self.db_retry(lambda: evaluation.release(self.engine, job, self.me.worker_id))
            failpoint("repeat.after_release")
            raise
        except tuning.DATABASE_ERRORS as e:
            # Not the repeat's fault: hand it back once the database is back (not counted).
            if not tuning.is_transient(e):
                raise
            log.warning("%s repeat %d: database error; handing it back", job.family, job.repeat)
            self.db_retry(lambda: evaluation.release(self.engine, job, self.me.worker_id))
            failpoint("repeat.after_release")
            return
        except OSError as e:
            # The worker's fault (unwritable or full artifact directory), not the repeat's.
            self.db_retry(lambda: evaluation.release(self.engine, job, self.me.worker_id))
            failpoint("repeat.after_release")
            raise WorkerFaultError(
                f"cannot write checkpoints to {e.filename or self.runtime.artifacts} "
                f"({e.strerror or e}): make --artifacts (RNNTUNE_ARTIFACTS) a writable directory "
                f"with free space, then restart this worker ({job.family} repeat {job.repeat} "
                "was handed back)"
            ) from e
        except Exception as e:  # noqa: BLE001 - a failing repeat is recorded, not fatal
            reason = error_reason(e)
            log.error("%s repeat %d failed: %s", job.family, job.repeat, reason)
            self.db_retry(lambda: evaluation.release(self.engine, job, self.me.worker_id, reason))
            failpoint("repeat.after_release")
            return
        finally:
            self._set_task("idle")
        self._complete(job, result)

    def _run_group(self, jobs: list[evaluation.Job]) -> None:
        """Train a group of one family's repeats as one ensemble; each finished member is
        completed at once (its own row, exactly once), the others train on."""
        family = jobs[0].family
        names = ", ".join(str(j.repeat) for j in jobs)
        self._set_task(f"{family} repeats {names} (one ensemble)", job_ids=[j.id for j in jobs])
        pending = {j.id: j for j in jobs}

        def on_done(job: evaluation.Job, result: dict[str, Any]) -> None:
            self._complete(job, result)  # if this raises, the repeat is handed back below
            self._drop_job(job.id)
            del pending[job.id]

        try:
            evaluation.run_group(
                jobs, self.exp, self.splits, self.runtime, self.should_stop, on_done
            )
        except Interrupted:
            self.db_retry(
                lambda: evaluation.release_group(
                    self.engine, list(pending.values()), self.me.worker_id
                )
            )
            failpoint("repeat.after_release")
            raise
        except OSError as e:
            self.db_retry(
                lambda: evaluation.release_group(
                    self.engine, list(pending.values()), self.me.worker_id
                )
            )
            failpoint("repeat.after_release")
            raise WorkerFaultError(
                f"cannot write checkpoints to {e.filename or self.runtime.artifacts} "
                f"({e.strerror or e}): make --artifacts (RNNTUNE_ARTIFACTS) a writable directory "
                f"with free space, then restart this worker ({family} repeats {names} were "
                "handed back)"
            ) from e
        except tuning.DATABASE_ERRORS as e:
            # Not the repeats' fault (as in _run_job): hand the rest back once the database is
            # reachable again, uncounted.
            if not tuning.is_transient(e):
                raise
            log.warning(
                "%s repeats %s: database error (%s); handing them back",
                family,
                names,
                first_line(e),
            )
            self.db_retry(
                lambda: evaluation.release_group(
                    self.engine, list(pending.values()), self.me.worker_id
                )
            )
            failpoint("repeat.after_release")
        except Exception as e:  # noqa: BLE001 - which member raised is not known: go solo
            reason = error_reason(e)
            log.error(
                "%s repeats %s as one ensemble failed (%s); handing them back, this worker "
                "trains %s repeats one at a time from now on",
                family,
                names,
                reason,
                family,
            )
            self._solo_families.add(family)
            self.db_retry(
                lambda: evaluation.release_group(
                    self.engine, list(pending.values()), self.me.worker_id
                )
            )
            failpoint("repeat.after_release")
        finally:
            self._set_task("idle")

    def _complete(self, job: evaluation.Job, result: dict[str, Any]) -> None:
        failpoint("repeat.before_complete")
        if self.db_retry(lambda: evaluation.complete(self.engine, job, self.me.worker_id, result)):
            failpoint("repeat.after_complete")
            evaluation.remove_checkpoint(self.runtime, self.exp.config, job)
            self.summary.repeats += 1
            m = result["metrics"]
            self.on_event(
                f"{job.family} repeat {job.repeat} done: accuracy={m['accuracy']:.4f} "
                f"macro_f1={m['macro_f1']:.4f}"
            )
            self._publish_progress(job.family)
        else:
            log.warning(
                "%s repeat %d was reclaimed by another worker; result dropped",
                job.family,
                job.repeat,
            )

    def _splits_for(self, repeat: int) -> Any:
        """The split of ``repeat``: the fixed one, or (--resplit) its own, kept while the
        worker stays on that repeat (jobs are claimed repeat by repeat, across families)."""
        if not self.exp.config.resplit:
            return self.splits
        if self._repeat_split is None or self._repeat_split[0] != repeat:
            self._repeat_split = (repeat, repeat_splits(self.exp.config, self.loaded, repeat))
        return self._repeat_split[1]

    def _publish_progress(self, family: str) -> None:
        """The dashboard shows the evaluation as it happens: the family's note and user
        attributes follow every finished repeat. Informational: a failure is only logged."""
        from rnntune.publish import publish_repeat_progress

        try:
            publish_repeat_progress(self.storage, self.exp, family)
        except Exception as e:  # noqa: BLE001 - the repeat's result is stored either way
            log.warning("could not update %s's dashboard note: %s", family, first_line(e))
