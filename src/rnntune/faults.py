"""Failpoints: named places where a process has committed one thing and not yet the next.

Random kills rarely land in the milliseconds between two commits, which is where a protocol
breaks. So every such boundary carries one line, ``failpoint("claim.after_ask")``, that does
nothing unless switched on from outside (etcd's gofail, TiKV's fail-rs):

    RNNTUNE_FAILPOINTS="claim.after_ask=kill,tell.before=db-error@2"

``NAME=ACTION[@N]``: fire ACTION at the N-th time this process reaches NAME (default the first),
once. Actions:

* ``kill``      SIGKILL this process (a crash, an OOM kill, a lost host);
* ``term``      SIGTERM this process (``docker stop``; the worker's handler runs);
* ``db-error``  raise the error a restarted database raises (SQLAlchemy ``OperationalError``);
* ``sleep:S``   sleep S seconds (a stalled host, a paused container);
* ``error``     raise a plain ``RuntimeError`` (a bug at that point).

With ``RNNTUNE_FAILPOINTS_LOG=FILE`` every fault that fires is appended to FILE first (one line,
``NAME ACTION``, flushed and fsynced), so a test can tell that it really landed.

``POINTS`` is the list of every point in the code, as data: ``python -m rnntune.faults --list``
prints it, and a test checks that the code and this table agree and that each one is exercised.
"""

from __future__ import annotations

import os
import signal
import sys
import time

__all__ = ["POINTS", "ACTIONS", "failpoint", "parse", "FailpointError"]

ENV = "RNNTUNE_FAILPOINTS"
LOG_ENV = "RNNTUNE_FAILPOINTS_LOG"

ACTIONS = ("kill", "term", "db-error", "sleep", "error")

# Every point in the code, as data: name -> what is committed when the process stops there, and
# what is not yet. A test checks that each ``failpoint("...")`` call in src/ is listed here, each
# listed point is called, and the fault matrix exercises each one.
POINTS: dict[str, str] = {
    # init: schema, experiment row, studies
    "migrate.before_commit": "rnntune's schema changes are made, in one open transaction; "
    "not committed yet",
    "init.after_migrate": "rnntune's schema upgraded; the experiment is not registered yet",
    "init.after_studies": "the family studies are created; the experiment row is not written yet",
    # claiming a trial (under the family lock)
    "claim.after_stale_fail": "a stale or orphaned trial is FAIL (retry owed); retry not enqueued",
    "claim.after_ask": "a trial is RUNNING (new or a popped retry); not yet heartbeated or owned",
    "claim.after_heartbeat": "the claimed trial has its first heartbeat; it is not owned yet",
    "claim.after_tag": "the trial is heartbeated and owned; the lock is not released yet",
    # training a trial
    "trial.after_checkpoint": "an epoch's checkpoint is on disk; the epoch is not reported yet",
    "trial.after_resume": "a retry resumed its checkpoint and recorded the epoch; that epoch is "
    "not re-reported or judged by the pruner yet",
    "trial.after_report": "the epoch is reported; the pruning decision is not made yet",
    "tell.before": "training ended and its attributes are written; the trial is not told yet",
    "tell.after": "the trial is told (finished); its checkpoint is not removed yet",
    "handback.after_fail": "SIGTERM or worker fault: the trial is FAIL (retry owed); not enqueued",
    # evaluation repeats
    "repeat.after_create": "the family's repeat rows are created; none is claimed yet",
    "repeat.after_claim": "a repeat is claimed (running); training has not started",
    "repeat.after_checkpoint": "a repeat's epoch checkpoint is on disk; the next epoch not begun",
    "repeat.before_complete": "a repeat is trained and tested; its result is not written yet",
    "repeat.after_complete": "a repeat's result is written; its checkpoint is not removed yet",
    "repeat.after_release": "a repeat is handed back (pending) after SIGTERM, an error or a fault",
    # evaluation repeats trained as one ensemble (a group of one family's repeats)
    "group.after_claim": "a group of repeats is claimed (running, one transaction); no training",
    "group.after_checkpoint": "every member's epoch checkpoint is on disk; next epoch not begun",
    # the final job's export
    "export.after_write": "the report files are written; nothing is uploaded to the studies yet",
    "export.after_upload": "the report is uploaded as artifacts; notes and attributes not yet",
}


class FailpointError(ValueError):
    """RNNTUNE_FAILPOINTS names an unknown point or action."""


_armed: dict[str, tuple[str, float, int]] | None = None  # name -> (action, arg, fire at hit)
_hits: dict[str, int] = {}


def parse(spec: str) -> dict[str, tuple[str, float, int]]:
    """``"a=kill,b=sleep:2@3"`` -> ``{"a": ("kill", 0, 1), "b": ("sleep", 2.0, 3)}``."""
    out: dict[str, tuple[str, float, int]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, action = item.partition("=")
        if not sep or not name or not action:
            raise FailpointError(f"{ENV}: '{item}' is not NAME=ACTION[@N]")
        at = 1
        if "@" in action:
            action, _, n = action.partition("@")
            if not n.isdigit() or int(n) < 1:
                raise FailpointError(f"{ENV}: '{item}': @N needs a positive whole number")
            at = int(n)
        arg = 0.0
        if action.startswith("sleep:"):
            action, _, s = action.partition(":")
            try:
                arg = float(s)
            except ValueError:
                raise FailpointError(f"{ENV}: '{item}': sleep:S needs seconds") from None
        if action not in ACTIONS:
            raise FailpointError(f"{ENV}: '{item}': action must be one of {', '.join(ACTIONS)}")
        if name not in POINTS:
            raise FailpointError(
                f"{ENV}: unknown failpoint '{name}': `python -m rnntune.faults --list` names them"
            )
        out[name] = (action, arg, at)
    return out


def _load() -> dict[str, tuple[str, float, int]]:
    global _armed
    if _armed is None:
        _armed = parse(os.environ.get(ENV, ""))
    return _armed


def failpoint(name: str) -> None:
    """A no-op (one dictionary lookup) unless ``name`` is switched on in RNNTUNE_FAILPOINTS."""
    armed = _armed if _armed is not None else _load()
    if not armed:
        return
    spec = armed.get(name)
    if spec is None:
        return
    n = _hits[name] = _hits.get(name, 0) + 1
    action, arg, at = spec
    if n != at:
        return
    _log(name, action)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # SIGKILL is asynchronous: never run past the point
    elif action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    elif action == "sleep":
        time.sleep(arg)
    elif action == "db-error":
        raise _db_error(name)
    else:
        raise RuntimeError(f"failpoint {name}: injected error")


def _db_error(name: str) -> Exception:
    from sqlalchemy.exc import OperationalError

    return OperationalError(
        f"-- failpoint {name}",
        None,
        ConnectionError(
            "server closed the connection unexpectedly (failpoint: the database restarted)"
        ),
    )


def _log(name: str, action: str) -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{name} {action} {os.getpid()}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def reset() -> None:
    """Re-read RNNTUNE_FAILPOINTS and forget hit counts (for in-process tests)."""
    global _armed
    _armed = None
    _hits.clear()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--list"]):
        print("usage: python -m rnntune.faults --list", file=sys.stderr)
        return 2
    for name in sorted(POINTS):
        print(f"{name:<32} {POINTS[name]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
