"""The CLI surface: help on every command, one-line errors with exit codes, option precedence."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from rnntune.cli import main

COMMANDS = ["init", "run", "worker", "evaluate", "report", "status", "dashboard"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_for_every_command(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output
    assert "--storage" in result.output


def _error_line(result) -> str:  # noqa: ANN001
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def _init(tmp_path: Path, *args: str, env: dict[str, str] | None = None):  # noqa: ANN202
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    return CliRunner().invoke(
        main,
        ["init", "--storage", db, "--data", "synthetic:n=300,length=10,features=2", *args],
        env=env,
        catch_exceptions=False,
    )


def test_bad_option_values_are_one_line_errors(tmp_path: Path) -> None:
    r = _init(tmp_path, "--trials", "0")
    assert r.exit_code == 2  # a usage error
    assert _error_line(r) == "Error: --trials must be at least 1, got 0"


def test_unknown_storage_backend(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["init", "--storage", "mysql://x@y/z"])
    assert r.exit_code == 2
    assert _error_line(r).startswith("Error: unsupported storage backend 'mysql'")


def test_missing_experiment_names_the_fix(tmp_path: Path) -> None:
    assert _init(tmp_path).exit_code == 0
    r = CliRunner().invoke(
        main, ["status", "--storage", f"sqlite:///{tmp_path / 'cli.db'}", "--experiment", "nope"]
    )
    assert r.exit_code == 1
    line = _error_line(r)
    assert "no experiment 'nope'" in line and "(experiments here: default)" in line
    assert "rnntune init --experiment nope" in line


def test_init_is_idempotent_and_refuses_a_changed_config(tmp_path: Path) -> None:
    first = _init(tmp_path, "--trials", "3")
    assert first.exit_code == 0 and "registered" in first.output
    again = _init(tmp_path, "--trials", "3")
    assert again.exit_code == 0 and "already registered (unchanged)" in again.output
    # Options not given are taken from the stored experiment, not from the defaults.
    bare = CliRunner().invoke(main, ["init", "--storage", f"sqlite:///{tmp_path / 'cli.db'}"])
    assert bare.exit_code == 0, bare.output
    changed = _init(tmp_path, "--trials", "5")
    assert changed.exit_code == 1
    line = _error_line(changed)
    assert "already exists with a different configuration (trials: 3 -> 5)" in line


def test_precedence_cli_over_env_over_file_over_default(tmp_path: Path) -> None:
    from rnntune.experiment import find_by_name
    from rnntune.storage import StorageRole, open_optuna_storage

    cfg = tmp_path / "exp.toml"
    cfg.write_text("[experiment]\ntrials = 7\nrepeats = 4\nmax_epochs = 3\n")
    db = f"sqlite:///{tmp_path / 'p.db'}"
    r = CliRunner().invoke(
        main,
        [
            "init",
            "--storage",
            db,
            "--config",
            str(cfg),
            "--trials",
            "9",
            "--data",
            "synthetic:n=300,length=10,features=2",
        ],
        env={"RNNTUNE_TRIALS": "8", "RNNTUNE_REPEATS": "5"},
    )
    assert r.exit_code == 0, r.output
    exp = find_by_name(open_optuna_storage(db, StorageRole.WORK).engine, "default")
    assert exp is not None
    c = exp.config
    assert c.trials == 9  # CLI beats env and file
    assert c.repeats == 5  # env beats file
    assert c.max_epochs == 3  # file beats default
    assert c.patience == 3  # default
    assert c.search_space["hidden_size"]["choices"] == [16, 32, 64]


def test_bad_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[experiment]\ntrails = 7\n")
    r = _init(tmp_path, "--config", str(cfg))
    assert r.exit_code == 2
    assert "unknown key(s) ['trails'] in [experiment]" in _error_line(r)
    cfg.write_text('[search_space.hidden_size]\ntype = "categorical"\nchoices = []\n')
    r = _init(tmp_path, "--config", str(cfg))
    assert "search_space.hidden_size: categorical needs a non-empty list" in _error_line(r)


def test_search_space_from_file_is_stored(tmp_path: Path) -> None:
    from rnntune.experiment import find_by_name
    from rnntune.storage import StorageRole, open_optuna_storage

    cfg = tmp_path / "space.toml"
    cfg.write_text(
        '[search_space.hidden_size]\ntype = "categorical"\nchoices = [8, 16]\n'
        '[search_space.learning_rate]\ntype = "float"\nlow = 0.001\nhigh = 0.01\nlog = true\n'
        '[search_space.batch_size]\ntype = "categorical"\nchoices = [32]\n'
        '[search_space.num_layers]\ntype = "int"\nlow = 1\nhigh = 2\n'
        '[search_space.dropout]\ntype = "float"\nlow = 0.0\nhigh = 0.3\n'
        '[pruner]\ntype = "none"\n'
    )
    r = _init(tmp_path, "--config", str(cfg))
    assert r.exit_code == 0, r.output
    exp = find_by_name(
        open_optuna_storage(f"sqlite:///{tmp_path / 'cli.db'}", StorageRole.WORK).engine, "default"
    )
    assert exp is not None
    assert set(exp.config.search_space) == {
        "hidden_size",
        "learning_rate",
        "batch_size",
        "num_layers",
        "dropout",
    }
    assert exp.config.pruner.type == "none"
