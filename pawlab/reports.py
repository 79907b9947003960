"""Figures for people: a grid of sample predictions (the Keras tutorial's figure)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pawlab._atomic import atomic_write_bytes

RIGHT = (30, 140, 60)
WRONG = (210, 40, 40)


def _pick(labels: np.ndarray, probs: np.ndarray, samples: int, seed: int) -> list[int]:
    """Up to ``samples`` indices: wrong predictions first (up to half), then random right ones."""
    rng = np.random.default_rng(seed)
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    right = np.flatnonzero(probs.argmax(1) == labels)
    n_wrong = min(len(wrong), samples // 2 if len(right) else samples)
    chosen = list(rng.choice(wrong, n_wrong, replace=False)) if n_wrong else []
    n_right = min(len(right), samples - len(chosen))
    chosen += list(rng.choice(right, n_right, replace=False)) if n_right else []
    return sorted(int(i) for i in chosen)


def prediction_grid(
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    path: str | Path,
    *,
    samples: int = 24,
    tile: int = 128,
    columns: int = 6,
    seed: int = 0,
) -> Path:
    """A PNG grid: each image with its predicted class and probability; wrong ones framed red
    and captioned with the true class."""
    idx = _pick(labels, probs, samples, seed)
    rows = max(1, -(-len(idx) // columns))
    caption = 30
    pad = 6
    sheet = Image.new("RGB", (columns * (tile + pad) + pad, rows * (tile + caption + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for k, i in enumerate(idx):
        r, c = divmod(k, columns)
        x0, y0 = pad + c * (tile + pad), pad + r * (tile + caption + pad)
        arr = images[i]
        im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).convert("RGB")
        sheet.paste(
            im.resize(
                (tile, tile), Image.Resampling.NEAREST if arr.shape[0] < 48 else Image.Resampling.BILINEAR
            ),
            (x0, y0),
        )
        pred = int(probs[i].argmax())
        ok = pred == int(labels[i])
        colour = RIGHT if ok else WRONG
        draw.rectangle([x0 - 3, y0 - 3, x0 + tile + 2, y0 + tile + 2], outline=colour, width=3)
        draw.text((x0, y0 + tile + 4), f"{classes[pred]} {probs[i, pred]:.2f}", fill=colour, font=font)
        if not ok:
            draw.text((x0, y0 + tile + 16), f"true: {classes[int(labels[i])]}", fill=WRONG, font=font)
    out = Path(path)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(out, buf.getvalue())
    return out


def line_plot(
    series: dict[str, list[tuple[float, float]]], path: str | Path, *, title: str, xlabel: str, ylabel: str
) -> Path:
    """A PNG with one line per series (e.g. validation accuracy per epoch per optimizer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for name, points in series.items():
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", markersize=3, label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buf.getvalue())
    return out
