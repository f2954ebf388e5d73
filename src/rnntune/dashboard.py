"""optuna-dashboard on rnntune's study database, served by gunicorn.

The dashboard only reads, by default. optuna-dashboard itself can delete and rename studies,
set a trial's state and write notes, with no authentication and no read-only switch, so every
app built here is wrapped in :func:`guard`:

- requests other than GET/HEAD/OPTIONS are refused (403) unless writes were allowed explicitly
  (``rnntune dashboard --allow-writes``, RNNTUNE_DASHBOARD_ALLOW_WRITES=1);
- the ``Host`` header must name this machine (localhost, 127.0.0.1, [::1]) or a host allowed
  with ``--allowed-host`` (RNNTUNE_DASHBOARD_ALLOWED_HOSTS): a web page that rebinds its own
  DNS name to 127.0.0.1 cannot drive it.

It opens the storage with ``skip_table_creation=True`` and never migrates (only
``rnntune init`` does), and :func:`serve` binds 127.0.0.1 unless told otherwise; put an
authenticating reverse proxy in front of it before exposing it (README, "The dashboard").

Three entry points, one app:

- :func:`make_app` builds the WSGI application (tests, custom servers);
- :func:`serve` runs it under gunicorn in-process (``rnntune dashboard``);
- :func:`app_from_env` is the factory the dashboard image runs:
  ``gunicorn 'rnntune.dashboard:app_from_env()'`` (RNNTUNE_STORAGE, RNNTUNE_ARTIFACTS).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import optuna_dashboard  # type: ignore[import-untyped]
from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]

from rnntune.config import DEFAULT_DASHBOARD_HOST as DEFAULT_HOST
from rnntune.config import DEFAULT_DASHBOARD_PORT as DEFAULT_PORT
from rnntune.exceptions import ConfigError
from rnntune.storage import StorageRole, artifact_store, open_optuna_storage, storage_from_env

LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

WSGIApp = Callable[..., Any]


def _host_name(header: str) -> str:
    """``Host`` without its port, lower case: ``[::1]:8080`` -> ``[::1]``."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[: h.find("]") + 1] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def guard(
    app: WSGIApp, *, allow_writes: bool = False, allowed_hosts: Iterable[str] = ()
) -> WSGIApp:
    """Refuse writes (unless ``allow_writes``) and requests whose Host is not allowed."""
    hosts = {_host_name(h) for h in (*LOCAL_HOSTS, *allowed_hosts) if h.strip()}

    def refuse(start_response: Callable[..., Any], status: str, text: str) -> list[bytes]:
        body = (text + "\n").encode()
        start_response(
            status,
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        host = _host_name(environ.get("HTTP_HOST", ""))
        if host not in hosts:
            return refuse(
                start_response,
                "403 Forbidden",
                f"Host {environ.get('HTTP_HOST', '')!r} is not allowed: open the dashboard as "
                "http://127.0.0.1:PORT/, or start it with --allowed-host NAME",
            )
        if not allow_writes and environ.get("REQUEST_METHOD", "GET").upper() not in SAFE_METHODS:
            return refuse(
                start_response,
                "403 Forbidden",
                "this dashboard is read-only (deleting studies, telling trials, renames and "
                "notes are refused): restart it with --allow-writes to allow changes",
            )
        return app(environ, start_response)

    return guarded


def make_app(
    storage_url: str,
    artifacts_dir: str | None = None,
    *,
    allow_writes: bool = False,
    allowed_hosts: Iterable[str] = (),
) -> WSGIApp:
    """The optuna-dashboard WSGI app on ``storage_url``, with the shared artifact store if given,
    read-only and Host-checked unless told otherwise (:func:`guard`).

    Raises rnntune's StorageError (with the fix in its message) when the database is unreachable
    or has no Optuna schema yet.
    """
    # WORK, not READ: with --allow-writes the dashboard writes notes; on SQLite it then queues
    # behind workers like any writer.
    storage = open_optuna_storage(storage_url, StorageRole.WORK)
    store = artifact_store(artifacts_dir) if artifacts_dir else None
    app: WSGIApp = optuna_dashboard.wsgi(storage, artifact_store=store)
    return guard(app, allow_writes=allow_writes, allowed_hosts=allowed_hosts)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def app_from_env() -> WSGIApp:
    """WSGI factory for ``gunicorn 'rnntune.dashboard:app_from_env()'``.

    Reads RNNTUNE_STORAGE or RNNTUNE_STORAGE_FILE (required; RNNTUNE_STORAGE_PASSWORD_FILE for
    the password) and RNNTUNE_ARTIFACTS (optional), the variables every other rnntune command
    reads, so one environment serves the whole stack; RNNTUNE_DASHBOARD_ALLOW_WRITES and
    RNNTUNE_DASHBOARD_ALLOWED_HOSTS (comma-separated) as :func:`guard` says.
    """
    given = os.environ.get("RNNTUNE_STORAGE", "").strip()
    if not given and not os.environ.get("RNNTUNE_STORAGE_FILE"):
        raise ConfigError(
            "RNNTUNE_STORAGE is not set: point it at the study database, e.g. "
            "postgresql://rnntune_dashboard@db:5432/rnntune with the password in "
            "RNNTUNE_STORAGE_PASSWORD_FILE"
        )
    hosts = os.environ.get("RNNTUNE_DASHBOARD_ALLOWED_HOSTS", "")
    return make_app(
        storage_from_env(given),
        os.environ.get("RNNTUNE_ARTIFACTS") or None,
        allow_writes=_truthy(os.environ.get("RNNTUNE_DASHBOARD_ALLOW_WRITES")),
        allowed_hosts=[h for h in hosts.split(",") if h.strip()],
    )


class _GunicornServer(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
    """gunicorn driven from Python rather than from its command line.

    The app is built in :meth:`load`, which gunicorn calls in each worker process after the fork
    (no ``preload_app``), so no database connection is ever shared between processes.
    """

    def __init__(self, factory: Callable[[], WSGIApp], options: dict[str, Any]) -> None:
        self._factory = factory
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> WSGIApp:
        return self._factory()


def serve(
    storage_url: str,
    artifacts_dir: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    workers: int = 2,
    threads: int = 4,
    *,
    allow_writes: bool = False,
    allowed_hosts: Iterable[str] = (),
) -> None:
    """Serve the dashboard under gunicorn until SIGINT/SIGTERM; blocks.

    The storage is opened once here first, so a wrong URL or an uninitialised database is one
    error in the caller instead of a crash loop in every gunicorn worker.
    """
    probe = open_optuna_storage(storage_url, StorageRole.WORK)
    probe.engine.dispose()  # the workers open their own engines after the fork
    if artifacts_dir:
        artifact_store(artifacts_dir)
    options = {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "timeout": 120,
        "accesslog": "-",
        # gunicorn >= 25 opens a control socket at ~/.gunicorn/gunicorn.ctl by default: two
        # dashboards on one host would share the path, and nothing here needs it.
        "control_socket_disable": True,
    }
    hosts = list(allowed_hosts)
    if host not in ("0.0.0.0", "::", ""):
        hosts.append(f"[{host}]" if ":" in host else host)  # the name it was asked to bind
    _GunicornServer(
        lambda: make_app(
            storage_url, artifacts_dir, allow_writes=allow_writes, allowed_hosts=hosts
        ),
        options,
    ).run()
