"""The dashboard in a real browser: while a training runs in another process, and over a run
of 100 classes beside a damaged one.

Needs Debian's ``chromium`` (``make test`` installs it where it can) and Playwright from PyPI;
skips with the reason otherwise. Every request that is not to this machine is aborted, so the
page must load everything from the dashboard itself. Screenshots go to the test's folder, and
also to ``$PAWLAB_SCREENSHOTS`` when it is set.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pawlab import runlog
from pawlab.dashboard.export import export_html
from pawlab.dashboard.store import run_id
from tests.conftest import ROOT, TINY, write_tree
from tests.dashboard.conftest import LiveServer, free_port

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
    _keep(shots)


def _reachable(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status) == 200
    except OSError:
        return False


EVIL = '<a href="https:evil.example">x'  # a class folder's name, as plotly would make it a link


def _colour_classes(root: Path, names: list[str], per_class: int) -> Path:
    """Tiny images of one colour per class (5 x 5 x 4 shades) with noise: learnable, fast."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        colour = np.array([40 + 45 * (i % 5), 40 + 45 * (i // 5 % 5), 40 + 45 * (i // 25)])
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 12, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{j}.png")
    return root


def _hundred_classes(tmp_path: Path) -> tuple[Path, Path]:
    """(runs folder, the run): a real training of 4 epochs over 100 classes, one named `EVIL`,
    and beside it a damaged copy: a line nested too deeply in its log, a pass of NaN and its
    typicality of NaN, a typicality of the wrong shape, and a pass whose header claims 10^11
    floats; and a copy recorded before typicality was (no typicality files)."""
    from pawlab.config import RuntimeConfig, TrainConfig
    from pawlab.training import train

    names = [EVIL] + [f"class{i:03d}" for i in range(1, 100)]
    src = _colour_classes(tmp_path / "src", names, 6)
    runs = tmp_path / "runs"
    cfg = TrainConfig(epochs=4, lr=1e-2, batch_size=32, seed=0)
    quiet = RuntimeConfig(progress=False)
    log = io.StringIO()
    train(
        src,
        tmp_path / "m.safetensors",
        TINY,
        cfg,
        workers=1,
        run_dir=runs / "hundred",
        stream=log,
        runtime=quiet,
    )
    damaged = Path(shutil.copytree(runs / "hundred", runs / "zz-damaged"))
    with open(damaged / runlog.EVENTS, "a") as fh:
        fh.write("[" * 10**6 + "\n")
    nan = np.load(damaged / runlog.pass_file(4))
    np.save(damaged / runlog.pass_file(4), np.full_like(nan, np.nan))
    np.save(damaged / runlog.typicality_file(4), np.full(len(nan), np.nan, np.float16))
    np.save(damaged / runlog.typicality_file(3), np.zeros(3, np.float16))
    old = Path(shutil.copytree(runs / "hundred", runs / "zz-old"))
    for typical in (old / runlog.VALIDATION).glob("typicality-*.npy"):
        typical.unlink()
    with open(damaged / runlog.pass_file(1), "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f2", "fortran_order": False, "shape": (10**11,)})
    return runs, runs / "hundred"


