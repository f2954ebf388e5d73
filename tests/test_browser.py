"""In a real browser: headless Chromium (Debian's chromium + chromium-driver, driven by Selenium)
loads the served optuna-dashboard and the HTML report of a finished experiment.

The dashboard is `rnntune dashboard` in a subprocess on 127.0.0.1; the report is opened from disk
(file://), as a reviewer would open it. Screenshots go to the test's tmp dir (the path is printed
on failure: ``pytest -rA`` shows it).

Without Chromium this module skips, with the reason; under CI=true it fails instead.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import FAST, rnntune

pytestmark = [pytest.mark.browser, pytest.mark.slow]

FAMILIES = ("rnn", "gru", "lstm")
STUDIES = [f"default.{f}" for f in FAMILIES]
WAIT = 60.0  # seconds for a page to render on a loaded CI machine


def _find(name: str) -> str | None:
    path = Path("/usr/bin") / name
    return str(path) if path.exists() else shutil.which(name)


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if _find("chromium") is None:
        return "chromium is not installed (apt-get install chromium chromium-driver)"
    if _find("chromedriver") is None:
        return "chromedriver is not installed (apt-get install chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser_ready() -> None:
    """Checked before anything slow runs: skip (or fail under CI) without a browser."""
    reason = _missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests cannot run: {reason} (CI must install it)")
        pytest.skip(reason)


@dataclass(frozen=True)
class Served:
    base: str
    cwd: Path
    shots: Path

    def shot(self, driver: Any, name: str) -> Path:
        path = self.shots / f"{name}.png"
        driver.save_screenshot(str(path))
        print(f"screenshot: {path}")
        return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - our own local server
        return bytes(r.read())


@pytest.fixture(scope="module")
def served(browser_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A finished tiny experiment, and `rnntune dashboard` serving it on a free local port."""
    cwd = tmp_path_factory.mktemp("browser")
    url = f"sqlite:///{cwd / 'study.db'}"
    artifacts = str(cwd / "artifacts")
    rnntune(
        "run", "--storage", url, "--data", "synthetic:n=300,length=12,features=3,seed=1",
        "--trials", "2", "--repeats", "2", "--max-epochs", "1", "--workers", "2",
        "--artifacts", artifacts, *FAST, cwd=cwd,
    )  # fmt: skip
    port = _free_port()
    log = cwd / "dashboard.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rnntune", "dashboard", "--storage", url, "--artifacts",
             artifacts, "--host", "127.0.0.1", "--port", str(port)],
            cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"rnntune dashboard exited {proc.returncode}:\n"
                                     + log.read_text()[-3000:])  # fmt: skip
            try:
                _get(f"{base}/api/meta", timeout=2)
                break
            except OSError as e:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"the dashboard did not answer ({e}):\n{log.read_text()}"
                    ) from e
                time.sleep(0.2)
        (cwd / "screenshots").mkdir()
        yield Served(base, cwd, cwd / "screenshots")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # gunicorn (quick shutdown) and its workers
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture(scope="module")
def driver(browser_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(_find("chromium"))
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):  # fmt: skip
        options.add_argument(arg)
    d = webdriver.Chrome(service=Service(str(_find("chromedriver"))), options=options)
    try:
        d.set_page_load_timeout(WAIT)
        yield d
    finally:
        d.quit()


