"""One self-contained HTML file of a finished run's dashboard: opens offline, anywhere.

Every answer the page would ask the server for (the run list, events, each validation pass's
matrix and cells, every image's history, the suspects) is computed here, with the thumbnails
as data URLs, and inlined with the page's script, style and plotly.js.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

from pawlab import runlog
from pawlab.atomic import atomic_write_text
from pawlab.dashboard import store
from pawlab.dashboard.app import STATIC, finite, plotly_js


def _responses(run: store.Run) -> dict[str, Any]:
    """What the page fetches, by the URL it fetches it from."""
    rid = f"api/runs/{run.id}"
    events, _ = run.events()
    epochs = run.pass_epochs()
    k = len(run.index().get("classes", []))
    out: dict[str, Any] = {
        "api/runs": [run.summary()],
        f"{rid}/events": events,
        f"{rid}/passes": {"epochs": epochs, "classes": run.index().get("classes", [])},
        f"{rid}/suspects": store.suspects(run),
    }
    for epoch in epochs:
        out[f"{rid}/matrix?epoch={epoch}"] = store.matrix(run, epoch)
        for t in range(k):
            for p in range(k):
                out[f"{rid}/cell?epoch={epoch}&true={t}&predicted={p}"] = store.cell(run, epoch, t, p)
    for i in range(len(run.labels())):
        out[f"{rid}/images/{i}/history"] = store.history(run, i)
    return out


def _data_url(jpeg: Path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg.read_bytes()).decode()


def _thumbs(run: store.Run) -> dict[str, str]:
    out = {}
    for i in range(len(run.labels())):
        path = run.thumb(i)
        if path is not None:
            out[str(i)] = _data_url(path)
    return out


def _inline_script(code: str) -> str:
    """``code`` in a script element it cannot end early (``</script`` in any case)."""
    return "<script>" + re.sub(r"</(script)", r"<\\/\1", code, flags=re.IGNORECASE) + "</script>"


def export_html(run_dir: Path, out: Path) -> Path:
    """Write the dashboard of ``run_dir`` as one HTML file at ``out`` (atomically)."""
    run = store.Run(run_dir.resolve())
    responses = _responses(run)
    data = {
        "responses": responses,
        "thumbs": _thumbs(run),
        "csv": store.suspects_csv(responses[f"api/runs/{run.id}/suspects"]),
        "seen": {
            w: _data_url(run.path / name) for w, name in runlog.SEEN.items() if (run.path / name).is_file()
        },
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
    return out
