"""The one boundary with Optuna's private API and the one reading of database errors."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from optuna.exceptions import StorageInternalError
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, ProgrammingError

from rnntune.exceptions import (
    DatabaseUnavailableError,
    StorageError,
    WorkerFaultError,
    error_reason,
    first_line,
)
from rnntune.storage import is_transient

SRC = Path(__file__).resolve().parents[1] / "src" / "rnntune"
BOUNDARY = SRC / "storage" / "_optuna.py"
OPTUNA_PRIVATE = {"_storage", "_study_id", "_trial_id", "_backend", "_cached_frozen_trial"}


def test_only_the_boundary_module_touches_optunas_private_api() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path == BOUNDARY:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in OPTUNA_PRIVATE:
                # self._storage etc. of rnntune's own classes are not Optuna's.
                if not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("optuna"):
                private = [p for p in (node.module or "").split(".") if p.startswith("_")]
                private += [a.name for a in node.names if a.name.startswith("_")]
                if private:
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno} {node.module}")
    assert offenders == []


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ValueError(""), "ValueError"),
        (ValueError("   \n  "), "ValueError"),
        (ValueError("first\nsecond"), "first"),
        (ValueError("\n  indented first \nsecond"), "indented first"),
        (RuntimeError(), "RuntimeError"),
        # SQLAlchemy's wrapper: the driver's message, not the SQL statement below it.
        (
            OperationalError("SELECT 1", {}, Exception("server closed\nthe connection")),
            "server closed",
        ),
        (OperationalError("SELECT 1", {}, Exception("")), "OperationalError"),
    ],
)
def test_first_line(error: BaseException, expected: str) -> None:
    assert first_line(error) == expected


def test_error_reason() -> None:
    assert error_reason(ValueError("")) == "ValueError"
    assert error_reason(ValueError("bad value\ndetails")) == "ValueError: bad value"
    assert error_reason(ValueError("x" * 600)) == ("ValueError: " + "x" * 600)[:500]


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (DatabaseUnavailableError("lost the study database at x (gone): ..."), True),
        # Decided by type, never by the message.
        (StorageError("lost the study database (worded like an outage)"), False),
        (StorageError("the database has no study tables: run `rnntune init`"), False),
        (WorkerFaultError("lost the study database (...)"), False),
        (OperationalError("SELECT 1", {}, Exception("server closed the connection")), True),
        (InterfaceError("SELECT 1", {}, Exception("connection already closed")), True),
        (StorageInternalError("An exception is raised during the commit."), True),
        (IntegrityError("INSERT", {}, Exception("duplicate key")), False),
        (ProgrammingError("SELECT", {}, Exception("permission denied")), False),
        (ValueError("lost the study database"), False),
    ],
)
def test_transient_is_decided_by_type(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient
