"""Imports point one way (the README's layout table names the rule):

    leaves  <-  data, models  <-  unknown  <-  inference  <-  training  <-  cli, demo, pawlab/__init__
                                               inference  <-  export    <-  cli

Leaves (errors, configs, registry, optimizers and schedules, atomic writes, preprocessing, the
checkpoint format, figures, runtime, runlog, hosts) import only leaves. data and models know
nothing of each other.
inference may use data and models; training may use those and inference. Nothing imports the
dashboard, spec or serve packages; serve may use data, models and inference, and so may export. A module's
subpackage is its first name below ``pawlab``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pawlab"
LEAVES = {
    "_version",
    "atomic",
    "checkpoint",
    "config",
    "display",
    "errors",
    "figures",
    "hosts",
    "optimizers",
    "preprocessing",
    "progress",
    "registry",
    "runlog",
    "runtime",
    "terminal",
}
# what each layer may import, besides itself and the leaves
ALLOWED = {
    "leaf": set(),
    "data": set(),
    "models": set(),
    "unknown": {"models"},
    "inference": {"data", "models", "unknown"},
    "training": {"data", "models", "unknown", "inference"},
    "dashboard": set(),
    "serve": {"data", "models", "unknown", "inference"},
    "export": {"data", "models", "unknown", "inference"},
    "spec": {"data", "models", "unknown", "inference", "training"},
    "top": {"data", "models", "unknown", "inference", "training", "dashboard", "spec", "serve", "export"},
}
NEVER_IMPORTED = {"dashboard", "spec", "serve"}  # only the CLI (and pawlab.serve) start them
TOP_PACKAGES = {"cli"}  # the command line: a package at the top, beside demo and pawlab/__init__


def layer(module: str) -> str:
    """``pawlab.training.loop`` -> ``training``; leaves -> ``leaf``; cli, demo, ... -> ``top``."""
    parts = module.split(".")
    if parts[0] != "pawlab" or len(parts) == 1:
        return "top"
    if parts[1] in LEAVES:
        return "leaf"
    if parts[1] in TOP_PACKAGES:
        return "top"
    if (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "top"


def pawlab_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``pawlab`` import in a file, at any depth (lazy imports too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "pawlab"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pawlab":
            if node.module == "pawlab":  # from pawlab import checkpoint
                out += [(node.lineno, f"pawlab.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return out


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_one_way(path: Path) -> None:
    me = module_name(path)
    mine = layer(me)
    wrong = []
    for line, target in pawlab_imports(path):
        theirs = layer(target)
        if theirs in (mine, "leaf") or (theirs == "top" and target == "pawlab._version"):
            continue
        if theirs in NEVER_IMPORTED and mine != "top":
            wrong.append(f"{path.name}:{line} imports {target}: nothing imports {theirs}")
        elif theirs not in ALLOWED[mine]:
            wrong.append(f"{path.name}:{line} ({mine}) imports {target} ({theirs})")
    assert not wrong, "; ".join(wrong)


def test_the_rule_catches_an_inverted_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from pawlab.training.loop import Trainer\nimport pawlab.models.network\n")
    found = [layer(m) for _, m in pawlab_imports(bad)]
    assert found == ["training", "models"]
    assert "training" not in ALLOWED["inference"] and "models" not in ALLOWED["data"]
    assert layer("pawlab.runlog") == "leaf" and layer("pawlab.cli") == "top"
    assert layer("pawlab.cli.train") == "top"


def test_every_subpackage_has_a_layer() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages <= set(ALLOWED) | TOP_PACKAGES
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__", "demo"}
    assert modules == LEAVES, "a new top-level module: a leaf (add it to LEAVES) or in a subpackage?"


def in_cli(module: str) -> bool:
    return module.split(".")[:2] == ["pawlab", "cli"]


def test_only_the_command_line_imports_the_command_line() -> None:
    """`pawlab.cli` calls the API; nothing in pawlab imports it but itself and ``python -m pawlab``."""
    wrong = [
        f"{path.relative_to(PACKAGE)}:{line} imports {target}"
        for path in SOURCES
        if not in_cli(module_name(path)) and module_name(path) != "pawlab.__main__"
        for line, target in pawlab_imports(path)
        if in_cli(target)
    ]
    assert not wrong, "; ".join(wrong)
