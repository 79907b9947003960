"""Which images guarded bf16 runs again in fp32: a rule by name (`RULES`) and its setting.

Each rule is a cheap test on one batch's bf16 probabilities (B, K) -> (B,) bool, run by the
engine on every batch. A model file's agreement record (`pawlab.inference.agreement`) names the
rule and its setting (`Guard.from_record`); a record without a rule's name was written before
rules had names, and means the ``confidence`` rule with its recorded ``guard``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from pawlab.registry import Registry

Rule = Callable[[torch.Tensor, float], torch.Tensor]  # (probabilities (B, K), setting) -> (B,) bool
RULES: Registry[Rule] = Registry("guard rule")
# the record's key holding each rule's setting
SETTING_KEY = {"confidence": "guard", "margin": "margin"}


@RULES.register("confidence")
def confidence(probs: torch.Tensor, guard: float) -> torch.Tensor:
    """Images whose top-class probability is below ``1 - guard``."""
    return (1 - probs.amax(1)) > guard


def margins(probs: torch.Tensor) -> torch.Tensor:
    """Probabilities (B, K) -> the top two classes' difference (B,) (the top one's with K = 1)."""
    top = probs.topk(min(2, probs.shape[1]), 1).values
    return top[:, 0] - top[:, 1] if top.shape[1] > 1 else top[:, 0]


@RULES.register("margin")
def margin(probs: torch.Tensor, margin: float) -> torch.Tensor:
    """Images whose two likeliest classes are less than ``margin`` apart: the only ones a
    small probability error can move to another class."""
    return margins(probs) < margin


@dataclass(frozen=True)
class Guard:
    """A rule of `RULES` and its setting: which images of a bf16 batch run again in fp32."""

    rule: str
    setting: float

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"guard rule: {self.rule!r} is not one of {', '.join(RULES.names())}")

    def rerun(self, probs: torch.Tensor) -> torch.Tensor:
        """bf16 probabilities (B, K) -> (B,) bool: the rows to run again in fp32."""
        return RULES.get(self.rule)(probs, self.setting)

    def describe(self) -> str:
        """Which images it sends back, e.g. ``top-two margin < 0.0136``."""
        if self.rule == "confidence":
            return f"p < {1 - self.setting:g}"
        return f"top-two margin < {self.setting:.3g}"

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Guard | None:
        """The guard an agreement record asks for: None where it did not agree, or names a
        rule this pawlab does not know, or has no setting (the oldest records: bf16 unguarded)."""
        rule = record.get("rule", "confidence")
        if not record.get("ok") or rule not in SETTING_KEY or SETTING_KEY[rule] not in record:
            return None
        return cls(rule, float(record[SETTING_KEY[rule]]))


def agreed(record: Mapping[str, Any]) -> bool:
    """Whether an agreement record lets ``auto`` precision use bf16: it agreed, under a rule
    this pawlab knows."""
    return bool(record.get("ok")) and record.get("rule", "confidence") in SETTING_KEY
