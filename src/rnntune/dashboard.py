"""optuna-dashboard on rnntune's study database, served by gunicorn.

The dashboard is a read-only consumer of the schema: it opens the storage with
``skip_table_creation=True`` and never migrates (only ``rnntune init`` does). optuna-dashboard
has no authentication, so :func:`serve` binds 127.0.0.1 unless told otherwise; put an
authenticating reverse proxy in front of it before exposing it (README, "The dashboard").

Three entry points, one app:

- :func:`make_app` builds the WSGI application (tests, custom servers);
- :func:`serve` runs it under gunicorn in-process (``rnntune dashboard``);
- :func:`app_from_env` is the factory the dashboard image runs:
  ``gunicorn 'rnntune.dashboard:app_from_env()'`` (RNNTUNE_STORAGE, RNNTUNE_ARTIFACTS).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import optuna_dashboard  # type: ignore[import-untyped]
from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]

from rnntune.exceptions import ConfigError
from rnntune.storage import artifact_store, open_optuna_storage

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080

WSGIApp = Callable[..., Any]


def make_app(storage_url: str, artifacts_dir: str | None = None) -> WSGIApp:
    """The optuna-dashboard WSGI app on ``storage_url``, with the shared artifact store if given.

    Raises rnntune's StorageError (with the fix in its message) when the database is unreachable
    or has no Optuna schema yet.
    """
    storage = open_optuna_storage(storage_url, read_only=True)
    store = artifact_store(artifacts_dir) if artifacts_dir else None
    app: WSGIApp = optuna_dashboard.wsgi(storage, artifact_store=store)
    return app


def app_from_env() -> WSGIApp:
    """WSGI factory for ``gunicorn 'rnntune.dashboard:app_from_env()'``.

    Reads RNNTUNE_STORAGE (required) and RNNTUNE_ARTIFACTS (optional), the variables every other
    rnntune command reads, so one environment serves the whole stack.
    """
    storage_url = os.environ.get("RNNTUNE_STORAGE", "").strip()
    if not storage_url:
        raise ConfigError(
            "RNNTUNE_STORAGE is not set: point it at the study database, e.g. "
            "postgresql://rnntune:PASSWORD@db:5432/rnntune"
        )
    return make_app(storage_url, os.environ.get("RNNTUNE_ARTIFACTS") or None)


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
) -> None:
    """Serve the dashboard under gunicorn until SIGINT/SIGTERM; blocks.

    The storage is opened once here first, so a wrong URL or an uninitialised database is one
    error in the caller instead of a crash loop in every gunicorn worker.
    """
    probe = open_optuna_storage(storage_url, read_only=True)
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
    _GunicornServer(lambda: make_app(storage_url, artifacts_dir), options).run()