def _wait_for_text(driver: Any, *needles: str) -> str:
    """Wait until the rendered page (the React app, after its API calls) shows every needle."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(d: Any) -> str | bool:
        text = str(d.find_element(By.TAG_NAME, "body").text)
        return text if all(n in text for n in needles) else False

    try:
        return str(WebDriverWait(driver, WAIT, poll_frequency=0.2).until(shown))
    except Exception as e:  # selenium's TimeoutException says nothing about the page
        body = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"page never showed {needles}; it shows:\n{body[:2000]}") from e


def _study_ids(base: str) -> dict[str, int]:
    studies = json.loads(_get(f"{base}/api/studies"))["study_summaries"]
    return {s["study_name"]: s["study_id"] for s in studies}


def _not_blank(png: bytes, min_colours: int = 16) -> None:
    """A real render has many colours and spread in brightness; a blank page has neither."""
    from PIL import Image, ImageStat

    img = Image.open(io.BytesIO(png)).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 20)
    n_colours = len(colours) if colours is not None else 1 << 20
    stddev = ImageStat.Stat(img.convert("L")).stddev[0]
    assert img.width > 100 and img.height > 100, img.size
    assert n_colours >= min_colours and stddev > 10, (n_colours, stddev)


# -- the dashboard ----------------------------------------------------------------------------
def test_api_lists_the_three_studies(served: Served) -> None:
    assert sorted(_study_ids(served.base)) == sorted(STUDIES)
    assert json.loads(_get(f"{served.base}/api/meta"))["artifact_is_available"] is True


def test_dashboard_lists_the_studies(served: Served, driver: Any) -> None:
    driver.get(f"{served.base}/dashboard")
    _wait_for_text(driver, *STUDIES)
    _not_blank(served.shot(driver, "dashboard-studies").read_bytes())


def test_study_page_lists_the_report_as_an_artifact(served: Served, driver: Any) -> None:
    from selenium.webdriver.common.by import By

    study_id = _study_ids(served.base)["default.gru"]
    driver.get(f"{served.base}/dashboard/studies/{study_id}")
    _wait_for_text(driver, "default.gru", "Study Artifacts", "report.html")
    # The download link of the report card points at the uploaded blob: fetch it.
    links = driver.find_elements(By.CSS_SELECTOR, 'a[download="report.html"]')
    assert len(links) == 1, "report.html should be listed once"
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", links[0])
    served.shot(driver, "dashboard-study-artifacts")
    served_html = _get(str(links[0].get_attribute("href")))
    assert served_html == (served.cwd / "reports" / "report.html").read_bytes()
    # Its plots are attached too, and the dashboard's previews of them load.
    previews = driver.find_elements(By.CSS_SELECTOR, 'img[alt="test_metrics.png"]')
    assert previews and driver.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth", previews[0]
    )


def test_study_note_shows_the_family_verdict(served: Served, driver: Any) -> None:
    study_id = _study_ids(served.base)["default.lstm"]
    driver.get(f"{served.base}/dashboard/studies/{study_id}/note")
    text = _wait_for_text(driver, "LSTM: evaluation", "LSTM ranks ", "Overall:")
    assert "| metric |" not in text  # the Markdown table rendered as a table
    _not_blank(served.shot(driver, "dashboard-note").read_bytes())


# -- the HTML report ---------------------------------------------------------------------------
def test_html_report_renders(served: Served, driver: Any) -> None:
    from selenium.webdriver.common.by import By

    report = served.cwd / "reports" / "report.html"
    driver.get(report.resolve().as_uri())
    verdict = driver.find_element(By.ID, "verdict").text.strip()
    assert len(verdict) > 20, verdict
    sections = driver.find_elements(By.CSS_SELECTOR, "section.family-section")
    assert sorted(s.get_attribute("data-family") for s in sections) == sorted(FAMILIES)
    tables = driver.find_elements(By.CSS_SELECTOR, "table.metrics")
    assert tables and all(t.size["height"] > 0 and t.size["width"] > 0 for t in tables)
    sizes = driver.execute_script(
        "return [...document.querySelectorAll('img.plot')].map(i => "
        "[i.dataset.plot, i.complete, i.naturalWidth, i.naturalHeight])"
    )
    assert len(sizes) >= 4, sizes  # test metrics, histories, importances, confusion matrices
    assert all(done and w > 0 and h > 0 for _name, done, w, h in sizes), sizes
    _not_blank(served.shot(driver, "report-top").read_bytes())
    # A plot, as drawn on the page: not an empty box.
    plot = driver.find_element(By.CSS_SELECTOR, "img.plot")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", plot)
    _not_blank(plot.screenshot_as_png)
    served.shot(driver, "report-plot")
