"""The walkthrough notebooks (examples/notebooks): each committed notebook holds its source's
cells and the outputs of a run of exactly those cells, and each runs top to bottom on a small
subset of the shared data."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import ROOT, SHARED

NOTEBOOKS = ROOT / "examples" / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]-*.py"))


def _build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("notebook_build", NOTEBOOKS / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_three_walkthroughs() -> None:
    assert [s.name[:2] for s in SOURCES] == ["01", "02", "03"]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_the_committed_notebook_holds_its_sources_cells_and_their_outputs(source: Path) -> None:
    """A source edited without running the notebook again, or a notebook edited by hand, is
    stale: its outputs are not those of the code it shows."""
    import jupytext
    import nbformat

    build = _build()
    committed = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    assert build.code_cells(committed) == build.code_cells(jupytext.read(source)), (
        f"{source.name} changed: run `python examples/notebooks/build.py {source.name[:2]}`"
    )
    run = committed.metadata["pawlab"]
    assert run["subset"] == "full" and run["code_sha256"] == build.digest(committed)
    cells = [c for c in committed.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in cells), "every code cell was run"
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[0]["evalue"] if errors else ""
    assert any("image/png" in o.get("data", {}) for c in cells for o in c.outputs)  # its figures


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data not found at {SHARED}")
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_the_notebook_runs_top_to_bottom_on_a_small_subset(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The committed notebook's own cells (the test above ties them to the source), in a
    Jupyter kernel, with no ``if __name__ == "__main__":`` guard anywhere."""
    import nbformat

    monkeypatch.setenv("PAWLAB_NOTEBOOK_WORK", str(tmp_path / "work"))
    monkeypatch.setenv("PAWLAB_DATA", str(SHARED))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    nb = _build().run(source, "small", timeout=600)
    nbformat.write(nb, tmp_path / source.with_suffix(".ipynb").name)  # to look at when it fails
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert json.dumps(nb.metadata["pawlab"])
