"""What a person watching a long job sees: the live progress view (terminal and plain lines),
the dashboard's note and attributes after every finished repeat, `report --open`, and plots
that stay readable."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from optuna_dashboard import get_note
from sqlalchemy import update

from rnntune import live
from rnntune.experiment import Experiment, register
from rnntune.publish import FINAL_ATTR, publish_repeat_progress
from rnntune.report import stats
from rnntune.report.plots import running_best
from rnntune.storage import (
    EvaluationRunRow,
    StorageRole,
    load_study,
    open_optuna_storage,
    session_scope,
)
from tests.conftest import TINY_DATA
from tests.helpers import FAST, rnntune


def _register(url: str, **explicit: Any) -> tuple[Any, Experiment]:
    st = open_optuna_storage(url, StorageRole.MIGRATE)
    exp, _ = register(st, {"name": "default", "data": TINY_DATA, **explicit})
    return st, exp


def _add_trial(st: Any, study_name: str, seconds: float, value: float, state: str) -> None:
    start = datetime(2026, 1, 1, 12, 0, 0)
    study = load_study(st, study_name)
    study.add_trial(
        create_trial(
            state=TrialState[state],
            value=value if state == "COMPLETE" else None,
            intermediate_values={0: value},
            params={"hidden_size": 16},
            distributions={"hidden_size": CategoricalDistribution([16, 32])},
        )
    )
    # add_trial stamps its own times; set the measured duration as a real trial would have it.
    trial = study.trials[-1]
    with st.engine.begin() as c:
        from optuna.storages._rdb import models

        c.execute(
            update(models.TrialModel)
            .where(models.TrialModel.trial_id == trial._trial_id)
            .values(datetime_start=start, datetime_complete=start + timedelta(seconds=seconds))
        )


# -- the live view -------------------------------------------------------------------------------
def test_snapshot_eta_from_the_measured_trial_times(sqlite_url: str) -> None:
    st, exp = _register(sqlite_url, trials=4, repeats=2)
    _add_trial(st, "default.rnn", 10, 0.7, "COMPLETE")
    _add_trial(st, "default.rnn", 20, 0.6, "PRUNED")
    _add_trial(st, "default.gru", 30, 0.8, "COMPLETE")
    view = live.snapshot(st, exp)
    fams = {f.family: f for f in view.families}
    assert view.phase == "tuning" and view.workers == 0
    assert fams["rnn"].trials_done == 2 and fams["rnn"].best == pytest.approx(0.7)
    assert fams["rnn"].trial_seconds == pytest.approx(15)
    assert fams["gru"].trial_seconds == pytest.approx(30)
    assert fams["lstm"].trial_seconds is None  # nothing measured in that family yet ...
    # ... so its work is estimated with the mean over the families that have trials (22.5 s).
    # Work left: trials left x s/trial + repeats x (s/repeat, or s/trial before any repeat).
    assert fams["rnn"].work_left_s == pytest.approx(2 * 15 + 2 * 15)
    assert fams["gru"].work_left_s == pytest.approx(3 * 30 + 2 * 30)
    assert fams["lstm"].work_left_s == pytest.approx(4 * 22.5 + 2 * 22.5)
    assert view.eta_s == pytest.approx(60 + 150 + 135)  # one worker assumed when none is alive
    assert fams["rnn"].eta_s == pytest.approx(60 * 3)  # it shares that worker with 2 families

    lines = live.block(view, elapsed=65)
    assert lines[0] == "tuning 'default': 0 worker(s) alive, elapsed 01:05, ETA ~05:45"
    assert lines[2].split() == ["rnn", "2/4", "0.7000", "15.0", "0/2", "~03:00"]
    assert lines[4].split() == ["lstm", "0/4", "-", "-", "0/2", "~06:45"]
    assert live.line(view) == (
        "tuning     rnn 2/4 (best 0.7000)   gru 1/4 (best 0.8000)   lstm 0/4   ETA ~05:45"
    )


def test_snapshot_before_any_trial_has_an_unknown_eta(sqlite_url: str) -> None:
    st, exp = _register(sqlite_url, trials=3, repeats=2)
    view = live.snapshot(st, exp)
    assert view.eta_s is None and all(f.eta_s is None for f in view.families)
    assert "ETA ~?" in live.block(view)[0] and live.line(view).endswith("ETA ~?")


def _fake_view(done: int) -> live.Live:
    fam = live.FamilyLive("gru", done, 4, 0.8, 2.0, 0, 2, 2.0, 4.0, 4.0)
    return live.Live("x", "tuning", 1, [fam], 4.0)


def test_display_redraws_in_place_on_a_terminal() -> None:
    out = io.StringIO()
    d = live.Display(out, tty=True)
    d.show(_fake_view(1), 1)
    first = out.getvalue()
    assert "\x1b[" not in first and len(first.splitlines()) == 3
    d.show(_fake_view(2), 3)
    second = out.getvalue()[len(first) :]
    # Back up over the 3 lines drawn, clear, redraw: the screen holds one view, not two.
    assert second.startswith("\x1b[3F\x1b[J") and "2/4" in second
    # A worker's message stays above the view, which is redrawn below it.
    before = out.getvalue()
    d.message("worker w1 finished")
    assert out.getvalue()[len(before) :] == (
        "\x1b[3F\x1b[Jworker w1 finished\n" + "\n".join(live.block(_fake_view(2), 3)) + "\n"
    )
    d.release()
    d.show("(progress unavailable: x)", 4)
    assert out.getvalue().endswith("\n(progress unavailable: x)\n")  # below, not over it


def test_display_prints_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    d = live.Display(out, tty=False)
    d.show(_fake_view(1), 1)
    d.show(_fake_view(1), 3)  # unchanged: no new line
    d.show(_fake_view(2), 65)
    assert out.getvalue().splitlines() == [
        "[00:01] tuning     gru 1/4 (best 0.8000)   ETA ~00:04",
        "[01:05] tuning     gru 2/4 (best 0.8000)   ETA ~00:04",
    ]
    assert "\x1b" not in out.getvalue()
    d.message("worker w1 finished")
    assert out.getvalue().endswith("ETA ~00:04\nworker w1 finished\n")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_run_in_a_terminal_redraws_the_view_in_place(tmp_path: Path) -> None:
    """A real `rnntune run` with its stdout on a pseudo-terminal (and --resplit, so that the
    workers' per-repeat splits run for real too)."""
    master, slave = pty.openpty()
    env = {**os.environ, "RNNTUNE_LOG_LEVEL": "WARNING", "COLUMNS": "100"}
    with (tmp_path / "stderr.txt").open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rnntune", "run", "--storage", f"sqlite:///{tmp_path}/s.db",
             "--data", TINY_DATA, "--trials", "2", "--repeats", "2", "--max-epochs", "1",
             "--workers", "1", "--resplit", *FAST],
            cwd=tmp_path, stdout=slave, stderr=err, stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip
    os.close(slave)
    chunks: list[bytes] = []
    try:
        deadline = time.monotonic() + 380
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        assert proc.wait(30) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    assert "\x1b[J" in screen  # redrawn in place
    # The workers' own stderr lines were relayed above the view, not drawn over.
    assert "finished: nothing left to do" in screen
    assert "s/trial" in screen and "ETA" in screen
    # The last view, drawn after the workers exited: every trial and repeat done.
    assert re.search(r"rnn +2/2 +[0-9.]+ +[0-9.]+ +2/2", screen), screen[-2000:]
    # --resplit went through the workers' repeat path too (repeat i on split i).
    assert "re-split per repeat (--resplit)" in (tmp_path / "reports" / "report.md").read_text()


