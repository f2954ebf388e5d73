"""The `rnntune` command: thin click commands over the library.

Each command parses options, builds a config (:mod:`rnntune.config`: the defaults and the one
precedence merge), calls the library (:mod:`rnntune.jobs` for init, run and evaluate), and turns
the library's errors into one ``Error:`` line with a non-zero exit. Every option also reads
``RNNTUNE_<OPTION>``.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from rnntune import config as config_mod
from rnntune.exceptions import ConfigError, RnntuneError, first_line
from rnntune.storage import DATABASE_ERRORS, DEFAULT_STORAGE

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# -- option decorators ---------------------------------------------------------------------
def _resolve_storage(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    from rnntune.storage import storage_from_env

    try:
        return storage_from_env(value)
    except RnntuneError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from e


def storage_option(f: Callable) -> Callable:
    return click.option(
        "--storage",
        envvar="RNNTUNE_STORAGE",
        default=None,
        callback=_resolve_storage,
        show_default=DEFAULT_STORAGE,
        help="Study database URL: sqlite:///FILE.db or postgresql://user@host:5432/db. "
        "Keep a password off the command line: RNNTUNE_STORAGE, RNNTUNE_STORAGE_FILE (a file "
        "holding the URL) or RNNTUNE_STORAGE_PASSWORD_FILE (a file holding the password).",
    )(f)


def experiment_option(f: Callable) -> Callable:
    return click.option(
        "--experiment",
        envvar="RNNTUNE_EXPERIMENT",
        default=config_mod.DEFAULT_EXPERIMENT,
        show_default=True,
        help="Experiment name (its studies are <experiment>.rnn, .gru, .lstm).",
    )(f)


def experiment_config_options(f: Callable) -> Callable:
    d = config_mod.ExperimentConfig()
    opts = [
        click.option(
            "--config",
            "config_file",
            envvar="RNNTUNE_CONFIG",
            type=click.Path(dir_okay=False),
            help="Experiment file (TOML): [experiment], [search_space], [pruner].",
        ),
        click.option(
            "--data",
            envvar="RNNTUNE_DATA",
            show_default=d.data,
            help="synthetic[:n=...,length=...,features=...,seed=...], npz:PATH, csv:PATH or "
            "ucr:PATH_TRAIN.tsv|.ts[,normal=A|B] (UCR/UEA archive; see README, Data).",
        ),
        click.option(
            "--trials",
            type=int,
            envvar="RNNTUNE_TRIALS",
            show_default=str(d.trials),
            help="Budget per family: finished (complete + pruned) trials.",
        ),
        click.option(
            "--repeats",
            type=int,
            envvar="RNNTUNE_REPEATS",
            show_default=str(d.repeats),
            help="Evaluation repeats per family.",
        ),
        click.option(
            "--max-epochs",
            type=int,
            envvar="RNNTUNE_MAX_EPOCHS",
            show_default=str(d.max_epochs),
            help="Epochs per training run at most.",
        ),
        click.option(
            "--seed",
            type=int,
            envvar="RNNTUNE_SEED",
            show_default=str(d.seed),
            help="Base seed: splits, trials and the paired repeat seeds.",
        ),
        click.option(
            "--objective",
            envvar="RNNTUNE_OBJECTIVE",
            type=click.Choice(config_mod.METRICS),
            show_default=d.objective,
            help="Validation metric tuning maximises.",
        ),
        click.option(
            "--resplit/--fixed-split",
            "resplit",
            envvar="RNNTUNE_RESPLIT",
            default=None,
            help="Re-split per repeat: repeat i trains and tests on split i (the same for every "
            "family); its test part may hold sequences tuning saw. [default: fixed split]",
        ),
        click.option(
            "--pruner",
            envvar="RNNTUNE_PRUNER",
            type=click.Choice(config_mod.PRUNERS),
            show_default=d.pruner.type,
            help="Pruner on the per-epoch validation metric.",
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _runtime_option(name: str, **kwargs: Any) -> Callable:
    """The option of Runtime field ``name``, spelled as config.RUNTIME_OPTIONS spells it (the
    table `rnntune run` hands its settings to its workers by), read from RNNTUNE_<NAME> too."""
    return click.option(
        config_mod.RUNTIME_OPTIONS[name], envvar=f"RNNTUNE_{name.upper()}", **kwargs
    )


def runtime_options(f: Callable) -> Callable:
    hb, grace = config_mod.DEFAULT_HEARTBEAT_INTERVAL, config_mod.DEFAULT_GRACE_PERIOD
    opts = [
        _runtime_option(
            "artifacts",
            default=config_mod.DEFAULT_ARTIFACTS,
            show_default=True,
            help="Artifact directory shared by all workers (checkpoints, reports).",
        ),
        _runtime_option(
            "device",
            default=config_mod.DEFAULT_DEVICE,
            show_default=True,
            help="auto, cpu or cuda.",
        ),
        _runtime_option(
            "threads",
            type=int,
            help="torch threads per worker [default: cores / workers, at least 1].",
        ),
        _runtime_option(
            "heartbeat_interval",
            type=int,
            help="Seconds between heartbeats; part of the experiment, stored when it is created "
            f"[default: {hb}, or the experiment's].",
        ),
        _runtime_option(
            "grace_period",
            type=int,
            help="Seconds without heartbeat before a trial or repeat is retried; part of the "
            f"experiment, stored when it is created [default: {grace}, or the experiment's].",
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


class _UsageError(click.ClickException):
    """A bad option, environment variable or experiment file: one `Error:` line, exit 2."""

    exit_code = 2


def handle_errors(f: Callable) -> Callable:
    """Library errors → one `Error:` line (no traceback): exit 2 for a bad option, environment
    variable or experiment file (ConfigError), exit 1 for everything else."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except ConfigError as e:
            raise _UsageError(_one_line(e)) from e
        except RnntuneError as e:
            raise click.ClickException(_one_line(e)) from e
        except DATABASE_ERRORS as e:
            # The database went away under a library call that does not wrap its errors
            # (Optuna's storage, a migration): the same clear line as StorageError. Which
            # errors those are is decided once, by type, in rnntune.storage.
            raise click.ClickException(
                f"lost the study database ({first_line(e)}): check "
                "that it is running and reachable, then rerun the command (finished work is "
                "stored)"
            ) from e
        except KeyboardInterrupt as e:
            raise click.ClickException(
                "interrupted: finished work is stored; rerun the command to continue"
            ) from e

    return wrapper


