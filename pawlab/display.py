"""HTML for notebooks: what the ``_repr_html_`` of models, predictions and reports are built from.

Everything is inline and self-contained: escaped text, tables, thumbnails as ``data:`` URIs, a
confusion matrix coloured by row and line charts as inline SVG. No scripts, nothing fetched.
Text from data goes through `escape`; markup already built is an `Html` and passes as is.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pawlab.errors import DataError
from pawlab.figures import RIGHT, WRONG  # green on a confusion matrix's diagonal, red off it

THUMB_PX = 96  # the largest side of a thumbnail: notebooks stay small
MIN_SHOWN_PX = 32  # smaller images are shown enlarged (pixelated) to this side
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")

_CELL = "padding:1px 6px;border:1px solid #ddd"
_NUM = _CELL + ";text-align:right;font-variant-numeric:tabular-nums"


class Html(str):
    """Markup that is already safe: `escape` and the tables insert it as is."""


def escape(value: object) -> Html:
    """``value`` as text safe in HTML (quotes too, for attributes); an `Html` unchanged."""
    if isinstance(value, Html):
        return value
    return Html(html.escape(str(value), quote=True))


def best_epoch(metrics: Mapping[str, float]) -> str:
    """``best epoch 2, val_loss 0.5069, val_accuracy 1.0000`` from a saved epoch's metrics (which
    have an ``epoch``): the one-line reprs of a model and a training result."""
    scores = "".join(f", {k} {metrics[k]:.4f}" for k in ("val_loss", "val_accuracy") if k in metrics)
    return f"best epoch {int(metrics['epoch'])}{scores}"


def number(value: object, digits: int = 4) -> str:
    """A table's number: ints with thousands separators, floats with ``digits`` decimals, "-"
    for None and NaN; anything else as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        return f"{float(value):.{digits}f}"
    return str(value)


def _cell(value: object, tag: str = "td") -> str:
    numeric = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    text = escape(number(value)) if numeric or value is None else escape(value)
    return f'<{tag} style="{_NUM if numeric else _CELL}">{text}</{tag}>'


