"""`pawlab.dashboard.show`: the dashboard served from this process on loopback, as a notebook
embeds it, or inlined offline; `stop` frees the port."""

from __future__ import annotations

import html
import re
import socket
import types
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from pawlab.dashboard import notebook, show, stop
from pawlab.errors import ConfigError
from tests.dashboard.conftest import free_port


@pytest.fixture(autouse=True)
def _stopped() -> Iterator[None]:
    yield
    stop()


def _get(url: str, **kwargs: object) -> httpx.Response:
    return httpx.get(url, trust_env=False, timeout=10, **kwargs)  # type: ignore[arg-type]


def test_show_serves_the_run_on_loopback_and_embeds_it(runs_root: Path) -> None:
    d = show(runs_root / "first")
    assert d.url is not None and re.fullmatch(r"http://127\.0\.0\.1:\d+/v/[0-9a-f]+/", d.url)
    (server,) = notebook._SERVERS.values()
    assert server.sock.getsockname()[0] == "127.0.0.1" and server.thread.daemon
    page = _get(d.url)
    assert page.status_code == 200 and "<title>pawlab dashboard</title>" in page.text
    assert [r["name"] for r in _get(d.url + "api/runs").json()] == ["first"]  # this run's view only
    assert _get(d.url + "static/app.js").status_code == 200  # the page's relative URLs resolve
    assert _get(d.url + "api/runs", headers={"Host": "evil.example"}).status_code == 400  # DNS rebinding
    assert d._repr_html_().startswith(f'<iframe src="{d.url}" ')
    assert d.url in repr(d)


def test_later_calls_reuse_the_server_with_a_view_per_set_of_runs(runs_root: Path) -> None:
    first = show(runs_root / "first")
    both = show(runs_root)
    result = types.SimpleNamespace(run_dir=runs_root / "first")  # what pawlab.train returns
    again = show(str(runs_root / "first")), show(result)
    assert len(notebook._SERVERS) == 1
    assert first.url is not None and both.url is not None and first.url != both.url
    assert first.url.split("/v/")[0] == both.url.split("/v/")[0]
    assert all(d.url == first.url for d in again)
    assert sorted(r["name"] for r in _get(both.url + "api/runs").json()) == ["first", "second"]


def test_a_given_port_and_stop_frees_it(runs_root: Path) -> None:
    port = free_port()
    d = show(runs_root / "first", port=port)
    assert d.url == show(runs_root / "first").url and d.url is not None
    assert d.url.startswith(f"http://127.0.0.1:{port}/")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match="not free"):
            show(runs_root / "first", port=taken.getsockname()[1])
    with pytest.raises(ConfigError, match=r"^show: port 70000 is not a port \(1-65535\)$"):
        show(runs_root / "first", port=70000)
    stop()
    assert notebook._SERVERS == {}
    with pytest.raises(httpx.ConnectError):
        _get(d.url)
    with socket.socket() as again:  # as a server binds it (connections closed by the server linger)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()


def test_static_inlines_the_offline_page_and_loads_nothing_from_outside(runs_root: Path) -> None:
    d = show(runs_root / "first", static=True)
    out = d._repr_html_()
    assert notebook._SERVERS == {} and d.url is None and "offline" in repr(d)
    match = re.fullmatch(r'<iframe srcdoc="([^"<>]*)" [^<>]*></iframe>', out)
    assert match is not None  # one iframe; the page inside it fully escaped
    page = html.unescape(match.group(1))
    assert "window.PAWLAB_EXPORT" in page and "<title>pawlab dashboard</title>" in page
    outside_scripts = re.sub(r"(?is)<script>.*?</script>", "<script></script>", page)
    assert re.findall(r"(?i)<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=", outside_scripts) == []
    assert "http://" not in outside_scripts and "https://" not in outside_scripts
    assert len(show(runs_root, static=True).pages) == 2  # a folder of runs: one page each


def test_static_needs_a_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no run directory"):
        show(tmp_path, static=True)
