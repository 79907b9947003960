"""Benchmark: training speed with the dashboard serving a connected page, against without.

    .venv/bin/python bench/dashboard.py [--epochs 4] [--rounds 5] [--size 64]

Each run is a whole ``python -m pawlab train`` (cortex-cnn on ../shared/data/
cats_and_dogs_filtered at SIZE x SIZE; a generated tree if absent), the same seed and work
each time, in pairs whose order alternates: without a dashboard, and with ``--dashboard`` and
a client that does what the page does (follows the event stream; at each epoch fetches the
run list, the passes, the events, the confusion matrix, the suspects and a cell, and the first
time the cell's thumbnails). Figures: training images/s per run (the median over the epochs
after the first, from the run's own log), the overhead as the median of the pairs' ratios,
and the latency from an epoch's end (the time its event was written) to its arrival.

    .venv/bin/python bench/dashboard.py --export-classes 200 [--epochs 2]

instead measures ``pawlab dashboard RUN --export`` on a run of that many classes (a tiny real
training on 10 generated images per class): the file's size, the time, the answers it holds.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2 as httpx

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "cats_and_dogs_filtered"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def page_client(url: str, latencies: list[float], stop: threading.Event) -> None:
    """What the page does: follow the event stream (one thread), and at each epoch redraw
    (another): the run list, the passes, the matrix, the suspects, and the first time the
    thumbnails of a cell (the browser caches them)."""
    while not stop.is_set():
        try:
            runs = httpx.get(f"{url}/api/runs", timeout=5).json()
        except httpx.HTTPError:
            runs = []
        if runs:
            break
        time.sleep(0.2)
    if stop.is_set():
        return
    rid = runs[0]["id"]
    epochs: queue.Queue[float | None] = queue.Queue()
    redraw = threading.Thread(target=_redraw, args=(url, rid, epochs))
    redraw.start()
    try:
        with (
            httpx.Client(base_url=url, timeout=30) as client,
            client.stream("GET", f"/api/runs/{rid}/stream") as s,
        ):
            for line in s.iter_lines():
                if stop.is_set() or not line.startswith("data: "):
                    continue
                record = json.loads(line[6:])
                if record.get("event") == "epoch":
                    latencies.append(time.time() - record["time"])
                    epochs.put(record["epoch"])
                if record.get("event") in ("end", "failed"):
                    return
    finally:
        epochs.put(None)
        redraw.join()


def _redraw(url: str, rid: str, epochs: queue.Queue[float | None]) -> None:
    seen_thumbs = False
    with httpx.Client(base_url=url, timeout=30) as client:
        while epochs.get() is not None:
            client.get("/api/runs")
            passes = client.get(f"/api/runs/{rid}/passes").json()["epochs"]
            client.get(f"/api/runs/{rid}/events")
            client.get(f"/api/runs/{rid}/matrix", params={"epoch": passes[-1]})
            client.get(f"/api/runs/{rid}/suspects")
            cell = client.get(
                f"/api/runs/{rid}/cell", params={"epoch": passes[-1], "true": 0, "predicted": 1}
            )
            if not seen_thumbs:
                for item in cell.json():
                    client.get(f"/api/runs/{rid}/images/{item['index']}/thumb")
                seen_thumbs = True


def server_cpu(run_dir: Path, seen: dict[str, float], stop: threading.Event) -> None:
    """The dashboard server's CPU seconds (user + system), read from /proc while it runs."""
    tick = os.sysconf("SC_CLK_TCK")
    while not stop.is_set():
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
                if b"dashboard" in cmd and str(run_dir).encode() in cmd:
                    fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                    seen["cpu"] = (int(fields[11]) + int(fields[12])) / tick
            except OSError:
                continue
        time.sleep(0.5)


