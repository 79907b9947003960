"""Benchmark: `pawlab serve` against the endpoint a user writes from a tutorial, in one run.

    .venv/bin/python bench/serve.py [--model M] [--clients 1,8,64] [--warmup 3] [--seconds 20]
                                    [--overload-seconds 60] [--images 200] [--quick] [--work DIR]

1. Model: --model, a trained transfer model file; by default one is trained with
   ``pawlab train ../shared/data/cats_and_dogs_filtered --backbone`` (EfficientNet-Lite2; kept in
   --work, as bench/infer.py does). The photos: --images of the validation folder, cats and
   dogs alike; the reference answers are ``pawlab predict --json``'s, computed once.
2. Four servers, each a real process on a free loopback port: ``python -m pawlab serve MODEL``
   with its defaults (one worker process per core), the same with ``--workers 1`` (pawlab-w1: one
   process, its engine on every core), bench/tutorial_serve.py (a Starlette ``async def`` handler,
   one eager fp32 forward pass a request) and its FastAPI ``def`` variant (FastAPI's thread pool;
   skipped when FastAPI is not installed). Once each is ready, every photo is posted to it once
   and the answers compared with pawlab predict's (this also warms it up). Then, for each number
   of clients C, each server in turn (so that a slow spell of the shared machine hits neighbouring
   rows alike): C clients post the photos in turn (``image/jpeg``, the bytes read beforehand) and
   each waits for its answer (after a 503, as long as its Retry-After asks): --warmup seconds,
   then --seconds whose answers are counted. The load generator is this process (asyncio + httpx,
   one keep-alive connection a client); it shares the machine's cores with the server and whatever
   else runs there, so each row also says how many cores the server, the clients and everything
   else kept busy. Prints img/s (200 answers), p50/p95/p99 latency, the statuses, and the ratios
   of pawlab (its defaults) to the others at each C, against the goal at 64 clients. The server's
   cores and memory are its workers' summed.
3. Overload: pawlab serve with a small queue (``--max-queue 32 --deadline-ms 2000``: a queue
   the clients of a 2-core machine can fill, and a deadline a user still waits for), driven by
   four times the clients it can answer in time, min(workers x (queue + batch), best img/s x
   deadline), for --overload-seconds. Every 200 answer is checked against pawlab predict's (same class, each
   probability within 0.01); the statuses, connection errors and the server's RSS (sampled
   each second; flat: the end within 1.1x the start) are reported.
4. SIGTERM: 32 clients post to a fresh pawlab serve; a few seconds in, it gets SIGTERM, and each
   client goes on until its connection fails. The clients' answers and failed connections are
   counted and compared with the server's own stop summary on stderr
   (``pawlab serve: stopped: N requests answered, M unanswered``), when it prints one.

A full run takes about 8 minutes on 2 cores (each of the four pawlab serve starts compiles
the model: about 25 s); --quick (3 s windows, 50 photos, 10 s of overload) about 3.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import psutil
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from dashboard import free_port  # noqa: E402  (bench/dashboard.py)
from infer import trained_model  # noqa: E402  (bench/infer.py)
from prepare import SHARED  # noqa: E402  (bench/prepare.py)
from spec import cpu_class  # noqa: E402  (bench/spec.py)

from pawlab.inference.engine import infer_batch  # noqa: E402
from pawlab.serve.workers import auto_workers  # noqa: E402

JPEG = {"Content-Type": "image/jpeg"}
OVERLOAD_QUEUE, OVERLOAD_DEADLINE_MS = 32, 2000
OVERLOAD_WARMUP = 30.0  # seconds: every worker's decoding threads start, and reach their memory, under load
SIGTERM_CLIENTS, SIGTERM_AFTER = 32, 4.0  # seconds of load before the signal
GOAL = {True: 4.0, False: 2.5}  # img/s at 64 clients, x the tutorial's: fast bf16 or AVX2 only
FULL = {"warmup": 3.0, "seconds": 20.0, "overload_seconds": 60.0, "images": 200}
QUICK = {"warmup": 1.0, "seconds": 3.0, "overload_seconds": 10.0, "images": 50}
Answers = list[dict[str, Any]]  # pawlab predict --json's object for each photo
TICKS = os.sysconf("SC_CLK_TCK")
ENV = {**os.environ, "PYTHONPATH": str(HERE.parent)}  # the servers run this checkout's pawlab
SUMMARY = re.compile(r"pawlab serve: stopped: (\d+) requests answered, (\d+) unanswered")


# ---------------------------------------------------------------- servers


class Server:
    """A server process on a free loopback port, its output in files under ``work``."""

    def __init__(self, name: str, cmd: list[str], work: Path, probe: str) -> None:
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stderr = work / f"{name}.stderr"
        self.probes = 0  # HTTP answers to readiness probes
        t0 = time.perf_counter()
        with (work / f"{name}.stdout").open("w") as out, self.stderr.open("w") as err:
            self.proc = subprocess.Popen([*cmd, "--port", str(self.port)], stdout=out, stderr=err, env=ENV)
        self._wait_ready(probe)
        self.start_s = time.perf_counter() - t0

    def _wait_ready(self, probe: str) -> None:
        """Until ``probe`` answers 200 (any answer when it is "" : the server is up)."""
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                status = httpx.get(self.url + (probe or "/"), timeout=5).status_code
                self.probes += 1
                if status == 200 or not probe:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"{self.name} did not start: {self.stderr.read_text()[-2000:]}")

    def _tree(self) -> list[psutil.Process]:
        """The server's process and its live children (its workers)."""
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def cpu_s(self) -> float:
        """CPU seconds the server has used, its workers' included (ended ones too)."""
        total = 0.0
        for k, p in enumerate(self._tree()):
            with contextlib.suppress(psutil.Error):  # it ended just now
                t = p.cpu_times()
                total += t.user + t.system + (t.children_user + t.children_system if k == 0 else 0.0)
        return total

    def rss_mb(self) -> float:
        """The resident memory of the server and its workers (pages they share counted in each)."""
        total = 0
        for p in self._tree():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total / 2**20

    def stop(self) -> str:
        """SIGTERM, wait, and the process's stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.stderr.read_text()


def pawlab_serve(model: Path, work: Path, name: str, *flags: str) -> Server:
    cmd = [sys.executable, "-m", "pawlab", "serve", str(model), *flags]
    return Server(name, cmd, work, "/v2/health/ready")


def tutorial(model: Path, work: Path, fastapi: bool) -> Server:
    cmd = [sys.executable, str(HERE / "tutorial_serve.py"), str(model), *(["--fastapi-def"] * fastapi)]
    return Server("fastapi-def" if fastapi else "tutorial", cmd, work, "")


# ---------------------------------------------------------------- load


@dataclass
class Tally:
    """What the clients got in the measured window: the answers that came in it, the
    connection errors from its start on."""

    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # connection errors by httpx's name
    latencies: list[float] = field(default_factory=list)  # seconds
    ok_latencies: list[float] = field(default_factory=list)  # seconds, of the 200s
    answers: list[tuple[int, bytes]] = field(default_factory=list)  # (photo, body) of each 200, if kept
    seconds: float = 0.0  # the window's
    cores: tuple[float, float, float] | None = None  # cores busy in the window: server, clients, others

    @property
    def ok_per_s(self) -> float:
        return self.statuses[200] / self.seconds if self.seconds else 0.0

    def ms(self, q: float, ok: bool = False) -> float:
        """The q-th percentile latency in ms, of every answer or of the 200s only."""
        seconds = self.ok_latencies if ok else self.latencies
        if not seconds:
            return float("nan")
        return float(np.percentile(seconds, q)) * 1000

    def statuses_text(self) -> str:
        parts = [f"{s}: {n}" for s, n in sorted(self.statuses.items())]
        parts += [f"{e}: {n}" for e, n in sorted(self.errors.items())]
        return ", ".join(parts) or "none"


Results = dict[str, dict[int, Tally]]  # by server, then number of clients


@dataclass
class Load:
    """C clients posting ``photos`` to ``url``: ``warmup`` seconds, then a window of ``seconds``
    whose answers are counted (requests still out at its end finish uncounted). A client waits
    as a 503's ``Retry-After`` asks; with ``until_refused`` it stops at its first connection
    error instead of connecting again."""

    url: str
    photos: list[bytes]
    clients: int
    warmup: float
    seconds: float
    keep: bool = False
    until_refused: bool = False
    server: Server | None = None  # whose CPU use is measured in the window

    def run(self, during: Callable[[], None] = lambda: None) -> Tally:
        """The load, with ``during`` called in a thread once the window starts."""
        return asyncio.run(self._run(during))

    async def _run(self, during: Callable[[], None]) -> Tally:
        tally = Tally(seconds=self.seconds)
        start = time.perf_counter() + self.warmup
        side = [
            asyncio.create_task(self._during(start, during)),
            asyncio.create_task(self._cores(start, tally)),
        ]
        await asyncio.gather(
            *(self._client(k, start, start + self.seconds, tally) for k in range(self.clients))
        )
        await asyncio.gather(*side)
        return tally

    @staticmethod
    async def _during(start: float, during: Callable[[], None]) -> None:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        await asyncio.to_thread(during)

    async def _cores(self, start: float, tally: Tally) -> None:
        """The cores busy in the window: the server's, this process's (the clients), the rest."""
        if (server := self.server) is None:
            return
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        machine, ours, clients = busy_s(), server.cpu_s(), sum(os.times()[:2])
        await asyncio.sleep(self.seconds)
        machine, ours, clients = busy_s() - machine, server.cpu_s() - ours, sum(os.times()[:2]) - clients
        tally.cores = (
            ours / self.seconds,
            clients / self.seconds,
            max(machine - ours - clients, 0.0) / self.seconds,
        )

    async def _client(self, k: int, start: float, end: float, tally: Tally) -> None:
        n, i = len(self.photos), k * 7
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(limits=limits, timeout=120) as http:
            while (sent := time.perf_counter()) < end:
                i += 1
                try:
                    r = await http.post(self.url, content=self.photos[i % n], headers=JPEG)
                except httpx.TransportError as exc:
                    tally.errors[type(exc).__name__] += time.perf_counter() >= start
                    if self.until_refused:
                        return
                    await asyncio.sleep(0.05)
                    continue
                if start <= (done := time.perf_counter()) <= end:
                    tally.statuses[r.status_code] += 1
                    tally.latencies.append(done - sent)
                    if r.status_code == 200:
                        tally.ok_latencies.append(done - sent)
                    if self.keep and r.status_code == 200:
                        tally.answers.append((i % n, r.content))
                if r.status_code == 503:
                    await asyncio.sleep(float(r.headers.get("retry-after", "0")))


def busy_s() -> float:
    """CPU seconds this machine's cores have been busy (all processes)."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICKS  # less idle and iowait


