"""Failpoints: every commit boundary in the code is in one table, and the fault matrix proves
that a process stopped at any of them (SIGKILL, a database error, SIGTERM) leaves a study that
fresh workers finish exactly: the budget of finished trials per family, each repeat once, no
duplicated or lost result, each retry resumed from its checkpoint, `rnntune status` and the
report agreeing with the database. No sleeps decide where a fault lands: the failpoint does.

The matrix runs in full on PostgreSQL and on a fixed half of its cases on SQLite (every point at
least once); ``RNNTUNE_FAULT_MATRIX=full`` runs every case on both
(``benchmarks/fault_matrix.sh``).

How a case runs (real processes throughout):

1. ``rnntune init`` (for an ``init.*`` point: with the fault), then for a worker point a real
   ``rnntune worker`` with ``RNNTUNE_FAILPOINTS=<point>=<action>`` runs alone until the fault
   fires once (``RNNTUNE_FAILPOINTS_LOG`` proves it did); for an ``export.*`` point a plain
   worker finishes the study and ``rnntune evaluate`` hits the fault in the final export;
2. fresh ``rnntune worker`` and ``rnntune evaluate`` processes run the experiment to the end;
3. the invariants are checked against the database, `rnntune status` and ``report.json``.

The processes are forked from a fork server that imported torch once (tests/helpers.py,
``fork_cli``): each is a separate process running the CLI's own code, but a case takes a few
seconds instead of the ~10 s of interpreter start-ups a loaded 2-core machine spends per process.
"""

from __future__ import annotations