def one_run(
    data: Path,
    work: Path,
    args: argparse.Namespace,
    dashboard: bool,
    latencies: list[float],
    round_: int,
    cpu: list[tuple[float, float]],
) -> float:
    run_dir = work / f"{'with' if dashboard else 'without'}-{round_}"  # a new run directory each time
    port = free_port()
    cmd = [sys.executable, "-m", "pawlab", "train", str(data), "--arch", "cortex-cnn",
           "--size", str(args.size), "--epochs", str(args.epochs), "--run-dir", str(run_dir),
           "--out", str(run_dir) + ".safetensors", "-q", "--workers", "1", "--seed", "0"]  # fmt: skip
    if dashboard:
        cmd += ["--dashboard", "--port", str(port)]
    stop = threading.Event()
    client = threading.Thread(target=page_client, args=(f"http://127.0.0.1:{port}", latencies, stop))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    seen: dict[str, float] = {}
    watcher = threading.Thread(target=server_cpu, args=(run_dir, seen, stop))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if dashboard:
        client.start()
        watcher.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    if dashboard:
        client.join(timeout=30)
        watcher.join(timeout=10)
        cpu.append((seen.get("cpu", 0.0), wall))
    if proc.returncode:
        raise SystemExit(f"training failed: {err.decode()[-2000:]}")
    rates = [
        json.loads(line)["images_per_s"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    return statistics.median(rates[1:] or rates)


def export_bench(classes: int, epochs: int) -> None:
    """The offline export of a run of ``classes`` classes: size, time, answers inlined."""
    import io

    sys.path.insert(0, str(ROOT))
    from pawlab.config import RuntimeConfig, TrainConfig
    from pawlab.dashboard.export import export_html
    from pawlab.training import train
    from tests.conftest import TINY, write_tree

    work = Path(tempfile.mkdtemp(prefix="pawlab-bench-export-"))
    src = write_tree(work / "src", {f"class{i:03d}": 10 for i in range(classes)})
    config = TrainConfig(epochs=epochs, lr=3e-3, batch_size=32, seed=0)
    train(src, work / "m.safetensors", TINY, config, workers=1, run_dir=work / "run", stream=io.StringIO(),
          runtime=RuntimeConfig(progress=False))  # fmt: skip
    t0 = time.perf_counter()
    exported = export_html(work / "run", work / "report.html")
    seconds = time.perf_counter() - t0
    html = exported.path.read_text()
    start = html.index("window.PAWLAB_EXPORT = ") + len("window.PAWLAB_EXPORT = ")
    responses = json.JSONDecoder().raw_decode(html[start:])[0]["responses"]
    cells = sum("/cell?" in url for url in responses)
    print(f"{classes} classes, {epochs} epochs: export {exported.path.stat().st_size / 1e6:.1f} MB in "
          f"{seconds:.2f} s; {len(responses)} answers, {cells} of them cells")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--export-classes", type=int, default=None, help="measure the export instead")
    args = ap.parse_args()
    if args.export_classes:
        export_bench(args.export_classes, args.epochs)
        return
    work = Path(tempfile.mkdtemp(prefix="pawlab-bench-dashboard-"))
    data = SHARED if SHARED.is_dir() else _generated(work)
    import torch

    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    cpu = f"{os.cpu_count()} CPUs ({'with' if bf16 else 'without'} fast bf16)"
    print(f"cortex-cnn at {args.size}x{args.size} on {data}, {args.epochs} epochs a run, {cpu}", flush=True)
    ratios: list[float] = []
    latencies: list[float] = []
    cpu: list[tuple[float, float]] = []
    for r in range(args.rounds):
        # the order alternates: the second run of a pair tends to be faster (warm caches)
        if r % 2 == 0:
            without = one_run(data, work, args, False, latencies, r, cpu)
            with_ = one_run(data, work, args, True, latencies, r, cpu)
        else:
            with_ = one_run(data, work, args, True, latencies, r, cpu)
            without = one_run(data, work, args, False, latencies, r, cpu)
        ratios.append(with_ / without)
        pair = f"without {without:5.0f} img/s, with a page {with_:5.0f} img/s"
        print(f"  round {r + 1}: {pair}: x{with_ / without:.3f}", flush=True)
    ratio = statistics.median(ratios)
    print(f"overhead of the dashboard, median of {args.rounds} paired runs: {1 - ratio:+.1%} (target <= 3%)")
    if cpu:
        used, wall = sum(c for c, _ in cpu), sum(w for _, w in cpu)
        share = used / (wall * (os.cpu_count() or 1))
        print(f"the dashboard server's own CPU time: {used:.1f} s over {wall:.0f} s of training runs "
              f"({share:.1%} of the machine's {os.cpu_count()} cores)")  # fmt: skip
    if latencies:
        print(f"epoch end -> its event at the page: median {statistics.median(latencies) * 1000:.0f} ms, "
              f"max {max(latencies) * 1000:.0f} ms over {len(latencies)} epochs")  # fmt: skip


def _generated(work: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.conftest import write_tree

    return write_tree(work / "src", {"cat": 500, "dog": 500})


if __name__ == "__main__":
    main()
