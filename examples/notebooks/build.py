"""Run the walkthrough notebooks from their sources, top to bottom.

Each notebook is written as a percent-format script (``NN-name.py``, readable in a diff) and
committed as ``NN-name.ipynb`` with the outputs of a full run, so that a code host shows its
figures. The ``.ipynb`` records a digest of the code it ran; a test checks that it still holds
its source's cells (a notebook edited without being run again is stale).

    python examples/notebooks/build.py                 # run every notebook in full, write the .ipynb
    python examples/notebooks/build.py 02 --subset small --out /tmp/nb   # a quick check

The subset reaches the notebook as ``$PAWLAB_NOTEBOOK_SUBSET`` (its parameter cell reads it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def sources() -> list[Path]:
    return sorted(HERE.glob("[0-9][0-9]-*.py"))


def code_cells(nb: nbformat.NotebookNode) -> list[str]:
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def digest(nb: nbformat.NotebookNode) -> str:
    """What a notebook's outputs depend on in the notebook itself: its code cells."""
    return hashlib.sha256(json.dumps(code_cells(nb)).encode()).hexdigest()


def coalesced(outputs: list[nbformat.NotebookNode]) -> list[nbformat.NotebookNode]:
    """Consecutive writes to one stream as one output, as Jupyter shows them."""
    merged: list[nbformat.NotebookNode] = []
    for out in outputs:
        last = merged[-1] if merged else None
        if last is not None and out.output_type == last.output_type == "stream" and out.name == last.name:
            last.text += out.text
        else:
            merged.append(out)
    return merged


def run(source: Path, subset: str, timeout: int = 3600) -> nbformat.NotebookNode:
    """The notebook of ``source``, executed in this folder with ``subset``; any cell's error
    raises (`nbclient.exceptions.CellExecutionError`)."""
    nb = jupytext.read(source)
    start = time.perf_counter()
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}
    )
    with tempfile.TemporaryDirectory(prefix="pawlab-notebook-cache-") as cold:
        # a cold cache unless one is given: the outputs show what a first run on a fresh machine
        # costs (features computed, digit models trained), not what an earlier run left
        env = {"PAWLAB_CACHE_DIR": cold, **os.environ, "PAWLAB_NOTEBOOK_SUBSET": subset}
        client.execute(env=env)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = coalesced(cell.outputs)
    nb.metadata["pawlab"] = {
        "subset": subset,
        "code_sha256": digest(nb),
        "seconds": round(time.perf_counter() - start),
    }
    nb.metadata.pop("jupytext", None)
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="notebook number prefixes (01, 02, ...); default: all")
    parser.add_argument("--subset", choices=("full", "small"), default="full")
    parser.add_argument("--out", type=Path, default=HERE, help="where the .ipynb files go (default: here)")
    args = parser.parse_args(argv)
    chosen = [s for s in sources() if not args.names or s.name[:2] in args.names]
    args.out.mkdir(parents=True, exist_ok=True)
    for source in chosen:
        print(f"running {source.name} ({args.subset})", flush=True)
        nb = run(source, args.subset)
        target = args.out / source.with_suffix(".ipynb").name
        nbformat.write(nb, target)
        print(f"  wrote {target} in {nb.metadata['pawlab']['seconds']}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
