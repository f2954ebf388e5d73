"""Data safety at `rnntune init`: concurrent first inits, an interrupted migration, and studies
that rnntune did not create."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect

from rnntune.cli import main
from tests.conftest import TINY_DATA

N_CONCURRENT = 4


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNTUNE_")}
    env["RNNTUNE_LOG_LEVEL"] = "WARNING"
    return env


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_concurrent_first_init_on_an_empty_postgres_database(pg_url: str, tmp_path: Path):
    """Several real `rnntune init` processes at once on a fresh database: one registers the
    experiment, the others find it registered, none errors."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "rnntune", "init", "--storage", pg_url, "--data", TINY_DATA],
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(N_CONCURRENT)
    ]
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    codes = [p.returncode for p in procs]
    assert codes == [0] * N_CONCURRENT, outs
    verbs = sorted("already registered" in o for o, _ in outs)
    assert verbs == [False] + [True] * (N_CONCURRENT - 1), outs
    storage = optuna.storages.RDBStorage(pg_url.replace("postgresql://", "postgresql+psycopg2://"))
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert names == ["default.gru", "default.lstm", "default.rnn"]
    storage.engine.dispose()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
@pytest.mark.timeout(300)
def test_interrupted_migration_leaves_the_database_usable(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'study.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    env = {**_env(), "RNNTUNE_FAILPOINTS": "migrate.before_commit=kill"}
    proc = subprocess.run(
        [sys.executable, "-m", "rnntune", "init", "--storage", url, "--data", TINY_DATA],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert not {t for t in tables if t.startswith("rnntune_")}, tables  # rolled back whole
    # The next init upgrades and registers as if nothing had happened.
    again = subprocess.run(
        [sys.executable, "-m", "rnntune", "init", "--storage", url, "--data", TINY_DATA],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert again.returncode == 0, again.stderr
    assert "registered" in again.stdout
    status = CliRunner().invoke(main, ["status", "--storage", url], catch_exceptions=False)
    assert status.exit_code == 0, status.output


def _dump(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        text = "\n".join(conn.iterdump())
    conn.close()
    return text


@pytest.mark.parametrize(
    ("make", "expect"),
    [
        (
            lambda url: optuna.create_study(storage=url, study_name="default.gru"),
            "already exists in sqlite:///",
        ),
        (
            lambda url: optuna.create_study(storage=url, study_name="default.lstm"),
            "and its direction is minimize; nothing was changed",
        ),
        (
            lambda url: optuna.create_study(
                storage=url, study_name="default.gru", direction="maximize"
            ).enqueue_trial({"x": 1}),
            "it has trials but was not created by rnntune",
        ),
    ],
    ids=["minimize-study", "minimize-direction", "foreign-trials"],
)
def test_init_refuses_to_adopt_a_study_it_did_not_create(make, expect: str, tmp_path: Path):  # noqa: ANN001
    url = f"sqlite:///{tmp_path / 'study.db'}"
    make(url)
    before = _dump(tmp_path / "study.db")
    r = CliRunner().invoke(main, ["init", "--storage", url, "--data", TINY_DATA])
    lines = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert expect in lines[0] and "use a new --experiment name" in lines[0], lines[0]
    # Nothing of rnntune's beyond the (empty) schema: no experiment row, no new study.
    names = [s.study_name for s in optuna.get_all_study_summaries(url)]
    assert len(names) == 1 and names[0] in lines[0]
    assert "rnntune_experiments VALUES" not in _dump(tmp_path / "study.db")
    assert before.count("INSERT INTO") <= _dump(tmp_path / "study.db").count("INSERT INTO")
    print(lines[0])


def test_init_refuses_a_study_of_another_experiment(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=url, study_name="default.gru", direction="maximize")
    study.set_user_attr("rnntune_experiment", "other")
    r = CliRunner().invoke(main, ["init", "--storage", url, "--data", TINY_DATA])
    assert r.exit_code == 1
    assert "it belongs to rnntune experiment 'other'" in r.output


def test_an_empty_half_made_study_is_adopted(tmp_path: Path) -> None:
    """A crash between creating a study and tagging it leaves an empty, untagged study: ours."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(storage=url, study_name="default.gru", direction="maximize")
    r = CliRunner().invoke(main, ["init", "--storage", url, "--data", TINY_DATA])
    assert r.exit_code == 0, r.output
    study = optuna.load_study(study_name="default.gru", storage=url)
    assert study.user_attrs["rnntune_experiment"] == "default"


def test_foreign_sqlite_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users VALUES (1, 'ada')")
    conn.close()
    before = _dump(path)
    r = CliRunner().invoke(main, ["init", "--storage", f"sqlite:///{path}", "--data", TINY_DATA])
    assert r.exit_code == 1
    assert "already holds tables of another application (users)" in r.output
    assert _dump(path) == before


@pytest.mark.postgres
def test_init_loads_the_data_outside_the_experiment_lock(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """L2: register held the experiment's lock while loading the data (minutes for a large
    set), so every other init of it waited on the lock meanwhile. The data is now loaded before
    the lock is taken; a second init of the same experiment loads it before the lock too."""
    from sqlalchemy import text

    from rnntune import experiment
    from rnntune.storage import StorageRole, normalize_url, open_optuna_storage
    from rnntune.storage._locks import _key

    probe = create_engine(normalize_url(pg_url))
    free_while_loading: list[bool] = []
    real_load = experiment.load_data

    def load_and_probe(*args, **kwargs):  # type: ignore[no-untyped-def]
        with probe.connect() as conn:
            key = _key("rnntune:experiment:locks")
            got = conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key}).scalar()
            free_while_loading.append(bool(got))
            conn.rollback()
        return real_load(*args, **kwargs)

    monkeypatch.setattr(experiment, "load_data", load_and_probe)
    st = open_optuna_storage(pg_url, StorageRole.MIGRATE)
    explicit = {"name": "locks", "data": TINY_DATA, "trials": 1, "families": ["gru"]}
    _, created = experiment.register(st, explicit)
    _, again = experiment.register(st, explicit)
    assert (created, again) == (True, False)
    assert free_while_loading == [True, True]
    probe.dispose()
