"""The public API: every exported name resolves, and importing data code, the run-directory
reader, the configurations, the CLI's parser or the dashboard does not import torch."""

from __future__ import annotations

import subprocess
import sys

import pawlab


def test_every_exported_name_resolves() -> None:
    for name in pawlab.__all__:
        assert getattr(pawlab, name) is not None
    assert set(pawlab.__all__) == {*pawlab._MODULE_OF, "__version__"}


def test_data_workers_and_the_dashboard_do_not_import_torch() -> None:
    modules = ", ".join(
        f"pawlab.data.{m}" for m in ("catalog", "datasets", "decode", "pack", "sources", "workers")
    )
    dashboard = "pawlab.dashboard, pawlab.dashboard.app, pawlab.dashboard.store"
    code = (
        f"import sys, pawlab, pawlab.runlog, pawlab.config, pawlab.cli, {modules}, {dashboard}; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
