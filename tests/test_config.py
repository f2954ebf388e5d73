"""The precedence merge and the process settings live in rnntune.config, the CLI only reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from rnntune import config
from rnntune.cli import main


@pytest.fixture(autouse=True)
def _no_rnntune_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for var in [v for v in os.environ if v.startswith("RNNTUNE_")]:
        monkeypatch.delenv(var)


def test_explicit_settings_command_line_over_file(tmp_path: Path) -> None:
    f = tmp_path / "exp.toml"
    f.write_text(
        '[experiment]\nname = "fromfile"\ntrials = 5\nrepeats = 4\n[pruner]\ntype = "none"\n'
    )
    given = {"trials": 7, "repeats": None, "pruner": "hyperband", "data": None}
    explicit = config.explicit_settings(config.DEFAULT_EXPERIMENT, f, given)
    # Given values win, unset ones (None) leave the file's; the default name leaves the file's.
    assert explicit == {
        "name": "fromfile",
        "trials": 7,
        "repeats": 4,
        "pruner": {"type": "hyperband"},
    }
    cfg = config.build(explicit)
    assert (cfg.name, cfg.trials, cfg.repeats, cfg.pruner.type) == ("fromfile", 7, 4, "hyperband")
    assert cfg.max_epochs == config.ExperimentConfig().max_epochs  # the default
    assert config.explicit_settings("other", f, {})["name"] == "other"


def test_runtime_defaults_and_threads() -> None:
    rt = config.runtime("sqlite:///x.db", workers=None)
    assert (rt.artifacts, rt.device, rt.threads) == (
        config.DEFAULT_ARTIFACTS,
        config.DEFAULT_DEVICE,
        config.DEFAULT_WORKER_THREADS,
    )
    assert (rt.heartbeat_interval, rt.grace_period) == (None, None)  # the experiment's
    assert config.runtime("sqlite:///x.db", workers=10**6).threads == 1
    assert config.runtime("sqlite:///x.db", threads=3, workers=2).threads == 3


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {
            "artifacts": "art",
            "device": "cpu",
            "threads": 3,
            "heartbeat_interval": 2,
            "grace_period": 9,
        },
    ],
)
def test_worker_options_give_the_worker_the_same_runtime(settings: dict, tmp_path: Path) -> None:
    """`rnntune run` hands its settings to a worker as options; parsed back, they are the same."""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    rt = config.runtime(url, **settings, workers=2)
    args = config.worker_options("exp", rt, "npz:data.npz")
    worker = main.commands["worker"]
    ctx = worker.make_context("worker", ["--storage", url, *args])
    params = dict(ctx.params)
    assert (params.pop("storage"), params.pop("experiment"), params.pop("data")) == (
        url,
        "exp",
        "npz:data.npz",
    )
    assert set(params) == set(config.RUNTIME_OPTIONS)
    assert config.runtime(url, **params, workers=None) == rt
    assert "--storage" not in args


def test_the_options_show_the_config_defaults() -> None:
    defaults = {(cmd, p.name): p.default for cmd, c in main.commands.items() for p in c.params}
    assert defaults[("run", "workers")] == config.DEFAULT_WORKERS
    for cmd in ("run", "evaluate"):
        assert defaults[(cmd, "out")] == config.DEFAULT_OUT
    for cmd in ("run", "worker", "evaluate", "dashboard"):
        assert defaults[(cmd, "artifacts")] == config.DEFAULT_ARTIFACTS
    for cmd in ("run", "worker", "evaluate"):
        assert defaults[(cmd, "device")] == config.DEFAULT_DEVICE
    for cmd in ("init", "run", "worker", "evaluate", "report", "status"):
        assert defaults[(cmd, "experiment")] == config.DEFAULT_EXPERIMENT
