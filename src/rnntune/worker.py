"""The pull loop: a stateless worker that claims trials, then evaluation repeats, until done.

A worker holds nothing that matters: the experiment comes from the database, each epoch's
checkpoint goes to the shared artifact store, every result is a row. Killing it at any moment
loses at most the epoch in progress.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from rnntune import evaluation, state, tuning
from rnntune.config import Runtime
from rnntune.exceptions import Interrupted, StorageError, WorkerFaultError
from rnntune.experiment import (
    Experiment,
    find_or_raise_by_name,
    load_data,
    repeat_splits,
    resolve_policy,
    verify_data,
)
from rnntune.faults import failpoint
from rnntune.storage import (
    WorkerRow,
    check_schema,
    db_now,
    load_study,
    mask_url,
    open_optuna_storage,
    session_scope,
    utcnow,
)
from rnntune.train import resolve_device, set_threads, warm_up

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors that mean "the database is away": wait and retry instead of failing work.
TRANSIENT = (OperationalError, StorageInternalError, StorageError, PoolTimeoutError)


def boot_id() -> str | None:
    """The running kernel's boot id, or None where there is no /proc (macOS)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def pid_namespace() -> int | None:
    """This process's PID namespace (the inode of /proc/self/ns/pid), or None."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


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


def process_token(pid: int | str = "self") -> str | None:
    """Boot id + process start time: tells a live process from a new one that reused its pid."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        start = stat.rsplit(")", 1)[1].split()[19]
        return f"{boot}:{start}"
    except (OSError, IndexError):
        return None


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
        max_outage: float = 600.0,
        install_signal_handlers: bool = True,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.storage_url = storage_url
        self.experiment_name = experiment
        self.runtime = runtime
        self.data_override = data_override
        self.evaluate_only = evaluate_only
        self.max_outage = max_outage
        self.on_event = on_event or (lambda msg: log.info("%s", msg))
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.worker_id = f"{self.hostname}:{self.pid}:{uuid.uuid4().hex[:6]}"
        self.boot_id = boot_id()
        self.pid_namespace = pid_namespace()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._current_trial: int | None = None
        self._current_jobs: list[int] = []
        # Families whose ensemble raised here: their repeats are trained one at a time by this
        # worker from then on, so the error is charged to the repeat that raises it.
        self._solo_families: set[str] = set()
        self._task = "starting"
        self._hb_thread: threading.Thread | None = None
        self._hb_stop = threading.Event()
        self._summary = WorkerSummary(self.worker_id)
        self._last_wait_note = 0.0
        if install_signal_handlers:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)

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
        delay, waited = 0.5, 0.0
        while True:
            try:
                return fn()
            except TRANSIENT as e:
                if isinstance(e, StorageError) and "lost the study database" not in str(e):
                    raise
                if waited >= self.max_outage:
                    raise StorageError(
                        f"the study database at {mask_url(self.storage_url)} has been unreachable "
                        f"for {waited:.0f}s: check the server, then restart the worker"
                    ) from e
                if self._stop.is_set() and waited >= 5:
                    raise Interrupted("stopping while the database is unreachable") from e
                if waited == 0:
                    log.warning("database unreachable (%s); retrying", str(e).splitlines()[0])
                time.sleep(delay)
                waited += delay
                delay = min(delay * 2, 10.0)

    # -- heartbeat -------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        # Optuna's own heartbeat thread dies on the first database error (optuna#4994); this one
        # logs, keeps beating, and is restarted by the main loop should it ever exit.
        failing = False
        while not self._hb_stop.is_set():
            try:
                self._beat()
                if failing:
                    log.warning("heartbeat restored")
                failing = False
            except Exception as e:  # noqa: BLE001 - the heartbeat must outlive any DB error
                if not failing:
                    log.warning("heartbeat failed (%s); will retry", str(e).splitlines()[0])
                failing = True
            self._hb_stop.wait(self.runtime.heartbeat_interval)

    def _beat(self) -> None:
        with self._lock:
            trial_id, job_ids, task = self._current_trial, list(self._current_jobs), self._task
        if trial_id is not None:
            self.storage.record_heartbeat(trial_id)
        if job_ids:
            evaluation.heartbeat(self.engine, job_ids, self.worker_id)
        with session_scope(self.engine) as s:
            s.execute(
                update(WorkerRow)
                .where(WorkerRow.id == self.worker_id)
                .values(
                    heartbeat_at=db_now(),
                    status="stopping" if self._stop.is_set() else "running",
                    task=task,
                    trials_done=self._summary.trials,
                    repeats_done=self._summary.repeats,
                )
            )

    def _ensure_heartbeat(self) -> None:
        if self._hb_thread is None or not self._hb_thread.is_alive():
            self._hb_thread = threading.Thread(
                target=self._heartbeat_loop, name="rnntune-heartbeat", daemon=True
            )
            self._hb_thread.start()

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

    # -- liveness of other workers ---------------------------------------------------------
    def dead_workers(self) -> set[str]:
        """Workers known dead at once, whose claims need not wait out the grace period.

        Only a fast path: a worker is judged dead by its missed heartbeats, on the database
        clock (rnntune.state). Its pid says something only to a reader on the same kernel
        (boot id) and in the same PID namespace (a hostname says nothing: containers with
        --network host share the host's); anywhere else, or without /proc, nobody is judged.
        """
        if self.boot_id is None or self.pid_namespace is None:
            return set()
        with session_scope(self.engine) as s:
            rows = s.execute(
                select(WorkerRow.id, WorkerRow.pid, WorkerRow.process_token).where(
                    WorkerRow.experiment_id == self.exp.id,
                    WorkerRow.boot_id == self.boot_id,
                    WorkerRow.pid_namespace == self.pid_namespace,
                    WorkerRow.id != self.worker_id,
                    # A worker that stopped cleanly handed its claims back; skip it.
                    WorkerRow.status.in_(("starting", "running", "stopping")),
                )
            ).all()
        return {wid for wid, pid, token in rows if token and process_token(pid) != token}

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> WorkerSummary:
        rt = self.runtime
        # We drive trials with ask/tell and run our own supervised heartbeat (see _beat), which
        # is exactly what this warning asks for.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        # No Optuna heartbeat settings: rnntune records heartbeats itself and judges staleness
        # with the experiment's grace period on the database clock (rnntune.state).
        self.storage = self.db_retry(lambda: open_optuna_storage(self.storage_url, read_only=True))
        self.engine = self.storage.engine
        self.db_retry(lambda: check_schema(self.engine))
        self.exp: Experiment = self.db_retry(
            lambda: find_or_raise_by_name(self.engine, self.experiment_name)
        )
        cfg = self.exp.config
        hb, grace = resolve_policy(self.exp, rt.heartbeat_interval, rt.grace_period)
        check_artifacts_writable(rt.artifacts)
        device = str(resolve_device(rt.device))
        self.runtime = rt = Runtime(
            **{**rt.__dict__, "device": device, "heartbeat_interval": hb, "grace_period": grace}
        )
        if device == "cpu":
            set_threads(rt.threads)
        loaded = load_data(cfg, self.data_override)
        verify_data(self.exp, loaded)
        self.splits = loaded.splits
        self.loaded = loaded
        self._summary.device, self._summary.splits = device, loaded.splits
        self._repeat_split: tuple[int, Any] | None = None  # (repeat, splits) under --resplit
        warm_up(device)
        self._register()
        self._ensure_heartbeat()
        seed = random.SystemRandom().randrange(2**31)

        def load(f: str, i: int) -> optuna.Study:
            return self.db_retry(
                lambda: load_study(
                    self.storage,
                    cfg.study_name(f),
                    sampler=tuning.make_sampler(cfg, seed + i),
                    pruner=tuning.make_pruner(cfg),
                )
            )

        self.studies = {f: load(f, i) for i, f in enumerate(cfg.families)}
        self._jobs_created: set[str] = set()
        self.on_event(
            f"worker {self.worker_id} on {mask_url(self.storage_url)}: experiment {cfg.name}, "
            f"device {device}, {rt.threads} thread(s)"
        )
        try:
            while not self._stop.is_set():
                self._ensure_heartbeat()
                if not self.db_retry(self._step):
                    break
        except Interrupted:
            pass
        finally:
            self._summary.stopped = self._stop.is_set()
            self._deregister()
        return self._summary

    def _step(self) -> bool:
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
                trial = tuning.claim_trial(self.studies[family], cfg, self.worker_id, dead, grace)
                if trial is not None:
                    self._run_trial(family, trial)
                    self._summary.trial_seconds += time.perf_counter() - t0
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
            self.worker_id,
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
            self._summary.finished = True
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
        self._set_task(f"{family} trial {trial.number}", trial_id=trial._trial_id)
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
            self._summary.fit_seconds += time.perf_counter() - t0
            log.warning("%s; going on", e)
            return
        except UpdateFinishedTrialError:
            # A peer found this trial stale and re-enqueued it; its retry owns it now.
            self._summary.fit_seconds += time.perf_counter() - t0
            log.warning(
                "%s trial %d was taken over by a retry (its heartbeat went stale); dropping this "
                "attempt",
                family,
                trial.number,
            )
            return
        finally:
            self._set_task("idle")
        self._summary.trials += 1
        self._summary.fit_seconds += outcome.fit_seconds
        self._summary.outcomes.append(outcome)
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
            self.db_retry(lambda: evaluation.release(self.engine, job, self.worker_id))
            failpoint("repeat.after_release")
            raise
        except tuning.DATABASE_ERRORS as e:
            # Not the repeat's fault: hand it back once the database is back (not counted).
            if not tuning.is_transient(e):
                raise
            log.warning("%s repeat %d: database error; handing it back", job.family, job.repeat)
            self.db_retry(lambda: evaluation.release(self.engine, job, self.worker_id))
            failpoint("repeat.after_release")
            return
        except OSError as e:
            # The worker's fault (unwritable or full artifact directory), not the repeat's.
            self.db_retry(lambda: evaluation.release(self.engine, job, self.worker_id))
            failpoint("repeat.after_release")
            raise WorkerFaultError(
                f"cannot write checkpoints to {e.filename or self.runtime.artifacts} "
                f"({e.strerror or e}): make --artifacts (RNNTUNE_ARTIFACTS) a writable directory "
                f"with free space, then restart this worker ({job.family} repeat {job.repeat} "
                "was handed back)"
            ) from e
        except Exception as e:  # noqa: BLE001 - a failing repeat is recorded, not fatal
            reason = f"{type(e).__name__}: {e}".splitlines()[0][:500]
            log.error("%s repeat %d failed: %s", job.family, job.repeat, reason)
            self.db_retry(lambda: evaluation.release(self.engine, job, self.worker_id, reason))
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
                    self.engine, list(pending.values()), self.worker_id
                )
            )
            failpoint("repeat.after_release")
            raise
        except OSError as e:
            self.db_retry(
                lambda: evaluation.release_group(
                    self.engine, list(pending.values()), self.worker_id
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
                str(e).splitlines()[0],
            )
            self.db_retry(
                lambda: evaluation.release_group(
                    self.engine, list(pending.values()), self.worker_id
                )
            )
            failpoint("repeat.after_release")
        except Exception as e:  # noqa: BLE001 - which member raised is not known: go solo
            reason = f"{type(e).__name__}: {e}".splitlines()[0][:500]
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
                    self.engine, list(pending.values()), self.worker_id
                )
            )
            failpoint("repeat.after_release")
        finally:
            self._set_task("idle")

    def _complete(self, job: evaluation.Job, result: dict[str, Any]) -> None:
        failpoint("repeat.before_complete")
        if self.db_retry(lambda: evaluation.complete(self.engine, job, self.worker_id, result)):
            failpoint("repeat.after_complete")
            evaluation.remove_checkpoint(self.runtime, self.exp.config, job)
            self._summary.repeats += 1
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
            log.warning("could not update %s's dashboard note: %s", family, str(e).splitlines()[0])

    # -- registry ------------------------------------------------------------------------
    def _register(self) -> None:
        # Without /proc the token can never be checked, and boot id / namespace stay None:
        # nobody judges this worker by its pid (see dead_workers).
        token = process_token() or f"{self.hostname}:{self.pid}:{time.time()}"

        def _insert() -> None:
            with session_scope(self.engine) as s:
                s.add(
                    WorkerRow(
                        id=self.worker_id,
                        experiment_id=self.exp.id,
                        hostname=self.hostname,
                        pid=self.pid,
                        process_token=token,
                        boot_id=self.boot_id,
                        pid_namespace=self.pid_namespace,
                        heartbeat_at=db_now(),
                        status="running",
                        task="starting",
                        trials_done=0,
                        repeats_done=0,
                    )
                )

        self.db_retry(_insert)

    def _deregister(self) -> None:
        self._hb_stop.set()
        if self._hb_thread is not None:
            self._hb_thread.join(timeout=5)
        try:
            with session_scope(self.engine) as s:
                s.execute(
                    update(WorkerRow)
                    .where(WorkerRow.id == self.worker_id)
                    .values(
                        status="stopped",
                        stopped_at=utcnow(),
                        task=None,
                        trials_done=self._summary.trials,
                        repeats_done=self._summary.repeats,
                    )
                )
        except Exception as e:  # noqa: BLE001 - the status row is informational
            log.warning("could not mark worker stopped: %s", str(e).splitlines()[0])
