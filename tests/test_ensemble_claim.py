"""Repeats claimed as groups (trained as one ensemble), on real SQLite and real PostgreSQL:
each repeat stays its own row, claimed by one group at a time, completed exactly once, and a
killed group is reclaimed and resumed from its members' checkpoints."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from rnntune import ensemble, evaluation, faults, state
from rnntune.experiment import Experiment, register
from rnntune.storage import StorageRole, open_optuna_storage
from tests.conftest import TINY_DATA
from tests.helpers import rnntune

GRACE = 10


def setup(url: str, repeats: int, families: list[str]) -> tuple[Any, Experiment]:
    st = open_optuna_storage(url, StorageRole.MIGRATE)
    exp, _ = register(
        st,
        {
            "name": "t",
            "data": TINY_DATA,
            "trials": 1,
            "repeats": repeats,
            "max_epochs": 1,
            "families": families,
        },
        None,
        2,
        GRACE,
    )
    params = {"hidden_size": 8, "learning_rate": 0.01, "batch_size": 32}
    for f in families:
        evaluation.ensure_jobs(st.engine, exp, f, params)
    return st, exp


def claim(st: Any, exp: Experiment, worker: str, device: str = "cpu") -> list[evaluation.Job]:
    return evaluation.claim_group(st.engine, exp, worker, exp.grace_period, set(), device)


def test_group_size_follows_family_and_device() -> None:
    from rnntune.models import ModelConfig

    assert ensemble.group_size(ModelConfig("gru", 1, 32), "cpu") == 10
    assert ensemble.group_size(ModelConfig("rnn", 1, 16), "cpu") == 10
    # At hidden 64 the fast single-model layers beat the batched loop on CPU (measured).
    assert ensemble.group_size(ModelConfig("rnn", 1, 64), "cpu") == 1
    assert ensemble.group_size(ModelConfig("gru", 1, 64), "cuda") == 10
    # torch's fused oneDNN LSTM beats the batched loop on CPU (measured): one at a time.
    assert ensemble.group_size(ModelConfig("lstm", 1, 32), "cpu") == 1
    assert ensemble.group_size(ModelConfig("lstm", 1, 32), "cuda") == 10
    # Dropout between layers cannot be reproduced member by member: one at a time.
    assert ensemble.group_size(ModelConfig("gru", 1, 8, num_layers=2, dropout=0.1), "cpu") == 1


def test_a_group_is_one_family_up_to_k_in_one_claim(storage_url: str) -> None:
    st, exp = setup(storage_url, repeats=4, families=["gru", "lstm", "rnn"])
    first = claim(st, exp, "w1")
    # repeat 0 of the first family in (repeat, family) order, then that family's next repeats
    assert [j.family for j in first] == ["gru"] * 4
    assert sorted(j.repeat for j in first) == [0, 1, 2, 3]
    lstm = claim(st, exp, "w2")
    assert [(j.family, j.repeat) for j in lstm] == [("lstm", 0)]  # k = 1 for LSTM on CPU
    rnn = claim(st, exp, "w3")
    assert [j.family for j in rnn] == ["rnn"] * 4
    # A family this worker trains alone (its ensemble raised here) comes one at a time.
    rest = evaluation.claim_group(
        st.engine, exp, "w4", exp.grace_period, set(), "cuda", frozenset({"lstm"})
    )
    assert [(j.family, j.repeat) for j in rest] == [("lstm", 1)]
    rows = {(r.family, r.repeat): r for r in state.eval_runs(st.engine, exp)}
    assert all(rows[("gru", j.repeat)].worker_id == "w1" for j in first)
    assert all(r.status == "running" for r in rows.values() if r.worker_id)


def test_group_heartbeat_release_and_reclaim_are_per_repeat(storage_url: str) -> None:
    from datetime import timedelta

    from rnntune.storage import EvaluationRunRow, session_scope

    st, exp = setup(storage_url, repeats=3, families=["gru"])
    group = claim(st, exp, "w1")
    assert len(group) == 3
    assert evaluation.heartbeat(st.engine, [j.id for j in group], "w1")
    # One member finishes and is completed on its own; the others are still the group's.
    assert evaluation.complete(st.engine, group[0], "w1", {"epochs_trained": 1})
    assert not evaluation.heartbeat(st.engine, [j.id for j in group], "w1")  # one is done
    assert evaluation.heartbeat(st.engine, [j.id for j in group[1:]], "w1")
    # The group's worker goes silent: its two running members are reclaimed by a new group.
    with session_scope(st.engine) as s:
        for j in group[1:]:
            row = s.get(EvaluationRunRow, j.id)
            assert row is not None and row.heartbeat_at is not None
            row.heartbeat_at = row.heartbeat_at - timedelta(seconds=GRACE + 5)
    again = claim(st, exp, "w2")
    assert sorted(j.repeat for j in again) == [1, 2]
    # The silent worker's late result is refused: each repeat completes exactly once.
    assert not evaluation.complete(st.engine, group[1], "w1", {"epochs_trained": 1})
    evaluation.release_group(st.engine, again, "w2")  # a hand-back is not an error
    rows = state.eval_runs(st.engine, exp)
    assert [(r.status, r.attempts) for r in rows] == [("done", 0), ("pending", 0), ("pending", 0)]
    assert [r.reclaims for r in rows] == [0, 1, 1]


@pytest.mark.timeout(120)
def test_concurrent_group_claims_take_each_repeat_once(
    storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ensemble, "group_size", lambda config, device: 3)
    st, exp = setup(storage_url, repeats=10, families=["gru", "lstm", "rnn"])
    taken: dict[str, list[tuple[str, int]]] = {}
    errors: list[BaseException] = []

    def claimer(name: str) -> None:
        try:
            mine = taken.setdefault(name, [])
            while group := claim(st, exp, name):
                assert len(group) <= 3 and len({j.family for j in group}) == 1
                mine += [(j.family, j.repeat) for j in group]
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=100)
    assert not errors, errors
    every = [r for mine in taken.values() for r in mine]
    assert len(every) == 30 and len(set(every)) == 30
    owners = {(r.family, r.repeat): r.worker_id for r in state.eval_runs(st.engine, exp)}
    for name, mine in taken.items():
        assert all(owners[r] == name for r in mine)


def _worker_env(tmp_path: Path, failpoint: str | None) -> dict[str, str]:
    env = {
        "RNNTUNE_LOG_LEVEL": "INFO",
        "RNNTUNE_FAILPOINTS_LOG": str(tmp_path / "faults.log"),
    }
    if failpoint:
        env[faults.ENV] = failpoint
    return env


@pytest.mark.timeout(400)
@pytest.mark.parametrize("point", ["group.after_checkpoint=kill@2", "group.after_claim=kill"])
def test_a_killed_group_is_reclaimed_and_resumed_each_repeat_once(
    storage_url: str, tmp_path: Path, point: str
) -> None:
    """A real worker SIGKILLs itself inside a group (after its claim, or after the group's second
    epoch checkpoint); a fresh worker reclaims the repeats at once (the dead worker is on this
    host) and resumes each member from its own checkpoint; every repeat ends done exactly once,
    with the result of an undisturbed run."""
    # Hidden 16: GRU repeats train as a group on the CPU only up to hidden 32 (ensemble.group_size).
    (tmp_path / "exp.toml").write_text(
        '[experiment]\nfamilies = ["gru"]\n\n[search_space.hidden_size]\n'
        'type = "categorical"\nchoices = [16]\n'
    )
    common = ["--storage", storage_url, "--experiment", "g"]
    rnntune(
        "init",
        *common,
        "--config",
        str(tmp_path / "exp.toml"),
        "--data",
        TINY_DATA,
        "--trials",
        "1",
        "--repeats",
        "4",
        "--max-epochs",
        "4",
        "--pruner",
        "none",
        cwd=tmp_path,
    )
    worker = [*common, "--artifacts", str(tmp_path / "art"), "--threads", "1", "--device", "cpu"]
    killed = rnntune("worker", *worker, cwd=tmp_path, env=_worker_env(tmp_path, point), check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert point.split("=")[0] in (tmp_path / "faults.log").read_text()
    st = open_optuna_storage(storage_url, StorageRole.WORK)
    from rnntune.experiment import find_or_raise_by_name

    exp = find_or_raise_by_name(st.engine, "g")
    running = [r for r in state.eval_runs(st.engine, exp) if r.status == "running"]
    assert len(running) == 4, "the group's four repeats were claimed together"
    resumed = rnntune("worker", *worker, cwd=tmp_path, env=_worker_env(tmp_path, None))
    rows = state.eval_runs(st.engine, exp)
    assert [(r.repeat, r.status) for r in rows] == [(i, "done") for i in range(4)]
    assert all(r.reclaims == 1 and r.attempts == 0 for r in rows)
    assert "result dropped" not in resumed.stderr
    if "checkpoint" in point:
        assert resumed.stderr.count("after epoch 2") == 4, resumed.stderr[-3000:]
    # Each result is its repeat's trained alone, undisturbed (same params and seed).
    from rnntune.experiment import load_data
    from rnntune.train import classification_metrics, fit, model_and_train_config, predict_proba

    splits = load_data(exp.config, None).splits
    for r in rows:
        model_cfg, train_cfg = model_and_train_config(
            "gru", r.params, exp.config, splits.X_train.shape[2], r.seed, "cpu"
        )
        solo = fit(model_cfg, train_cfg, *splits.fit_parts())
        m = classification_metrics(splits.y_test, predict_proba(solo.model, splits.X_test))
        assert r.epochs_trained == solo.epochs_trained
        assert r.metrics["accuracy"] == m["accuracy"]
        assert r.metrics["macro_f1"] == m["macro_f1"]
        assert r.metrics["roc_auc"] == pytest.approx(m["roc_auc"], abs=1e-3)


def test_resplit_repeats_train_one_at_a_time(sqlite_url: str) -> None:
    """Under --resplit each repeat has its own split: members of one ensemble would share one."""
    import dataclasses

    st, exp = setup(sqlite_url, repeats=3, families=["gru"])
    params = {"hidden_size": 8, "learning_rate": 0.01, "batch_size": 32}
    assert evaluation.group_size("gru", params, exp.config, "cpu") == 3
    resplit = dataclasses.replace(exp.config, resplit=True)
    assert evaluation.group_size("gru", params, resplit, "cpu") == 1
