"""The live view of a running experiment: per family trials done / budget, best value, measured
seconds per trial, repeats done, and an ETA from the measured times.

``rnntune run`` redraws it in place when stdout is a terminal and prints a plain line whenever it
changes otherwise (logs, Compose); ``rnntune status`` prints the same block. Read-only: built on
:mod:`rnntune.progress`, never imports the writers (tuning, evaluation, worker) nor torch.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, TextIO

from optuna.trial import TrialState
from sqlalchemy import select

from rnntune import progress as progress_mod
from rnntune import state
from rnntune.storage import EvaluationRunRow, session_scope

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class FamilyLive:
    family: str
    trials_done: int
    budget: int
    best: float | None
    trial_seconds: float | None  # mean over the family's finished trials (measured)
    repeats_done: int
    repeats_total: int
    repeat_seconds: float | None  # mean over its done repeats, or its trials' mean before any
    work_left_s: float | None  # trials and repeats left x their measured seconds
    eta_s: float | None


@dataclass(frozen=True)
class Live:
    experiment: str
    phase: str  # "tuning", "evaluating" or "done"
    workers: int
    families: list[FamilyLive]
    eta_s: float | None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def snapshot(storage: Any, exp: Any, p: progress_mod.Progress | None = None) -> Live:
    """Read the experiment's progress and the measured trial and repeat times.

    ETA: the work left (trials left x the family's mean seconds per finished trial, repeats left
    x the mean seconds per done repeat, or per trial before any repeat is done) divided among
    the live workers, spread evenly over the families that have work left. Unknown (None) until
    a trial has finished.
    """
    p = p or progress_mod.read(storage, exp)
    cfg = exp.config
    trial_s: dict[str, float | None] = {}
    for fam in p.families:
        study_id = storage.get_study_id_from_name(cfg.study_name(fam.family))
        trials = storage.get_all_trials(study_id, deepcopy=False, states=_FINISHED)
        trial_s[fam.family] = _mean(
            [t.duration.total_seconds() for t in trials if t.duration is not None]
        )
    with session_scope(storage.engine) as s:
        rows = s.execute(
            select(
                EvaluationRunRow.family, EvaluationRunRow.started_at, EvaluationRunRow.finished_at
            ).where(EvaluationRunRow.experiment_id == exp.id, EvaluationRunRow.status == "done")
        ).all()
    repeat_times: dict[str, list[float]] = {}
    for family, start, end in rows:
        if start is not None and end is not None:
            repeat_times.setdefault(family, []).append((end - start).total_seconds())
    any_trial = _mean([v for v in trial_s.values() if v is not None])
    workers = max(1, len(p.workers))
    partial: list[tuple[progress_mod.FamilyProgress, float | None, float | None, float | None]] = []
    for fam in p.families:
        per_trial = trial_s[fam.family] if trial_s[fam.family] is not None else any_trial
        per_repeat = _mean(repeat_times.get(fam.family, [])) or per_trial
        trials_left = 0 if fam.tuning_done else max(0, fam.budget - fam.counts.finished)
        # Nothing (more) to evaluate: no best trial, or tuning gave up (until a rerun).
        no_repeats = (fam.tuning_done and fam.best_value is None) or (
            fam.tuning_state == state.GAVE_UP
        )
        repeats_left = (
            0 if no_repeats else max(0, fam.repeats_total - fam.repeats.done - fam.repeats.failed)
        )
        work: float | None = 0.0
        if trials_left:
            work = None if per_trial is None else trials_left * per_trial
        if repeats_left and work is not None:
            work = None if per_repeat is None else work + repeats_left * per_repeat
        partial.append((fam, per_trial, per_repeat, work))
    active = sum(1 for *_, work in partial if work is None or work > 0) or 1
    known = [work for *_, work in partial if work is not None]
    total = None if len(known) < len(partial) else sum(known) / workers
    families = [
        FamilyLive(
            family=fam.family,
            trials_done=fam.counts.finished,
            budget=fam.budget,
            best=fam.best_value,
            trial_seconds=trial_s[fam.family],
            repeats_done=fam.repeats.done,
            repeats_total=fam.repeats_total,
            repeat_seconds=per_repeat,
            work_left_s=work,
            eta_s=None if work is None else work * active / workers if work else 0.0,
        )
        for fam, per_trial, per_repeat, work in partial
    ]
    phase = "done" if p.done else "tuning" if not p.tuning_done else "evaluating"
    return Live(exp.name, phase, len(p.workers), families, total)


def clock(seconds: float | None) -> str:
    """``mm:ss`` (``h:mm:ss`` from an hour), ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def block(live: Live, elapsed: float | None = None) -> list[str]:
    """The multi-line view (terminal, ``rnntune status``)."""
    head = f"{live.phase} {live.experiment!r}: {live.workers} worker(s) alive"
    if elapsed is not None:
        head += f", elapsed {clock(elapsed)}"
    if live.phase != "done":
        head += f", ETA ~{clock(live.eta_s)}"
    lines = [
        head,
        f"{'family':<8}{'trials':>9}{'best':>9}{'s/trial':>9}{'repeats':>9}{'ETA':>10}",
    ]
    for f in live.families:
        best = f"{f.best:.4f}" if f.best is not None else "-"
        per = f"{f.trial_seconds:.1f}" if f.trial_seconds is not None else "-"
        eta = "done" if f.eta_s == 0 else f"~{clock(f.eta_s)}"
        lines.append(
            f"{f.family:<8}{f'{f.trials_done}/{f.budget}':>9}{best:>9}{per:>9}"
            f"{f'{f.repeats_done}/{f.repeats_total}':>9}{eta:>10}"
        )
    return lines