# -- the dashboard during the repeats -------------------------------------------------------------
def _finish_repeat(st: Any, exp: Experiment, family: str, repeat: int, f1: float) -> None:
    """A repeat finished as a worker stores it (the row its `complete` writes)."""
    with session_scope(st.engine) as s:
        row = (
            s.query(EvaluationRunRow)
            .filter_by(experiment_id=exp.id, family=family, repeat=repeat)
            .one_or_none()
        )
        if row is None:
            row = EvaluationRunRow(
                experiment_id=exp.id, family=family, repeat=repeat, seed=repeat,
                params={"hidden_size": 16}, attempts=1,
            )  # fmt: skip
            s.add(row)
        row.status = "done"
        row.metrics = {"macro_f1": f1, "accuracy": f1}


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_note_and_attrs_follow_every_finished_repeat(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    st, exp = _register(url, repeats=4)
    study = optuna.load_study(study_name="default.gru", storage=st)

    _finish_repeat(st, exp, "gru", 0, 0.80)
    attrs = publish_repeat_progress(st, exp, "gru")
    assert attrs is not None
    ua = study.user_attrs
    assert ua["evaluation_repeats_done"] == 1 and ua["evaluation_repeats_budget"] == 4
    assert ua["evaluation_running_metric"] == "macro_f1"
    assert ua["evaluation_running_mean"] == pytest.approx(0.80)
    assert ua["evaluation_running_ci95"] is None  # one value has no interval
    note = get_note(study)
    assert note.startswith("## GRU: evaluation in progress")
    assert "**1 of 4 repeats done**" in note and "one repeat: the 95% CI needs two" in note

    for repeat, f1 in ((1, 0.84), (2, 0.90)):
        _finish_repeat(st, exp, "gru", repeat, f1)
        publish_repeat_progress(st, exp, "gru")
    expected = stats.summarize([0.80, 0.84, 0.90])
    ua = study.user_attrs
    assert ua["evaluation_repeats_done"] == 3
    assert ua["evaluation_running_mean"] == pytest.approx(expected["mean"])
    assert ua["evaluation_running_ci95"] == pytest.approx(expected["ci95"])
    note = get_note(study)
    lo, hi = expected["ci95"]
    assert "**3 of 4 repeats done**" in note
    assert (
        f"**{expected['mean']:.4f}** ± {expected['std']:.4f} (std), 95% CI [{lo:.4f}, {hi:.4f}]"
        in note
    )
    assert "| 2 | 0.9000 |" in note
    # Other families are left alone.
    assert "evaluation_repeats_done" not in load_study(st, "default.rnn").user_attrs

    # Once the final report is published, a late update does not replace its verdict.
    study.set_user_attr(FINAL_ATTR, True)
    _finish_repeat(st, exp, "gru", 3, 0.5)
    assert publish_repeat_progress(st, exp, "gru") is None
    assert get_note(study) == note


# -- report --open -------------------------------------------------------------------------------
@pytest.fixture
def registered(tmp_path: Path) -> tuple[str, Path]:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    rnntune("init", "--storage", url, "--data", TINY_DATA, "--trials", "2", cwd=tmp_path)
    return url, tmp_path


def test_report_open_opens_the_html_in_the_browser(registered: tuple[str, Path]) -> None:
    url, cwd = registered
    browser = cwd / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > {cwd / "opened.txt"}\n')
    browser.chmod(0o755)
    proc = rnntune("report", "--storage", url, "--open", cwd=cwd, env={"BROWSER": str(browser)})
    html = cwd / "reports" / "report.html"
    assert html.exists() and "<html" in html.read_text()
    assert (cwd / "opened.txt").read_text().strip() == html.resolve().as_uri()
    assert f"opened {html.resolve().as_uri()}" in proc.stderr


def test_report_open_without_a_browser_says_so(registered: tuple[str, Path]) -> None:
    url, cwd = registered
    env = {"BROWSER": "", "DISPLAY": "", "WAYLAND_DISPLAY": "", "PATH": str(cwd)}
    proc = subprocess.run(
        [sys.executable, "-m", "rnntune", "report", "--storage", url, "--open", "--out", "r.html"],
        cwd=cwd, text=True, capture_output=True, timeout=120,
        env={k: v for k, v in {**os.environ, **env}.items() if v},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        "Error: no web browser available to open r.html; open that file yourself, or set "
        "BROWSER to a browser command"
    )
    assert (cwd / "r.html").exists()  # the report itself was written
    assert "Traceback" not in proc.stderr


def test_report_open_with_another_format_is_a_usage_error(registered: tuple[str, Path]) -> None:
    url, cwd = registered
    proc = rnntune("report", "--storage", url, "--open", "--format", "md", cwd=cwd, check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == (
        "Error: --open shows the HTML report, not --format md; drop --format or use html"
    )


# -- plots ---------------------------------------------------------------------------------------
def test_running_best_extends_to_the_last_trial() -> None:
    xs, ys = running_best([(0, 0.5), (2, 0.7), (3, 0.6)], last=9)
    assert xs == [0, 2, 3, 9] and ys == [0.5, 0.7, 0.7, 0.7]
    assert running_best([(0, 0.5), (4, 0.4)], last=4) == ([0, 4], [0.5, 0.5])


def test_history_plot_line_reaches_the_last_trial_and_legend_is_outside() -> None:
    from rnntune.report.plots import _history

    history = [
        {"number": 0, "state": "COMPLETE", "value": 0.6},
        {"number": 1, "state": "COMPLETE", "value": 0.8},
        {"number": 2, "state": "PRUNED", "value": 0.3},
        {"number": 3, "state": "FAIL", "value": None},
    ]
    report = {"families": {"gru": {"history": history}}, "experiment": {"objective": "macro_f1"}}
    fig = _history(report, "gru")
    assert fig is not None
    ax = fig.axes[0]
    line = next(ln for ln in ax.get_lines() if ln.get_label() == "running best")
    assert list(line.get_xdata())[-1] == 3 and list(line.get_ydata())[-1] == 0.8
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # positions are known after a draw (Agg, no pyplot)
    canvas.draw()
    renderer = canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    axes_box = ax.get_window_extent(renderer)
    assert legend.x0 >= axes_box.x1  # beside the axes: it cannot cover a point
    assert legend.x1 <= fig.bbox.x1  # and not cut off by the figure's edge
