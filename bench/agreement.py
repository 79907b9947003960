"""Benchmark: the bf16 agreement rules side by side, on a trained model and its data.

    .venv/bin/python bench/agreement.py MODEL DATA [--batch 32] [--repeat 3]

1. DATA's validation images as `pawlab evaluate` reads them for MODEL (for the model's own
   source, the split it was trained with), sampled as training's agreement check samples them.
2. fp32 and unguarded bf16 probabilities of the model's inference network (batch-norms folded),
   as training's check computes them.
3. Each rule chooses its setting on every other image and is measured on the rest: the old
   rule (guard on the top-class probability, `choose_guard`) and the new (guard on the top-two
   margin, `choose_margin`). Printed side by side: the setting, the share re-run in fp32, the
   same class and the largest probability difference against fp32, accuracy and log loss
   against the labels (fp32's beside them), and each rule's verdict.
4. images/s of `Model.predict_proba` on all the sampled images, batch --batch, uncompiled:
   fp32, guarded bf16 under each rule, and unguarded bf16, taking turns every `CHUNK` images;
   medians of --repeat runs. The guarded runs' probabilities on the held-out half are checked
   against the rule's figures (the engine runs what the rule measured).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from spec import cpu_class  # noqa: E402  (bench/spec.py)

import pawlab.inference.agreement as agreement  # noqa: E402  (the rules and their tolerances)
from pawlab.inference import Model, load_model  # noqa: E402
from pawlab.inference.evaluation import eval_set_for  # noqa: E402
from pawlab.inference.guard import Guard  # noqa: E402

CHUNK = 128  # images each path runs before the next takes its turn


def old_rule(p_ref: torch.Tensor, p_fast: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """The confidence rule as training applied it before the margin rule: the guard chosen on
    every other image, measured on the rest; ``ok`` by its own limits (class, probabilities,
    re-runs: it did not look at labels)."""
    diff = (p_fast - p_ref).abs().amax(1)
    diff[p_fast.argmax(1) != p_ref.argmax(1)] = float("inf")
    guard = Guard("confidence", agreement.choose_guard(1 - p_fast[::2].amax(1), diff[::2]))
    rerun = guard.rerun(p_fast[1::2])
    guarded = torch.where(rerun[:, None], p_ref[1::2], p_fast[1::2])
    figures = agreement.agreement_figures(p_ref[1::2], guarded, labels[1::2])
    share = float(rerun.float().mean())
    ok = (
        figures["same_class"] >= agreement.AGREE_SAME_CLASS
        and figures["max_prob_diff"] <= agreement.AGREE_MAX_PROB_DIFF
        and share <= agreement.MAX_RERUN
    )
    return {**figures, "rule": "confidence", "guard": guard.setting, "rerun": share, "ok": ok}


def verdict(record: dict[str, Any]) -> str:
    if record["ok"]:
        return "bf16"
    many = record["rerun"] > agreement.MAX_RERUN and agreement.agrees(record)
    return "fp32 (too many re-runs)" if many else "fp32 (disagrees)"


def timed(model: Model, images: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    probs = model.predict_proba(images, batch_size=batch)
    return time.perf_counter() - t0, probs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved timed runs (0: none); medians")
    args = ap.parse_args()

    exact = load_model(args.model, device="cpu", precision="fp32", compile="off")
    ev = eval_set_for(exact, args.data, progress=False)
    rows = np.sort(np.random.default_rng(0).permutation(len(ev.images))[: agreement.AGREEMENT_IMAGES])
    images, labels = ev.images.images[rows], torch.as_tensor(ev.images.labels[rows], dtype=torch.int64)
    pre = exact.preprocessing
    print(f"CPU: {cpu_class()}")
    print(
        f"model: {args.model.name}, {len(exact.classes)} classes, {pre.size[0]}x{pre.size[1]}; "
        f"{len(images)} of {len(ev.images)} images ({ev.description}); "
        f"rules chosen on {len(images) - len(images) // 2}, measured on {len(images) // 2}"
    )
    if "inference" in exact.meta:
        print(f"the model file's record: {agreement.describe(exact.meta['inference'])}")

    unguarded = load_model(args.model, device="cpu", precision="bf16", compile="off")
    unguarded.guard = None
    p_ref = torch.from_numpy(exact.predict_proba(images, batch_size=args.batch))
    p_fast = torch.from_numpy(unguarded.predict_proba(images, batch_size=args.batch))
    old, new = old_rule(p_ref, p_fast, labels), agreement.guarded_agreement(p_ref, p_fast, labels)
    table(old, new)
    if args.repeat > 0:
        speeds(args, images, labels, p_ref, {"fp32": exact, "bf16 unguarded": unguarded}, old, new)


def speeds(
    args: argparse.Namespace,
    images: np.ndarray,
    labels: torch.Tensor,
    p_ref: torch.Tensor,
    paths: dict[str, Model],
    old: dict[str, Any],
    new: dict[str, Any],
) -> None:
    """images/s of each path, interleaved chunk by chunk (a busy spell of a shared machine
    hits them all alike); the guarded paths' held-out figures as they ran."""
    paths |= {"bf16, old guard": _guarded(args.model, old), "bf16, new guard": _guarded(args.model, new)}
    runs: dict[str, list[float]] = {name: [] for name in paths}
    outs: dict[str, list[np.ndarray]] = {}
    for _ in range(args.repeat):
        seconds = dict.fromkeys(paths, 0.0)
        outs = {name: [] for name in paths}
        for start in range(0, len(images), CHUNK):
            for name, model in paths.items():
                sec, probs = timed(model, images[start : start + CHUNK], args.batch)
                seconds[name] += sec
                outs[name].append(probs)
        for name, sec in seconds.items():
            runs[name].append(sec)
    base = statistics.median(runs["fp32"])
    print(f"images/s, batch {args.batch}, uncompiled, median of {args.repeat} runs, turns of {CHUNK} images:")
    for name, secs in runs.items():
        sec = statistics.median(secs)
        each = ", ".join(f"{len(images) / x:.1f}" for x in secs)
        print(f"  {name:<18} {len(images) / sec:7.1f}  x{base / sec:.2f} fp32  ({each})")
    for name, record in (("bf16, old guard", old), ("bf16, new guard", new)):
        ran = torch.from_numpy(np.concatenate(outs[name]))
        got = agreement.agreement_figures(p_ref[1::2], ran[1::2], labels[1::2])
        print(
            f"  {name} as the engine ran it, held-out half: same class {got['same_class']:.2%}, "
            f"largest difference {got['max_prob_diff']:.4f} (rule measured {record['max_prob_diff']:.4f})"
        )


