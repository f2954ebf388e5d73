"""The Compose stack end to end: tests/compose/smoke.sh under pytest (marker `compose`).

Builds the images, runs `docker compose up --scale worker=4` on a tiny experiment through a
killed worker, a crashed one and a stop/start, then checks the report and the dashboard: about
3 minutes on 2 cores with the images cached, 8-9 with a cold build. Needs a Docker engine, or
root and ../shared/docker/standins to start the stand-in one. Run it alone: `pytest -m compose`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SHARED, docker_missing

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "tests" / "compose" / "smoke.sh"

pytestmark = [pytest.mark.compose, pytest.mark.slow]


@pytest.mark.timeout(2000)  # smoke.sh has its own 1800 s limit
def test_compose_stack() -> None:
    standins = SHARED / "docker" / "standins"
    if not (os.geteuid() == 0 and standins.is_file()):
        why = docker_missing()
        if why:
            pytest.skip(f"needs Docker: {why} (or root and {standins} to start a stand-in)")
    # Its output streams to the terminal: step timings, and the logs of a failure.
    done = subprocess.run(["bash", str(SMOKE)], cwd=ROOT, timeout=1800, check=False)
    assert done.returncode == 0, "tests/compose/smoke.sh failed: see its output above"
