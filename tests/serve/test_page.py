"""The page and the docs of `pawlab serve` in a real browser: images picked, dropped and pasted
are answered as ``POST /v1/predict`` answers them, a bad one shows the server's reason beside
it, the token is asked for, and every path of ``/openapi.json`` is on the docs page.

Needs Debian's ``chromium`` and Playwright from PyPI (skips with the reason otherwise). Every
request not to the server is aborted, and the tests assert there was none.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest
from PIL import Image

from pawlab.serve import Served, create_app
from pawlab.serve.models import Batching
from tests.dashboard.conftest import AppServer
from tests.serve.conftest import Server

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    ),
]
NOT_AN_IMAGE = b"a shopping list, not a picture"
SETTLED = (
    "() => document.querySelectorAll('.result').length > 0 && !document.querySelector('.result.pending')"
)


class Browser:
    """A Chromium page that may reach ``origin`` only: every other request is aborted and kept
    in `outside`; script errors and console errors are kept in `errors`."""

    def __init__(self, pw: Any, origin: str) -> None:
        self.browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        self.page = self.browser.new_page(viewport={"width": 1100, "height": 900})
        self.outside: list[str] = []
        self.errors: list[str] = []
        self.page.route("**/*", lambda route: self._only(route, origin))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)

    def _only(self, route: Any, origin: str) -> None:
        if route.request.url.startswith(f"{origin}/"):
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort()

    def results(self) -> list[tuple[str, dict[str, Any]]]:
        """The result cards, newest first: file name, and its verdict, bars in order, or error."""
        return [
            tuple(card)
            for card in self.page.evaluate(
                """() => [...document.querySelectorAll('.result')].map((card) => [
                    card.querySelector('.name').textContent,
                    {class: card.querySelector('.verdict .class')?.textContent,
                     bars: [...card.querySelectorAll('.bar')].map((b) =>
                            [b.dataset.class, Number(b.dataset.p), b.querySelector('.value').textContent]),
                     meta: card.querySelector('.meta')?.textContent,
                     unknown: card.querySelector('.unknown')?.textContent,
                     error: card.querySelector('.error')?.textContent}])"""
            )
        ]


@pytest.fixture
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        yield pw


class FourPlaces:
    """Equal to a bar's text: ``p`` to four places, where a probability off by float noise
    (under 1e-6) may round the last digit the other way."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __eq__(self, text: object) -> bool:
        return (
            isinstance(text, str)
            and len(text.partition(".")[2]) == 4
            and abs(float(text) - self.p) <= 0.5e-4 + 1e-6
        )

    def __repr__(self) -> str:
        return f"{self.p:.4f}"


def expected(url: str, path: Path, model: str) -> dict[str, Any]:
    """What the page must show for ``path``: ``POST /v1/predict``'s answer, its bars sorted (the
    probabilities to 1e-6: the page's request was batched with others, and float sums differ)."""
    answer = httpx.post(
        f"{url}/v1/predict",
        params={"model": model},
        files=[("image", (path.name, path.read_bytes(), "image/jpeg"))],
    ).json()[0]
    ranked = sorted(answer["probability-map"].items(), key=lambda cp: -cp[1])
    typical = "" if answer["typicality"] is None else f" · typicality {answer['typicality']:.3f}"
    return {
        "class": answer["classification"],
        "bars": [[c, pytest.approx(p, abs=1e-6), FourPlaces(p)] for c, p in ranked],
        "meta": f"{model} · {answer['digest'][:12]}{typical}",
        "unknown": "none of these: unlike the images this model learned from" if answer["unknown"] else None,
        "error": None,
    }