def _guarded(path: Path, record: dict[str, Any]) -> Model:
    model = load_model(path, device="cpu", precision="bf16", compile="off")
    model.guard = Guard.from_record({**record, "ok": True})
    return model


def table(old: dict[str, Any], new: dict[str, Any]) -> None:
    rows = [
        ("setting", f"p < {1 - old['guard']:.4f}", f"margin < {new['margin']:.4f}"),
        ("re-run in fp32", f"{old['rerun']:.1%}", f"{new['rerun']:.1%}"),
        ("same class", f"{old['same_class']:.2%}", f"{new['same_class']:.2%}"),
        ("largest prob. diff", f"{old['max_prob_diff']:.4f}", f"{new['max_prob_diff']:.4f}"),
        (f"accuracy (fp32 {new['accuracy_fp32']:.2%})", f"{old['accuracy']:.2%}", f"{new['accuracy']:.2%}"),
        (f"log loss (fp32 {new['log_loss_fp32']:.4f})", f"{old['log_loss']:.4f}", f"{new['log_loss']:.4f}"),
        ("verdict", verdict(old), verdict(new)),
    ]
    print(f"{'held-out half':<24} {'old: confidence guard':<24} new: margin guard")
    for label, a, b in rows:
        print(f"{label:<24} {a:<24} {b}")


if __name__ == "__main__":
    main()
