"""Show the evaluation where people already look: optuna-dashboard.

For each family's study: the HTML report and the plots as study artifacts (``optuna.artifacts``,
in the shared artifact store the dashboard serves), summary numbers as study user attributes, and
a Markdown note with the family's verdict (``optuna_dashboard.save_note``).

While the repeats run, :func:`publish_repeat_progress` keeps the same note and attributes up to
date after every finished repeat (repeats done of the budget, running mean and 95% CI of the
objective on the test parts), so the dashboard shows the evaluation as it happens.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna_dashboard import save_note  # type: ignore[import-untyped]
from sqlalchemy import select

from rnntune.experiment import Experiment
from rnntune.faults import failpoint
from rnntune.names import SUMMARY_METRICS, display_family, display_metric
from rnntune.report import stats
from rnntune.report.model import Report, as_report
from rnntune.storage import (
    EvaluationRunRow,
    artifact_store,
    exclusive,
    load_study,
    session_scope,
)

log = logging.getLogger(__name__)

MIMETYPES = {
    ".html": "text/html",
    ".png": "image/png",
    ".json": "application/json",
    ".md": "text/markdown",
}
# Where optuna.artifacts.upload_artifact keeps a study artifact's metadata (study system attr
# ``artifacts:<id>``, JSON); optuna-dashboard reads the same keys.
ARTIFACTS_ATTR_PREFIX = "artifacts:"
# Set by the final publish: the per-repeat updates never overwrite the final note after it.
FINAL_ATTR = "evaluation_final"


def _publish_lock(exp: Experiment, family: str) -> str:
    return f"rnntune:publish:{exp.config.study_name(family)}"


def publish(
    storage: Any,
    exp: Experiment,
    report: Report | Mapping[str, Any],
    paths: dict[str, Path],
    plots: dict[str, Path],
    artifacts: str,
) -> None:
    """Attach the written report files and ``plots`` to every family's study."""
    store = artifact_store(artifacts)
    files = [Path(paths["html"]), Path(paths["json"])] + [Path(p) for p in plots.values()]
    rep = as_report(report)
    for family in exp.config.families:
        with exclusive(storage.engine, _publish_lock(exp, family)):
            _publish_family(storage, exp, rep, store, files, family)


def _publish_family(
    storage: Any,
    exp: Experiment,
    report: Report,
    store: Any,
    files: list[Path],
    family: str,
) -> None:
    """One family's final note and attributes (the caller holds the family's publish lock)."""
    study = load_study(storage, exp.config.study_name(family))
    _upload_new(storage, study, store, files)
    failpoint("export.after_upload")
    fam = report.families[family]
    # NaN (a family without a finished repeat) is not JSON: the dashboard would choke on it.
    summary = {
        m: (mean if _finite(mean := fam.summary[m].get("mean")) else None)
        for m in SUMMARY_METRICS
        if m in fam.summary
    }
    study.set_user_attr("evaluation_summary", summary)
    study.set_user_attr("evaluation_repeats_done", len(fam.done))
    rank = next((r["rank"] for r in report.ranking if r["family"] == family), None)
    study.set_user_attr("evaluation_rank", rank)
    save_note(study, _note(family, report))
    study.set_user_attr(FINAL_ATTR, True)


def publish_repeat_progress(storage: Any, exp: Experiment, family: str) -> dict[str, Any] | None:
    """Update ``family``'s study note and user attributes from its finished repeats.

    Called by a worker after each repeat it completes. Serialised per family (two workers that
    finish repeats together both count each other's), and a no-op once the final report is
    published (a late update must not replace the verdict). Returns the attributes written, or
    None when it did nothing.
    """
    cfg = exp.config
    metric = cfg.objective
    with exclusive(storage.engine, _publish_lock(exp, family)):
        study = load_study(storage, cfg.study_name(family))
        if study.user_attrs.get(FINAL_ATTR):
            return None
        with session_scope(storage.engine) as s:
            rows = s.execute(
                select(EvaluationRunRow.repeat, EvaluationRunRow.metrics)
                .where(
                    EvaluationRunRow.experiment_id == exp.id,
                    EvaluationRunRow.family == family,
                    EvaluationRunRow.status == "done",
                )
                .order_by(EvaluationRunRow.repeat)
            ).all()
        values = {r: float(m[metric]) for r, m in rows if m and _finite(m.get(metric))}
        running = stats.summarize(list(values.values()))
        attrs: dict[str, Any] = {
            "evaluation_repeats_done": len(rows),
            "evaluation_repeats_budget": cfg.repeats,
            "evaluation_running_metric": metric,
            "evaluation_running_mean": running["mean"] if values else None,
            "evaluation_running_ci95": running["ci95"] if len(values) > 1 else None,
        }
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        save_note(study, _progress_note(family, cfg.repeats, metric, values, running))
        return attrs


