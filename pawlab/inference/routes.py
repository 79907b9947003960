"""What runs a model's images: a runtime and a precision (a `Route`), as the user asks for them.

    runtime     torch (pawlab's own engine: bf16 autocast, torch.compile) or onnxruntime (the
                model exported to ONNX once, into the user cache); auto: per model and CPU, the
                fastest route that agrees with fp32, measured once (`pawlab.inference.runtimes`)
    precision   fp32, bf16 (torch only, where training found it agrees: guarded), int8
                (onnxruntime only, quantized and checked against fp32: guarded the same way),
                or auto

``--precision fp32`` keeps meaning what it always has: torch, fp32 (compiled for long jobs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pawlab.config import INFERENCE_PRECISIONS as PRECISIONS
from pawlab.config import INFERENCE_RUNTIMES as RUNTIMES
from pawlab.config import check_route

__all__ = ["PRECISIONS", "RUNS", "RUNTIMES", "Chooser", "Route", "check_route", "requested"]

# the precisions each runtime runs
RUNS = {"torch": ("fp32", "bf16"), "onnxruntime": ("fp32", "int8")}


@dataclass(frozen=True)
class Route:
    """One way to run a model: ``runtime`` torch or onnxruntime, ``precision`` as `RUNS` allows."""

    runtime: str
    precision: str

    def __post_init__(self) -> None:
        if self.precision not in RUNS.get(self.runtime, ()):
            raise ValueError(f"no route {self.runtime} {self.precision}")

    def __str__(self) -> str:
        return f"{self.runtime} {self.precision}"

    @classmethod
    def parse(cls, text: str) -> Route:
        """``"onnxruntime int8"`` -> its `Route` (ValueError for anything else)."""
        runtime, _, precision = text.partition(" ")
        return cls(runtime, precision)


def requested(runtime: str, precision: str) -> Route | None:
    """The route the user's settings name, or None where ``auto`` leaves it to the model's
    record or a measurement (`pawlab.inference.runtimes`) or to torch's own ``auto`` precision."""
    if runtime == "auto":
        if precision == "int8":
            return Route("onnxruntime", "int8")
        return Route("torch", precision) if precision in ("fp32", "bf16") else None
    if precision == "auto":
        return Route(runtime, "fp32") if runtime == "onnxruntime" else None
    return Route(runtime, precision)


class Chooser(Protocol):
    """What a `pawlab.inference.Model` asks of the runtime cache it was loaded with
    (`pawlab.inference.runtimes.RuntimeCache`)."""

    def recorded(self) -> Route | None:
        """The route measured fastest for this model on this CPU, if measured before."""

    def choose(self) -> Route:
        """The fastest route that agrees, measured now (once: recorded for the next job)."""

    def graph(self, precision: str) -> tuple[bytes, dict[str, Any]]:
        """The model's runtime graph (`pawlab.inference.ort`) at ``precision`` (fp32 or int8)
        and its agreement record (int8: the guard's rule and setting, `guarded_agreement`); an
        `AgreementError` where int8 does not agree."""
