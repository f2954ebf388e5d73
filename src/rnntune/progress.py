"""Read-only views of an experiment's progress: `rnntune status` and `run`'s progress lines."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from rnntune import state
from rnntune.experiment import Experiment
from rnntune.storage import WorkerRow, load_study, session_scope


@dataclass(frozen=True)
class FamilyProgress:
    family: str
    counts: state.Counts
    budget: int
    best_value: float | None
    repeats: state.EvalCounts
    repeats_total: int
    tuning_done: bool  # tuning is over: done, or gave up (see tuning_state)
    tuning_state: str = state.TUNING
    shortfall: str | None = None  # why tuning is short of its budget

    @property
    def complete(self) -> bool:
        """Budget finished and every repeat done or failed (or nothing to evaluate)."""
        return self.tuning_state == state.DONE and (
            self.repeats.over(self.repeats_total) or self.best_value is None
        )


@dataclass(frozen=True)
class Progress:
    experiment: Experiment
    families: list[FamilyProgress]
    workers: list[dict[str, Any]]

    @property
    def tuning_done(self) -> bool:
        return all(f.tuning_done for f in self.families)

    @property
    def done(self) -> bool:
        """Every family finished its budget and its repeats (a family that gave up is not)."""
        return all(f.complete for f in self.families)

    @property
    def over(self) -> bool:
        """Workers have nothing left to do: done, or some family gave up (until a rerun)."""
        return all(f.complete or f.tuning_state == state.GAVE_UP for f in self.families)

    @property
    def gave_up(self) -> list[FamilyProgress]:
        return [f for f in self.families if f.tuning_state == state.GAVE_UP]

    def line(self) -> str:
        """One line for `rnntune run`: trials done / budget and best so far, then repeats."""
        if not self.tuning_done:
            parts = [
                f"{f.family} {f.counts.finished}/{f.budget}"
                + (f" (best {f.best_value:.4f})" if f.best_value is not None else "")
                for f in self.families
            ]
            return "tuning     " + "   ".join(parts)
        parts = [f"{f.family} {f.repeats.done}/{f.repeats_total}" for f in self.families]
        return "evaluating " + "   ".join(parts) + "  repeats done"


def read(storage: Any, exp: Experiment, alive_within: int = 60) -> Progress:
    cfg = exp.config
    ev = state.eval_counts(storage.engine, exp)
    fams = []
    for family in cfg.families:
        study = load_study(storage, cfg.study_name(family))
        counts = state.count_trials(study)
        best = state.best_trial(study)
        fams.append(
            FamilyProgress(
                family=family,
                counts=counts,
                budget=cfg.trials,
                best_value=best.value if best else None,
                repeats=ev.get(family, state.EvalCounts()),
                repeats_total=cfg.repeats,
                tuning_done=state.tuning_over(cfg.trials, counts),
                tuning_state=state.tuning_state(cfg.trials, counts),
                shortfall=state.shortfall(cfg.trials, counts),
            )
        )
    # Ages on the database clock: the workers stamp their heartbeats with it.
    now = state.database_now(storage.engine)
    since = now - timedelta(seconds=alive_within)
    with session_scope(storage.engine) as s:
        rows = s.scalars(
            select(WorkerRow)
            .where(WorkerRow.experiment_id == exp.id, WorkerRow.heartbeat_at >= since)
            .where(WorkerRow.status.in_(("starting", "running", "stopping")))
            .order_by(WorkerRow.started_at)
        ).all()
        workers = [
            {
                "id": w.id,
                "status": w.status,
                "task": w.task,
                "heartbeat_age_s": round(max(0.0, (now - w.heartbeat_at).total_seconds()), 1),
                "trials_done": w.trials_done,
                "repeats_done": w.repeats_done,
            }
            for w in rows
        ]
    return Progress(exp, fams, workers)


def table(p: Progress) -> str:
    """The status table: per family trials by state against the budget, best value, repeats."""
    head = (
        f"{'family':<7}{'complete':>9}{'pruned':>8}{'failed':>8}{'running':>9}"
        f"{'waiting':>9}{'budget':>8}{'best':>9}{'repeats':>10}"
    )
    if p.done:
        where = "done"
    elif p.gave_up:
        where = "incomplete: " + "; ".join(f"{f.family} {f.shortfall}" for f in p.gave_up)
    else:
        where = "tuning" if not p.tuning_done else "evaluating"
    lines = [f"experiment {p.experiment.name}: {where}", head]
    for f in p.families:
        c = f.counts
        best = f"{f.best_value:.4f}" if f.best_value is not None else "-"
        lines.append(
            f"{f.family:<7}{c.complete:>9}{c.pruned:>8}{c.fail:>8}{c.running:>9}{c.waiting:>9}"
            f"{f.budget:>8}{best:>9}{f'{f.repeats.done}/{f.repeats_total}':>10}"
        )
    if p.workers:
        lines.append(f"workers alive ({len(p.workers)}):")
        for w in p.workers:
            lines.append(
                f"  {w['id']:<40} {w['status']:<9} {w['task'] or '-':<22} "
                f"last heartbeat {w['heartbeat_age_s']:.0f}s ago"
            )
    else:
        lines.append("workers alive: none")
    lines.append(state.describe_limits(p.experiment.config.trials))
    return "\n".join(lines)
