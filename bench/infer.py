"""Benchmark: pawlab's inference path against a plain PyTorch loop, in the same run.

    .venv/bin/python bench/infer.py [--n 1000] [--submission 12500] [--model M] [--repeat 3] [--work DIR]

1. Builds a Kaggle-style test folder of numbered JPEGs (``1.jpg`` ...) from
   ``../shared/data/cats_and_dogs_filtered`` by re-encoding, flipping and cropping copies
   (as bench/prepare.py does; kept in --work and reused).
2. Model: --model, a trained transfer model file; by default one is trained with
   ``pawlab train ../shared/data/cats_and_dogs_filtered --backbone`` (the default backbone,
   EfficientNet-Lite2; kept in --work). Training records whether guarded bf16 agrees with
   fp32 on validation photos.
3. Times on the same N images, decoding included in each, in one process:
   * plain: ``Image.open().convert("RGB")``, centre crop and resize in Pillow, fp32, NCHW,
     ``torch.no_grad``, batches of 32, no compile;
   * pawlab, fp32 uncompiled: ``pawlab.submit`` with ``precision="fp32", compile="off"``
     (scale-on-decode and OpenCV resizing, channels-last);
   * pawlab, the defaults of a long job: ``precision="auto"`` (guarded bf16 where training
     found it agrees) and ``compile="on"`` (what ``auto`` picks for 3,000 images or more).
     Its one-time compile runs first on 64 other images and is reported on its own line.
   and prints images/s and ratios (medians of --repeat interleaved runs), and the agreement
   of the fast path with pawlab's fp32 on the N images.
4. With --submission K > 0: the wall time of ``pawlab submit`` on K images with the
   defaults, as a user runs it (process start and compiling included).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prepare import SHARED, build_set  # noqa: E402  (bench/prepare.py)

from pawlab.inference import Model, load_model, submit  # noqa: E402
from pawlab.inference.agreement import describe  # noqa: E402

BATCH = 32


def plain_decode(f: Path, size: int) -> np.ndarray:
    im = Image.open(f).convert("RGB")
    w, h = im.size
    s = min(w, h)
    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR, box=box))


def plain_loop(net: torch.nn.Module, files: list[Path], size: int) -> tuple[float, np.ndarray]:
    """(seconds, probabilities) for a minimal hand-written loop: decode, fp32, NCHW."""
    out = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(files), BATCH):
            batch = np.stack([plain_decode(f, size) for f in files[start : start + BATCH]])
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255)
            x = (x - 0.5) / 0.5
            out.append(torch.softmax(net(x), 1))
    return time.perf_counter() - t0, torch.cat(out).numpy()


def timed_submit(model: Model, test: Path, out: Path) -> tuple[float, np.ndarray]:
    """(seconds, the CSV's rows (N, 2)) of one in-process `pawlab.submit`, from scratch."""
    out.unlink(missing_ok=True)
    out.with_name(out.name + ".pawlab-job.json").unlink(missing_ok=True)  # never a resumed job
    t0 = time.perf_counter()
    submit(model, test, out, progress=False)
    return time.perf_counter() - t0, np.loadtxt(out, delimiter=",", skiprows=1, ndmin=2)


def trained_model(work: Path) -> Path:
    path = work / "model.safetensors"
    if not path.exists():
        print("training a transfer model (cold feature cache: about 2 minutes)", flush=True)
        cmd = [sys.executable, "-m", "pawlab", "train", str(SHARED), "--backbone"]
        subprocess.run([*cmd, "--out", str(path), "--run-dir", str(work / "run"), "-q"], check=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000, help="images timed for each path")
    ap.add_argument("--submission", type=int, default=12500, help="images of the full submission (0: skip)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pawlab-bench-infer")
    ap.add_argument("--model", type=Path, default=None, help="a trained transfer model file")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs of each path; medians reported")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    model_path = args.model or trained_model(work)
    exact = load_model(model_path, device="cpu", precision="fp32", compile="off")
    fast = load_model(model_path, device="cpu", compile="on")
    compiled = load_model(model_path, device="cpu", precision="fp32", compile="on")
    net = load_model(model_path, device="cpu", precision="fp32").network.to(
        memory_format=torch.contiguous_format
    )
    record = fast.meta.get("inference", {})
    test = build_set(work / f"test-{args.n}", args.n, numbered=True)
    warm = build_set(work / "test-64", 64, numbered=True)
    files = sorted(test.glob("*.jpg"), key=lambda p: int(p.stem))
    n = len(files)
    size = exact.preprocessing.size[0]
    layers = exact.meta["architecture"]
    backbones = ", ".join(str(x.get("name")) for x in layers if x.get("type") == "backbone") or "the model"
    print(f"{n} JPEGs, {backbones} at {size}x{size}, {torch.get_num_threads()} threads", flush=True)
    if record:
        print(f"model file's agreement record: guarded bf16 {describe(record)}")
    print(f"fast path: {'guarded bf16' if fast.bf16 else 'fp32'}, compiled", flush=True)

    # the fp32 compile first, in a process that has compiled nothing yet (run the script with
    # TORCHINDUCTOR_CACHE_DIR set to a new folder for a cold disk cache, as a user's first job)
    warm_eager_s, _ = timed_submit(exact, warm, work / "warm-eager.csv")
    t0 = time.perf_counter()
    timed_submit(compiled, warm, work / "warm-fp32.csv")
    compile_fp32_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    timed_submit(fast, warm, work / "warm.csv")
    compile_s = time.perf_counter() - t0

    runs: dict[str, list[float]] = {"plain": [], "fp32": [], "fast": [], "compiled": []}
    for _ in range(args.repeat):  # interleaved, so that a slow spell of the machine hits them all
        plain_s, plain_probs = plain_loop(net, files, size)
        exact_s, exact_rows = timed_submit(exact, test, work / "submission-fp32.csv")
        fast_s, fast_rows = timed_submit(fast, test, work / "submission-fast.csv")
        compiled_s, _ = timed_submit(compiled, test, work / "submission-compiled.csv")
        for key, sec in (("plain", plain_s), ("fp32", exact_s), ("fast", fast_s), ("compiled", compiled_s)):
            runs[key].append(sec)
    plain_s, exact_s, fast_s, compiled_s = (
        statistics.median(runs[k]) for k in ("plain", "fp32", "fast", "compiled")
    )

    def each(key: str) -> str:
        return ", ".join(f"{n / sec:.1f}" for sec in runs[key])

    print(f"  median of {args.repeat} interleaved runs (img/s of each run in brackets)")
    print(f"  plain loop (fp32, NCHW, decode inline)   {n / plain_s:7.1f} img/s  ({each('plain')})")
    print(
        f"  pawlab fp32, uncompiled                  {n / exact_s:7.1f} img/s  "
        f"x{plain_s / exact_s:.2f} the plain loop  ({each('fp32')})"
    )
    print(
        f"  pawlab defaults for long jobs            {n / fast_s:7.1f} img/s  "
        f"x{plain_s / fast_s:.2f} the plain loop  ({each('fast')})"
    )
    print(
        f"  (compiling, once per process, and 64 warm-up images: {compile_s:.1f}s, not in the figure above)"
    )
    print(
        f"  pawlab fp32, compiled                    {n / compiled_s:7.1f} img/s  "
        f"x{exact_s / compiled_s:.2f} uncompiled fp32  ({each('compiled')})"
    )
    compile_cost = max(compile_fp32_s - warm_eager_s, 0.0)  # the 64 warm-up images would be run anyway
    saved = exact_s / n - compiled_s / n  # seconds saved per image once compiled
    breakeven = f"{compile_cost / saved:,.0f} images" if saved > 0 else "never (compiled is not faster)"
    print(
        f"  compiling fp32 costs {compile_cost:.1f}s once and saves {saved * 1000:.1f} ms an image: "
        f"it pays off after {breakeven} (engine.COMPILE_MIN_IMAGES is set from this)"
    )
    same = float(np.mean((fast_rows[:, 1] >= 0.5) == (exact_rows[:, 1] >= 0.5)))
    diff = float(np.abs(fast_rows[:, 1] - exact_rows[:, 1]).max())
    print(
        f"  defaults vs pawlab fp32 on these {n}: same class {same:.2%}, "
        f"largest probability difference {diff:.4f}"
    )
    same = float(np.mean((exact_rows[:, 1] >= 0.5) == (plain_probs[:, 1] >= 0.5)))
    diff = float(np.abs(np.clip(plain_probs[:, 1], 0.005, 0.995) - exact_rows[:, 1]).max())
    print(
        f"  pawlab fp32 vs plain (Pillow's decoder vs DCT-scaled decoding): same class {same:.2%}, "
        f"largest probability difference {diff:.4f}"
    )

    if args.submission:
        big = build_set(work / f"test-{args.submission}", args.submission, numbered=True)
        out = work / "submission-full.csv"
        out.unlink(missing_ok=True)
        out.with_name(out.name + ".pawlab-job.json").unlink(missing_ok=True)
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "pawlab", "submit", str(model_path), str(big), "--out", str(out), "-q"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        seconds = time.perf_counter() - t0
        print(
            f"  a {args.submission}-image submission, `pawlab submit` defaults: {seconds:.0f}s wall "
            f"({args.submission / seconds:.1f} img/s, process start and compiling included)"
        )


if __name__ == "__main__":
    main()
