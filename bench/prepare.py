"""Benchmark: `pawlab prepare` against a plain one-process Pillow loop, in the same run.

    .venv/bin/python bench/prepare.py [--n 25000] [--sizes 64,224] [--repeat 3] [--work DIR]

1. Builds a Kaggle-scale flat folder (``cat.123.jpg``) of N JPEGs from
   ``../shared/data/cats_and_dogs_filtered`` by re-encoding, flipping and cropping copies
   under new ids (kept in --work and reused by later runs).
2. For each size, times side by side:
   * baseline: one process, ``Image.open(f).convert("RGB").resize((S, S))`` into an array;
   * pawlab prepare, default (the packed arrays: what `train` reads, and what `pawlab train SRC`
     builds in its cache);
   * pawlab prepare --png (the arrays, then the tutorials' PNG tree from them);
   * pawlab prepare again on the unchanged source (the cache hit).
   Each pawlab run is a fresh ``python -m pawlab prepare`` process into an empty folder;
   its peak memory is the summed RSS of the process and its workers, sampled every 20 ms.
   The source is read once beforehand, so every run finds it in the page cache, and each run
   starts after a sync, so none pays for writing back an earlier run's output. Runs are
   repeated (--repeat, interleaved) and the median is reported.
3. Prints images/s, ratios to the baseline and peak memory.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "cats_and_dogs_filtered"


def _make_one(args: tuple[str, str, int]) -> None:
    src, dest, seed = args
    rng = random.Random(seed)
    im = Image.open(src).convert("RGB")
    if rng.random() < 0.5:
        im = ImageOps.mirror(im)
    w, h = im.size
    cw, ch = int(w * rng.uniform(0.8, 1.0)), int(h * rng.uniform(0.8, 1.0))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    im.crop((x, y, x + cw, y + ch)).save(dest, quality=rng.randint(75, 92))


def build_set(dest: Path, n: int, numbered: bool = False, source: Path = SHARED) -> Path:
    """N JPEGs named ``cat.0.jpg`` ... (a labelled set), or ``1.jpg`` ... (a Kaggle test set),
    copied from the photos of ``source`` (``SPLIT/CLASS/*.jpg``; one ``dest`` per source)."""
    marker = dest / f".complete-{n}"
    if marker.exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    originals = sorted(source.glob("*/*/*.jpg"))
    if not originals:
        sys.exit(f"no JPEGs under {source}")
    jobs = []
    counters: dict[str, int] = {}
    for i in range(n):
        src = originals[i % len(originals)]
        label = src.parent.name.removesuffix("s")  # Kaggle's names are singular: cats/ gives cat.0.jpg
        name = f"{i + 1}.jpg" if numbered else f"{label}.{counters.get(label, 0)}.jpg"
        jobs.append((str(src), str(dest / name), i))
        counters[label] = counters.get(label, 0) + 1
    t0 = time.perf_counter()
    with ProcessPoolExecutor() as pool:
        list(pool.map(_make_one, jobs, chunksize=64))
    marker.touch()
    print(f"built {n} JPEGs in {dest} ({time.perf_counter() - t0:.0f}s)", flush=True)
    return dest


def baseline(files: list[Path], size: int) -> float:
    """Seconds for the plain one-process loop."""
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    for i, f in enumerate(files):
        out[i] = np.asarray(Image.open(f).convert("RGB").resize((size, size)))
    return time.perf_counter() - t0


def tree_rss(pid: int) -> tuple[int, int]:
    """Summed resident memory (bytes) of a process and all its descendants: (anonymous, total).

    Total includes the pages of the memory-mapped arrays being written, which live in the
    page cache and are counted once per process that maps them; anonymous memory is what the
    processes themselves hold.
    """
    anon = total = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:  # the children of each thread: no walk over all of /proc, which costs a core's tenth
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    stack.extend(int(c) for c in fh.read().split())
        except OSError:
            pass
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                    elif line.startswith("RssAnon:"):
                        anon += int(line.split()[1]) * 1024
        except OSError:
            pass
    return anon, total


def run_prepare(src: Path, out: Path, size: int, extra: list[str]) -> tuple[float, int, int]:
    """(seconds, peak anonymous RSS, peak total RSS) of one `pawlab prepare` process tree."""
    cmd = [sys.executable, "-m", "pawlab", "prepare", str(src), str(out), "--size", str(size), "-q", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_anon = peak = 0
    while proc.poll() is None:
        anon, total = tree_rss(proc.pid)
        peak_anon, peak = max(peak_anon, anon), max(peak, total)
        time.sleep(0.02)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"prepare failed: {proc.stderr.read()}")
    return seconds, peak_anon, peak


def settle() -> None:
    """Flush earlier runs' dirty pages first, so that no run pays for another's writes."""
    os.sync()
    time.sleep(1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=25000)
    ap.add_argument("--sizes", default="64,224")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; the median is reported")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pawlab-bench")
    args = ap.parse_args()
    src = build_set(args.work / f"kaggle-{args.n}", args.n)
    files = sorted(src.glob("*.jpg"))
    for f in files:  # every run reads the source from the page cache, the baseline's first too
        f.read_bytes()
    os.environ["PAWLAB_CACHE_DIR"] = str(args.work / "cache")
    n = len(files)
    print(f"{n} JPEGs, {os.cpu_count()} CPUs; pawlab uses one process per core", flush=True)
    print(f"median of {args.repeat} runs each, interleaved, each after a sync", flush=True)
    variants = (("prepare", []), ("prepare --png", ["--png"]))
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        bases: list[float] = []
        runs: dict[str, list[tuple[float, int, int]]] = {label: [] for label, _ in variants}
        for _ in range(args.repeat):
            settle()
            bases.append(baseline(files, size))
            for label, extra in variants:
                out = args.work / f"out-{size}{'-png' if extra else ''}"
                shutil.rmtree(out, ignore_errors=True)
                settle()
                runs[label].append(run_prepare(src, out, size, extra))
        settle()
        again = run_prepare(src, args.work / f"out-{size}", size, [])
        base = statistics.median(bases)
        results = {
            label: (
                statistics.median(r[0] for r in rs),
                max(r[1] for r in rs),
                max(r[2] for r in rs),
            )
            for label, rs in runs.items()
        }
        rows.append((size, base, results))
        spread = ", ".join(f"{n / b:.0f}" for b in bases)
        print(f"\n{size}x{size}: baseline {n / base:8.0f} img/s ({base:.1f}s; runs: {spread})", flush=True)
        for label, (sec, anon, peak) in results.items():
            each = ", ".join(f"{n / r[0]:.0f}" for r in runs[label])
            print(
                f"  pawlab {label:<14} {n / sec:8.0f} img/s ({sec:.1f}s)  x{base / sec:5.2f} baseline"
                f"  peak {anon / 2**20:5.0f} MiB anonymous, {peak / 2**20:5.0f} MiB with mapped arrays"
                f"  (runs: {each})",
                flush=True,
            )
        print(f"  pawlab prepare, unchanged source again: {again[0]:.2f}s (cache hit)", flush=True)
    print("\ntargets: >= 4x baseline at 64x64, >= 2.5x at 224x224, peak < 1 GiB for 25,000 at 64x64")
    for size, base, results in rows:
        for label, (sec, anon, peak) in results.items():
            print(
                f"  {size:>3} {label:<14} x{base / sec:5.2f}  peak {anon / 2**20:5.0f} MiB anonymous"
                f" ({peak / 2**20:5.0f} MiB with mapped arrays)"
            )


if __name__ == "__main__":
    main()
