"""Bad input, as a new user gives it: one ``Error: <what>; <fix>`` line, exit 2 for a usage error
(a bad option, environment variable or experiment file) and 1 for a runtime one, no traceback, and
nothing stored changed.

Every case runs against a real study database that already holds a registered experiment, and
compares the database's whole content (SQLite: every row, via ``iterdump``) before and after.
Most cases go through click's CliRunner (the same code path as the installed command, in
process, for speed); the ones marked ``SUBPROCESS`` run the real ``python -m rnntune`` in a
subprocess, as a user would.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rnntune.cli import main
from tests.conftest import REPO, TINY_DATA

USAGE, RUNTIME = 2, 1


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]
    code: int
    expect: str  # a part of the one Error: line (its "what" and its "fix")
    env: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Path], None] | None = None  # writes files into the case's directory
    subprocess: bool = False


def _write(name: str, text: str | bytes) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        p = d / name
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text, encoding="utf-8")

    return setup


def _npz(name: str, y: np.ndarray, X: np.ndarray | None = None) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        n = len(y)
        x = X if X is not None else np.random.default_rng(0).normal(size=(n, 12, 2))
        np.savez(d / name, X=x.astype(np.float32), y=y)

    return setup


def _unwritable_dir(d: Path) -> None:
    # A regular file where a directory's parent should be: no user (root included) can create
    # a directory under it.
    (d / "afile").write_text("x")


def _huge_npz_header(path: Path) -> None:
    """An .npz whose X header announces 10**12 float32 values (the data itself is not there)."""
    import zipfile

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 100, 10)}
    )
    y = io.BytesIO()
    np.save(y, np.array([0, 1]))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("X.npy", buf.getvalue())
        z.writestr("y.npy", y.getvalue())


def _newer_schema(d: Path) -> None:
    # As a newer rnntune would leave it: a revision this one does not know.
    conn = sqlite3.connect(d / "study.db")
    with conn:
        conn.execute("UPDATE rnntune_alembic_version SET version_num = 'fffffffffff0'")
    conn.close()


def _mkdir(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).mkdir()


def _cfg(text: str) -> Callable[[Path], None]:
    return _write("exp.toml", text)


INIT = ["init", "--storage", "{db}"]
CFG = [*INIT, "--config", "{dir}/exp.toml"]
NEW = ["--experiment", "fresh"]  # a new experiment: the file's values are not merged into the old
BYTES_NON_ASCII = np.array([b"normal", b"abnormal", "ab\xe9normal".encode("latin-1")] * 20)

CASES: list[Case] = [
    # -- CLI options ----------------------------------------------------------------------
    Case("trials-0", [*INIT, "--trials", "0"], USAGE, "--trials must be at least 1, got 0"),
    Case("trials-not-int", [*INIT, "--trials", "ten"], USAGE, "'ten' is not a valid integer"),
    Case("repeats-0", [*INIT, "--repeats", "0"], USAGE, "--repeats must be at least 1"),
    Case("repeats-huge", [*INIT, "--repeats", "5000"], USAGE, "--repeats must be at most 1,000"),
    Case("max-epochs-0", [*INIT, "--max-epochs", "0"], USAGE, "--max-epochs must be at least 1"),
    Case("seed-negative", [*INIT, "--seed", "-1"], USAGE, "--seed must be at least 0, got -1"),
    Case(
        "seed-beyond-int32",
        [*INIT, *NEW, "--seed", "2147484"],
        USAGE,
        "--seed must be at most 2,000,000, got 2,147,484; pass a value in 0..2000000",
        subprocess=True,
    ),
    Case(
        "seed-beyond-2**32", [*INIT, *NEW, "--seed", "4294967296"], USAGE, "--seed must be at most"
    ),
    Case("name-dot", [*INIT, "--experiment", "."], USAGE, "experiment name '.' is not usable"),
    Case(
        "name-dotdot",
        [*INIT, "--experiment", ".."],
        USAGE,
        "experiment name '..' is not usable: start with a letter or digit",
        subprocess=True,
    ),
    Case(
        "name-slash", [*INIT, "--experiment", "a/b"], USAGE, "experiment name 'a/b' is not usable"
    ),
    Case("name-control", [*INIT, "--experiment", "a\x07b"], USAGE, "is not usable"),
    Case(
        "name-colon", [*INIT, "--experiment", "a:b"], USAGE, "experiment name 'a:b' is not usable"
    ),
    Case(
        "synthetic-huge",
        [*INIT, *NEW, "--data", "synthetic:n=100000000,length=100,features=4"],
        USAGE,
        "is above the limit of 268,435,456 (every worker holds all of it in memory); lower n",
        subprocess=True,
    ),
    Case(
        "synthetic-bad-n", [*INIT, *NEW, "--data", "synthetic:n=lots"], USAGE, "expected an integer"
    ),
    Case(
        "data-kind", [*INIT, *NEW, "--data", "parquet:x.pq"], USAGE, "unknown data kind 'parquet'"
    ),
    Case("objective", [*INIT, "--objective", "loss"], USAGE, "'loss' is not one of"),
    Case("workers-0", ["run", "--storage", "{db}", "--workers", "0"], USAGE, "must be at least 1"),
    Case(
        "threads-0",
        ["run", "--storage", "{db}", "--threads", "0"],
        USAGE,
        "--threads must be at least 1, got 0",
    ),
    Case(
        "heartbeat-0",
        ["worker", "--storage", "{db}", "--heartbeat-interval", "0"],
        USAGE,
        "--heartbeat-interval must be at least 1 second",
    ),
    Case(
        "grace-le-heartbeat",
        ["worker", "--storage", "{db}", "--grace-period", "5", "--heartbeat-interval", "5"],
        USAGE,
        "must exceed --heartbeat-interval",
    ),
    Case(
        "grace-huge",
        ["worker", "--storage", "{db}", "--grace-period", "86000000000000"],
        USAGE,
        "--grace-period must be at most one week (604800 s)",
    ),
    Case(
        "device-cuda-x",
        ["worker", "--storage", "{db}", "--device", "cuda:x"],
        USAGE,
        "unknown device 'cuda:x': use auto, cpu, cuda or cuda:N",
        subprocess=True,
    ),
    Case(
        "device-gpu",
        ["worker", "--storage", "{db}", "--device", "gpu"],
        USAGE,
        "unknown device 'gpu'",
    ),
    Case(
        "status-interval-negative",
        ["status", "--storage", "{db}", "--watch", "--interval", "-1"],
        USAGE,
        "-1.0 is not in the range 0.1<=x<=3600",
    ),
    Case(
        "dashboard-port",
        ["dashboard", "--storage", "{db}", "--port", "99999"],
        USAGE,
        "99999 is not in the range",
    ),
    Case(
        "run-out-unwritable",
        ["run", "--storage", "{db}", "--out", "{dir}/afile/reports"],
        USAGE,
        "is not a writable directory (Not a directory): pass --out DIR",
        setup=_unwritable_dir,
        subprocess=True,
    ),
    Case(
        "run-artifacts-unwritable",
        ["run", "--storage", "{db}", "--out", "{dir}/r", "--artifacts", "{dir}/afile/art"],
        USAGE,
        "--artifacts {dir}/afile/art is not a writable directory",
        setup=_unwritable_dir,
    ),
    Case(
        "worker-artifacts-unwritable",
        ["worker", "--storage", "{db}", "--artifacts", "{dir}/afile/art"],
        USAGE,
        "pass --artifacts DIR pointing at a directory you can write to",
        setup=_unwritable_dir,
    ),
    Case(
        "evaluate-out-unwritable",
        ["evaluate", "--storage", "{db}", "--out", "{dir}/afile/r"],
        USAGE,
        "--out {dir}/afile/r is not a writable directory",
        setup=_unwritable_dir,
    ),
    Case(
        "report-out-directory",
        ["report", "--storage", "{db}", "--out", "{dir}/outdir"],
        USAGE,
        "File '{dir}/outdir' is a directory",
        setup=_mkdir("outdir"),
    ),
    Case(
        "experiment-changed",
        [*INIT, "--trials", "5"],
        RUNTIME,
        "already exists with a different configuration (trials: 2 -> 5): use a new --experiment",
    ),
    Case(
        "experiment-missing",
        ["status", "--storage", "{db}", "--experiment", "nope"],
        RUNTIME,
        "no experiment 'nope'",
    ),
    # -- experiment files -----------------------------------------------------------------
    Case(
        "file-missing",
        [*INIT, "--config", "{dir}/none.toml"],
        USAGE,
        "does not exist: check the --config path",
    ),
    Case(
        "file-is-directory",
        [*INIT, "--config", "{dir}/cfgdir"],
        USAGE,
        "File '{dir}/cfgdir' is a directory",
        setup=_mkdir("cfgdir"),
    ),
    Case("file-bad-toml", CFG, USAGE, "is not valid TOML", setup=_cfg("[experiment\n")),
    Case(
        "file-not-utf8",
        CFG,
        USAGE,
        "is not UTF-8 text (byte 0xff at position 0): save it as UTF-8",
        setup=_write("exp.toml", b"\xff\xfe[x]"),
    ),
    Case(
        "file-unknown-table", CFG, USAGE, "unknown table(s) ['trial']", setup=_cfg("[trial]\nx=1\n")
    ),
    Case(
        "file-unknown-key",
        CFG,
        USAGE,
        "unknown key(s) ['trails']",
        setup=_cfg("[experiment]\ntrails=3\n"),
    ),
    Case(
        "file-experiment-not-table",
        CFG,
        USAGE,
        "experiment must be a table",
        setup=_cfg("experiment = 5\n"),
    ),
    Case(
        "file-families-int",
        [*CFG, *NEW],
        USAGE,
        "families must be a list",
        setup=_cfg("[experiment]\nfamilies = 5\n"),
    ),
    Case(
        "file-families-dup",
        [*CFG, *NEW],
        USAGE,
        "families must be distinct names",
        setup=_cfg('[experiment]\nfamilies = ["gru", "gru"]\n'),
    ),
    Case(
        "file-families-str",
        [*CFG, *NEW],
        USAGE,
        "families must be a list",
        setup=_cfg('[experiment]\nfamilies = "gru"\n'),
    ),
    Case(
        "file-search-space-int",
        [*CFG, *NEW],
        USAGE,
        "search_space must be a table",
        setup=_cfg("search_space = 5\n"),
    ),
    Case(
        "file-trials-bool",
        [*CFG, *NEW],
        USAGE,
        "trials must be a whole number, got a boolean True",
        setup=_cfg("[experiment]\ntrials = true\n"),
    ),
    Case(
        "file-trials-float",
        [*CFG, *NEW],
        USAGE,
        "trials must be a whole number, got a number 10.9",
        setup=_cfg("[experiment]\ntrials = 10.9\n"),
    ),
    Case(
        "file-trials-str",
        [*CFG, *NEW],
        USAGE,
        "trials must be a whole number",
        setup=_cfg('[experiment]\ntrials = "ten"\n'),
    ),
    Case(
        "file-name-int",
        [*CFG],
        USAGE,
        "name must be a string",
        setup=_cfg("[experiment]\nname = 5\n"),
    ),
    Case(
        "file-name-nul",
        [*CFG],
        USAGE,
        "is not usable",
        setup=_cfg('[experiment]\nname = "a\\u0000b"\n'),
    ),
    Case(
        "file-objective",
        [*CFG, *NEW],
        USAGE,
        "unknown objective 'loss'",
        setup=_cfg('[experiment]\nobjective = "loss"\n'),
    ),
    Case(
        "file-tpe-negative",
        [*CFG, *NEW],
        USAGE,
        "--tpe-startup-trials must be at least 0",
        setup=_cfg("[experiment]\ntpe_startup_trials = -1\n"),
    ),
    Case(
        "pruner-percentile-150",
        [*CFG, *NEW],
        USAGE,
        "pruner.percentile must be a number in 0..100, got 150",
        setup=_cfg('[pruner]\ntype = "percentile"\npercentile = 150\n'),
        subprocess=True,
    ),
    Case(
        "pruner-startup-negative",
        [*CFG, *NEW],
        USAGE,
        "pruner.n_startup_trials must be a whole number >= 0",
        setup=_cfg("[pruner]\nn_startup_trials = -1\n"),
    ),
    Case(
        "pruner-warmup-str",
        [*CFG, *NEW],
        USAGE,
        "pruner.n_warmup_steps must be a whole number >= 0, got '3'",
        setup=_cfg('[pruner]\nn_warmup_steps = "3"\n'),
    ),
    Case(
        "pruner-type",
        [*CFG, *NEW],
        USAGE,
        "unknown pruner 'bogus'",
        setup=_cfg('[pruner]\ntype = "bogus"\n'),
    ),
    Case(
        "pruner-unknown-key",
        [*CFG, *NEW],
        USAGE,
        "unknown key(s) ['patience'] in [pruner]",
        setup=_cfg("[pruner]\npatience = 2\n"),
    ),
    Case(
        "space-step-0",
        [*CFG, *NEW],
        USAGE,
        "search_space.learning_rate: step must be a number > 0, got 0",
        setup=_cfg(
            '[search_space.learning_rate]\ntype = "float"\nlow = 0.001\nhigh = 0.01\nstep = 0\n'
        ),
        subprocess=True,
    ),
    Case(
        "space-step-not-dividing",
        [*CFG, *NEW],
        USAGE,
        "search_space.dropout: high - low (0.5 - 0.1) is not a multiple of step 0.3; "
        "use high = 0.4",
        setup=_cfg('[search_space.dropout]\ntype = "float"\nlow = 0.1\nhigh = 0.5\nstep = 0.3\n'),
    ),
    Case(
        "space-log-and-step",
        [*CFG, *NEW],
        USAGE,
        "give either log = true or a step, not both",
        setup=_cfg(
            '[search_space.hidden_size]\ntype = "int"\nlow = 8\nhigh = 64\nlog = true\nstep = 8\n'
        ),
    ),
    Case(
        "space-low-gt-high",
        [*CFG, *NEW],
        USAGE,
        "needs numbers low <= high",
        setup=_cfg('[search_space.dropout]\ntype = "float"\nlow = 0.5\nhigh = 0.1\n'),
    ),
    Case(
        "space-int-float-bounds",
        [*CFG, *NEW],
        USAGE,
        "an int parameter needs whole-number low and high",
        setup=_cfg('[search_space.hidden_size]\ntype = "int"\nlow = 8.5\nhigh = 64\n'),
    ),
    Case(
        "space-unknown-type",
        [*CFG, *NEW],
        USAGE,
        "type 'uniform' not allowed",
        setup=_cfg('[search_space.learning_rate]\ntype = "uniform"\nlow = 0.001\nhigh = 0.01\n'),
    ),
    Case(
        "space-unknown-key",
        [*CFG, *NEW],
        USAGE,
        "unknown key(s) ['lo']",
        setup=_cfg(
            '[search_space.learning_rate]\ntype = "float"\nlo = 0.001\nlow = 0.001\nhigh = 0.01\n'
        ),
    ),
    Case(
        "space-log-str",
        [*CFG, *NEW],
        USAGE,
        "log must be true or false, got 'yes'",
        setup=_cfg(
            '[search_space.learning_rate]\ntype = "float"\nlow = 0.001\nhigh = 0.01\nlog = "yes"\n'
        ),
    ),
    Case(
        "space-bool-choice",
        [*CFG, *NEW],
        USAGE,
        "values must be positive integers, got True",
        setup=_cfg('[search_space.batch_size]\ntype = "categorical"\nchoices = [true, 32]\n'),
    ),
    Case(
        "space-entry-not-table",
        [*CFG, *NEW],
        USAGE,
        "give a table with type",
        setup=_cfg("[search_space]\nhidden_size = 5\n"),
    ),
    # -- data files -------------------------------------------------------------------------
    Case(
        "npz-bytes-labels-non-ascii",
        [*INIT, *NEW, "--data", "npz:{dir}/b.npz"],
        RUNTIME,
        "labels are bytes that are not UTF-8 text (byte 0xe9 at position 2); store labels as str",
        setup=_npz("b.npz", BYTES_NON_ASCII),
        subprocess=True,
    ),
    Case(
        "npz-unknown-labels",
        [*INIT, *NEW, "--data", "npz:{dir}/b.npz"],
        RUNTIME,
        "unknown label values 'maybe'",
        setup=_npz("b.npz", np.array([b"normal", b"abnormal", b"maybe"] * 20)),
    ),
    Case(
        "npz-nan",
        [*INIT, *NEW, "--data", "npz:{dir}/n.npz"],
        RUNTIME,
        "NaN and 0 infinite values",
        setup=_npz("n.npz", np.array([0, 1] * 30), X=np.full((60, 12, 2), np.nan)),
    ),
    Case(
        "npz-truncated",
        [*INIT, *NEW, "--data", "npz:{dir}/t.npz"],
        RUNTIME,
        "write it with numpy.savez",
        setup=_write("t.npz", b"PK\x03\x04trunc"),
    ),
    Case(
        "npz-missing", [*INIT, *NEW, "--data", "npz:{dir}/none.npz"], RUNTIME, "data file not found"
    ),
    Case(
        "csv-empty",
        [*INIT, *NEW, "--data", "csv:{dir}/e.csv"],
        RUNTIME,
        "is empty; write a header",
        setup=_write("e.csv", ""),
    ),
    Case(
        "csv-no-label",
        [*INIT, *NEW, "--data", "csv:{dir}/c.csv"],
        RUNTIME,
        "lacks column(s) label",
        setup=_write("c.csv", "sequence_id,t,x\n1,0,0.5\n"),
    ),
    # -- storage URLs -------------------------------------------------------------------------
    Case(
        "sqlite-not-a-database",
        ["init", "--storage", "sqlite:///{dir}/notes.txt"],
        RUNTIME,
        "is not a SQLite database (it holds something else); nothing was changed: pass --storage",
        setup=_write("notes.txt", "my precious notes\n" * 10),
        subprocess=True,
    ),
    Case(
        "sqlite-not-a-database-status",
        ["status", "--storage", "sqlite:///{dir}/notes.txt"],
        RUNTIME,
        "is not a SQLite database",
        setup=_write("notes.txt", "my precious notes\n"),
    ),
    Case(
        "sqlite-directory",
        ["init", "--storage", "sqlite:///{dir}/adir"],
        RUNTIME,
        "is a directory, not a database file: pass --storage sqlite:///PATH/TO/FILE.db",
        setup=_mkdir("adir"),
        subprocess=True,
    ),
    Case(
        "sqlite-parent-is-file",
        ["init", "--storage", "sqlite:///{dir}/afile/x.db"],
        RUNTIME,
        "a part of that path is a file, not a directory",
        setup=_unwritable_dir,
    ),
    Case(
        "sqlite-missing-for-status",
        ["status", "--storage", "sqlite:///{dir}/none.db"],
        RUNTIME,
        "no study database at",
    ),
    Case(
        "url-port-not-a-number",
        ["init", "--storage", "postgresql://u:s3cr3t-pw@localhost:54x2/db"],
        USAGE,
        "cannot parse storage URL 'postgresql://u:***@localhost:54x2/db'",
        subprocess=True,
    ),
    Case(
        "url-port-range",
        ["init", "--storage", "postgresql://u@localhost:99999/db"],
        USAGE,
        "use a port in 1..65535",
    ),
    Case(
        "url-backend",
        ["init", "--storage", "mysql://u@h/db"],
        USAGE,
        "unsupported storage backend 'mysql'",
    ),
    Case(
        "url-memory",
        ["init", "--storage", "sqlite://"],
        USAGE,
        "in-memory SQLite storage cannot be shared",
    ),
    Case("url-garbage", ["init", "--storage", "not a url"], USAGE, "cannot parse storage URL"),
    Case(
        "url-driver",
        ["init", "--storage", "postgresql+asyncpg://u@h/db"],
        USAGE,
        "unsupported PostgreSQL driver",
    ),
    Case(
        "pg-unreachable",
        ["init", "--storage", "postgresql://u:s3cr3t-pw@127.0.0.1:1/db"],
        RUNTIME,
        "cannot open the study database at postgresql+psycopg2://u:***@127.0.0.1:1/db",
    ),
    Case(
        "schema-newer-init",
        ["init", "--storage", "{db}"],
        RUNTIME,
        "are at revision fffffffffff0, which this rnntune",
        setup=_newer_schema,
    ),
    Case(
        "schema-newer-status",
        ["status", "--storage", "{db}"],
        RUNTIME,
        "a newer rnntune upgraded them; install that version here",
        setup=_newer_schema,
        subprocess=True,
    ),
    # -- environment variables ----------------------------------------------------------------
    Case(
        "env-trials",
        ["init", "--storage", "{db}"],
        USAGE,
        "'abc' is not a valid integer",
        env={"RNNTUNE_TRIALS": "abc"},
    ),
    Case(
        "env-seed",
        ["init", "--storage", "{db}"],
        USAGE,
        "--seed must be at least 0",
        env={"RNNTUNE_SEED": "-5"},
    ),
    Case(
        "env-device",
        ["worker", "--storage", "{db}"],
        USAGE,
        "unknown device 'tpu'",
        env={"RNNTUNE_DEVICE": "tpu"},
    ),
    Case(
        "env-experiment",
        ["init", "--storage", "{db}"],
        USAGE,
        "experiment name '..' is not usable",
        env={"RNNTUNE_EXPERIMENT": ".."},
    ),
    Case(
        "env-storage-file-missing",
        ["status"],
        USAGE,
        "cannot read RNNTUNE_STORAGE_FILE={dir}/none (No such file or directory): point "
        "RNNTUNE_STORAGE_FILE at a readable file",
        env={"RNNTUNE_STORAGE_FILE": "{dir}/none"},
        subprocess=True,
    ),
    Case(
        "env-storage-file-empty",
        ["status"],
        USAGE,
        "RNNTUNE_STORAGE_FILE={dir}/empty is empty",
        env={"RNNTUNE_STORAGE_FILE": "{dir}/empty"},
        setup=_write("empty", "\n"),
    ),
    Case(
        "env-password-file-sqlite",
        ["status", "--storage", "{db}"],
        USAGE,
        "RNNTUNE_STORAGE_PASSWORD_FILE is set but the storage is not PostgreSQL",
        env={"RNNTUNE_STORAGE_PASSWORD_FILE": "{dir}/pw"},
        setup=_write("pw", "s3cr3t-pw"),
    ),
    Case(
        "env-storage-url",
        ["status"],
        USAGE,
        "unsupported storage backend 'redis'",
        env={"RNNTUNE_STORAGE": "redis://x"},
    ),
    Case(
        "env-threads",
        ["run", "--storage", "{db}"],
        USAGE,
        "--threads must be at least 1, got -2",
        env={"RNNTUNE_THREADS": "-2"},
    ),
]


# -- the harness -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def registered_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite study database with experiment 'default' (2 trials) registered, made once."""
    d = tmp_path_factory.mktemp("base")
    r = CliRunner().invoke(
        main,
        ["init", "--storage", f"sqlite:///{d / 'study.db'}", "--data", TINY_DATA, "--trials", "2"],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    # Everything into the main file, so a copy of it is the whole database.
    conn = sqlite3.connect(d / "study.db")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return d / "study.db"


def sqlite_content(path: Path) -> str:
    """Every row of every table (plus the schema), for 'nothing stored changed'."""
    if not path.exists():
        return "<absent>"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        text = "\n".join(conn.iterdump())
    conn.close()
    return text


def files_in(d: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(d)): p.read_bytes()
        for p in sorted(d.rglob("*"))
        if p.is_file() and not p.name.startswith("study.db")
    }


