"""Show the evaluation where people already look: optuna-dashboard.

For each family's study: the HTML report and the plots as study artifacts (``optuna.artifacts``,
in the shared artifact store the dashboard serves), summary numbers as study user attributes, and
a Markdown note with the family's verdict (``optuna_dashboard.save_note``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import get_all_artifact_meta, upload_artifact
from optuna_dashboard import save_note

from rnntune.experiment import Experiment
from rnntune.report import stats
from rnntune.report.plots import make_plots
from rnntune.storage import artifact_store, load_study

log = logging.getLogger(__name__)

MIMETYPES = {".html": "text/html", ".png": "image/png", ".json": "application/json",
             ".md": "text/markdown"}


def publish(
    storage: Any, exp: Experiment, report: dict[str, Any], paths: dict[str, Path], artifacts: str
) -> None:
    store = artifact_store(artifacts)
    plot_dir = Path(paths["html"]).parent / "report_plots"
    plots = make_plots(report, plot_dir)
    files = [Path(paths["html"]), Path(paths["json"])] + [Path(p) for p in plots.values()]
    comparison = report.get("comparison") or {}
    for family in exp.config.families:
        study = load_study(storage, exp.config.study_name(family))
        _upload_new(study, store, files)
        fam = report["families"][family]
        summary = {m: s.get("mean") for m, s in fam["summary"].items()
                   if m in ("accuracy", "macro_f1", "weighted_f1", "roc_auc")}
        study.set_user_attr("evaluation_summary", json.loads(json.dumps(summary)))
        study.set_user_attr("evaluation_repeats_done",
                            sum(1 for r in fam["repeats"] if r["status"] == "done"))
        rank = next((r["rank"] for r in report["ranking"] if r["family"] == family), None)
        study.set_user_attr("evaluation_rank", rank)
        save_note(study, _note(family, report, comparison))


def _upload_new(study: optuna.Study, store: Any, files: list[Path]) -> None:
    """Upload each file once: a rerun of the final job does not pile up copies."""
    have = {(m.filename, m.artifact_id) for m in get_all_artifact_meta(study)}
    digests = {a for _f, a in have}
    for f in files:
        if not f.exists():
            continue
        digest = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
        # The content hash is kept in the study's user attrs, keyed by file name.
        key = f"artifact_sha:{f.name}"
        if study.user_attrs.get(key) == digest and any(n == f.name for n, _a in have):
            continue
        artifact_id = upload_artifact(
            artifact_store=store, file_path=str(f), study_or_trial=study,
            mimetype=MIMETYPES.get(f.suffix, "application/octet-stream"),
        )
        digests.add(artifact_id)
        study.set_user_attr(key, digest)


def _note(family: str, report: dict[str, Any], comparison: dict[str, Any]) -> str:
    fam = report["families"][family]
    s = fam["summary"]
    name = stats.display_family(family)
    lines = [f"## {name}: evaluation", "", stats.family_verdict(family, report["families"],
                                                               comparison), ""]
    if fam["best_params"] is not None:
        lines.append(f"**Best hyperparameters found by Optuna:** `{fam['best_params']}` "
                     f"(validation {report['experiment']['objective']} "
                     f"{fam['best_value']:.4f}, trial {fam['best_trial']})")
        lines.append("")
    lines.append("| metric | mean ± std | 95% CI |")
    lines.append("|---|---|---|")
    for metric in ("accuracy", "macro_f1", "weighted_f1", "roc_auc"):
        m = s.get(metric)
        if m:
            lines.append(f"| {metric} | {m['mean']:.4f} ± {m['std']:.4f} | "
                         f"[{m['ci95'][0]:.4f}, {m['ci95'][1]:.4f}] |")
    lines += ["", f"**Overall:** {report['verdict']}", "",
              "The full report (report.html) and its plots are attached as artifacts of this "
              "study."]
    return "\n".join(lines)