import ast
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from rnntune import faults
from rnntune.experiment import find_or_raise_by_name
from rnntune.storage import StorageRole, open_optuna_storage
from tests.helpers import (
    FAST,
    Forked,
    assert_exact,
    check_retries,
    fork_cli,
    output,
    wait_all,
    worker_args,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "rnntune"

FULL = os.environ.get("RNNTUNE_FAULT_MATRIX", "").strip().lower() == "full"
FULL_BACKEND = "postgres"  # the other backend runs a fixed half of the cases in CI

DATA = "synthetic:n=240,length=8,features=2,seed=1"
TRIALS, REPEATS, EPOCHS = 2, 2, 3
FAMILIES = ("rnn", "gru", "lstm")
EXPERIMENT_FILE = f"""
[experiment]
data = "{DATA}"
trials = {TRIALS}
repeats = {REPEATS}
max_epochs = {EPOCHS}
families = {json.dumps(list(FAMILIES))}

[search_space]
hidden_size = {{ type = "categorical", choices = [8, 16] }}
learning_rate = {{ type = "float", low = 0.001, high = 0.01, log = true }}
batch_size = {{ type = "categorical", choices = [64] }}
"""


# -- the table ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """How to reach a point. ``stage``: which process hits it (init, worker or the final
    evaluate). ``arm``: failpoints that must fire first in the same process to get there (a
    hand-back needs a SIGTERM). ``before``: a process killed beforehand to leave the state the
    point needs (a stale trial). ``term``: SIGTERM differs from SIGKILL here (the worker's
    handler hands its work back)."""

    stage: str
    term: bool = False
    arm: str = ""
    before: str = ""

    @property
    def actions(self) -> tuple[str, ...]:
        return ("kill", "db-error", "term") if self.term else ("kill", "db-error")


MATRIX: dict[str, Case] = {
    "migrate.before_commit": Case("init"),
    "init.after_migrate": Case("init"),
    "init.after_studies": Case("init"),
    "claim.after_stale_fail": Case("worker", term=True, before="trial.after_report=kill"),
    "claim.after_ask": Case("worker", term=True),
    "claim.after_heartbeat": Case("worker", term=True),
    "claim.after_tag": Case("worker", term=True),
    "trial.after_checkpoint": Case("worker", term=True),
    # A retry resumes from the checkpoint a worker killed after its first report left.
    "trial.after_resume": Case("worker", term=True, before="trial.after_report=kill"),
    "trial.after_report": Case("worker", term=True),
    "tell.before": Case("worker", term=True),
    "tell.after": Case("worker", term=True),
    "handback.after_fail": Case("worker", arm="trial.after_report=term"),
    "repeat.after_create": Case("worker", term=True),
    "repeat.after_claim": Case("worker", term=True),
    "repeat.after_checkpoint": Case("worker", term=True),
    "repeat.before_complete": Case("worker", term=True),
    "repeat.after_complete": Case("worker", term=True),
    "repeat.after_release": Case("worker", arm="repeat.after_checkpoint=term"),
    # RNN and GRU repeats (hidden <= 32 on CPU) are trained as one group (rnntune.ensemble).
    "group.after_claim": Case("worker", term=True),
    "group.after_checkpoint": Case("worker", term=True),
    "export.after_write": Case("evaluate"),
    "export.after_upload": Case("evaluate"),
}

# Cases that fail because of a product defect not fixed yet: (backend or "*", point, action) ->
# the defect. Each is xfail(strict=True), so a fix makes the suite say so.
KNOWN_DEFECTS: dict[tuple[str, str, str], str] = {}


def points_in_source() -> set[str]:
    """Every ``failpoint("NAME")`` call in src/rnntune, by parsing the code (not grepping: a
    docstring that mentions one is not a point)."""
    found: set[str] = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = (
                f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            )
            if name != "failpoint":
                continue
            assert node.args and isinstance(node.args[0], ast.Constant), (
                f"{path}:{node.lineno}: failpoint() takes a literal name, so this table can see it"
            )
            found.add(node.args[0].value)
    return found


def test_every_point_in_the_code_is_in_the_table_and_the_matrix() -> None:
    in_code = points_in_source()
    assert in_code, "no failpoint() call found in src/: the parser is broken"
    assert in_code == set(faults.POINTS), (
        f"in the code, not in faults.POINTS: {sorted(in_code - set(faults.POINTS))}; "
        f"in faults.POINTS, not in the code: {sorted(set(faults.POINTS) - in_code)}"
    )
    assert set(MATRIX) == set(faults.POINTS), (
        "a commit boundary without a fault-matrix case (add it to MATRIX): "
        f"{sorted(set(faults.POINTS) - set(MATRIX))}; stale MATRIX entries: "
        f"{sorted(set(MATRIX) - set(faults.POINTS))}"
    )
    for point, case in MATRIX.items():
        for spec in (case.arm, case.before):
            if spec:
                faults.parse(spec)  # the helpers' own specs name real points and actions
        assert case.stage in ("init", "worker", "evaluate"), point


def test_points_are_listed_by_the_module(capsys: pytest.CaptureFixture[str]) -> None:
    assert faults.main(["--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == sorted(faults.POINTS)
    assert faults.main(["--bogus"]) == 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("claim.after_ask", "is not NAME=ACTION"),
        ("=kill", "is not NAME=ACTION"),
        ("claim.after_ask=", "is not NAME=ACTION"),
        ("claim.after_ask=explode", "action must be one of"),
        ("claim.after_ask=kill@0", "@N needs a positive whole number"),
        ("claim.after_ask=kill@two", "@N needs a positive whole number"),
        ("claim.after_ask=kill@-1", "@N needs a positive whole number"),
        ("claim.after_ask=sleep:soon", "sleep:S needs seconds"),
        ("no.such_point=kill", "unknown failpoint 'no.such_point'"),
        ("tell.before=kill,nope", "is not NAME=ACTION"),
    ],
)
def test_parse_refuses_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(faults.FailpointError, match=re.escape(message)):
        faults.parse(spec)


def test_parse_reads_actions_counts_and_sleeps() -> None:
    assert faults.parse("") == {}
    assert faults.parse(
        " claim.after_ask=kill , tell.before=db-error@3,tell.after=sleep:0.5@2"
    ) == {
        "claim.after_ask": ("kill", 0.0, 1),
        "tell.before": ("db-error", 0.0, 3),
        "tell.after": ("sleep", 0.5, 2),
    }


def test_failpoint_fires_once_at_the_nth_hit_and_logs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    log = tmp_path / "fired.log"
    monkeypatch.setenv(faults.ENV, "tell.before=db-error@2,tell.after=error")
    monkeypatch.setenv(faults.LOG_ENV, str(log))
    faults.reset()
    try:
        faults.failpoint("tell.before")  # first hit: armed for the second
        faults.failpoint("claim.after_ask")  # not armed: a no-op
        assert not log.exists()
        with pytest.raises(OperationalError, match="failpoint"):
            faults.failpoint("tell.before")
        faults.failpoint("tell.before")  # fired once; never again
        with pytest.raises(RuntimeError, match="injected error"):
            faults.failpoint("tell.after")
        assert log.read_text().split("\n")[:2] == [
            f"tell.before db-error {os.getpid()}",
            f"tell.after error {os.getpid()}",
        ]
    finally:
        monkeypatch.delenv(faults.ENV)
        faults.reset()
    faults.failpoint("tell.before")  # unset: nothing happens


# -- the matrix -----------------------------------------------------------------------------
def _cases() -> list[Any]:
    out = []
    for i, point in enumerate(sorted(MATRIX)):
        case = MATRIX[point]
        for j, action in enumerate(case.actions):
            for backend in ("postgres", "sqlite"):
                # CI: every case on FULL_BACKEND; on the other, alternate actions point by point,
                # so every point still runs there with kill or db-error.
                if not (FULL or backend == FULL_BACKEND or (i + j) % 2 == 0):
                    continue
                marks: list[Any] = [pytest.mark.slow]
                if backend == "postgres":
                    marks.append(pytest.mark.postgres)
                defect = KNOWN_DEFECTS.get((backend, point, action)) or KNOWN_DEFECTS.get(
                    ("*", point, action)
                )
                if defect:
                    marks.append(pytest.mark.xfail(strict=True, reason=defect))
                out.append(
                    pytest.param(
                        backend, point, action, id=f"{backend}-{point}-{action}", marks=marks
                    )
                )
    return out


def _init_args(url: str, cfg: Path) -> list[str]:
    from rnntune.cli import init

    args = ["init", "--storage", url, "--config", str(cfg)]
    # Where the experiment stores the heartbeat and grace period, init takes them.
    if any(p.name == "heartbeat_interval" for p in init.params):
        args += FAST
    return args


def _fired(log: Path) -> list[tuple[str, str]]:
    if not log.exists():
        return []
    return [tuple(line.split()[:2]) for line in log.read_text().splitlines() if line.strip()]


def _finish(p: Forked, timeout: float, what: str) -> int:
    try:
        return p.wait(timeout)
    except Exception:  # noqa: BLE001 - TimeoutExpired: show what it was doing
        raise AssertionError(
            f"{what} did not end in {timeout:.0f}s:\n{output(p)[-4000:]}"
        ) from None


def _ok(p: Forked, what: str, timeout: float = 120) -> None:
    code = _finish(p, timeout, what)
    assert code == 0, f"{what} exited {code}:\n{output(p)[-4000:]}"


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("backend", "point", "action"), _cases())
def test_fault_matrix(
    backend: str, point: str, action: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'study.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    case = MATRIX[point]
    cfg = tmp_path / "experiment.toml"
    cfg.write_text(EXPERIMENT_FILE)
    fired_log = tmp_path / "fired.log"
    spec = ",".join(filter(None, [case.arm, f"{point}={action}"]))
    fault_env = {faults.ENV: spec, faults.LOG_ENV: str(fired_log)}
    work = worker_args(url, tmp_path)
    evaluate = [*worker_args(url, tmp_path, command="evaluate"), "--out", str(tmp_path / "out")]

    # 1. One process hits the fault.
    if case.stage == "init":
        faulty = fork_cli(_init_args(url, cfg), cwd=tmp_path, env=fault_env, name="init-faulty")
    else:
        _ok(fork_cli(_init_args(url, cfg), cwd=tmp_path, name="init"), "rnntune init")
        if case.before:
            before_log = tmp_path / "before.log"
            first = fork_cli(
                work,
                cwd=tmp_path,
                env={faults.ENV: case.before, faults.LOG_ENV: str(before_log)},
                name="worker-before",
            )
            _finish(first, 120, "the worker killed beforehand")
            assert _fired(before_log) == [tuple(case.before.split("="))], output(first)
        if case.stage == "evaluate":
            _ok(fork_cli(work, cwd=tmp_path, name="worker-plain"), "the worker", timeout=180)
            faulty = fork_cli(
                [*worker_args(url, tmp_path, command="evaluate"), "--out", str(tmp_path / "out0")],
                cwd=tmp_path,
                env=fault_env,
                name="evaluate-faulty",
            )
        else:
            faulty = fork_cli(work, cwd=tmp_path, env=fault_env, name="worker-faulty")
    code = _finish(faulty, 180, f"the process with {spec}")
    log = output(faulty)
    assert (point, action) in _fired(fired_log), f"the fault never fired:\n{log[-4000:]}"
    assert _fired(fired_log).count((point, action)) == 1
    if action == "kill":
        assert code == -9, log[-4000:]
    elif action == "term" or case.stage == "worker":
        # A worker waits out a lost database and goes on; SIGTERM hands the work back.
        assert code == 0, f"exit {code} after {spec}:\n{log[-4000:]}"
    elif code != 0:
        # A lost database in init or the final export: one clear line, never a traceback.
        assert "Traceback" not in log and re.search(r"^Error: ", log, re.M), log[-4000:]

    # 2. Fresh processes run the experiment to the end.
    if case.stage == "init":
        _ok(fork_cli(_init_args(url, cfg), cwd=tmp_path, name="init-again"), "rnntune init again")
    # Two workers (the final job's export, with its plots, costs seconds: it runs in the cases
    # about the export, and in tests/test_distributed.py).
    fresh = [
        fork_cli(work, cwd=tmp_path, name="worker-fresh"),
        fork_cli(evaluate if case.stage == "evaluate" else work, cwd=tmp_path, name="fresh"),
    ]
    wait_all(fresh, timeout=180)
    assert [p.returncode for p in fresh] == [0, 0], "\n=====\n".join(
        output(p)[-3000:] for p in fresh
    )
    assert _fired(fired_log).count((point, action)) == 1

    # 3. The invariants.
    res = check_study(url, point, action)
    report_json = tmp_path / "out" / "report.json" if case.stage == "evaluate" else None
    check_status_and_report(url, report_json, res)
    if case.stage == "evaluate":
        check_published(url)


def check_study(url: str, point: str, action: str) -> dict[str, Any]:
    """Exactly the budget, each repeat once, no duplicated or lost result, retries resumed."""
    res = assert_exact(url, budget=TRIALS, repeats=REPEATS)
    resumed = check_retries(res, FAMILIES)  # one fault never exhausts a retry chain
    # The fault really interrupted a trial with a checkpoint, and its retry used it.
    if action in ("kill", "term") and point in (
        "trial.after_checkpoint",
        "trial.after_report",
        "trial.after_resume",
    ):
        assert any(start >= 1 for _, start in resumed), resumed
    if action == "kill" and point == "trial.after_checkpoint":
        # Stopped between the checkpoint and the report: the retry trusts the checkpoint.
        assert any(start == done + 1 for done, start in resumed), resumed
    if action == "kill" and point == "tell.before":
        assert any(start == EPOCHS for _, start in resumed), resumed
    if action == "kill" and point in (
        "repeat.after_claim",
        "repeat.after_checkpoint",
        "repeat.before_complete",
    ):
        # The killed worker's repeat was taken over from it, and done once.
        assert any(r.reclaims >= 1 for r in res["runs"]), [r.reclaims for r in res["runs"]]
    for r in res["runs"]:
        assert r.metrics and r.epochs_trained and r.epochs_trained <= EPOCHS, r.family
        assert r.error is None, (r.family, r.repeat, r.error)
    return res


def _status_rows(text: str) -> dict[str, dict[str, str]]:
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("family"))
    names = lines[head].split()
    rows = {}
    for line in lines[head + 1 :]:
        cells = line.split()
        if not cells or cells[0] not in FAMILIES:
            break
        rows[cells[0]] = dict(zip(names, cells, strict=True))
    return rows


def check_status_and_report(url: str, report_json: Path | None, res: dict[str, Any]) -> None:
    """`rnntune status`, `rnntune report --format json` and the final job's report.json (when
    given) say what the database holds."""
    from rnntune.cli import main

    counts = {
        f: {
            "complete": sum(t.state == TrialState.COMPLETE for t in res[f]),
            "pruned": sum(t.state == TrialState.PRUNED for t in res[f]),
            "fail": sum(t.state == TrialState.FAIL for t in res[f]),
        }
        for f in FAMILIES
    }
    runner = CliRunner()
    status = runner.invoke(main, ["status", "--storage", url])
    assert status.exit_code == 0, status.output
    assert status.output.startswith("experiment default: done"), status.output
    rows = _status_rows(status.output)
    assert set(rows) == set(FAMILIES), status.output
    for f, row in rows.items():
        assert int(row["complete"]) == counts[f]["complete"], status.output
        assert int(row["pruned"]) == counts[f]["pruned"], status.output
        assert int(row["failed"]) == counts[f]["fail"], status.output
        assert int(row["running"]) == int(row["waiting"]) == 0, status.output
        assert row["repeats"] == f"{REPEATS}/{REPEATS}", status.output

    printed = runner.invoke(main, ["report", "--storage", url, "--format", "json"])
    assert printed.exit_code == 0, printed.output
    reports = [("rnntune report", json.loads(printed.stdout))]
    if report_json is not None:
        reports.append(("report.json", json.loads(report_json.read_text())))
    for source, report in reports:
        assert report["complete"] is True and report["missing"] == [], (source, report["missing"])
        for f in FAMILIES:
            fam = report["families"][f]
            for k, v in counts[f].items():
                assert fam["trials"][k] == v, (source, f, fam["trials"], counts[f])
            assert fam["trials"]["running"] == fam["trials"]["waiting"] == 0, (source, f)
            assert sorted(r["repeat"] for r in fam["repeats"]) == list(range(REPEATS)), source
            assert all(r["status"] == "done" for r in fam["repeats"]), (source, f)
            by_repeat = {r.repeat: r for r in res["runs"] if r.family == f}
            for r in fam["repeats"]:
                assert r["metrics"] == pytest.approx(by_repeat[r["repeat"]].metrics), (source, f)
            best = max((t for t in res[f] if t.state == TrialState.COMPLETE), key=lambda t: t.value)
            assert fam["best_value"] == pytest.approx(best.value), (source, f)


def check_published(url: str) -> None:
    """After a fault in the final export and a rerun: every study carries the report once, and
    its summary attributes; the experiment is marked finished."""
    st = open_optuna_storage(url, StorageRole.READ)
    try:
        exp = find_or_raise_by_name(st.engine, "default")
        assert exp.finished_at is not None and exp.report_path
        for f in FAMILIES:
            study = optuna.load_study(study_name=f"default.{f}", storage=st)
            sid = st.get_study_id_from_name(study.study_name)
            metas = [
                json.loads(v)
                for k, v in st.get_study_system_attrs(sid).items()
                if k.startswith("artifacts:")
            ]
            names = [m["filename"] for m in metas if m is not None]
            assert len(names) == len(set(names)), f"{f}: an artifact uploaded twice: {names}"
            assert {"report.html", "report.json"} <= set(names), names
            assert study.user_attrs.get("evaluation_repeats_done") == REPEATS, study.user_attrs
    finally:
        st.engine.dispose()
