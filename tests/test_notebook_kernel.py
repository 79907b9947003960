"""pawlab from a real Jupyter kernel: prepare, train, evaluate and submit with worker processes
need no ``if __name__ == "__main__":`` (the kernel is ``__main__``), and progress is a widget
rather than text; the dashboard shows in a cell."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TINY

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

WIDGET = "application/vnd.jupyter.widget-view+json"

SETUP = """
import pawlab
from pawlab.data import workers as w

pools = []  # worker pools started: the stages below must start theirs, from this kernel


class CountedPool(w.ProcessPoolExecutor):
    def __init__(self, *args, **kwargs):
        pools.append(kwargs.get("mp_context").get_start_method())
        super().__init__(*args, **kwargs)


w.ProcessPoolExecutor = CountedPool
"""

IMAGES = """
import numpy as np
from pathlib import Path
from PIL import Image

rng = np.random.default_rng(0)


def image(bright_left):  # a learnable toy: cats bright on the left half, dogs on the right
    a = rng.integers(0, 80, (24, 24, 3), dtype=np.uint8)
    a[:, :12] += 150 * bright_left
    a[:, 12:] += 150 * (not bright_left)
    return Image.fromarray(a)


for label in ("cat", "dog"):
    Path("src", label).mkdir(parents=True)
    for i in range(70):  # 140 images: over 2 chunks of 64, so decoded by the workers
        image(label == "cat").save(f"src/{label}/{label}.{i}.jpg")
Path("test").mkdir()
for i in range(1, 41):
    image(i % 2 == 0).save(f"test/{i}.jpg")
"""

STAGES = f"""
report = pawlab.prepare("src", "prepared", pawlab.DataConfig(size=16, workers=2))
assert len(pools) == 1, pools
result = pawlab.train(
    "src", "model.safetensors", {TINY!r}, pawlab.TrainConfig(epochs=1, batch_size=16), workers=2
)
assert len(pools) == 2, pools
ev = pawlab.evaluate(result.model_path, "prepared", workers=2)
sub = pawlab.submit(result.model_path, "test", "submission.csv", workers=2)
assert len(pools) == 3, pools
print(pools)
"""

PREDICT = """
m = pawlab.load_model(result.model_path)
print([p.classification for p in m.predict(["test/1.jpg", "test/2.jpg"])])
"""

BAR = """
from pawlab.progress import progress_bar

for _ in progress_bar(range(50), total=50, desc="cell"):
    pass
"""


DASHBOARD = """
import pawlab.dashboard

pawlab.dashboard.show(result)  # served from a thread of this kernel
"""


def _notebook() -> Any:
    cells = [SETUP, IMAGES, STAGES, PREDICT, BAR, DASHBOARD, "pawlab.dashboard.stop()"]
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])


def _execute(nb: Any, cwd: Path) -> None:
    """Run every cell in a fresh python3 kernel (a cell's error raises); skip when no kernel
    can start here."""
    from jupyter_client.kernelspec import NoSuchKernel

    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    started = False
    try:
        with client.setup_kernel():
            started = True
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
    except (NoSuchKernel, RuntimeError, TimeoutError) as exc:
        if started:
            raise
        pytest.skip(f"no Jupyter kernel could start: {exc}")


def _outputs(cell: Any) -> tuple[list[dict[str, Any]], str]:
    """A cell's widget outputs and its stderr text."""
    widgets = [o for o in cell.outputs if WIDGET in o.get("data", {})]
    stderr = "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stderr")
    return widgets, stderr


def test_a_notebook_prepares_trains_evaluates_and_submits_with_workers_and_widget_progress(
    tmp_path: Path,
) -> None:
    nb = _notebook()
    _execute(nb, tmp_path)
    assert not [o for cell in nb.cells for o in cell.outputs if o.output_type == "error"]
    assert (tmp_path / "submission.csv").read_text().count("\n") == 41  # the header and 40 rows
    stages, bar = nb.cells[2], nb.cells[4]
    for cell in (stages, bar):
        widgets, stderr = _outputs(cell)
        assert widgets, f"no progress widget in {cell.source[:40]!r}"
        assert "%|" not in stderr and "img/s" not in stderr  # no text bar, no 30-s lines beside it
    (shown,) = nb.cells[5].outputs
    assert re.match(r'<iframe src="http://127\.0\.0\.1:\d+/v/[0-9a-f]+/"', shown.data["text/html"])
    # the pools' start methods: each prepares a worker from the kernel's __main__
    printed = "".join(o.get("text", "") for o in stages.outputs)
    assert re.search(r"\['(forkserver|spawn)', '\1', '\1'\]", printed)