def line(live: Live) -> str:
    """One plain line (logs, Compose): the phase, each family's counts and best, the ETA."""
    if live.phase == "tuning":
        parts = [
            f"{f.family} {f.trials_done}/{f.budget}"
            + (f" (best {f.best:.4f})" if f.best is not None else "")
            for f in live.families
        ]
        text = "tuning     " + "   ".join(parts)
    else:
        parts = [f"{f.family} {f.repeats_done}/{f.repeats_total}" for f in live.families]
        text = ("evaluating " if live.phase == "evaluating" else "done       ") + "   ".join(parts)
        text += "  repeats done"
    if live.phase != "done":
        text += f"   ETA ~{clock(live.eta_s)}"
    return text


class Display:
    """Shows successive :class:`Live` views on ``stream``: redrawn in place on a terminal, a new
    plain line (with a clock) whenever the line changes otherwise."""

    def __init__(self, stream: TextIO, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self._drawn: list[str] = []  # the block currently on screen (terminal)
        self._last = ""
        self._lock = threading.Lock()  # messages come from relay threads

    def show(self, live: Live | str, elapsed: float) -> None:
        """``live``, or a message (e.g. progress unavailable) in its place."""
        with self._lock:
            if self.tty:
                lines = block(live, elapsed) if isinstance(live, Live) else [live]
                self.stream.write(self._erase() + "\n".join(lines) + "\n")
                self._drawn = lines
            else:
                text = line(live) if isinstance(live, Live) else live
                if text == self._last:
                    return
                self._last = text
                self.stream.write(f"[{clock(elapsed)}] {text}\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        """A line that stays (e.g. a worker's warning): above the view, which is redrawn below."""
        with self._lock:
            if self.tty and self._drawn:
                self.stream.write(self._erase() + text + "\n" + "\n".join(self._drawn) + "\n")
            else:
                self.stream.write(text + "\n")
            self.stream.flush()

    def _erase(self) -> str:
        # Cursor to the start of the block drawn last, clear to the end of the screen.
        return f"\x1b[{len(self._drawn)}F\x1b[J" if self._drawn else ""

    def release(self) -> None:
        """Keep what is on screen; the next output starts below it."""
        with self._lock:
            self._drawn = []
