"""The evaluation where people already look: artifacts, user attrs and notes on each study, read
back through Optuna's and optuna-dashboard's own APIs, on SQLite and on PostgreSQL. And
`rnntune status --watch`, which refreshes until the experiment is done.

One finished experiment per backend (a real `rnntune run`) is shared by the whole module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna_dashboard import get_note

from rnntune.dashboard import make_app
from rnntune.experiment import find_or_raise_by_name
from rnntune.report import stats, verdict
from rnntune.runner import finalize
from rnntune.storage import StorageRole, open_optuna_storage
from tests.conftest import TINY_DATA, fresh_pg_database
from tests.helpers import FAST, rnntune

pytestmark = pytest.mark.slow

FAMILIES = ("rnn", "gru", "lstm")


@dataclass(frozen=True)
class Finished:
    url: str
    cwd: Path

    @property
    def artifacts(self) -> Path:
        return self.cwd / "artifacts"

    @property
    def reports(self) -> Path:
        return self.cwd / "reports"

    def study(self, family: str) -> optuna.Study:
        return optuna.load_study(
            study_name=f"default.{family}",
            storage=open_optuna_storage(self.url, StorageRole.READ),
        )

    def report(self) -> dict[str, Any]:
        return json.loads((self.reports / "report.json").read_text())


@pytest.fixture(scope="module")
def module_pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this module (conftest's ``pg_url`` is per test)."""
    with fresh_pg_database() as url:
        yield url


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def finished(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Finished:
    """A tiny experiment, run to the end by the real CLI (which also publishes)."""
    cwd = tmp_path_factory.mktemp(f"published-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{cwd / 'study.db'}"
    else:
        url = request.getfixturevalue("module_pg_url")
    rnntune(
        "run", "--storage", url, "--data", TINY_DATA, "--trials", "3", "--repeats", "3",
        "--max-epochs", "2", "--workers", "2", "--artifacts", str(cwd / "artifacts"), *FAST,
        cwd=cwd,
    )  # fmt: skip
    return Finished(url, cwd)


def _by_name(study: optuna.Study) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for meta in get_all_artifact_meta(study):
        out.setdefault(meta.filename, []).append(meta)
    return out


def test_the_report_is_an_artifact_of_every_study(finished: Finished) -> None:
    html = (finished.reports / "report.html").read_bytes()
    for family in FAMILIES:
        metas = _by_name(finished.study(family))
        assert len(metas.get("report.html", [])) == 1, (family, sorted(metas))
        meta = metas["report.html"][0]
        assert meta.mimetype == "text/html"
        # The dashboard serves the blob from the shared artifact directory, byte for byte.
        assert (finished.artifacts / meta.artifact_id).read_bytes() == html
        assert "report.json" in metas
        assert "test_metrics.png" in metas and f"history_{family}.png" in metas
        assert all(len(m) == 1 for m in metas.values()), (family, metas)


def test_summary_numbers_are_study_user_attrs(finished: Finished) -> None:
    report = finished.report()
    ranks = {r["family"]: r["rank"] for r in report["ranking"]}
    for family in FAMILIES:
        attrs = finished.study(family).user_attrs
        summary = report["families"][family]["summary"]
        assert attrs["evaluation_summary"] == pytest.approx(
            {m: summary[m]["mean"] for m in ("accuracy", "macro_f1", "weighted_f1", "roc_auc")}
        )
        assert attrs["evaluation_rank"] == ranks[family]
        assert attrs["evaluation_repeats_done"] == 3
    assert sorted(ranks.values()) == [1, 2, 3]


def test_the_workers_updated_the_dashboard_after_every_repeat(finished: Finished) -> None:
    """The running numbers are written only by the workers' per-repeat updates (the final
    publish does not touch them): after a real run they hold the last repeat's state."""
    report = finished.report()
    for family in FAMILIES:
        attrs = finished.study(family).user_attrs
        summary = report["families"][family]["summary"]["macro_f1"]
        assert attrs["evaluation_repeats_budget"] == 3
        assert attrs["evaluation_running_metric"] == "macro_f1"
        assert attrs["evaluation_running_mean"] == pytest.approx(summary["mean"])
        assert attrs["evaluation_running_ci95"] == pytest.approx(
            stats.summarize(
                [r["metrics"]["macro_f1"] for r in report["families"][family]["repeats"]]
            )["ci95"]
        )
        assert attrs["evaluation_final"] is True


def test_each_study_has_a_note_with_its_family_verdict(finished: Finished) -> None:
    report = finished.report()
    comparison = report["comparison"]
    for family in FAMILIES:
        note = get_note(finished.study(family))
        sentence = verdict.family_verdict(
            family, report["families"], comparison, comparison["metric"], comparison["alpha"]
        )
        assert sentence.startswith(f"{family.upper()} ranks ")
        assert sentence in note
        assert note.startswith(f"## {family.upper()}: evaluation")
        assert report["verdict"] in note
        assert "| macro F1 |" in note  # the metrics table is Markdown, not a Python repr


def test_exporting_again_updates_the_artifacts_in_place(finished: Finished) -> None:
    """A rerun of the final job (as `rnntune evaluate` does) adds no second report.html."""
    before = {f: _by_name(finished.study(f)) for f in FAMILIES}
    storage = open_optuna_storage(finished.url, StorageRole.WORK)
    try:
        exp = find_or_raise_by_name(storage.engine, "default")
        # A different device string changes report.html: the stored artifact must follow it.
        for device in ("cpu (rerun)", "cpu (rerun)"):
            finalize(storage, exp, finished.reports, str(finished.artifacts), device=device)
    finally:
        storage.engine.dispose()
    html = (finished.reports / "report.html").read_bytes()
    assert b"cpu (rerun)" in html
    for family in FAMILIES:
        after = _by_name(finished.study(family))
        assert {n: [m.artifact_id for m in ms] for n, ms in after.items()} == {
            n: [m.artifact_id for m in ms] for n, ms in before[family].items()
        }, family
        (meta,) = after["report.html"]
        assert (finished.artifacts / meta.artifact_id).read_bytes() == html
    # Nothing orphaned in the artifact directory either: one blob per study and file.
    blobs = [p for p in finished.artifacts.iterdir() if p.is_file()]
    assert len(blobs) == sum(len(before[f]) for f in FAMILIES)


def _wsgi(app: Any, method: str, path: str) -> tuple[str, bytes]:
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ.update(REQUEST_METHOD=method, PATH_INFO=path)
    status: list[str] = []
    result = app(environ, lambda s, h, exc_info=None: status.append(s))
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):  # WSGI: a file response is closed by the server
            result.close()
    return status[0], body


def test_a_report_deleted_in_the_dashboard_comes_back_on_the_next_export(
    finished: Finished,
) -> None:
    """The dashboard's delete button leaves a JSON null behind; the next export copes with it.

    Runs last on its backend: afterwards ``optuna.artifacts.get_all_artifact_meta`` itself fails
    on that study (it does not skip the dashboard's nulls), which is why publish does not use it.
    """
    study_id = finished.study("rnn")._study_id
    (meta,) = _by_name(finished.study("rnn"))["report.html"]
    # A dashboard started with --allow-writes (the default refuses the delete button).
    app = make_app(finished.url, str(finished.artifacts), allow_writes=True)
    status, _ = _wsgi(app, "DELETE", f"/api/artifacts/{study_id}/{meta.artifact_id}")
    assert status.startswith("204"), status
    listed = json.loads(_wsgi(app, "GET", f"/api/studies/{study_id}")[1])["artifacts"]
    assert "report.html" not in [a["filename"] for a in listed]

    storage = open_optuna_storage(finished.url, StorageRole.WORK)
    try:
        exp = find_or_raise_by_name(storage.engine, "default")
        _report, paths = finalize(storage, exp, finished.reports, str(finished.artifacts))
    finally:
        storage.engine.dispose()
    listed = json.loads(_wsgi(app, "GET", f"/api/studies/{study_id}")[1])["artifacts"]
    (again,) = [a for a in listed if a["filename"] == "report.html"]
    status, body = _wsgi(app, "GET", f"/artifacts/{study_id}/{again['artifact_id']}")
    assert status.startswith("200") and body == paths["html"].read_bytes()


# -- rnntune status --watch ----------------------------------------------------------------------
def _tables(out: str) -> int:
    return out.count("experiment default: ")


def test_status_watch_on_a_finished_experiment_prints_once(finished: Finished) -> None:
    proc = rnntune(
        "status", "--storage", finished.url, "--watch", "--interval", "0.2", cwd=finished.cwd,
        timeout=120,
    )  # fmt: skip
    assert _tables(proc.stdout) == 1, proc.stdout
    assert "experiment default: done" in proc.stdout
    assert "\x1b[" not in proc.stdout  # not a terminal: no screen clearing


def test_status_watch_refreshes_until_done(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    rnntune("init", "--storage", url, "--data", TINY_DATA, "--trials", "3", cwd=tmp_path)
    log = tmp_path / "status.out"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rnntune", "status", "--storage", url, "--watch",
             "--interval", "0.2"],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        # Start-up (imports) takes seconds on a loaded machine; then ~5 refreshes a second.
        deadline = time.monotonic() + 60
        while _tables(log.read_text()) < 3 and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        time.sleep(1.0)
        assert proc.poll() is None, "--watch exited although the experiment is not done"
    finally:
        proc.kill()
        proc.wait(10)
    text_out = log.read_text()
    assert _tables(text_out) >= 3, text_out
    assert "experiment default: tuning" in text_out
