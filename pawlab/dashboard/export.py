"""One self-contained HTML file of a finished run's dashboard: opens offline, anywhere.

Every answer the page would ask the server for (the run list, events, each validation pass's
matrix and the cells that hold images, by probability and, where the pass recorded it, by
typicality, every image's history, the suspects) is computed here, with the thumbnails as data
URLs, and inlined with the page's script, style and plotly.js. Its size grows with images x
passes, not with the square of the classes. What is damaged is left out, and
`Exported.skipped` says what and why.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pawlab import runlog
from pawlab.atomic import atomic_write_text
from pawlab.dashboard import store
from pawlab.dashboard.app import STATIC, finite, plotly_js
from pawlab.runlog import DamagedFile


@dataclass
class Exported:
    """The file written, and each damaged file left out of it (``<file>: <why>``)."""

    path: Path
    skipped: list[str] = field(default_factory=list)


def _responses(run: store.Run) -> dict[str, Any]:
    """What the page fetches, by the URL it fetches it from; a cell that holds no image is
    left out (the page takes it as empty)."""
    rid = f"api/runs/{run.id}"
    events, _ = run.events()
    info = store.passes(run)
    out: dict[str, Any] = {
        "api/runs": [run.summary()],
        f"{rid}/events": events,
        f"{rid}/passes": info,
        f"{rid}/suspects": store.suspects(run),
    }
    for epoch in info["epochs"]:
        out[f"{rid}/matrix?epoch={epoch}"] = store.matrix(run, epoch)
        for (t, p), items in (store.cells(run, epoch) or {}).items():
            out[f"{rid}/cell?epoch={epoch}&true={t}&predicted={p}"] = items
        if epoch in info["typicality"]:  # the cells sorted by typicality too
            for (t, p), items in (store.cells(run, epoch, "typicality") or {}).items():
                out[f"{rid}/cell?epoch={epoch}&true={t}&predicted={p}&order=typicality"] = items
    for i, history in enumerate(store.histories(run)):
        out[f"{rid}/images/{i}/history"] = history
    return out


def _data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


def _images(run: store.Run, skipped: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """The thumbnails by image index and the grids of what the model sees by name, as data
    URLs; a damaged one is added to ``skipped``."""
    thumbs: dict[str, str] = {}
    seen: dict[str, str] = {}
    wanted = [(thumbs, str(i), f"{runlog.THUMBS}/{i}.jpg") for i in range(len(run.labels()))]
    wanted += [(seen, which, name) for which, name in runlog.SEEN.items()]
    for into, key, relative in wanted:
        try:
            found = run.image(relative)
        except DamagedFile as exc:
            skipped.append(str(exc))
            continue
        if found is not None:
            into[key] = _data_url(found[0])
    return thumbs, seen


def _inline_script(code: str) -> str:
    """``code`` in a script element it cannot end early (``</script`` in any case)."""
    return "<script>" + re.sub(r"</(script)", r"<\\/\1", code, flags=re.IGNORECASE) + "</script>"


def export_html(run_dir: Path, out: Path) -> Exported:
    """Write the dashboard of ``run_dir`` as one HTML file at ``out`` (atomically)."""
    run = store.Run(run_dir.resolve())
    responses = _responses(run)
    skipped = [run.damage[f] for f in store.RUN_FILES if f in run.damage]
    skipped += [run.pass_damage[e] for e in sorted(run.pass_damage)]
    skipped += [run.typicality_damage[e] for e in sorted(run.typicality_damage)]
    thumbs, seen = _images(run, skipped)
    data = {
        "responses": responses,
        "thumbs": thumbs,
        "csv": store.suspects_csv(responses[f"api/runs/{run.id}/suspects"]),
        "seen": seen,
    }
    page = (STATIC / "index.html").read_text()
    plotly = plotly_js()
    parts = {
        '<link rel="stylesheet" href="static/style.css">': "<style>"
        + (STATIC / "style.css").read_text()
        + "</style>",
        '<script src="static/plotly.min.js"></script>': _inline_script(plotly.read_text() if plotly else ""),
        '<script src="static/app.js"></script>': _inline_script(
            "window.PAWLAB_EXPORT = "
            + json.dumps(finite(data)).replace("<", "\\u003c")
            + ";\n"
            + (STATIC / "app.js").read_text()
        ),
    }
    for tag, inline in parts.items():
        if tag not in page:
            raise RuntimeError(f"index.html no longer has {tag}")  # a bug, not the user's doing
        page = page.replace(tag, inline)
    atomic_write_text(out, page)
    return Exported(out, skipped)
