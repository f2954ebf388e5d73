"""What `rnntune init`, `run` and `evaluate` do, as library functions the CLI calls.

Each takes settings already resolved by :mod:`rnntune.config` (the explicit experiment settings,
a :class:`~rnntune.config.Runtime`), writes its progress lines through ``echo``, raises rnntune's
errors (the CLI turns them into one ``Error:`` line) and returns what it made. Nothing here reads
options or exits: that is the CLI's part.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rnntune import config as config_mod
from rnntune.config import Runtime
from rnntune.exceptions import ConfigError, RnntuneError
from rnntune.experiment import Experiment, find_or_raise_by_name, register
from rnntune.report import Report
from rnntune.storage import StorageRole, mask_url, open_optuna_storage

Echo = Callable[[str], None]

ROLES = ("worker", "dashboard")


@dataclass(frozen=True)
class Registered:
    """What `init` did: the experiment as stored, whether this call created it, and the database
    roles it created or updated (``[(role, "worker"|"dashboard")]``)."""

    experiment: Experiment
    created: bool
    roles: list[tuple[str, str]]


@dataclass(frozen=True)
class Exported:
    """The final report of `run` or `evaluate`, and the files it was written to."""

    report: Report
    paths: dict[str, Path]


def role_passwords(
    storage_url: str,
    roles: Mapping[str, str | None],
    environ: Mapping[str, str] = os.environ,
) -> dict[str, tuple[str, str]]:
    """``{"worker"|"dashboard": (role, password)}`` for the roles given a name, each password
    read from the file named by ``RNNTUNE_<KIND>_ROLE_PASSWORD_FILE`` (never from argv)."""
    from rnntune.storage import is_sqlite, normalize_url, read_role_password

    out: dict[str, tuple[str, str]] = {}
    for kind in ROLES:
        name = roles.get(kind)
        if not name:
            continue
        var = f"RNNTUNE_{kind.upper()}_ROLE_PASSWORD_FILE"
        if not environ.get(var):
            raise ConfigError(
                f"--{kind}-role {name} needs its password in a file: set {var} "
                "(never a password on the command line)"
            )
        out[kind] = (name, read_role_password(var, environ[var]))
    if out and is_sqlite(normalize_url(storage_url)):
        raise ConfigError(
            "database roles need PostgreSQL: drop --worker-role/--dashboard-role for SQLite"
        )
    return out


def init(
    storage_url: str,
    explicit: dict[str, Any],
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    roles: Mapping[str, tuple[str, str]] | None = None,
    echo: Echo = lambda _line: None,
) -> Registered:
    """Create or upgrade the schema, register the experiment (idempotent), and create or update
    the database ``roles`` (:func:`role_passwords`)."""
    from rnntune.storage import ensure_roles

    roles = roles or {}
    config_mod.build(explicit)  # refuse bad values before anything is stored
    st = open_optuna_storage(storage_url, StorageRole.MIGRATE)
    exp, created = register(st, explicit, None, heartbeat_interval, grace_period)
    if roles:
        ensure_roles(st.engine, worker=roles.get("worker"), dashboard=roles.get("dashboard"))
        echo(
            "database roles ready: " + ", ".join(f"{r[0]} ({k})" for k, r in sorted(roles.items()))
        )
    cfg = exp.config
    verb = "registered" if created else "already registered (unchanged)"
    echo(
        f"experiment {exp.name!r} {verb} in {mask_url(storage_url)}: "
        f"{len(cfg.families)} families x {cfg.trials} trials, {cfg.repeats} repeats, "
        f"data {cfg.data} ({exp.data_fingerprint[:19]})"
    )
    return Registered(exp, created, [(r[0], k) for k, r in sorted(roles.items())])


def run(
    storage_url: str,
    explicit: dict[str, Any],
    rt: Runtime,
    *,
    workers: int,
    out: str | Path,
    data: str | None = None,
    echo: Echo = lambda _line: None,
) -> Exported | None:
    """Register the experiment if needed, run ``workers`` local worker processes until it is
    done, and write the report into ``out``. None: it was already finished (nothing to do).

    Interrupted at any moment, the same call continues where it stopped.
    """
    from rnntune import progress as progress_mod
    from rnntune.runner import finalize, run_workers, summary_table

    # Checked before anything is stored: a bad directory must not surface after the study.
    config_mod.check_writable_dir(out, "--out")
    config_mod.check_writable_dir(rt.artifacts, "--artifacts")
    config_mod.build(explicit)  # refuse bad values before anything is stored
    st = open_optuna_storage(storage_url, StorageRole.MIGRATE)
    exp, created = register(st, explicit, None, rt.heartbeat_interval, rt.grace_period)
    cfg = exp.config
    echo(
        f"{'registered' if created else 'resuming'} experiment {cfg.name!r} in "
        f"{mask_url(storage_url)}: {'/'.join(cfg.families)} x {cfg.trials} trials, "
        f"{cfg.repeats} repeats, data {cfg.data}"
    )
    start = time.monotonic()
    prog = progress_mod.read(st, exp)
    if prog.done and exp.report_path and Path(exp.report_path).exists():
        echo(
            f"experiment {cfg.name!r} is already finished; nothing to do. Report: {exp.report_path}"
        )
        return None
    from rnntune.train import resolve_device

    # Resolved once, here: the workers train on it and the report names it.
    rt = replace(rt, device=str(resolve_device(rt.device)))
    if not prog.done:
        run_workers(st, storage_url, exp, rt, workers, data, echo)
    report, paths = finalize(st, exp, out, rt.artifacts, device=rt.device, data=data)
    echo("")
    echo(summary_table(report))
    echo(
        f"report: {paths['md']} (also {paths['json']}, {paths['html']}); "
        f"{time.monotonic() - start:.0f}s"
    )
    return Exported(report, paths)


def evaluate(
    storage_url: str,
    experiment: str,
    rt: Runtime,
    *,
    out: str | Path,
    data: str | None = None,
    on_event: Echo | None = None,
    echo: Echo = lambda _line: None,
) -> Exported:
    """The final job: wait for tuning, work on repeats as a worker does, wait for the rest, then
    write the report into ``out`` and publish it. ``on_event``: the worker's progress messages."""
    from rnntune.runner import finalize, summary_table
    from rnntune.worker import Worker

    config_mod.check_writable_dir(out, "--out")
    config_mod.check_writable_dir(rt.artifacts, "--artifacts")
    w = Worker(
        storage_url, experiment, rt, data_override=data, evaluate_only=True, on_event=on_event
    )
    summary = w.run()
    if not summary.finished:
        raise RnntuneError(
            "evaluation stopped before the end: rerun `rnntune evaluate` to continue"
        )
    st = open_optuna_storage(storage_url, StorageRole.WORK)
    exp = find_or_raise_by_name(st.engine, experiment)
    # The worker's resolved device and the split it verified: nothing is resolved or loaded twice.
    report, paths = finalize(
        st, exp, out, rt.artifacts, device=summary.device or rt.device, splits=summary.splits
    )
    echo(summary_table(report))
    echo(f"report: {paths['md']} (also {paths['json']}, {paths['html']})")
    return Exported(report, paths)