def one_error_line(output: str) -> str:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, output
    return lines[0]


def _fill(text: str, d: Path, db: str) -> str:
    return text.replace("{db}", db).replace("{dir}", str(d))


def run_case(case: Case, d: Path, db: str, in_subprocess: bool) -> tuple[int, str]:
    argv = [_fill(a, d, db) for a in case.argv]
    env = {k: _fill(v, d, db) for k, v in case.env.items()}
    if in_subprocess:
        base = {k: v for k, v in os.environ.items() if not k.startswith("RNNTUNE_")}
        proc = subprocess.run(
            [sys.executable, "-m", "rnntune", *argv],
            cwd=d,
            env={**base, "RNNTUNE_LOG_LEVEL": "WARNING", **env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        return proc.returncode, proc.stdout + proc.stderr
    cwd = os.getcwd()
    os.chdir(d)  # relative defaults (rnntune-artifacts, reports) land in the case's directory
    try:
        clean = {k: None for k in os.environ if k.startswith("RNNTUNE_")}
        result = CliRunner().invoke(main, argv, env={**clean, **env}, catch_exceptions=False)
    finally:
        os.chdir(cwd)
    return result.exit_code, result.output


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, registered_db: Path, tmp_path: Path) -> None:
    db_file = tmp_path / "study.db"
    shutil.copy(registered_db, db_file)
    db = f"sqlite:///{db_file}"
    if case.setup:
        case.setup(tmp_path)
    before_db, before_files = sqlite_content(db_file), files_in(tmp_path)

    code, output = run_case(case, tmp_path, db, case.subprocess)

    line = one_error_line(output)
    assert _fill(case.expect, tmp_path, db) in line, line
    assert code == case.code, output
    assert "s3cr3t-pw" not in output  # a password in a URL is masked in every message
    assert sqlite_content(db_file) == before_db, "the study database changed"
    after = files_in(tmp_path)
    for name, data in before_files.items():  # the user's files are untouched
        assert after.get(name) == data, f"{name} changed"
    print(f"{case.id}: exit {code}: {line}")


def test_at_least_forty_cases() -> None:
    assert len(CASES) >= 40
    assert sum(c.subprocess for c in CASES) >= 10


# -- cases that need more than a template -------------------------------------------------
@pytest.mark.timeout(120)
def test_read_only_directory_for_a_new_sqlite_database(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """As an unprivileged user (root can write anywhere), in a directory it cannot write."""
    if os.geteuid() != 0 and os.access(tmp_path, os.W_OK):
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        prefix: list[str] = []
    else:
        if not shutil.which("setpriv"):
            pytest.skip("needs setpriv to drop root")
        # pytest's own tmp directories are private to root: one nobody can enter, not write.
        ro = Path(tempfile.mkdtemp(prefix="rnntune-ro-"))
        ro.chmod(0o555)
        request.addfinalizer(lambda: shutil.rmtree(ro, ignore_errors=True))
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNTUNE_")}
    env["HOME"] = str(ro)
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "rnntune", "init", "--storage", f"sqlite:///{ro}/s.db"],
        cwd=ro,
        env={**env, "PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        timeout=100,
    )
    line = one_error_line(proc.stdout + proc.stderr)
    assert proc.returncode == 1
    assert f"the directory {ro} of the SQLite database is not writable" in line, line
    assert list(ro.iterdir()) == []
    print(line)


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_unknown_database_and_role_on_real_postgres(pg_url: str, tmp_path: Path) -> None:
    base = pg_url.rsplit("/", 1)[0]
    for url, expect in (
        (f"{base}/rnntune_no_such_db", 'database "rnntune_no_such_db" does not exist'),
        (
            base.replace("postgres@", "rnntune_no_such_role:s3cr3t-pw@") + "/postgres",
            'role "rnntune_no_such_role" does not exist',
        ),
    ):
        r = CliRunner().invoke(main, ["init", "--storage", url], catch_exceptions=False)
        line = one_error_line(r.output)
        assert r.exit_code == 1 and expect in line and "s3cr3t-pw" not in line, r.output
        assert "check the URL, that the server is running and that the database exists" in line
        print(line)


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_foreign_postgres_database_is_refused_untouched(pg_url: str) -> None:
    from sqlalchemy import create_engine, inspect, text

    eng = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg2://"))
    with eng.begin() as c:
        c.execute(text("CREATE TABLE invoices (id int primary key, amount numeric)"))
        c.execute(text("INSERT INTO invoices VALUES (1, 9.99)"))
    r = CliRunner().invoke(main, ["init", "--storage", pg_url, "--data", TINY_DATA])
    line = one_error_line(r.output)
    assert r.exit_code == 1
    assert "already holds tables of another application (invoices)" in line
    assert "give rnntune a database of its own" in line
    assert inspect(eng).get_table_names() == ["invoices"]
    eng.dispose()
    print(line)


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_status_on_an_optuna_database_without_rnntune_tables(pg_url: str) -> None:
    import optuna

    optuna.create_study(
        storage=pg_url.replace("postgresql://", "postgresql+psycopg2://"), study_name="theirs"
    )
    for cmd in ("status", "report"):
        r = CliRunner().invoke(main, [cmd, "--storage", pg_url], catch_exceptions=False)
        line = one_error_line(r.output)
        assert r.exit_code == 1 and "has no rnntune tables" in line, r.output
        print(line)


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_seed_bound_fits_postgres_integer(pg_url: str) -> None:
    """The largest accepted seed's derived seeds fit the INTEGER columns on real PostgreSQL."""
    from rnntune.config import MAX_REPEATS, MAX_SEED, ExperimentConfig

    cfg = ExperimentConfig(seed=MAX_SEED, repeats=MAX_REPEATS)
    assert cfg.repeat_seed(MAX_REPEATS - 1) < 2**31
    assert cfg.trial_seed(3 * 100_000) < 2**31
    r = CliRunner().invoke(
        main,
        ["init", "--storage", pg_url, "--data", TINY_DATA, "--seed", str(MAX_SEED)],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output


PG_BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture
def password_pg(request: pytest.FixtureRequest) -> str:
    """A throwaway PostgreSQL cluster of our own with password (SCRAM) authentication, on a free
    port: the shared server trusts every password, so it cannot refuse a wrong one."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL binaries in {PG_BIN}")
    drop: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        if not shutil.which("setpriv"):
            pytest.skip("needs setpriv to drop root for initdb")
        drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    base = Path(tempfile.mkdtemp(prefix="rnntune-pg-"))
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    (base / "pw").write_text("right-password\n")
    if drop:
        os.chown(base, 65534, 65534)
        os.chown(base / "pw", 65534, 65534)
    data = base / "data"
    subprocess.run(
        [*drop, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
         f"--pwfile={base / 'pw'}", "--auth-host=scram-sha-256", "--auth-local=trust"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctl = [*drop, str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-t", "60"]
    subprocess.run(
        [*ctl, "-l", str(base / "log"), "start", "-o",
         f"-p {port} -k {base} -c listen_addresses=127.0.0.1"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    request.addfinalizer(
        lambda: subprocess.run([*ctl, "stop", "-m", "immediate"], capture_output=True, timeout=60)
    )
    return f"postgresql://postgres:{{password}}@127.0.0.1:{port}/postgres"


@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_wrong_password_on_real_postgres(password_pg: str, tmp_path: Path) -> None:
    wrong = password_pg.format(password="s3cr3t-pw-wrong")
    r = CliRunner().invoke(main, ["init", "--storage", wrong, "--data", TINY_DATA])
    line = one_error_line(r.output)
    assert r.exit_code == 1, r.output
    assert 'password authentication failed for user "postgres"' in line, line
    assert "s3cr3t" not in r.output and "***" in line
    # The same cluster, with the right password from a file, works: the refusal was the password.
    (tmp_path / "pw").write_text("right-password")
    ok = CliRunner().invoke(
        main,
        ["status", "--storage", password_pg.replace(":{password}", "")],
        env={"RNNTUNE_STORAGE_PASSWORD_FILE": str(tmp_path / "pw")},
    )
    assert "password authentication failed" not in ok.output, ok.output
    assert "has no study tables: run `rnntune init`" in ok.output  # it got in; nothing there
    print(line)


def test_ascii_bytes_labels_are_read(tmp_path: Path) -> None:
    """Bytes labels that are text (numpy.savez of b"normal") load like str labels."""
    y = np.array([b"normal", b"Abnormal ", b"0", b"1"] * 15)
    _npz("b.npz", y)(tmp_path)
    from rnntune.data import load_dataset

    ds = load_dataset(f"npz:{tmp_path / 'b.npz'}")
    assert ds.y.tolist()[:4] == [0, 1, 0, 1]


def test_concurrent_report_writes_never_collide(tmp_path: Path) -> None:
    """Two `evaluate` jobs with the same --out: each write goes through a temporary file of its
    own, so neither fails and the file is always one whole version (L5)."""
    import threading

    from rnntune.report import _atomic_write

    target = tmp_path / "report.md"
    texts = [f"version {i}\n" * 2000 for i in range(8)]
    errors: list[BaseException] = []

    def write(text: str) -> None:
        try:
            for _ in range(20):
                _atomic_write(target, text)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # no temporary file left
