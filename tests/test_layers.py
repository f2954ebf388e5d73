"""The import rules of README's "How it is built", checked on the source: every ``import`` under
src/rnntune (module level, inside functions and under ``TYPE_CHECKING`` alike) is read with
``ast``, and an edge the rules forbid fails with the file and line that adds it.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PKG = SRC / "rnntune"

# The model and its training loop: torch and numpy, no database, no Optuna, no CLI.
ML = {"models", "workspace", "fastrnn", "ensemble", "train", "stopping"}
TORCH = ML - {"stopping"}  # stopping is plain Python: the report shows its rule
# The two sides that write tuning and evaluation state, and the loop that drives them.
WRITERS = {"tuning", "evaluation", "worker", "worker_registry"}
# Modules that only read the study database (and publish what they read).
READERS = {"state", "progress", "live", "report", "dashboard", "publish"}
TOP = {"cli", "__main__", "jobs", "runner"}
# Leaves: import nothing from rnntune but exceptions.
LEAVES = {
    "exceptions",
    "faults",
    "limits",
    "stopping",
    "baselines",
    "workspace",
    "report.stats",
    "names",
}
# Dependency-free names (families, metrics, display order) that any layer may import.
SHARED = {"names"}

# Edges that break a rule below and are known: (importer, imported) -> why it is still there.
# Allowed, not required: remove the entry when the edge goes.
KNOWN: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}
MODULES.pop("", None)  # rnntune/__init__.py: the version only


def _resolve(name: str) -> str | None:
    """``rnntune.report.stats`` -> ``report.stats``; None outside rnntune."""
    if name == "rnntune":
        return ""
    if not name.startswith("rnntune."):
        return None
    return name.removeprefix("rnntune.")


@functools.cache
def _tree(module: str) -> ast.Module:
    return ast.parse(MODULES[module].read_text(), str(MODULES[module]))


@functools.cache
def imports(module: str) -> tuple[tuple[str, int], ...]:
    """(imported rnntune module, line) for every import statement in ``module``."""
    return tuple(_imports(module))


def _imports(module: str) -> list[tuple[str, int]]:
    found = []
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name)
                if target:
                    found.append((target, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                resolved = _resolve(node.module or "")
                if resolved is None:
                    continue
                target = resolved
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                if sub in MODULES or sub == "migrations":
                    found.append((sub, node.lineno))  # `from rnntune import state`: a module
                elif target:
                    found.append((target, node.lineno))
    return found


def external(module: str) -> set[str]:
    """Top-level names of the non-rnntune packages ``module`` imports."""
    found = set()
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.Import):
            found.update(a.name.partition(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.partition(".")[0])
    return found - {"rnntune"}


def top(module: str) -> str:
    """``report.collect`` -> ``report``; ``storage._engine`` -> ``storage``."""
    return module.partition(".")[0]


def closure(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        for target, _ in imports(m):
            if target in MODULES and target not in seen and (m, target) not in KNOWN:
                seen.add(target)
                todo.append(target)
    return seen


def violations(allowed: dict[str, set[str]]) -> list[str]:
    """Edges from a module whose layer is a key in ``allowed`` to a top-level module not in its
    value (edges within the same package are always allowed)."""
    bad = []
    for module in MODULES:
        rule = allowed.get(module, allowed.get(top(module)))
        if rule is None:
            continue
        for target, line in imports(module):
            if top(target) == top(module) or (module, target) in KNOWN:
                continue
            if top(target) not in rule and target not in rule:
                bad.append(f"src/rnntune/{MODULES[module].relative_to(PKG)}:{line}: {target}")
    return bad


def test_the_parser_sees_the_imports() -> None:
    """The rules below are only as good as this: a known edge of each kind is found."""
    assert "storage" in {t for t, _ in imports("state")}  # from rnntune.storage import ...
    assert "report.stats" in {t for t, _ in imports("publish")}  # from rnntune.report import stats
    assert "storage._url" in {t for t, _ in imports("storage._engine")}  # from ._url import ...
    assert "train" in {t for t, _ in imports("tuning")}  # inside a function
    assert {"models", "train", "cli", "storage", "report.collect"} <= set(MODULES)


def test_leaves_import_only_exceptions() -> None:
    assert violations(dict.fromkeys(LEAVES, {"exceptions"} | SHARED)) == []
    assert [t for t, _ in imports("names")] == []  # and names imports nothing of rnntune


def test_storage_imports_nothing_above_it() -> None:
    """The database layer: its own modules, the error types, the retry limits, failpoints and
    the migrations."""
    assert violations({"storage": {"exceptions", "faults", "limits", "migrations"}}) == []


def test_model_and_training_never_touch_the_database_or_optuna() -> None:
    allowed = ML | {"exceptions", "config"} | SHARED  # config: the params -> configs mapping
    assert violations(dict.fromkeys(ML, allowed)) == []
    bad = {m: external(m) & {"optuna", "sqlalchemy", "click"} for m in ML}
    assert {m: e for m, e in bad.items() if e} == {}
    assert violations({"config": {"exceptions"} | SHARED, "data": {"exceptions"}}) == []


def test_models_is_pure_torch() -> None:
    assert violations({"models": {"exceptions", "fastrnn"} | SHARED}) == []


@pytest.mark.parametrize("reader", sorted(m for m in MODULES if top(m) in READERS))
def test_readers_never_reach_the_writers_or_torch(reader: str) -> None:
    """Also through what they import: a report or a progress view loads without torch."""
    reached = {top(m) for m in closure(reader)} | {top(reader)}
    assert reached & (WRITERS | TOP | TORCH) == set()
    assert not any("torch" in external(m) for m in closure(reader) | {reader})


def test_evaluation_and_tuning_are_apart() -> None:
    """The two writers share the training code and state, not each other; only the worker
    (and the top above it: cli, jobs) drives both."""
    assert "tuning" not in {top(t) for t, _ in imports("evaluation")}
    assert "evaluation" not in {top(t) for t, _ in imports("tuning")}
    users = {top(m) for m in MODULES for t, _ in imports(m) if top(t) in WRITERS - {top(m)}}
    assert users <= {"worker"} | TOP


def test_only_the_cli_knows_click_and_nothing_imports_the_top() -> None:
    assert sorted(m for m in MODULES if "click" in external(m)) == ["cli"]
    importers = {(m, t) for m in MODULES for t, _ in imports(m) if top(t) in TOP}
    assert {(m, t) for m, t in importers if top(m) not in TOP} == set()