def test_picked_images_are_answered_as_the_api_answers_them(
    browser: Any, models: dict[str, Path], tmp_path: Path
) -> None:
    server = Server(f"first={models['first']}", f"second={models['second']}")
    try:
        chrome = Browser(browser, server.url)
        page = chrome.page
        page.goto(f"{server.url}/")
        page.wait_for_selector(".model .chip")
        assert page.locator(".model h2").all_inner_texts() == ["first", "second"]
        assert page.locator(".model").first.locator(".chip").all_inner_texts() == ["cat", "dog"]
        noise = tmp_path / "noise.png"  # none of the classes: its card says so
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(noise)
        pictures = sorted(models["cats"].iterdir())[:2] + sorted(models["dogs"].iterdir())[:1] + [noise]
        (tmp_path / "notes.txt").write_bytes(NOT_AN_IMAGE)
        page.set_input_files("#files", [*map(str, pictures), str(tmp_path / "notes.txt")])
        page.wait_for_function(SETTLED)
        shown = dict(chrome.results())
        reason = httpx.post(
            f"{server.url}/v1/predict", files=[("f", ("notes.txt", NOT_AN_IMAGE, "text/plain"))]
        )
        assert shown.pop("notes.txt") == {
            "class": None,
            "bars": [],
            "meta": None,
            "unknown": None,
            "error": reason.json()["error"],
        }
        assert shown == {p.name: expected(server.url, p, "first") for p in pictures}
        assert shown["noise.png"]["unknown"] is not None and shown["cat.0.jpg"]["unknown"] is None
        # the second model, chosen in the page
        page.select_option("#model", "second")
        page.set_input_files("#files", [str(pictures[0])])
        page.wait_for_function(SETTLED)
        assert page.locator(".result").first.locator(".meta").inner_text().startswith("second · ")
        assert chrome.results()[0] == (pictures[0].name, expected(server.url, pictures[0], "second"))
        page.wait_for_function("() => Number(document.getElementById('stat-images').textContent) >= 4")
        # the docs: every path of the document
        page.goto(f"{server.url}/docs")
        page.wait_for_selector(".group .op:not(.schema)")
        listed = page.locator(".op:not(.schema) > summary .path").all_inner_texts()
        assert sorted(listed) == sorted(
            p for p, ops in httpx.get(f"{server.url}/openapi.json").json()["paths"].items() for _ in ops
        )
        chrome.browser.close()
    finally:
        assert server.stop()[0] == 0
    assert chrome.outside == []
    # a 422 is logged by Chromium as a failed resource, for the batch, then for notes.txt alone
    assert (
        chrome.errors
        == ["Failed to load resource: the server responded with a status of 422 (Unprocessable Entity)"] * 2
    )


def test_the_page_asks_for_the_token_and_takes_dropped_and_pasted_images(
    browser: Any, models: dict[str, Path]
) -> None:
    served = Served.load("first", models["first"], Batching(), compile="off", precision="fp32")
    picture = sorted(models["dogs"].iterdir())[0]
    with AppServer(create_app([served], token="s3cret")) as live:
        chrome = Browser(browser, live.url)
        page = chrome.page
        page.goto(f"{live.url}/")
        page.wait_for_selector("#token-form:not(.hidden)")
        page.fill("#token", "s3cret")
        page.click("#token-form button")
        page.wait_for_selector(".model .chip")
        data = base64.b64encode(picture.read_bytes()).decode()
        for event in ["paste", "drop"]:  # a pasted image, then a dropped one
            page.evaluate(
                """([data, name, kind]) => {
                    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
                    const moved = new DataTransfer();
                    moved.items.add(new File([bytes], name, { type: "image/jpeg" }));
                    const event = kind === "paste"
                        ? new ClipboardEvent("paste", { clipboardData: moved, bubbles: true })
                        : new DragEvent("drop", { dataTransfer: moved });
                    (kind === "paste" ? document : document.getElementById("drop")).dispatchEvent(event);
                }""",
                [data, f"{event}.jpg", event],
            )
        page.wait_for_function("() => document.querySelectorAll('.result .verdict').length === 2")
        shown = dict(chrome.results())
        headers = {"Authorization": "Bearer s3cret", "Content-Type": "image/jpeg"}
        answer = httpx.post(f"{live.url}/v1/predict", content=picture.read_bytes(), headers=headers).json()
        assert shown["paste.jpg"]["class"] == shown["drop.jpg"]["class"] == answer["classification"]
        # batched with the pasted image or alone: the last float bits may differ
        expected_map = {c: pytest.approx(p, abs=1e-6) for c, p in answer["probability-map"].items()}
        assert dict((c, p) for c, p, _ in shown["drop.jpg"]["bars"]) == expected_map
        assert page.evaluate("() => sessionStorage.getItem('pawlab-serve-token')") == "s3cret"
        chrome.browser.close()
    served.batcher.stop()
    assert chrome.outside == []
    assert chrome.errors == [
        "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    ]