def table(rows: Iterable[Sequence[object]], header: Sequence[object] = ()) -> Html:
    """A table: one row per sequence of cells, numbers right-aligned and formatted (`number`),
    text escaped, `Html` cells as they are."""
    parts = ['<table style="border-collapse:collapse;margin:4px 0">']
    if header:
        parts.append("<tr>" + "".join(_cell(h, "th") for h in header) + "</tr>")
    parts += ["<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows]
    parts.append("</table>")
    return Html("".join(parts))


def fields(values: Mapping[str, object]) -> Html:
    """A two-column table: each name (as a header cell) and its value."""
    rows = [f"<tr>{_cell(k, 'th')}{_cell(v)}</tr>" for k, v in values.items()]
    return Html('<table style="border-collapse:collapse;margin:4px 0">' + "".join(rows) + "</table>")


def section(title: str, *parts: str) -> Html:
    """A titled block of `Html` parts (plain strings are escaped)."""
    body = "".join(escape(p) for p in parts)
    return Html(
        '<div class="pawlab" style="margin:4px 0"><div style="font-weight:bold;margin:2px 0">'
        f"{escape(title)}</div>{body}</div>"
    )


def details(summary: str, body: str, expanded: bool = False) -> Html:
    """A collapsible block (``<details>``: no script needed) showing ``summary``."""
    flag = " open" if expanded else ""
    return Html(f"<details{flag}><summary>{escape(summary)}</summary>{escape(body)}</details>")


def paragraph(text: str) -> Html:
    return Html(f'<div style="margin:2px 0">{escape(text)}</div>')


def _from_array(arr: np.ndarray) -> Image.Image:
    """uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> a PIL image."""
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise DataError(
            f"a thumbnail needs uint8 (H, W) or (H, W, 1|3|4) pixels, got {arr.dtype} {arr.shape}"
        )
    return Image.fromarray(arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)


def shrink(arr: np.ndarray, max_px: int = THUMB_PX) -> np.ndarray:
    """uint8 pixels no larger than ``max_px`` on either side (aspect kept; small ones as they are),
    to keep for a thumbnail later."""
    if max(arr.shape[:2]) <= max_px:
        return arr.copy()
    im = _from_array(arr)
    im.thumbnail((max_px, max_px))
    out = np.asarray(im)
    return out[:, :, None] if arr.ndim == 3 and out.ndim == 2 else out


def data_uri(im: Image.Image) -> str:
    """A ``data:`` URI of ``im``: JPEG for photos larger than `MIN_SHOWN_PX` (small), PNG
    otherwise (exact pixels, transparency)."""
    if im.mode not in ("L", "RGB", "RGBA"):
        im = im.convert("RGBA" if "transparency" in im.info or "A" in im.mode else "RGB")
    buf = io.BytesIO()
    if im.mode != "RGBA" and max(im.size) > MIN_SHOWN_PX:
        im.save(buf, format="JPEG", quality=85)
        mime = "jpeg"
    else:
        im.save(buf, format="PNG", optimize=True)
        mime = "png"
    return f"data:image/{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def thumbnail(image: np.ndarray | str | os.PathLike[str], max_px: int = THUMB_PX, *, title: str = "") -> Html:
    """An ``<img>`` of uint8 pixels or an image file, at most ``max_px`` a side, embedded as a
    ``data:`` URI; small images shown enlarged with sharp pixels. An unreadable file -> a note."""
    if isinstance(image, np.ndarray):
        im = _from_array(image)
    else:
        try:
            with Image.open(image) as f:
                im = ImageOps.exif_transpose(f)  # a copy, loaded: the file can close
        except (OSError, UnidentifiedImageError, ValueError):
            return Html(f"<em>{escape(f'unreadable: {os.fspath(image)}')}</em>")
    im.thumbnail((max_px, max_px))
    w, h = im.size
    scale = max(1.0, MIN_SHOWN_PX / max(w, h))
    size = f'width="{round(w * scale)}" height="{round(h * scale)}"'
    tip = f' title="{escape(title)}"' if title else ""
    return Html(
        f'<img src="{data_uri(im)}" {size} alt="{escape(title)}"{tip}'
        ' style="image-rendering:pixelated;vertical-align:middle">'
    )


def embedded_image(path: str | os.PathLike[str], *, title: str = "") -> Html:
    """An image file as it is (a figure pawlab wrote), embedded as a ``data:`` URI."""
    try:
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            kind = (im.format or "png").lower()
    except (OSError, UnidentifiedImageError, ValueError):
        return Html(f"<em>{escape(f'unreadable: {os.fspath(path)}')}</em>")
    uri = f"data:image/{kind};base64,{base64.b64encode(data).decode('ascii')}"
    return Html(f'<img src="{uri}" alt="{escape(title)}" title="{escape(title)}" style="max-width:100%">')


def confusion_matrix(cm: Sequence[Sequence[int]], classes: Sequence[str]) -> Html:
    """A confusion matrix (rows: true class, columns: predicted) with its counts, each cell's
    background as strong as its share of the row: green on the diagonal, red off it."""
    head = f'<th style="{_CELL}">true \\ predicted</th>' + "".join(_cell(c, "th") for c in classes)
    rows = [f"<tr>{head}</tr>"]
    for i, (true, row) in enumerate(zip(classes, cm, strict=True)):
        total = sum(row)
        cells = []
        for j, (pred, count) in enumerate(zip(classes, row, strict=True)):
            share = count / total if total else 0.0
            r, g, b = RIGHT if i == j else WRONG
            ink = "#fff" if share > 0.55 else "#000"
            tip = escape(f"{true} predicted as {pred}: {count} of {total} ({share:.1%})")
            cells.append(
                f'<td style="{_NUM};background:rgba({r},{g},{b},{share:.3f});color:{ink}" '
                f'title="{tip}">{count:,}</td>'
            )
        rows.append(f"<tr>{_cell(true, 'th')}{''.join(cells)}</tr>")
    return Html('<table style="border-collapse:collapse;margin:4px 0">' + "".join(rows) + "</table>")


def _tick(v: float) -> str:
    return f"{v:.3g}"


@dataclass(frozen=True)
class _Frame:
    """A chart's plot area: data bounds (x0..x1, y0..y1) drawn in the box at (left, top)."""

    x0: float
    x1: float
    y0: float
    y1: float
    left: int
    top: int
    width: int
    height: int

    @classmethod
    def around(cls, points: Iterable[tuple[float, float]], left: int, top: int, w: int, h: int) -> _Frame:
        xs, ys = zip(*points, strict=True)
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        if x1 == x0:  # one epoch: its points in the middle
            x0, x1 = x0 - 1, x1 + 1
        if y1 == y0:
            pad = abs(y0) * 0.1 or 1.0
            y0, y1 = y0 - pad, y1 + pad
        return cls(x0, x1, y0, y1, left, top, w, h)

    def at(self, x: float, y: float) -> tuple[float, float]:
        """Data (x, y) -> SVG coordinates."""
        fx, fy = (x - self.x0) / (self.x1 - self.x0), (self.y1 - y) / (self.y1 - self.y0)
        return self.left + fx * self.width, self.top + fy * self.height


def _series_svg(f: _Frame, name: str, points: Sequence[tuple[float, float]], colour: str) -> str:
    """One series: its line, and a dot per point with the value as its tooltip."""
    xy = [f.at(x, y) for x, y in points]
    parts = []
    if len(xy) > 1:
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
    for (x, y), (px, py) in zip(points, xy, strict=True):
        tip = escape(f"{name} at {_tick(x)}: {y:.4g}")
        parts.append(
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2" fill="{colour}"><title>{tip}</title></circle>'
        )
    return "".join(parts)


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str = "",
    width: int = 360,
    height: int = 180,
) -> Html:
    """An inline SVG with one line per series of (x, y) points (e.g. a loss per epoch), a
    point's value in its tooltip. Points with a missing or non-finite y are left out."""
    clean = {
        name: [(float(x), float(y)) for x, y in pts if y is not None and math.isfinite(y)]
        for name, pts in series.items()
    }
    clean = {name: pts for name, pts in clean.items() if pts}
    if not clean:
        return paragraph(f"{title}: no data" if title else "no data")
    everything = [p for pts in clean.values() for p in pts]
    left, top = 48, 22 if title else 8
    f = _Frame.around(everything, left, top, width - left - 10, height - top - 34)
    parts = [
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'style="font:10px sans-serif;background:#fff">',
        f'<rect x="{left}" y="{top}" width="{f.width}" height="{f.height}" fill="none" stroke="#999"/>',
    ]
    if title:
        parts.append(f'<text x="{left}" y="14" font-weight="bold">{escape(title)}</text>')
    for v in (f.y0, (f.y0 + f.y1) / 2, f.y1):
        y = f.at(f.x0, v)[1] + 3
        parts.append(f'<text x="{left - 4}" y="{y:.1f}" text-anchor="end">{escape(_tick(v))}</text>')
    xs = [x for x, _ in everything]
    for v in sorted({min(xs), max(xs)}):  # the first and last epoch
        x = f.at(v, f.y0)[0]
        parts.append(
            f'<text x="{x:.1f}" y="{top + f.height + 12}" text-anchor="middle">{escape(_tick(v))}</text>'
        )
    for k, (name, pts) in enumerate(clean.items()):
        colour = PALETTE[k % len(PALETTE)]
        lx = left + k * (f.width // len(clean))
        parts.append(
            _series_svg(f, name, pts, colour) + f'<rect x="{lx}" y="{height - 10}" width="8" height="8" '
            f'fill="{colour}"/><text x="{lx + 11}" y="{height - 2}">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return Html("".join(parts))


def curves(history: Sequence[Mapping[str, float]]) -> Html:
    """A training history (one dict of metrics per epoch) as two charts side by side: the
    losses (``*_loss``) and the accuracies (``*_accuracy``) per epoch."""
    keys = list(dict.fromkeys(k for record in history for k in record))
    charts = []
    for title, suffix in (("loss", "_loss"), ("accuracy", "_accuracy")):
        series = {
            k: [(float(r["epoch"]), r[k]) for r in history if k in r and "epoch" in r]
            for k in keys
            if k.endswith(suffix)
        }
        if any(series.values()):
            charts.append(line_chart(series, title=title))
    if not charts:
        return paragraph("no epochs recorded")
    return Html('<div style="display:flex;flex-wrap:wrap;gap:8px">' + "".join(charts) + "</div>")
