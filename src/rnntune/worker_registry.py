"""The worker table: who a worker process is, and the SQL that registers it, beats for it,
marks it stopped, retires the rows of workers gone silent, and finds its dead peers.

Informational for people (`rnntune status`), and a fast path for claims: a peer known dead
need not wait out the grace period (see :func:`dead_peers`).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from rnntune.state import database_now
from rnntune.storage import WorkerRow, db_now, session_scope, utcnow

__all__ = [
    "Identity",
    "boot_id",
    "dead_peers",
    "mark_stopped",
    "pid_namespace",
    "process_token",
    "record_beat",
    "register",
    "retire_silent",
]

#: A row in one of these is a worker that may still hold claims.
LIVE = ("starting", "running", "stopping")


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
class Identity:
    """Who this worker process is, as its row says (mutable only for tests)."""

    worker_id: str
    hostname: str
    pid: int
    boot_id: str | None
    pid_namespace: int | None

    @classmethod
    def of_this_process(cls) -> Identity:
        hostname, pid = socket.gethostname(), os.getpid()
        return cls(
            worker_id=f"{hostname}:{pid}:{uuid.uuid4().hex[:6]}",
            hostname=hostname,
            pid=pid,
            boot_id=boot_id(),
            pid_namespace=pid_namespace(),
        )


def register(engine: Engine, me: Identity, experiment_id: int) -> None:
    """Insert this worker's row (status running)."""
    # Without /proc the token can never be checked, and boot id / namespace stay None:
    # nobody judges this worker by its pid (see dead_peers).
    token = process_token() or f"{me.hostname}:{me.pid}:{time.time()}"
    with session_scope(engine) as s:
        s.add(
            WorkerRow(
                id=me.worker_id,
                experiment_id=experiment_id,
                hostname=me.hostname,
                pid=me.pid,
                process_token=token,
                boot_id=me.boot_id,
                pid_namespace=me.pid_namespace,
                heartbeat_at=db_now(),
                status="running",
                task="starting",
                trials_done=0,
                repeats_done=0,
            )
        )


def record_beat(
    engine: Engine, worker_id: str, *, stopping: bool, task: str, trials: int, repeats: int
) -> None:
    """Stamp this worker's row with the database's clock, its task and its counts."""
    with session_scope(engine) as s:
        s.execute(
            update(WorkerRow)
            .where(WorkerRow.id == worker_id)
            .values(
                heartbeat_at=db_now(),
                status="stopping" if stopping else "running",
                task=task,
                trials_done=trials,
                repeats_done=repeats,
            )
        )


def mark_stopped(engine: Engine, worker_id: str, *, trials: int, repeats: int) -> None:
    """This worker stopped cleanly (its claims were handed back)."""
    with session_scope(engine) as s:
        s.execute(
            update(WorkerRow)
            .where(WorkerRow.id == worker_id)
            .values(
                status="stopped",
                stopped_at=utcnow(),
                task=None,
                trials_done=trials,
                repeats_done=repeats,
            )
        )


def dead_peers(engine: Engine, experiment_id: int, me: Identity) -> set[str]:
    """Peers of ``me`` known dead at once, whose claims need not wait out the grace period.

    Only a fast path: a worker is judged dead by its missed heartbeats, on the database
    clock (rnntune.state). Its pid says something only to a reader on the same kernel
    (boot id) and in the same PID namespace (a hostname says nothing: containers with
    --network host share the host's); anywhere else, or without /proc, nobody is judged.
    """
    if me.boot_id is None or me.pid_namespace is None:
        return set()
    with session_scope(engine) as s:
        rows = s.execute(
            select(WorkerRow.id, WorkerRow.pid, WorkerRow.process_token).where(
                WorkerRow.experiment_id == experiment_id,
                WorkerRow.boot_id == me.boot_id,
                WorkerRow.pid_namespace == me.pid_namespace,
                WorkerRow.id != me.worker_id,
                # A worker that stopped cleanly handed its claims back; skip it.
                WorkerRow.status.in_(LIVE),
            )
        ).all()
    return {wid for wid, pid, token in rows if token and process_token(pid) != token}


def retire_silent(engine: Engine, experiment_id: int, grace_period: float) -> int:
    """Mark ``lost`` the rows of this experiment's workers silent for longer than
    ``grace_period`` (database clock); returns how many.

    A SIGKILLed worker never marks itself stopped, so without this its row would stay
    ``running`` for ever, to be examined again by every claim (review L10). Silent past the
    grace period it is dead by the heartbeat rule already, and every claim it held is stale by
    the same rule, so nothing waits on its row. A worker that was only paused writes
    ``running`` again with its next beat (:func:`record_beat`).
    """
    silent_since = database_now(engine) - timedelta(seconds=grace_period)
    with session_scope(engine) as s:
        done = s.execute(
            update(WorkerRow)
            .where(
                WorkerRow.experiment_id == experiment_id,
                WorkerRow.status.in_(LIVE),
                WorkerRow.heartbeat_at < silent_since,
            )
            .values(status="lost", task=None, stopped_at=db_now())
        )
        return int(getattr(done, "rowcount", 0) or 0)