def _progress_note(
    family: str, budget: int, metric: str, values: dict[int, float], running: dict[str, Any]
) -> str:
    name = display_family(family)
    shown = display_metric(metric)
    lines = [
        f"## {name}: evaluation in progress",
        "",
        f"**{len(values)} of {budget} repeats done** (this note follows every finished repeat).",
        "",
    ]
    if len(values) >= 2:
        lo, hi = running["ci95"]
        lines.append(
            f"Test {shown} so far: **{running['mean']:.4f}** ± {running['std']:.4f} (std), "
            f"95% CI [{lo:.4f}, {hi:.4f}] over {len(values)} repeats."
        )
    elif values:
        lines.append(
            f"Test {shown} so far: **{running['mean']:.4f}** (one repeat: the 95% CI needs two)."
        )
    if values:
        lines += ["", f"| repeat | test {shown} |", "|---|---|"]
        lines += [f"| {r} | {v:.4f} |" for r, v in values.items()]
    lines += [
        "",
        "The verdict, the comparison between families and the full report replace this note "
        "when all repeats are done.",
    ]
    return "\n".join(lines)


def _upload_new(storage: Any, study: optuna.Study, store: Any, files: list[Path]) -> None:
    """Attach each file to ``study`` once, under its own name, with the latest content.

    A rerun of the final job (``rnntune evaluate`` again) must not pile up a second
    ``report.html``: a file already attached is rewritten in place under its artifact id when its
    content changed, and left alone when it did not.
    """
    attached: dict[str, list[str]] = {}
    for meta in _attached(storage, study):
        attached.setdefault(meta["filename"], []).append(meta["artifact_id"])
    for f in files:
        if not f.exists():
            continue
        body = f.read_bytes()
        ids = attached.get(f.name)
        if not ids:
            upload_artifact(
                artifact_store=store,
                file_path=str(f),
                study_or_trial=study,
                mimetype=MIMETYPES.get(f.suffix, "application/octet-stream"),
            )
            continue
        # Normally one id; more only if two final jobs raced on a first upload.
        for artifact_id in ids:
            if _stored_bytes(store, artifact_id) != body:
                store.write(artifact_id, io.BytesIO(body))


def _attached(storage: Any, study: optuna.Study) -> list[dict[str, Any]]:
    """The study's artifact metadata, as the dashboard reads it.

    Not ``optuna.artifacts.get_all_artifact_meta``: optuna-dashboard deletes an artifact by
    setting its ``artifacts:<id>`` system attr to JSON ``null`` (RDBStorage cannot drop an attr),
    which that function fails on (TypeError). Skipping the nulls, as the dashboard does, lets a
    report deleted by hand in the dashboard simply be uploaded again.
    """
    attrs = storage.get_study_system_attrs(storage.get_study_id_from_name(study.study_name))
    metas = [json.loads(v) for k, v in attrs.items() if k.startswith(ARTIFACTS_ATTR_PREFIX)]
    return [m for m in metas if m is not None]


def _stored_bytes(store: Any, artifact_id: str) -> bytes | None:
    try:
        with store.open_reader(artifact_id) as r:
            return bytes(r.read())
    except ArtifactNotFound:  # the blob was removed by hand: write it again
        return None


def _note(family: str, report: Report) -> str:
    """The study's Markdown note: the family's verdict, its numbers, and the overall verdict
    (the sentences and numbers of the report itself: the note and report.html say the same)."""
    fam = report.families[family]
    s = fam.summary
    name = display_family(family)
    lines = [f"## {name}: evaluation", "", fam.verdict, ""]
    if fam.best_params is not None:
        objective = display_metric(report.experiment["objective"])
        best = f" {fam.best_value:.4f}" if fam.best_value is not None else ""
        lines += [
            f"**Best hyperparameters found by Optuna** (trial {fam.best_trial}, "
            f"validation {objective}{best}):",
            "",
        ]
        lines += [f"- `{k}` = `{_short(v)}`" for k, v in fam.best_params.items()]
        lines.append("")
    n = max((m.get("n", 0) for m in s.values()), default=0)
    lines += [
        f"**Test metrics over {n} repeats:**",
        "",
        "| metric | mean ± std | 95% CI |",
        "|---|---|---|",
    ]
    for key in SUMMARY_METRICS:
        m = s.get(key)
        if m and _finite(m["mean"]):
            lines.append(
                f"| {display_metric(key)} | {m['mean']:.4f} ± {m['std']:.4f} | "
                f"[{m['ci95'][0]:.4f}, {m['ci95'][1]:.4f}] |"
            )
    lines += [
        "",
        f"**Overall:** {report.verdict}",
        "",
        "The full report (`report.html`, self-contained: open it in a browser) and its plots are "
        "listed under **Study Artifacts** on this study's main page.",
    ]
    return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
