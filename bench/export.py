"""Benchmark: a model exported to ONNX, fp32 and int8, in ONNX Runtime.

    .venv/bin/python bench/export.py MODEL [--data DIR] [--repeat 5] [--variants "chosen,all int8"]
        [--calibration 300]

For a pawlab model file: the fp32 graph's agreement with pawlab (`pawlab.export.check`), the
int8 graph's (as ``pawlab export --int8`` quantizes it) with the fp32 graph on the validation
images (and under bf16's whole rule, alone and guarded: `guarded`), and ONNX Runtime's images/s
at batch 32 for both (medians of interleaved repeats over the same validation images, decoded
beforehand; the CPU named, with its int8 instructions).
``--variants``: named other quantization settings (`VARIANTS`, `pawlab.inference.quantize.QuantSettings`)
instead of the chosen one, to see what it is worth; ``--calibration``: how many training images
calibrate them.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxruntime.quantization import QuantType  # noqa: E402

from pawlab.export.check import TOLERANCES, compare, summary  # noqa: E402
from pawlab.export.graph import to_onnx  # noqa: E402
from pawlab.export.onnxfile import run_session  # noqa: E402
from pawlab.inference import load_model  # noqa: E402
from pawlab.inference.agreement import agreement_figures, agrees, guarded_agreement  # noqa: E402
from pawlab.inference.ort import session_for  # noqa: E402
from pawlab.inference.quantize import SETTINGS, quantize_int8  # noqa: E402
from pawlab.inference.runtimes import CALIBRATION_IMAGES, CHECK_IMAGES  # noqa: E402
from pawlab.inference.splits import check_images, sample  # noqa: E402

BATCH = 32
SPEED_IMAGES = 320  # of the validation images, timed
# (percentile and entropy calibration keep every activation of the calibration images: 20 GB for
# Lite0 at 224x224 and 300 images, killed for lack of memory on a 32 GB machine)
ALL_INT8 = dataclasses.replace(SETTINGS, float_first=0, float_last=0)  # the softmax alone in float
VARIANTS = {
    "chosen": SETTINGS,
    "all int8": ALL_INT8,
    "classifier float": dataclasses.replace(ALL_INT8, float_last=1),
    "stem+head float": dataclasses.replace(SETTINGS, float_first=1),
    "stem+blocks 0-3+head float": dataclasses.replace(SETTINGS, float_first=12),
    "reduce-range": dataclasses.replace(SETTINGS, reduce_range=True),
    "all int8 reduce-range": dataclasses.replace(ALL_INT8, reduce_range=True),
    "per-tensor weights": dataclasses.replace(SETTINGS, per_channel=False),
    "plain min-max": dataclasses.replace(SETTINGS, moving_average=False),
    "S8S8": dataclasses.replace(SETTINGS, activations=QuantType.QInt8),
}


def cpu() -> str:
    text = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    found = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    flags = set(found.group(1).split()) if found else set()
    int8 = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    cores = len(re.findall(r"^processor\s*:", text, re.M))
    return f"{model.group(1) if model else '?'}, {cores} logical cores, {' '.join(int8) or 'no AVX2'}"


def images_per_second(sessions: dict[str, object], pixels: np.ndarray, repeat: int) -> dict[str, float]:
    """Median images/s of each session over ``pixels`` in batches of `BATCH`, interleaved."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for s in sessions.values():
        run_session(s, pixels[:BATCH], BATCH)  # warm up
    for _ in range(repeat):
        for name, s in sessions.items():
            start = time.perf_counter()
            run_session(s, pixels, BATCH)
            times[name].append(len(pixels) / (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def guarded(p32: np.ndarray, p8: np.ndarray, labels: np.ndarray) -> str:
    """In words: int8 under bf16's whole rule (`agrees`: the class kept for 99.9% of the images,
    every probability within 0.1), alone and guarded (`guarded_agreement`: images of a small
    top-two margin run again in fp32, the margin chosen on every other image, measured on the rest)."""
    ref, fast, truth = torch.from_numpy(p32), torch.from_numpy(p8), torch.from_numpy(labels).long()
    alone = agrees(agreement_figures(ref, fast, truth))
    g = guarded_agreement(ref, fast, truth)
    return (
        f"bf16's rule: int8 alone {'agrees' if alone else 'does not agree'}; guarded int8 "
        f"{'agrees' if g['ok'] else 'does not agree'}, {g['rerun']:.1%} run again in fp32 (margin "
        f"{g['margin']:.3f}; {g['images']} images: same class {g['same_class']:.2%}, largest probability "
        f"difference {g['max_prob_diff']:.3f}, accuracy {100 * (g['accuracy'] - g['accuracy_fp32']):+.2f} "
        f"points, log loss {g['log_loss'] - g['log_loss_fp32']:+.4f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", default=None)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--variants", default="", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--calibration", type=int, default=CALIBRATION_IMAGES, help="training images")
    args = parser.parse_args()
    print(f"CPU: {cpu()}")
    m = load_model(args.model, device="cpu", precision="fp32", compile="off")
    images = check_images(m, args.data)
    val = sample(images.validation, CHECK_IMAGES)
    calibration = sample(images.train, args.calibration)
    graph = to_onnx(m.network, m.preprocessing)
    fp32 = session_for(graph.SerializeToString())
    p32 = run_session(fp32, val.images)
    ref = m.predict_proba(val.images)
    figures = compare(ref, p32, val.labels, TOLERANCES["fp32"])
    print(f"fp32 graph vs pawlab fp32: {summary(figures)}")
    sessions: dict[str, object] = {"onnxruntime fp32": fp32}
    for name in args.variants.split(",") if args.variants else ["chosen"]:
        settings = VARIANTS[name]
        start = time.perf_counter()
        quantized = quantize_int8(graph, calibration.images, settings)
        took = time.perf_counter() - start
        s = session_for(quantized.SerializeToString())
        p8 = run_session(s, val.images)
        figures = compare(p32, p8, val.labels, TOLERANCES["int8"])
        verdict = "agrees" if figures["ok"] else f"does not agree ({'; '.join(figures['failed'])})"
        print(f"int8 {name} ({took:.0f}s to quantize) {verdict}: {summary(figures)}")
        print(f"  {guarded(p32, p8, val.labels)}")
        sessions[f"onnxruntime int8 {name}"] = s
    speeds = images_per_second(sessions, val.images[:SPEED_IMAGES], args.repeat)
    base = speeds["onnxruntime fp32"]
    for name, ips in speeds.items():
        print(f"{name:<45} {ips:8.1f} images/s at batch {BATCH}  ({ips / base:.2f}x fp32)")


if __name__ == "__main__":
    main()