def _one_line(e: BaseException) -> str:
    # One line, whatever a message quoted (a file's bytes, a server's multi-line error).
    return " ".join(str(e).split()) or type(e).__name__


def _setup_logging() -> None:
    level = os.environ.get("RNNTUNE_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # rnntune relies on Optuna's heartbeat and retry APIs on purpose; their "experimental" label
    # is not news to a user, so keep it out of the progress output.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="rnntune")
def main() -> None:
    """rnntune: tune RNN, GRU and LSTM fairly on a shared, resumable study database."""
    _setup_logging()


# -- init ------------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT)
@storage_option
@experiment_option
@experiment_config_options
@_runtime_option(
    "heartbeat_interval",
    type=int,
    help="Seconds between a worker's heartbeats, for every worker of this experiment "
    f"[default: {config_mod.DEFAULT_HEARTBEAT_INTERVAL}].",
)
@_runtime_option(
    "grace_period",
    type=int,
    help="Seconds without heartbeat before a trial or repeat is retried, for every worker of "
    f"this experiment [default: {config_mod.DEFAULT_GRACE_PERIOD}].",
)
@click.option(
    "--worker-role",
    envvar="RNNTUNE_WORKER_ROLE",
    help="PostgreSQL: create or update this role for the workers (read/write on the study "
    "tables, no DDL); its password is read from the file RNNTUNE_WORKER_ROLE_PASSWORD_FILE.",
)
@click.option(
    "--dashboard-role",
    envvar="RNNTUNE_DASHBOARD_ROLE",
    help="PostgreSQL: create or update this read-only role for the dashboard; its password is "
    "read from the file RNNTUNE_DASHBOARD_ROLE_PASSWORD_FILE.",
)
@handle_errors
def init(
    storage: str,
    experiment: str,
    config_file: str | None,
    heartbeat_interval: int | None,
    grace_period: int | None,
    worker_role: str | None,
    dashboard_role: str | None,
    **opts: Any,
) -> None:
    """Create or upgrade the schema and register the experiment (idempotent).

    Example: rnntune init --storage postgresql://rnntune@db/rnntune --trials 30
    """
    from rnntune import jobs

    roles = jobs.role_passwords(storage, {"worker": worker_role, "dashboard": dashboard_role})
    explicit = config_mod.explicit_settings(experiment, config_file, opts)
    jobs.init(
        storage,
        explicit,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        roles=roles,
        echo=click.echo,
    )


# -- run -------------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT)
@storage_option
@experiment_option
@experiment_config_options
@runtime_options
@click.option(
    "--workers",
    type=int,
    envvar="RNNTUNE_WORKERS",
    default=config_mod.DEFAULT_WORKERS,
    show_default=True,
    help="Local worker processes.",
)
@click.option(
    "--out",
    envvar="RNNTUNE_OUT",
    default=config_mod.DEFAULT_OUT,
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory for report.md/.json/.html.",
)
@handle_errors
def run(
    storage: str, experiment: str, config_file: str | None, workers: int, out: str, **opts: Any
) -> None:
    """Init if needed, tune all families, run the evaluation repeats, write the report.

    Interrupted at any moment, the same command continues where it stopped.

    Example: rnntune run --trials 10 --repeats 10
    """
    from rnntune import jobs

    if workers < 1:
        raise click.BadParameter("must be at least 1", param_hint="--workers")
    runtime = {name: opts.pop(name) for name in config_mod.RUNTIME_OPTIONS}
    rt = config_mod.runtime(storage, **runtime, workers=workers)
    explicit = config_mod.explicit_settings(experiment, config_file, opts)
    jobs.run(storage, explicit, rt, workers=workers, out=out, data=opts["data"], echo=click.echo)


# -- worker ----------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT)
@storage_option
@experiment_option
@runtime_options
@click.option(
    "--data",
    envvar="RNNTUNE_DATA",
    help="Where this worker finds the experiment's data, if not at the registered "
    "path (the fingerprint must still match).",
)
@handle_errors
def worker(storage: str, experiment: str, data: str | None, **runtime: Any) -> None:
    """Pull trials, then evaluation repeats, until the experiment is done (stateless).

    SIGTERM stops it within seconds: the trial in hand is handed back and resumes elsewhere.

    Example: RNNTUNE_STORAGE=postgresql://rnntune@db/rnntune rnntune worker
    """
    from rnntune.worker import Worker

    # workers=None: a lone worker, which cannot know how many others share its cores.
    rt = config_mod.runtime(storage, **runtime, workers=None)
    config_mod.check_writable_dir(rt.artifacts, "--artifacts")
    w = Worker(
        storage,
        experiment,
        rt,
        data_override=data,
        on_event=lambda m: logging.getLogger("rnntune.worker").info("%s", m),
    )
    summary = w.run()
    state = "stopped" if summary.stopped else "finished: nothing left to do"
    click.echo(
        f"worker {summary.worker_id} {state} ({summary.trials} trials, "
        f"{summary.repeats} repeats; storage {100 * summary.storage_share:.2f}% of "
        f"trial time)",
        err=True,
    )


# -- evaluate --------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT)
@storage_option
@experiment_option
@runtime_options
@click.option(
    "--out",
    envvar="RNNTUNE_OUT",
    default=config_mod.DEFAULT_OUT,
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory for report.md/.json/.html.",
)
@click.option("--data", envvar="RNNTUNE_DATA", help="The experiment's data at this host's path.")
@handle_errors
def evaluate(storage: str, experiment: str, out: str, data: str | None, **runtime: Any) -> None:
    """The final job: wait for tuning, work on repeats, wait for the rest, export the report.

    Example: rnntune evaluate --storage postgresql://rnntune@db/rnntune --out reports
    """
    from rnntune import jobs

    rt = config_mod.runtime(storage, **runtime, workers=1)
    jobs.evaluate(
        storage,
        experiment,
        rt,
        out=out,
        data=data,
        on_event=lambda m: logging.getLogger("rnntune.evaluate").info("%s", m),
        echo=click.echo,
    )


# -- report ----------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT)
@storage_option
@experiment_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["md", "html", "json", "csv"]),
    default="md",
    show_default=True,
    envvar="RNNTUNE_FORMAT",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="Write to this file (Markdown puts its plots beside it) [default: stdout; with --open: "
    "reports/report.html].",
)
@click.option(
    "--open",
    "open_browser",
    is_flag=True,
    help="Write the HTML report and open it in a web browser (BROWSER picks which).",
)
@handle_errors
def report(storage: str, experiment: str, fmt: str, out: str | None, open_browser: bool) -> None:
    """Export the report of an experiment, finished or not (an unfinished one says what is
    missing).

    Example: rnntune report --format html --out reports/report.html; rnntune report --open
    """
    from rnntune.experiment import find_or_raise_by_name
    from rnntune.report import build_report, render, write
    from rnntune.storage import StorageRole, check_schema, open_optuna_storage

    if out:
        config_mod.check_writable_dir(Path(out).parent, "--out's directory")
    fmt_given = click.get_current_context().get_parameter_source("fmt")
    if open_browser and fmt != "html" and fmt_given != click.core.ParameterSource.DEFAULT:
        raise click.UsageError(
            f"--open shows the HTML report, not --format {fmt}; drop --format or use html"
        )
    st = open_optuna_storage(storage, StorageRole.READ)
    check_schema(st.engine)  # an Optuna database without rnntune's tables: say so
    exp = find_or_raise_by_name(st.engine, experiment)
    rep = build_report(st, exp)
    if open_browser:
        path = write(rep, "html", out or os.path.join(config_mod.DEFAULT_OUT, "report.html"))
        click.echo(f"wrote {path}", err=True)
        _open_in_browser(Path(path))
    elif out:
        path = write(rep, fmt, out)
        click.echo(f"wrote {path}", err=True)
    else:
        click.echo(render(rep, fmt), nl=False)