def test_a_hundred_classes_and_damaged_runs(tmp_path: Path) -> None:
    """The matrix of 100 classes: colour only, scrollable, its cells one click each, the most
    confused pairs listed; a hostile class name stays text in plotly too. A damaged run shows
    why, and a pass of NaN draws."""
    sync_api = pytest.importorskip("playwright.sync_api")
    import httpx2 as httpx

    runs, run = _hundred_classes(tmp_path)
    shots = [
        tmp_path / "dashboard-100-classes.png",
        tmp_path / "dashboard-damaged.png",
        tmp_path / "dashboard-typicality.png",
    ]
    errors: list[str] = []
    with LiveServer([runs]) as server, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        page.wait_for_selector("#chart-matrix .heatmaplayer")
        m = httpx.get(f"{server.url}/api/runs/{run_id(run)}/matrix").json()
        k = len(m["classes"])
        assert k == 100 and page.locator("#chart-matrix .heatmaplayer text").count() == 0  # colour only
        assert page.locator("#chart-matrix svg a").count() == 0  # the name is no link ...
        ticks = page.evaluate(
            "[...document.querySelectorAll('#chart-matrix .ytick text')].map(t => t.textContent)"
        )
        assert ticks[0] == EVIL[:15] + "…" and ticks[1] == "class001"  # ... but its text
        # one click on a cell of the diagonal that holds images, near the top left (in view)
        t = next(i for i in range(1, 40) if m["counts"][i][i])
        page.locator(".matrix-scroll").scroll_into_view_if_needed()
        box = page.locator("#chart-matrix .nsewdrag").bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + (t + 0.5) * box["width"] / k, box["y"] + (t + 0.5) * box["height"] / k)
        page.wait_for_function(
            f"document.getElementById('cell-title').textContent.startsWith('true class{t:03d}, ')"
        )
        assert page.inner_text("#cell-title").startswith(
            f"true class{t:03d}, predicted class{t:03d}: {m['counts'][t][t]}"
        )
        # each image's typicality beside its probability; sorted by it, the least typical first
        shown = page.locator("#cell .thumb .typ").all_inner_texts()
        assert len(shown) == m["counts"][t][t] and all(v.startswith("typicality 0.") for v in shown)
        page.select_option("#cell-order", "typicality")
        page.wait_for_function(
            "document.getElementById('cell-title').textContent.endsWith('(least typical first)')"
        )
        shown = [float(v.split()[1]) for v in page.locator("#cell .thumb .typ").all_inner_texts()]
        assert len(shown) == m["counts"][t][t] and shown == sorted(shown)
        page.screenshot(path=str(shots[2]), clip=_below(page, ".cell-bar", 420))
        page.select_option("#cell-order", "p")
        # the most confused pairs, each a link to its cell
        pairs = page.locator("#confused-list a")
        assert pairs.count() == min(
            15, sum(v > 0 for i, row in enumerate(m["counts"]) for j, v in enumerate(row) if i != j)
        )
        true, predicted = pairs.first.inner_text().split(" → ")
        pairs.first.click()
        page.wait_for_function(
            f"document.getElementById('cell-title').textContent.startsWith({f'true {true}, '!r})"
        )
        assert f"true {true}, predicted {predicted}: " in page.inner_text("#cell-title")
        page.screenshot(path=str(shots[0]), full_page=True)
        # the damaged copy: its reason in the list and in the summary; the NaN pass draws
        page.locator("#run-list li").nth(1).click()
        lines = len((run / runlog.EVENTS).read_bytes().splitlines())
        reason = f"events.jsonl: line {lines + 1} is nested more than {runlog.MAX_DEPTH} deep"
        assert page.locator("#run-list li").nth(1).locator(".reason").inner_text() == reason
        page.wait_for_function(f"document.getElementById('summary').textContent.includes({reason!r})")
        page.wait_for_selector("#confused-list a")
        page.locator("#confused-list a").first.click()
        page.wait_for_selector("#cell .thumb")
        assert page.locator("#cell .thumb .p").first.inner_text().endswith(" –")  # p: null, drawn as a dash
        assert page.locator("#cell .thumb .typ").first.inner_text() == "typicality –"  # NaN too
        page.locator("#cell .thumb").first.click()
        page.wait_for_selector("#chart-history .main-svg")
        page.evaluate(
            "s => { s.value = 2; s.dispatchEvent(new Event('input')); }",
            page.locator("#pass-slider").element_handle(),
        )  # epoch 3, whose typicality is of the wrong shape: its cells show none, and why
        page.wait_for_selector("#cell-note:not(.hidden)")
        assert page.inner_text("#cell-note") == (
            f"typicality not shown: validation/typicality-00003.npy: (3,), not ({m['count']},): "
            f"the index has {m['count']} images"
        )
        assert page.locator("#cell .thumb .typ").count() == 0
        page.evaluate(
            "s => { s.value = 0; s.dispatchEvent(new Event('input')); }",
            page.locator("#pass-slider").element_handle(),
        )
        page.wait_for_function(
            "document.getElementById('matrix-epoch').textContent.includes('pass-00001.npy')"
        )
        n = m["count"]
        assert page.inner_text("#matrix-epoch") == (
            f"after epoch 1: validation/pass-00001.npy: (100000000000,), not ({n}, 100): "
            f"the index has {n} images of 100 classes"
        )
        page.screenshot(path=str(shots[1]), full_page=True)
        # a run recorded before typicality: its cells as before, no sorting by typicality
        page.locator("#run-list li").nth(2).click()
        page.wait_for_selector("#confused-list a")
        page.locator("#confused-list a").first.click()
        page.wait_for_function("document.getElementById('cell-title').textContent.endsWith('wrong first)')")
        assert page.locator("#cell .thumb").count() and page.locator("#cell .thumb .typ").count() == 0
        assert page.locator("#cell-order-box").is_hidden()
        # the export of 100 classes, offline: the listed pairs open their cells from the file
        offline = browser.new_page(viewport={"width": 1400, "height": 1300})
        offline.on("pageerror", lambda e: errors.append(str(e)))
        offline.goto(export_html(run, tmp_path / "report.html").path.as_uri())
        offline.wait_for_selector("#confused-list a")
        offline.locator("#confused-list a").first.click()
        offline.wait_for_selector("#cell .thumb img")
        assert f"true {true}, predicted {predicted}: " in offline.inner_text("#cell-title")
        offline.select_option("#cell-order", "typicality")  # the export holds that order too
        offline.wait_for_function(
            "document.getElementById('cell-title').textContent.endsWith('(least typical first)')"
        )
        shown = [float(v.split()[1]) for v in offline.locator("#cell .thumb .typ").all_inner_texts()]
        assert shown and shown == sorted(shown)
        browser.close()
    assert errors == []
    _keep(shots)


def _below(page: Any, selector: str, height: int) -> dict[str, float]:
    """A screenshot's clip: ``selector`` scrolled to the top, the page's width, ``height`` down."""
    page.locator(selector).evaluate("e => e.scrollIntoView()")
    box = page.locator(selector).bounding_box()
    assert box is not None
    return {"x": 0, "y": box["y"], "width": page.viewport_size["width"], "height": height}


def _keep(shots: list[Path]) -> None:
    assert all(p.stat().st_size > 10_000 for p in shots)
    keep = os.environ.get("PAWLAB_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for p in shots:
            shutil.copy(p, Path(keep) / p.name)
