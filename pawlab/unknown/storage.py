"""A fitted `State` in a model file: its tensors beside the network's under ``unknown.``, its
method and settings in the JSON metadata (``{"method": "knn", "settings": {...}}``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from pawlab.errors import ModelFileError
from pawlab.unknown.scorers import SCORERS, State

PREFIX = "unknown."


def to_tensors(state: State) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors named ``unknown.<name>``, the JSON metadata entry) of ``state``."""
    tensors = {PREFIX + name: t.detach().cpu().contiguous() for name, t in state.tensors.items()}
    return tensors, {"method": state.method, "settings": dict(state.settings)}


def from_tensors(tensors: Mapping[str, torch.Tensor], meta: object, where: str) -> State | None:
    """The `State` stored by `to_tensors`; None for a file without one (``meta`` None: written
    before pawlab fitted any). ``where`` names the file in errors."""
    if meta is None:
        return None
    method = meta.get("method") if isinstance(meta, dict) else None
    settings = meta.get("settings") if isinstance(meta, dict) else None
    if not isinstance(method, str) or method not in SCORERS or not isinstance(settings, dict):
        raise ModelFileError(
            f"{where}: its unknown-input entry is damaged or from a newer pawlab ({meta!r:.80})"
        )
    kept = {name[len(PREFIX) :]: t for name, t in tensors.items() if name.startswith(PREFIX)}
    if "calibration" not in kept:
        raise ModelFileError(f"{where}: its unknown-input model has no calibration tensor")
    return State(SCORERS.canonical(method) or method, settings, kept)
