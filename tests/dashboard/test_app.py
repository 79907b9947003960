"""The dashboard's API over real run directories, its event stream, and what it refuses."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from pawlab import runlog
from pawlab.dashboard import create_app
from pawlab.dashboard.store import run_id
from tests.dashboard.conftest import LiveServer, train_run


def client(roots: list[Path]) -> TestClient:
    return TestClient(create_app(roots), base_url="http://127.0.0.1")


def test_run_list_and_one_runs_data(runs_root: Path) -> None:
    c = client([runs_root])
    runs = {r["name"]: r for r in c.get("/api/runs").json()}
    assert set(runs) == {"first", "second"}
    first = runs["first"]
    assert first["state"] == "finished" and first["epochs"] == 3 and first["classes"] == ["cat", "dog"]
    rid = first["id"]
    assert rid == run_id(runs_root / "first") and "/" not in rid  # opaque: no path in the page
    events = c.get(f"/api/runs/{rid}/events").json()
    assert [e["event"] for e in events][0] == "start" and events[-1]["event"] == "end"
    passes = c.get(f"/api/runs/{rid}/passes").json()
    assert passes == {
        "epochs": [1, 2, 3],
        "classes": ["cat", "dog"],
        "damaged": {},
        "typicality": [1, 2, 3],
        "typicality_damaged": {},
    }


def test_the_matrix_agrees_with_the_epochs_accuracy(runs_root: Path) -> None:
    c = client([runs_root])
    rid = run_id(runs_root / "first")
    events = c.get(f"/api/runs/{rid}/events").json()
    accuracy = {int(e["epoch"]): e["val_accuracy"] for e in events if e["event"] == "epoch"}
    index = json.loads((runs_root / "first" / runlog.VALIDATION_INDEX).read_text())
    for epoch in (1, 2, 3):
        m = c.get(f"/api/runs/{rid}/matrix", params={"epoch": epoch}).json()
        assert m["count"] == len(index["labels"]) == sum(map(sum, m["counts"]))
        assert m["accuracy"] == pytest.approx(accuracy[epoch], abs=1e-6)
        if epoch == 1:
            assert m["entered"] == [[0, 0], [0, 0]]  # no earlier pass
        else:  # what entered the cells is what left others
            assert sum(map(sum, m["entered"])) == sum(map(sum, m["left"]))
    assert c.get(f"/api/runs/{rid}/matrix").json()["epoch"] == 3  # the latest by default


def test_a_cell_lists_its_images_most_confidently_wrong_first(runs_root: Path) -> None:
    c = client([runs_root])
    rid = run_id(runs_root / "first")
    probs = np.load(runs_root / "first" / runlog.pass_file(3)).astype(np.float32)
    labels = np.array(json.loads((runs_root / "first" / runlog.VALIDATION_INDEX).read_text())["labels"])
    for t in (0, 1):
        for p in (0, 1):
            items = c.get(f"/api/runs/{rid}/cell", params={"epoch": 3, "true": t, "predicted": p}).json()
            expected = int(((labels == t) & (probs.argmax(1) == p)).sum())
            assert len(items) == expected
            ps = [it["p"] for it in items]
            assert ps == (sorted(ps) if t == p else sorted(ps, reverse=True))
            for it in items:
                thumb = c.get(f"/api/runs/{rid}/images/{it['index']}/thumb")
                assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    history = c.get(f"/api/runs/{rid}/images/0/history").json()
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["p_true"] == pytest.approx(float(probs[0, labels[0]]), abs=1e-3)


def test_suspects_as_json_and_csv(runs_root: Path) -> None:
    c = client([runs_root])
    rid = run_id(runs_root / "first")
    rows = c.get(f"/api/runs/{rid}/suspects").json()
    csv = c.get(f"/api/runs/{rid}/suspects", params={"format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    assert "attachment" in csv.headers["content-disposition"]
    lines = csv.text.splitlines()
    assert lines[0] == "name,label,predicted,p_true,flips,reason" and len(lines) == len(rows) + 1


def test_the_page_and_its_assets_load_from_this_server(runs_root: Path) -> None:
    c = client([runs_root])
    page = c.get("/")
    assert page.status_code == 200 and "static/plotly.min.js" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from outside
    plotly = c.get("/static/plotly.min.js")
    assert plotly.status_code == 200 and len(plotly.content) > 1_000_000
    app_js = c.get("/static/app.js").text
    assert "http://" not in app_js and "https://" not in app_js


@pytest.mark.parametrize(
    "path",
    [
        "/static/../../etc/passwd",
        "/static/..%2f..%2fetc%2fpasswd",
        "/static/%2e%2e/%2e%2e/etc/passwd",
        "/static//etc/passwd",
        "/static/index.html",  # a real file, but not an asset
        "/api/runs/..%2f..%2f/passes",
        "/api/runs/nope/passes",
        "/api/runs/%2fetc%2fpasswd/events",
        "/api/runs/RID/images/999999/thumb",
        "/api/runs/RID/images/-1/thumb",
        "/api/runs/RID/images/..%2f..%2fconfig.json/thumb",
        "/api/runs/RID/images/0/../../config.json",
    ],
)
def test_paths_never_reach_the_file_system(runs_root: Path, path: str) -> None:
    c = client([runs_root])
    response = c.get(path.replace("RID", run_id(runs_root / "first")))
    assert response.status_code in (400, 404), response.text
    assert b"root:" not in response.content and b'"model"' not in response.content


@pytest.mark.parametrize(
    "query",
    [
        {"epoch": 3, "true": 5, "predicted": 0},
        {"epoch": "x", "true": 0, "predicted": 0},
        {"epoch": 3},
        {"epoch": 3, "true": 0, "predicted": 0, "order": "size"},
    ],
)
def test_bad_queries_are_400(runs_root: Path, query: dict[str, object]) -> None:
    rid = run_id(runs_root / "first")
    assert client([runs_root]).get(f"/api/runs/{rid}/cell", params=query).status_code == 400


def test_read_only_and_loopback_names_only(runs_root: Path) -> None:
    c = client([runs_root])
    for method in ("post", "put", "delete", "patch"):
        assert getattr(c, method)("/api/runs").status_code == 405
    rebound = TestClient(create_app([runs_root]), base_url="http://attacker.example")
    assert rebound.get("/api/runs").status_code == 400  # DNS rebinding: a foreign Host header
    anywhere = TestClient(create_app([runs_root], trusted_hosts=None), base_url="http://box.lan")
    assert anywhere.get("/api/runs").status_code == 200  # the user chose --host


def test_half_written_and_damaged_files(tmp_path: Path, runs_root: Path) -> None:
    run = tmp_path / "runs" / "torn"
    shutil.copytree(runs_root / "first", run)
    with open(run / runlog.EVENTS, "ab") as fh:
        fh.write(b'{"event": "epoch", "epo')  # a line being written
    (run / runlog.pass_file(3)).write_bytes(b"\x93NUMPY half")  # a torn pass
    (run / runlog.pass_file(2)).write_bytes(b"")
    c = client([tmp_path / "runs"])
    rid = run_id(run)
    events = c.get(f"/api/runs/{rid}/events").json()
    assert events[-1]["event"] == "end"  # the torn line is left out
    assert c.get(f"/api/runs/{rid}/matrix", params={"epoch": 3}).status_code == 404
    assert c.get(f"/api/runs/{rid}/matrix", params={"epoch": 1}).status_code == 200
    assert c.get(f"/api/runs/{rid}/cell", params={"epoch": 2, "true": 0, "predicted": 0}).status_code == 404
    assert c.get(f"/api/runs/{rid}/images/0/history").status_code == 200
    assert c.get(f"/api/runs/{rid}/suspects").status_code == 200
    (run / runlog.VALIDATION_INDEX).write_text("{not json")
    assert c.get(f"/api/runs/{rid}/images/0/thumb").status_code == 404
    assert c.get(f"/api/runs/{rid}/matrix").status_code == 404
    assert c.get("/api/runs").status_code == 200


def test_a_run_deleted_while_the_page_is_open(tmp_path: Path, runs_root: Path) -> None:
    run = tmp_path / "runs" / "doomed"
    shutil.copytree(runs_root / "second", run)
    c = client([tmp_path / "runs"])
    rid = run_id(run)
    assert c.get(f"/api/runs/{rid}/matrix").status_code == 200
    shutil.rmtree(run)
    assert c.get(f"/api/runs/{rid}/matrix").status_code == 404
    assert c.get(f"/api/runs/{rid}/images/0/thumb").status_code == 404
    assert c.get("/api/runs").json() == []


def _read_events(
    url: str, count: int, headers: dict[str, str] | None = None
) -> list[tuple[int, dict[str, object]]]:
    """The first ``count`` messages of an event stream: (id, record)."""
    out: list[tuple[int, dict[str, object]]] = []
    with httpx.stream("GET", url, headers=headers or {}, timeout=20) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        event_id = None
        for line in response.iter_lines():
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: ") and event_id is not None:
                out.append((event_id, json.loads(line[6:])))
                if len(out) == count:
                    break
    return out


def test_the_stream_resumes_after_a_reconnect(live: LiveServer, runs_root: Path) -> None:
    rid = run_id(runs_root / "first")
    url = f"{live.url}/api/runs/{rid}/stream"
    first = _read_events(url, 3)
    assert [i for i, _ in first] == [1, 2, 3] and first[0][1]["event"] == "start"
    rest = _read_events(url, 2, {"Last-Event-ID": "3"})  # the browser reconnects
    assert [i for i, _ in rest] == [4, 5]
    everything = json.loads(httpx.get(f"{live.url}/api/runs/{rid}/events").text)
    assert [r for _, r in first + rest] == everything[:5]


def test_the_stream_follows_a_live_run(tmp_path: Path) -> None:
    """A run that starts after the page opened: its events arrive within about a second."""
    with LiveServer([tmp_path / "runs"]) as server:
        assert httpx.get(f"{server.url}/api/runs").json() == []
        trainer = threading.Thread(target=train_run, args=(tmp_path, "late", 2))
        trainer.start()
        deadline = time.monotonic() + 60
        runs: list[dict[str, object]] = []
        while not runs and time.monotonic() < deadline:
            runs = httpx.get(f"{server.url}/api/runs").json()
            time.sleep(0.1)
        assert runs, "the new run never appeared"
        got = _read_events(f"{server.url}/api/runs/{runs[0]['id']}/stream", 1)
        assert got[0][1]["event"] == "start"
        trainer.join(timeout=120)
        total = len(httpx.get(f"{server.url}/api/runs/{runs[0]['id']}/events").json())
        records = _read_events(f"{server.url}/api/runs/{runs[0]['id']}/stream", total)
        kinds = [r["event"] for _, r in records]
        assert kinds[-1] == "end" and kinds.count("epoch") == 2


def test_many_clients_at_once(live: LiveServer, runs_root: Path) -> None:
    """50 streams open together: each gets the whole log, and the server still answers."""
    rid = run_id(runs_root / "second")
    total = len(httpx.get(f"{live.url}/api/runs/{rid}/events").json())
    results: list[int] = []

    def one() -> None:
        results.append(len(_read_events(f"{live.url}/api/runs/{rid}/stream", total)))

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    assert httpx.get(f"{live.url}/api/runs", timeout=10).status_code == 200
    for t in threads:
        t.join(timeout=60)
    assert results == [total] * 50


def test_export_is_one_offline_file_with_every_answer(runs_root: Path, tmp_path: Path) -> None:
    from pawlab.dashboard.export import export_html

    exported = export_html(runs_root / "first", tmp_path / "report.html")
    assert exported.skipped == []
    html = exported.path.read_text()
    assert 'src="static/' not in html and 'href="static/' not in html  # nothing to fetch: all inline
    start = html.index("window.PAWLAB_EXPORT = ") + len("window.PAWLAB_EXPORT = ")
    data = json.JSONDecoder().raw_decode(html[start:])[0]
    c = client([runs_root])
    rid = run_id(runs_root / "first")
    for path in (
        f"api/runs/{rid}/events",
        f"api/runs/{rid}/matrix?epoch=2",
        f"api/runs/{rid}/images/5/history",
    ):
        assert data["responses"][path] == c.get("/" + path).json()
    for epoch in (1, 2, 3):  # the cells that hold images, and only those
        counts = data["responses"][f"api/runs/{rid}/matrix?epoch={epoch}"]["counts"]
        for t, p in itertools.product(range(2), range(2)):
            cell = f"api/runs/{rid}/cell?epoch={epoch}&true={t}&predicted={p}"
            for path in (cell, cell + "&order=typicality"):  # the page asks for both
                if counts[t][p]:
                    assert data["responses"][path] == c.get("/" + path).json()
                else:
                    assert path not in data["responses"]
    n = len(json.loads((runs_root / "first" / runlog.VALIDATION_INDEX).read_text())["labels"])
    assert len(data["thumbs"]) == n and data["thumbs"]["0"].startswith("data:image/jpeg;base64,")


def test_two_runs_compared_image_by_image(runs_root: Path) -> None:
    a, b = runs_root / "first", runs_root / "second"
    c = client([runs_root])
    d = c.get("/api/compare", params={"a": run_id(a), "b": run_id(b)}).json()
    ia = json.loads((a / runlog.VALIDATION_INDEX).read_text())
    ib = json.loads((b / runlog.VALIDATION_INDEX).read_text())
    pa = np.load(a / runlog.pass_file(3)).astype(np.float32)
    pb = np.load(b / runlog.pass_file(2)).astype(np.float32)
    assert d["epochs"] == [3, 2] and d["common"] == len(set(ia["names"]) & set(ib["names"]))
    for key, (right, wrong) in {"a_only": (pa, pb), "b_only": (pb, pa)}.items():
        for item in d[key]:
            i, j = item["index"], item["index_b"]
            assert ia["names"][i] == ib["names"][j] == item["name"]
            label = ia["labels"][i]
            (pr, ir), (pw, iw) = ((right, i), (wrong, j)) if key == "a_only" else ((right, j), (wrong, i))
            assert pr[ir].argmax() == label and pw[iw].argmax() != label
    assert c.get("/api/compare", params={"a": run_id(a), "b": "nope"}).status_code == 404


def test_odd_run_directories_give_no_500(tmp_path: Path, runs_root: Path) -> None:
    """A diverged run (NaN), an event without a kind, an index that does not fit its passes."""
    nan = tmp_path / "runs" / "nan"
    shutil.copytree(runs_root / "first", nan)
    runlog.append_json_line(nan / runlog.EVENTS, {"event": "epoch", "epoch": 4, "val_loss": float("nan")})
    runlog.append_json_line(nan / runlog.EVENTS, {"no": "kind"})
    shifted = tmp_path / "runs" / "shifted"
    shutil.copytree(runs_root / "first", shifted)
    index = json.loads((shifted / runlog.VALIDATION_INDEX).read_text())
    (shifted / runlog.VALIDATION_INDEX).write_text(json.dumps({**index, "classes": ["cat", "dog", "fox"]}))
    broken = tmp_path / "runs" / "broken"
    shutil.copytree(runs_root / "first", broken)
    (broken / runlog.VALIDATION_INDEX).write_text(json.dumps({**index, "labels": index["labels"][:-1]}))
    c = client([tmp_path / "runs"])
    runs = {r["name"]: r for r in c.get("/api/runs").json()}
    assert set(runs) == {"nan", "shifted", "broken"} and runs["nan"]["epochs"] == 4
    assert c.get(f"/api/runs/{run_id(nan)}/events").json()[-2]["val_loss"] is None  # NaN -> null
    for run in (shifted, broken):
        rid = run_id(run)
        assert c.get(f"/api/runs/{rid}/matrix").status_code == 404  # passes that do not fit: none
        assert c.get(f"/api/runs/{rid}/suspects").json() == []
        assert c.get(f"/api/runs/{rid}/images/0/history").status_code in (200, 404)


def test_hostile_file_names_stay_data(tmp_path: Path, runs_root: Path) -> None:
    """Names come from the user's files: in the export they cannot end the script, and in the
    suspects CSV they cannot become formulas."""
    from pawlab.dashboard.export import export_html
    from pawlab.dashboard.store import suspects_csv

    run = tmp_path / "runs" / "hostile"
    shutil.copytree(runs_root / "first", run)
    index = json.loads((run / runlog.VALIDATION_INDEX).read_text())
    evil = "</SCRIPT><img src=x onerror=alert(1)><!--<script>"
    index["names"] = [evil] + index["names"][1:]
    (run / runlog.VALIDATION_INDEX).write_text(json.dumps(index))
    html = export_html(run, tmp_path / "r.html").path.read_text()
    assert evil not in html and "onerror=alert(1)" in html.replace("\\u003c", "<")
    assert html.lower().count("</script>") == html.lower().count("<script>")
    rows = [
        {
            "name": "=HYPERLINK(1)",
            "label": "cat",
            "predicted": "dog",
            "p_true": 0.1,
            "flips": 0,
            "reason": "x",
        }
    ]
    assert "'=HYPERLINK(1)" in suspects_csv(rows)


def _release(fifos: list[Path]) -> None:
    """Let go of a reader blocked opening one of ``fifos`` (after a failure)."""
    import contextlib
    import os

    for fifo in fifos:
        with contextlib.suppress(OSError):  # no reader waits on it
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_a_fifo_in_a_run_holds_up_no_request(tmp_path: Path, runs_root: Path) -> None:
    import os

    runs = tmp_path / "runs"
    shutil.copytree(runs_root / "second", runs / "good")
    fifos = []
    files = {"log": runlog.EVENTS, "config": runlog.CONFIG, "index": runlog.VALIDATION_INDEX}
    for name, file in {**files, "pass": runlog.pass_file(3)}.items():
        shutil.copytree(runs_root / "first", runs / name)
        (runs / name / file).unlink()
        os.mkfifo(runs / name / file)
        fifos.append(runs / name / file)
    try:
        with LiveServer([runs]) as server:
            listed = {r["name"]: r for r in httpx.get(f"{server.url}/api/runs", timeout=10).json()}
            assert listed["good"]["state"] == "finished" and listed["pass"]["state"] == "finished"
            for name, file in files.items():
                assert listed[name]["state"] == "damaged"
                assert listed[name]["reason"] == f"{file}: a FIFO, not a regular file"
            rid = listed["pass"]["id"]
            passes = httpx.get(f"{server.url}/api/runs/{rid}/passes", timeout=10).json()
            assert passes["damaged"] == {"3": "validation/pass-00003.npy: a FIFO, not a regular file"}
            matrix = httpx.get(f"{server.url}/api/runs/{rid}/matrix", timeout=10)
            assert matrix.status_code == 404 and matrix.json()["error"] == passes["damaged"]["3"]
    finally:
        _release(fifos)


def test_nested_json_is_one_damaged_run_among_whole_ones(tmp_path: Path, runs_root: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(runs_root / "second", runs / "good")
    for name, file in {"config": runlog.CONFIG, "index": runlog.VALIDATION_INDEX}.items():
        shutil.copytree(runs_root / "first", runs / name)
        (runs / name / file).write_text("[" * 10**6)
    shutil.copytree(runs_root / "first", runs / "events")
    with open(runs / "events" / runlog.EVENTS, "a") as fh:
        fh.write("[" * 10**6 + "\n")
    runlog.append_json_line(runs / "events" / runlog.EVENTS, {"event": "end", "again": True})
    c = client([runs])
    listed = {r["name"]: r for r in c.get("/api/runs").json()}
    assert {name: r["reason"] for name, r in listed.items()} == {
        "good": None,
        "config": "config.json: nested too deeply",
        "index": "validation/index.json: nested too deeply",
        "events": f"events.jsonl: line {_lines(runs_root) + 1} is nested more than {runlog.MAX_DEPTH} deep",
    }
    events = c.get(f"/api/runs/{listed['events']['id']}/events").json()
    assert len(events) == _lines(runs_root) + 1 and events[-1] == {"event": "end", "again": True}
    no_index = c.get(f"/api/runs/{listed['index']['id']}/matrix")
    assert no_index.status_code == 404


def test_a_huge_integer_loss_does_not_stop_the_run_list(tmp_path: Path, runs_root: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(runs_root / "second", runs / "good")
    shutil.copytree(runs_root / "first", runs / "huge")
    runlog.append_json_line(runs / "huge" / runlog.EVENTS, {"event": "epoch", "val_loss": 10**400})
    listed = {r["name"]: r for r in client([runs]).get("/api/runs").json()}
    assert set(listed) == {"good", "huge"} and listed["huge"]["best_val_loss"] is not None


def _lines(runs_root: Path) -> int:
    return len((runs_root / "first" / runlog.EVENTS).read_bytes().splitlines())


def test_links_out_of_the_run_are_never_served_nor_exported(tmp_path: Path, runs_root: Path) -> None:
    from pawlab.dashboard.export import export_html

    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    run = tmp_path / "runs" / "linked"
    shutil.copytree(runs_root / "first", run)
    for name in (f"{runlog.THUMBS}/0.jpg", runlog.SEEN["train"]):
        (run / name).unlink()
        (run / name).symlink_to(secret)
    c = client([tmp_path / "runs"])
    rid = run_id(run)
    thumb = c.get(f"/api/runs/{rid}/images/0/thumb")
    assert thumb.status_code == 404 and thumb.json() == {
        "error": "validation/thumbs/0.jpg: a link, not followed"
    }
    seen = c.get(f"/api/runs/{rid}/seen/train")
    assert seen.status_code == 404 and seen.json() == {"error": "seen/train.jpg: a link, not followed"}
    assert c.get(f"/api/runs/{rid}/images/1/thumb").status_code == 200
    exported = export_html(run, tmp_path / "r.html")
    assert exported.skipped == [
        "validation/thumbs/0.jpg: a link, not followed",
        "seen/train.jpg: a link, not followed",
    ]
    html = exported.path.read_text()
    assert base64.b64encode(secret.read_bytes()).decode()[:24] not in html and "root:x" not in html


def test_the_export_command_says_what_it_skipped(
    tmp_path: Path, runs_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pawlab.cli import main

    run = tmp_path / "damaged"
    shutil.copytree(runs_root / "first", run)
    (run / runlog.CONFIG).write_text("[" * 10**6)
    (run / runlog.pass_file(2)).write_bytes(b"not an array")
    (run / f"{runlog.THUMBS}/3.jpg").unlink()
    (run / f"{runlog.THUMBS}/3.jpg").symlink_to("/etc/passwd")
    out = tmp_path / "report.html"
    assert main(["dashboard", str(run), "--export", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {out}",
        "  skipped config.json: nested too deeply",
        "  skipped validation/pass-00002.npy: not an array as NumPy writes it",
        "  skipped validation/thumbs/3.jpg: a link, not followed",
    ]
    assert "matrix?epoch=3" in out.read_text()


@pytest.mark.parametrize(
    "path",
    [
        "/api/runs/RID/images/NUMBER/thumb",
        "/api/runs/RID/images/NUMBER/history",
        "/api/runs/RID/matrix?epoch=NUMBER",
    ],
)
def test_numbers_of_thousands_of_digits_are_400(runs_root: Path, path: str) -> None:
    response = client([runs_root]).get(
        path.replace("RID", run_id(runs_root / "first")).replace("NUMBER", "9" * 5000)
    )
    assert response.status_code == 400 and response.json()["error"].endswith(": not an integer")


def _stream_status(url: str, method: str = "GET") -> tuple[socket.socket, str]:
    """An open connection that asked for ``url`` and read its status line."""
    parts = httpx.URL(url)
    sock = socket.create_connection((parts.host, parts.port), timeout=20)
    sock.sendall(f"{method} {parts.raw_path.decode()} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock, sock.makefile("rb").readline().decode().split(" ")[1]


def test_the_stream_cap_is_exact_under_200_connects(live: LiveServer, runs_root: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from pawlab.dashboard.app import MAX_STREAMS

    url = f"{live.url}/api/runs/{run_id(runs_root / 'second')}/stream"
    with ThreadPoolExecutor(200) as pool:
        opened = list(pool.map(lambda _: _stream_status(url), range(200)))
    try:
        statuses = [status for _, status in opened]
        assert statuses.count("200") == MAX_STREAMS and statuses.count("503") == 200 - MAX_STREAMS
        head, status = _stream_status(url, "HEAD")  # holds no slot: answered while every slot is taken
        head.close()
        assert status == "200"
    finally:
        for sock, _ in opened:
            sock.close()
    deadline = time.monotonic() + 30  # each stream gives its slot back once it sees its client gone
    while (status := _stream_status(url)[1]) != "200" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status == "200"
