"""The evaluation side's job protocol, in process, on SQLite and PostgreSQL (seconds each):
repeat jobs are created once, claimed by one worker at a time, completed exactly once, taken
over from a silent worker and grouped for an ensemble. Training itself is tested elsewhere
(tests/test_train.py, tests/test_ensemble.py); the killed-process versions of these cases are in
tests/test_faults.py and tests/test_ensemble_claim.py."""

from __future__ import annotations

from typing import Any

import pytest

from rnntune import evaluation, state
from tests.test_claim_protocol import _age_repeat, setup

PARAMS = {"hidden_size": 16, "learning_rate": 1e-3, "batch_size": 32}
RESULT: dict[str, Any] = {"metrics": {"accuracy": 0.5}, "epochs_trained": 1, "train_seconds": 0.1}


def _claim(st: Any, exp: Any, worker: str) -> evaluation.Job | None:
    return evaluation.claim_job(st.engine, exp, worker, exp.grace_period, set())


def test_jobs_are_created_once_with_the_paired_seeds(storage_url: str) -> None:
    st, exp, _ = setup(storage_url, repeats=3)
    for _ in range(3):  # every worker that finds tuning over calls it; one set of rows results
        evaluation.ensure_jobs(st.engine, exp, "gru", PARAMS)
    rows = state.eval_runs(st.engine, exp)
    assert sorted(r.repeat for r in rows) == [0, 1, 2]
    assert all(r.status == "pending" and r.params == PARAMS for r in rows)
    assert len({r.seed for r in rows}) == 3  # each repeat its own seed


def test_each_repeat_is_claimed_by_one_worker_and_completed_once(storage_url: str) -> None:
    st, exp, _ = setup(storage_url, repeats=3)
    evaluation.ensure_jobs(st.engine, exp, "gru", PARAMS)
    jobs = [_claim(st, exp, f"w{i}") for i in range(3)]
    assert all(j is not None for j in jobs)
    assert len({j.id for j in jobs if j}) == 3  # no repeat handed out twice
    assert _claim(st, exp, "late") is None  # all running, none stale
    assert not evaluation.all_done(st.engine, exp, ["gru"])
    for i, job in enumerate(jobs):
        assert job is not None
        assert evaluation.complete(st.engine, job, f"w{i}", RESULT)
        assert not evaluation.complete(st.engine, job, f"w{i}", RESULT)  # once only
    assert evaluation.all_done(st.engine, exp, ["gru"])
    assert _claim(st, exp, "after") is None


def test_a_silent_workers_repeat_is_taken_over_and_the_old_owner_cannot_complete_it(
    storage_url: str,
) -> None:
    st, exp, _ = setup(storage_url)
    evaluation.ensure_jobs(st.engine, exp, "gru", PARAMS)
    job = _claim(st, exp, "old")
    assert job is not None
    assert evaluation.heartbeat(st.engine, job.id, "old")
    assert _claim(st, exp, "new") is None  # alive: nobody else may take it
    _age_repeat(st, job.id, exp.grace_period + 5)  # its worker went silent
    taken = _claim(st, exp, "new")
    assert taken is not None and taken.id == job.id
    assert not evaluation.heartbeat(st.engine, job.id, "old")  # the old owner learns it
    assert not evaluation.complete(st.engine, job, "old", RESULT)
    assert evaluation.complete(st.engine, taken, "new", RESULT)
    (row,) = state.eval_runs(st.engine, exp)
    assert row.status == "done" and row.worker_id == "new" and row.reclaims == 1


def test_a_handed_back_repeat_is_claimable_again_and_not_counted_as_an_error(
    storage_url: str,
) -> None:
    st, exp, _ = setup(storage_url)
    evaluation.ensure_jobs(st.engine, exp, "gru", PARAMS)
    job = _claim(st, exp, "w1")
    assert job is not None
    evaluation.release(st.engine, job, "w1")  # SIGTERM: handed back
    again = _claim(st, exp, "w2")
    assert again is not None and again.id == job.id and again.attempts == 0


@pytest.mark.parametrize(("device", "hidden", "expected"), [("cpu", 16, 3), ("cpu", 64, 1)])
def test_a_group_claims_the_familys_next_repeats_in_one_step(
    storage_url: str, device: str, hidden: int, expected: int
) -> None:
    """GRU at hidden 16 trains its repeats as one ensemble on CPU; at hidden 64 one at a time
    (evaluation.group_size); each member stays its own row."""
    st, exp, _ = setup(storage_url, repeats=3)
    evaluation.ensure_jobs(st.engine, exp, "gru", {**PARAMS, "hidden_size": hidden})
    group = evaluation.claim_group(st.engine, exp, "w1", exp.grace_period, set(), device)
    assert len(group) == expected
    assert len({j.repeat for j in group}) == expected
    assert evaluation.heartbeat(st.engine, [j.id for j in group], "w1")
    rest = evaluation.claim_group(st.engine, exp, "w2", exp.grace_period, set(), device)
    assert {j.id for j in rest}.isdisjoint({j.id for j in group})
