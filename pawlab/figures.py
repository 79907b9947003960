"""Figures for people: a grid of sample predictions (the Keras tutorial's figure), the
highest-loss images (fastai's ``plot_top_losses``), a confusion matrix and line plots."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pawlab.atomic import atomic_write_bytes

RIGHT = (30, 140, 60)
WRONG = (210, 40, 40)
UNSURE = (225, 140, 0)  # amber: a right prediction with a high loss
CAPTION_INK = (60, 60, 60)

_CAPTION = 30  # pixels below each tile for two lines of text
_PAD = 6  # pixels between tiles and around the sheet
_EPS = 1e-15  # probabilities are clipped to this before the log, as in metrics_from_probs

_Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


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


def new_sheet(count: int, columns: int, tile: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A white sheet with room for ``count`` captioned tiles, ``columns`` to a row."""
    rows = max(1, -(-count // columns))
    size = (columns * (tile + _PAD) + _PAD, rows * (tile + _CAPTION + _PAD) + _PAD)
    sheet = Image.new("RGB", size, "white")
    return sheet, ImageDraw.Draw(sheet)


def draw_tile(
    sheet: Image.Image,
    draw: ImageDraw.ImageDraw,
    position: int,
    arr: np.ndarray,
    colour: tuple[int, int, int],
    *,
    columns: int,
    tile: int,
) -> tuple[int, int]:
    """Paste image ``arr`` (H, W, C with C 1 or 3, or H, W) scaled to ``tile`` pixels at grid
    ``position`` and frame it in ``colour``; return where its caption starts."""
    r, c = divmod(position, columns)
    x0, y0 = _PAD + c * (tile + _PAD), _PAD + r * (tile + _CAPTION + _PAD)
    sheet.paste(_tile(arr, tile), (x0, y0))
    draw.rectangle([x0 - 3, y0 - 3, x0 + tile + 2, y0 + tile + 2], outline=colour, width=3)
    return x0, y0 + tile + 4


def _tile(arr: np.ndarray, tile: int) -> Image.Image:
    """Image ``arr`` (H, W, C with C 1 or 3, or H, W) as an RGB square of ``tile`` pixels;
    small images keep their pixels sharp (nearest neighbour)."""
    im = Image.fromarray(arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr).convert("RGB")
    resample = Image.Resampling.NEAREST if arr.shape[0] < 48 else Image.Resampling.BILINEAR
    return im.resize((tile, tile), resample)


def image_grid(images: np.ndarray, columns: int = 8, tile: int = 96) -> Image.Image:
    """uint8 images (N, H, W, C) side by side, ``columns`` to a row, without captions or
    frames (what a model sees)."""
    rows = max(1, -(-len(images) // columns))
    sheet = Image.new("RGB", (columns * (tile + 2), rows * (tile + 2)), "white")
    for i, arr in enumerate(images):
        r, c = divmod(i, columns)
        sheet.paste(_tile(arr, tile), (c * (tile + 2) + 1, r * (tile + 2) + 1))
    return sheet


def captioned_grid(
    images: Sequence[np.ndarray] | np.ndarray,
    captions: Sequence[str],
    path: str | Path,
    *,
    colours: Sequence[tuple[int, int, int]] | None = None,
    columns: int = 8,
    tile: int = 96,
) -> Path:
    """A PNG grid of uint8 images (H, W, C or H, W), each framed (``colours``, default grey) and
    captioned with one line."""
    sheet, draw = new_sheet(len(images), columns, tile)
    font = ImageFont.load_default()
    for k, (arr, caption) in enumerate(zip(images, captions, strict=True)):
        colour = colours[k] if colours is not None else (120, 120, 120)
        x, y = draw_tile(sheet, draw, k, arr, colour, columns=columns, tile=tile)
        draw.text((x, y), fit_text(draw, font, tile, "{}", [caption]), fill=colour, font=font)
    return save_png(sheet, path)


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write ``image`` as a PNG, whole or not at all."""
    out = Path(path)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buf.getvalue())
    return out


def fit_text(draw: ImageDraw.ImageDraw, font: _Font, width: int, template: str, names: Sequence[str]) -> str:
    """``template.format(*names)``, with the names cut short (ending in "..") until the line is at
    most ``width`` pixels wide or the names are down to one character."""
    line = template.format(*names)
    longest = max((len(n) for n in names), default=0)
    for n in range(longest - 1, 0, -1):
        if draw.textlength(line, font=font) <= width:
            break
        line = template.format(*(s if len(s) <= n else s[:n] + ".." for s in names))
    return line


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
    sheet, draw = new_sheet(len(idx), columns, tile)
    font = ImageFont.load_default()
    for k, i in enumerate(idx):
        pred = int(probs[i].argmax())
        ok = pred == int(labels[i])
        colour = RIGHT if ok else WRONG
        x, y = draw_tile(sheet, draw, k, images[i], colour, columns=columns, tile=tile)
        draw.text((x, y), f"{classes[pred]} {probs[i, pred]:.2f}", fill=colour, font=font)
        if not ok:
            draw.text((x, y + 12), f"true: {classes[int(labels[i])]}", fill=WRONG, font=font)
    return save_png(sheet, path)


def top_losses(labels: np.ndarray, probs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` examples with the largest loss, ``-log p(true class)``, as (index, loss) pairs,
    loss descending (ties: lower index first). Probabilities are clipped to 1e-15 first, so a
    zero probability gives a loss of about 34.5 rather than infinity."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.size == 0 or k == 0:
        return []
    if labels.ndim != 1 or probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"need labels (N,) and probs (N, classes); got {labels.shape} and {probs.shape}")
    lab = labels.astype(np.int64)
    if lab.min() < 0 or lab.max() >= probs.shape[1]:
        raise ValueError(f"labels must lie in [0, {probs.shape[1]}), got {lab.min()}..{lab.max()}")
    loss = -np.log(np.clip(probs[np.arange(len(lab)), lab], _EPS, 1.0))
    order = np.argsort(-loss, kind="stable")[:k]
    return [(int(i), float(loss[i])) for i in order]


def _message_png(text: str, path: str | Path) -> Path:
    """A small PNG that just says ``text``."""
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left, top, right, bottom = (round(v) for v in probe.textbbox((0, 0), text, font=font))
    w, h = max(160, right - left + 40), 60
    image = Image.new("RGB", (w, h), "white")
    ImageDraw.Draw(image).text(
        ((w - (right - left)) // 2 - left, (h - (bottom - top)) // 2 - top), text, fill=CAPTION_INK, font=font
    )
    return save_png(image, path)


def top_losses_grid(
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    path: str | Path,
    *,
    k: int = 12,
    tile: int = 128,
    columns: int = 4,
) -> Path:
    """A PNG grid of the ``k`` images with the largest loss, highest first (fastai's
    ``plot_top_losses``). Each is captioned "predicted / true" and then the loss and the
    probability given to the true class, e.g. ``dog / cat`` and ``loss 4.61  p(cat) 0.01``;
    wrong predictions are framed red, right ones (right, but unsure) amber.

    ``images``: uint8 (N, H, W, C), C 1 or 3; ``labels``: int (N,); ``probs``: (N, classes).
    With no images (N or k 0) the PNG just says "no images".
    """
    if columns < 1 or tile < 1:
        raise ValueError(f"columns and tile must be >= 1, got {columns} and {tile}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    worst = top_losses(labels, probs, k) if len(images) else []
    if not worst:
        return _message_png("no images", path)
    cols = min(columns, len(worst))
    sheet, draw = new_sheet(len(worst), cols, tile)
    font = ImageFont.load_default()
    width = tile - 2  # leave a gap before the next caption
    for n, (i, loss) in enumerate(worst):
        true, pred = int(labels[i]), int(probs[i].argmax())
        colour = UNSURE if pred == true else WRONG
        x, y = draw_tile(sheet, draw, n, images[i], colour, columns=cols, tile=tile)
        head = fit_text(draw, font, width, "{} / {}", [classes[pred], classes[true]])
        body = fit_text(draw, font, width, f"loss {loss:.2f}  p({{}}) {probs[i, true]:.2f}", [classes[true]])
        draw.text((x, y), head, fill=colour, font=font)
        draw.text((x, y + 12), body, fill=CAPTION_INK, font=font)
    return save_png(sheet, path)


def confusion_matrix_plot(
    cm: np.ndarray | list[list[int]], classes: list[str], path: str | Path, *, title: str = "Confusion matrix"
) -> Path:
    """`confusion_matrix_png` written to ``path`` (atomically)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, confusion_matrix_png(cm, classes, title=title))
    return out


def confusion_matrix_png(
    cm: np.ndarray | list[list[int]], classes: list[str], *, title: str = "Confusion matrix"
) -> bytes:
    """A PNG heat map of a confusion matrix (rows: true class, columns: predicted class).

    Each cell shows its count and, for up to 12 classes, the share of its row (the true class)
    in smaller text below. Cells are coloured by that share, so rare classes stay readable; the
    text is black or white, whichever contrasts with the cell. The figure grows with the number
    of classes, and column labels are slanted when there are many classes or long names.
    """
    counts = np.asarray(cm)
    n = len(classes)
    if n == 0 or counts.shape != (n, n):
        raise ValueError(f"need an n x n matrix for {n} classes, got shape {counts.shape}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    with_pct = n <= 12
    big = n <= 8
    side = max(4.0, 2.5 + 0.55 * n)
    fig, ax = plt.subplots(figsize=(side + 1.0, side), dpi=100)
    cmap = plt.get_cmap("Blues")
    shown = ax.imshow(share, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("share of the true class")
    count_size, pct_size = (12, 8) if big else (9, 7)
    for t in range(n):
        for p in range(n):
            r, g, b, _ = cmap(float(share[t, p]))
            ink = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"
            text = f"{int(counts[t, p])}" if np.issubdtype(counts.dtype, np.integer) else f"{counts[t, p]:g}"
            if with_pct and rows[t, 0] > 0:
                ax.text(p, t - 0.12, text, ha="center", va="center", color=ink, fontsize=count_size)
                pct = f"{100 * share[t, p]:.1f}%"
                ax.text(p, t + 0.22, pct, ha="center", va="center", color=ink, fontsize=pct_size)
            else:
                ax.text(p, t, text, ha="center", va="center", color=ink, fontsize=count_size)
    slant = n > 6 or max(len(c) for c in classes) * n > 40
    ax.set_xticks(range(n), classes, rotation=45 if slant else 0, ha="right" if slant else "center")
    ax.set_yticks(range(n), classes)
    ax.tick_params(length=0)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def line_plot(
    series: dict[str, list[tuple[float, float]]],
    path: str | Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    integer_x: bool = False,
) -> Path:
    """A PNG with one line per series (e.g. validation accuracy per epoch per optimizer);
    ``integer_x``: ticks only at whole numbers (epochs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for name, points in series.items():
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", markersize=3, label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buf.getvalue())
    return out