def _open_in_browser(path: Path) -> None:
    """Open ``path`` with the user's browser (``webbrowser``: BROWSER, then the desktop's)."""
    import webbrowser

    url = path.resolve().as_uri()
    try:
        opened = webbrowser.open(url)
    except webbrowser.Error:
        opened = False
    if not opened:
        raise RnntuneError(
            f"no web browser available to open {path}; open that file yourself, or set BROWSER "
            "to a browser command"
        )
    click.echo(f"opened {url}", err=True)


# -- status ----------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT)
@storage_option
@experiment_option
@click.option("--watch", is_flag=True, help="Refresh until the experiment is done.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1, max=3600),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@handle_errors
def status(storage: str, experiment: str, watch: bool, interval: float) -> None:
    """Trials by state against the budget, best values, repeats done, workers alive.

    Example: rnntune status --watch
    """
    from rnntune import progress as progress_mod
    from rnntune.experiment import find_or_raise_by_name
    from rnntune.storage import StorageRole, check_schema, open_optuna_storage

    st = open_optuna_storage(storage, StorageRole.READ)
    check_schema(st.engine)  # an Optuna database without rnntune's tables: say so
    exp = find_or_raise_by_name(st.engine, experiment)
    from rnntune import live as live_mod

    while True:
        p = progress_mod.read(st, exp)
        text = progress_mod.table(p)
        if not p.done:  # the live view's ETA and measured seconds per trial, as `run` shows them
            text += "\n" + "\n".join(live_mod.block(live_mod.snapshot(st, exp, p)))
        if watch and sys.stdout.isatty():
            click.clear()
        click.echo(text)
        if not watch or p.over:
            return
        click.echo("")
        time.sleep(interval)


# -- dashboard -------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT)
@storage_option
@click.option(
    "--artifacts",
    envvar="RNNTUNE_ARTIFACTS",
    default=config_mod.DEFAULT_ARTIFACTS,
    show_default=True,
    help="The artifact directory the workers share.",
)
@click.option(
    "--host",
    envvar="RNNTUNE_DASHBOARD_HOST",
    default=config_mod.DEFAULT_DASHBOARD_HOST,
    show_default=True,
    help="Interface to bind. optuna-dashboard has no authentication: keep it local.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    envvar="RNNTUNE_DASHBOARD_PORT",
    default=config_mod.DEFAULT_DASHBOARD_PORT,
    show_default=True,
)
@click.option(
    "--allow-writes",
    is_flag=True,
    envvar="RNNTUNE_DASHBOARD_ALLOW_WRITES",
    help="Let the dashboard change the study database (delete or rename studies, set trial "
    "states, notes). Off: every request but GET/HEAD is refused.",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    envvar="RNNTUNE_DASHBOARD_ALLOWED_HOSTS",
    help="A Host name the dashboard answers besides localhost, 127.0.0.1 and [::1] "
    "(repeatable): the name a reverse proxy or a remote browser uses.",
)
@handle_errors
def dashboard(
    storage: str,
    artifacts: str,
    host: str,
    port: int,
    allow_writes: bool,
    allowed_hosts: tuple[str, ...],
) -> None:
    """Serve optuna-dashboard (Optuna's web UI: studies, trials, plots, reports) on the study
    database and artifact store.

    Read-only unless --allow-writes, and it answers only requests addressed to this machine
    (Host header: localhost names, plus --allowed-host). It has no login: keep it on 127.0.0.1
    or behind an authenticating proxy.

    Example: rnntune dashboard --port 8080
    """
    from rnntune.dashboard import serve

    # RNNTUNE_DASHBOARD_ALLOWED_HOSTS: comma- or space-separated, as app_from_env reads it.
    allowed_hosts = tuple(h for item in allowed_hosts for h in item.split(",") if h.strip())
    mode = "read-write" if allow_writes else "read-only"
    click.echo(f"optuna-dashboard ({mode}) on http://{host}:{port}/ (Ctrl-C to stop)", err=True)
    serve(
        storage,
        artifacts,
        host=host,
        port=port,
        allow_writes=allow_writes,
        allowed_hosts=allowed_hosts,
    )
