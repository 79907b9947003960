"""The dashboard in a real browser, while a training runs in another process.

Needs Debian's ``chromium`` (``make test`` installs it where it can) and Playwright from PyPI;
skips with the reason otherwise. Every request that is not to this machine is aborted, so the
page must load everything from the dashboard itself. Screenshots go to the test's folder, and
also to ``$PAWLAB_SCREENSHOTS`` when it is set.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, write_tree
from tests.dashboard.conftest import free_port

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    ),
]


def _wait(predicate: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _points(page: Any, chart: str) -> int:
    return int(page.evaluate(f"document.querySelectorAll('#{chart} .scatterlayer .point').length"))


def test_the_page_follows_a_live_training(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    src = write_tree(tmp_path / "src", {"cat": 150, "dog": 150})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    runs = tmp_path / "runs"
    training = subprocess.Popen(
        [sys.executable, "-m", "pawlab", "train", str(src), "--arch", "keras-mlp", "--size", "24",
         "--forever", "--run-dir", str(runs / "live"), "--out", str(tmp_path / "m.safetensors"), "-q",
         "--workers", "1", "--lr", "1e-4", "--batch-size", "16"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "pawlab", "dashboard", str(runs), "--port", str(port), "-q"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    outside: list[str] = []
    shots = [
        tmp_path / "dashboard-live.png",
        tmp_path / "dashboard-cell.png",
        tmp_path / "dashboard-slider.png",
    ]
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1300})

            def only_this_machine(route: Any) -> None:
                if route.request.url.startswith(f"http://127.0.0.1:{port}/"):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", only_this_machine)
            _wait(lambda: _reachable(url), "the dashboard to listen")
            page.goto(url)
            _wait(lambda: _points(page, "chart-loss") >= 4, "the loss curves to show two epochs")
            before = _points(page, "chart-loss")
            _wait(lambda: _points(page, "chart-loss") > before, "a new epoch to reach the page (live)")
            page.wait_for_selector("#chart-matrix .heatmaplayer")
            page.wait_for_function("document.getElementById('seen-train').naturalWidth > 0")
            assert "accuracy" in page.inner_text("#matrix-epoch")
            page.screenshot(path=str(shots[0]), full_page=True)
            # a cell of the matrix: true cat, predicted cat (the top-left quarter)
            page.locator("#chart-matrix").scroll_into_view_if_needed()
            box = page.locator("#chart-matrix .nsewdrag").bounding_box()
            assert box is not None
            page.mouse.click(box["x"] + box["width"] / 4, box["y"] + box["height"] / 4)
            page.wait_for_selector("#cell .thumb img")
            loaded = "[...document.querySelectorAll('#cell img')].every(i => i.complete && i.naturalWidth)"
            _wait(lambda: page.evaluate(loaded), "the thumbnails to load")
            assert "true cat, predicted cat" in page.inner_text("#cell-title")
            page.locator("#cell .thumb").first.click()
            page.wait_for_selector("#chart-history .scatterlayer .point")
            page.screenshot(path=str(shots[1]), full_page=True)
            # the slider: back to the first validation pass
            label = page.inner_text("#pass-label")
            page.evaluate(
                "s => { s.value = 0; s.dispatchEvent(new Event('input')); }",
                page.locator("#pass-slider").element_handle(),
            )
            _wait(
                lambda: page.inner_text("#pass-label") == "epoch 1" and label != "epoch 1",
                "the slider to show epoch 1",
            )
            page.screenshot(path=str(shots[2]), full_page=True)
            # the same run exported to one file, opened with no server and no network at all
            training.send_signal(signal.SIGTERM)
            training.wait(timeout=60)
            report = tmp_path / "report.html"
            exported = subprocess.run(
                [sys.executable, "-m", "pawlab", "dashboard", str(runs / "live"), "--export", str(report)],
                env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert exported.returncode == 0, exported.stderr
            offline = browser.new_page(viewport={"width": 1400, "height": 1300})

            def files_only(route: Any) -> None:
                if route.request.url.startswith("file:"):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            offline.route("**/*", files_only)
            offline.goto(report.as_uri())
            offline.wait_for_selector("#chart-matrix .heatmaplayer")
            assert "accuracy" in offline.inner_text("#matrix-epoch")
            assert _points(offline, "chart-loss") >= 4
            browser.close()
    finally:
        training.send_signal(signal.SIGTERM)
        server.terminate()
        training.wait(timeout=60)
        server.wait(timeout=30)
    assert outside == [], f"the page asked for {outside}"
    assert all(p.stat().st_size > 10_000 for p in shots)
    keep = os.environ.get("PAWLAB_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for p in shots:
            shutil.copy(p, Path(keep) / p.name)


def _reachable(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status) == 200
    except OSError:
        return False
