"""rnntune.dashboard: the optuna-dashboard app on rnntune's storage, read-only, under gunicorn."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna
import pytest

from rnntune.dashboard import app_from_env, make_app
from rnntune.exceptions import ConfigError, StorageError


def get(app: Any, path: str) -> tuple[str, bytes]:
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = path
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, exc_info=None: status.append(s)))
    return status[0], body


@pytest.fixture
def storage_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    for family in ("rnn", "gru", "lstm"):
        study = optuna.create_study(study_name=f"exp.{family}", storage=url)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    return url


def test_lists_the_studies_and_the_artifact_store(storage_url: str, tmp_path: Path) -> None:
    app = make_app(storage_url, str(tmp_path / "artifacts"))
    assert get(app, "/")[0].startswith("302")
    status, body = get(app, "/api/studies")
    assert status.startswith("200")
    names = [s["study_name"] for s in json.loads(body)["study_summaries"]]
    assert names == ["exp.rnn", "exp.gru", "exp.lstm"]
    assert json.loads(get(app, "/api/meta")[1])["artifact_is_available"] is True


def test_never_creates_schema(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    with pytest.raises(StorageError, match="rnntune init"):
        make_app(f"sqlite:///{path}")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []


def test_app_from_env(storage_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RNNTUNE_STORAGE", raising=False)
    with pytest.raises(ConfigError, match="RNNTUNE_STORAGE is not set"):
        app_from_env()
    monkeypatch.setenv("RNNTUNE_STORAGE", storage_url)
    monkeypatch.delenv("RNNTUNE_ARTIFACTS", raising=False)
    app = app_from_env()
    assert json.loads(get(app, "/api/meta")[1])["artifact_is_available"] is False


@pytest.mark.slow
def test_serve_runs_gunicorn_on_localhost(storage_url: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = f"from rnntune.dashboard import serve; serve({storage_url!r}, None, port={port})"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies") as r:
                    assert len(json.load(r)["study_summaries"]) == 3
                break
            except OSError:
                assert proc.poll() is None, "serve() exited"
                assert time.monotonic() < deadline, "the dashboard did not answer in 60 s"
                time.sleep(0.5)
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