# ---------------------------------------------------------------- answers


def reference(model: Path, files: list[Path]) -> Answers:
    """``pawlab predict --json``'s object for each file, in order."""
    cmd = [sys.executable, "-m", "pawlab", "predict", str(model), *map(str, files), "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=ENV).stdout
    by_path = {o["image"]: o for o in map(json.loads, out.splitlines())}
    return [by_path[str(f)] for f in files]


def probabilities(body: bytes) -> dict[str, float]:
    """pawlab's ``probability-map`` or the tutorial's ``probabilities``."""
    answer = json.loads(body)
    return dict(answer.get("probability-map") or answer["probabilities"])


def disagreements(answers: list[tuple[int, bytes]], ref: Answers) -> tuple[int, list[float]]:
    """(answers whose class differs, each answer's largest probability difference) against ``ref``."""
    wrong, diffs = 0, []
    for i, body in answers:
        got, want = probabilities(body), ref[i]["probability-map"]
        wrong += max(got, key=got.__getitem__) != ref[i]["classification"]
        diffs.append(max(abs(got[c] - p) for c, p in want.items()))
    return wrong, diffs


def agreement(server: Server, photos: list[bytes], ref: Answers) -> str:
    """Every photo posted once (4 clients): how its answers compare with pawlab predict's."""

    async def post_all() -> list[tuple[int, bytes]]:
        async with httpx.AsyncClient(timeout=120) as http:
            gate = asyncio.Semaphore(4)

            async def one(i: int) -> tuple[int, bytes]:
                async with gate:
                    r = await http.post(server.url + "/v1/predict", content=photos[i], headers=JPEG)
                    r.raise_for_status()
                    return i, r.content

            return await asyncio.gather(*(one(i) for i in range(len(photos))))

    wrong, diffs = disagreements(asyncio.run(post_all()), ref)
    return (
        f"against pawlab predict on the {len(photos)} photos: {len(photos) - wrong} same class, "
        f"probability differences: largest {max(diffs):.4f}, median {statistics.median(diffs):.4f}"
    )


# ---------------------------------------------------------------- the runs


def throughput(servers: dict[str, Server], photos: list[bytes], args: argparse.Namespace) -> Results:
    """Each number of clients against each server in turn (a slow spell of the shared machine
    hits neighbouring rows alike); the rows are printed as they come."""
    results: Results = {name: {} for name in servers}
    for c in args.clients:
        for name, server in servers.items():
            load = Load(server.url + "/v1/predict", photos, c, args.warmup, args.seconds, server=server)
            results[name][c] = load.run()
            print(f"  {c:3d} clients  {name:12s} {row(results[name][c])}", flush=True)
    return results


def row(t: Tally) -> str:
    cores = (
        "" if t.cores is None else "  cores: server {:.1f}, clients {:.1f}, others {:.1f}".format(*t.cores)
    )
    return (
        f"{t.ok_per_s:7.1f} img/s  p50 {t.ms(50):7.0f} ms  p95 {t.ms(95):7.0f} ms  "
        f"p99 {t.ms(99):7.0f} ms  [{t.statuses_text()}]{cores}"
    )


def ratio(ours: Tally, theirs: Tally) -> float:
    return ours.ok_per_s / theirs.ok_per_s if theirs.ok_per_s else float("inf")


def compare(results: Results, cpu: str, bf16: bool) -> bool | None:
    """The ratios; whether the goal at 64 clients is met."""
    goal, met = GOAL[bf16], None
    print(f"\nratios, pawlab serve / the others (CPU: {cpu})")
    ours = results["pawlab"]
    for c in sorted(ours):
        parts = [
            f"vs {name} {ratio(ours[c], runs[c]):5.2f}x img/s, p99 {ours[c].ms(99):.0f} vs "
            f"{runs[c].ms(99):.0f} ms"
            for name, runs in results.items()
            if name != "pawlab"
        ]
        print(f"  {c:3d} clients: " + "; ".join(parts))
    if 64 not in ours:
        print("  goal at 64 clients: not measured (--clients has no 64)")
    elif "tutorial" in results:
        them = results["tutorial"][64]
        times = ratio(ours[64], them)
        met = times >= goal and ours[64].ms(99) <= them.ms(99)
        print(
            f"  goal at 64 clients: >= {goal}x the tutorial's img/s ({'fast bf16' if bf16 else 'AVX2 only'}) "
            f"and p99 no worse: {times:.2f}x, p99 {ours[64].ms(99):.0f} vs {them.ms(99):.0f} ms: "
            f"{verdict(met)}"
        )
    return met


def overload(model: Path, work: Path, photos: list[bytes], ref: Answers, rate: float, seconds: float) -> bool:
    """Four times the clients pawlab serve answers in time (it does ``rate`` img/s), its RSS
    sampled each second."""
    max_batch = infer_batch(torch.device("cpu"))
    workers = auto_workers("cpu")  # each with its own queue
    in_time = int(min(workers * (OVERLOAD_QUEUE + max_batch), rate * OVERLOAD_DEADLINE_MS / 1000))
    clients = 4 * max(in_time, 1)
    flags = ["--max-queue", str(OVERLOAD_QUEUE), "--deadline-ms", str(OVERLOAD_DEADLINE_MS)]
    print(
        f"\noverload: pawlab serve {' '.join(flags)} (a queue small enough for this machine's clients to "
        f"fill); it answers about min({workers} workers x (queue {OVERLOAD_QUEUE} + batch {max_batch}), "
        f"{rate:.0f} img/s x {OVERLOAD_DEADLINE_MS / 1000:g} s) = {in_time} clients in time: "
        f"{clients} clients, {OVERLOAD_WARMUP:g}s of warm-up then {seconds:g}s,"
        " each waiting as a 503's Retry-After asks before it posts again",
        flush=True,
    )
    server = pawlab_serve(model, work, "overload", *flags, "-q")
    rss: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set() and server.proc.poll() is None:
            rss.append(server.rss_mb())
            stop.wait(1.0)

    try:
        url = server.url + "/v1/predict"
        load = Load(url, photos, clients, OVERLOAD_WARMUP, seconds, keep=True, server=server)
        tally = load.run(during=lambda: threading.Thread(target=sample, daemon=True).start())
    finally:
        stop.set()
        server.stop()
    return judge_overload(tally, ref, rss)


def judge_overload(tally: Tally, ref: Answers, rss: list[float]) -> bool:
    """Prints what the overload run got; whether it lost nothing, only refused, in flat memory."""
    wrong, diffs = disagreements(tally.answers, ref)
    worst = max(diffs, default=0.0)
    other = sum(n for s, n in tally.statuses.items() if s not in (200, 503))
    errors = sum(tally.errors.values())
    flat = bool(rss) and rss[-1] <= 1.1 * rss[0]
    print(f"  {row(tally)}")
    print(
        f"  200 answers: {tally.statuses[200]}, {wrong} with another class than pawlab predict's, largest "
        f"probability difference {worst:.4f} (allowed 0.01), p50 {tally.ms(50, ok=True):.0f} ms, p99 "
        f"{tally.ms(99, ok=True):.0f} ms; 503: {tally.statuses[503]}; other statuses: {other}; "
        f"connection errors: {errors}"
    )
    if rss:
        print(
            f"  server RSS: {rss[0]:.0f} MB at the start (after warm-up), {max(rss):.0f} MB at most, "
            f"{rss[-1]:.0f} MB at the end: {'flat' if flat else 'NOT flat'} (flat: end <= 1.1 x start); "
            f"every 10 s: {' '.join(f'{mb:.0f}' for mb in rss[::10])} MB"
        )
    if not tally.statuses[503]:
        print("  no 503: the server was never overloaded, so this run shows nothing about overload")
    reached = tally.statuses[200] > 0 and tally.statuses[503] > 0
    return reached and wrong == 0 and worst <= 0.01 and other == 0 and errors == 0 and flat


def sigterm(model: Path, work: Path, photos: list[bytes]) -> bool | None:
    """Whether every request the server accepted was answered; None when it does not say."""
    print(
        f"\nSIGTERM: {SIGTERM_CLIENTS} clients post to a fresh pawlab serve; SIGTERM after "
        f"{SIGTERM_AFTER:g}s of load; each client stops at its first failed connection",
        flush=True,
    )
    server = pawlab_serve(model, work, "sigterm")

    def signal_it() -> None:
        time.sleep(SIGTERM_AFTER)
        server.proc.send_signal(signal.SIGTERM)

    load = Load(server.url + "/v1/predict", photos, SIGTERM_CLIENTS, 0.0, 120.0, until_refused=True)
    tally = load.run(during=signal_it)
    server.proc.wait(timeout=60)  # one SIGTERM only, as a process manager sends
    err = server.stop()
    answered = sum(tally.statuses.values())
    refused = tally.errors["ConnectError"]
    closed = sum(tally.errors.values()) - refused
    print(
        f"  clients: {answered} answers, {refused} connections refused (expected once it stops "
        f"listening), {closed} closed without an answer [{tally.statuses_text()}]; pawlab serve's exit "
        f"status {server.proc.returncode}"
    )
    found = SUMMARY.search(err)
    if found is None:
        print("  server summary: not printed by this pawlab")
        return None
    n, m = int(found[1]), int(found[2])
    probes = n == answered + server.probes  # the server may count its readiness probes too
    print(
        f"  server summary: {n} requests answered, {m} unanswered; the clients counted {answered} "
        f"answers{f' + {server.probes} readiness probes = {n}' if probes else ''}"
    )
    return m == 0 and (n == answered or probes) and server.proc.returncode == 0


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="a trained transfer model file")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pawlab-bench-serve")
    ap.add_argument("--clients", default="1,8,64", help="numbers of concurrent clients")
    ap.add_argument("--warmup", type=float, help="seconds of load before each measured window (3)")
    ap.add_argument("--seconds", type=float, help="the measured window (20)")
    ap.add_argument("--overload-seconds", type=float, help="(60)")
    ap.add_argument("--images", type=int, help="validation photos the clients post in turn (200)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 3 s windows, 50 photos, 10 s overload")
    args = ap.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.clients = [int(c) for c in args.clients.split(",")]
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or trained_model(work)
    bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    cpu = cpu_class()
    files = sorted((SHARED / "validation").rglob("*.jpg"))[:: max(1, 1000 // args.images)][: args.images]
    photos = [f.read_bytes() for f in files]
    print(f"pawlab serve vs a tutorial endpoint; CPU: {cpu}", flush=True)
    print(
        f"{len(photos)} validation photos of {SHARED.name}, model {model}; the load generator (this "
        f"process: asyncio + httpx) and each server share this machine's {os.cpu_count()} cores",
        flush=True,
    )
    t0 = time.perf_counter()
    ref = reference(model, files)
    print(f"reference: pawlab predict --json on the {len(files)} photos ({time.perf_counter() - t0:.0f}s)")

    servers: dict[str, Server] = {}
    try:
        for name, start in (
            ("pawlab", lambda: pawlab_serve(model, work, "pawlab", "-q")),
            ("pawlab-w1", lambda: pawlab_serve(model, work, "pawlab-w1", "-q", "--workers", "1")),
            ("tutorial", lambda: tutorial(model, work, fastapi=False)),
            ("fastapi-def", lambda: tutorial(model, work, fastapi=True)),
        ):
            if name == "fastapi-def" and not _has_fastapi():
                print("fastapi-def: skipped (FastAPI is not installed: pip install fastapi)")
                continue
            servers[name] = server = start()
            print(f"{name}: ready in {server.start_s:.0f}s; {agreement(server, photos, ref)}", flush=True)
        print(f"side by side, each server in turn (CPU: {cpu})", flush=True)
        results = throughput(servers, photos, args)
    finally:
        for server in servers.values():
            server.stop()
    met = compare(results, cpu, bf16)
    rate = max(max(t.ok_per_s for t in results["pawlab"].values()), 1.0)  # the best: others share the cores
    held = overload(model, work, photos, ref, rate, args.overload_seconds)
    drained = sigterm(model, work, photos)
    print("\ngoals:")
    print(f"  64 clients: >= {GOAL[bf16]}x the tutorial's img/s, p99 no worse: {verdict(met)}")
    print(f"  overload: only 200s (as pawlab predict's) and 503s, no resets, flat memory: {verdict(held)}")
    print(f"  SIGTERM: every accepted request answered: {verdict(drained)}")


def verdict(met: bool | None) -> str:
    return "not known (see above)" if met is None else "met" if met else "NOT met"


def _has_fastapi() -> bool:
    try:
        import fastapi  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
