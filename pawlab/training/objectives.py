"""What the loop minimises and how a validation pass scores the network: its objective.

`Classification` (the default) is cross-entropy over class logits and validation loss and
accuracy. `ConditionalVAELoss` trains a `pawlab.models.generative.ConditionalVAE`: the
evidence lower bound, optionally with a guide classifier's cross-entropy on images drawn from
the prior, which keeps the latent from absorbing the class (a plain conditional VAE draws the
requested digit only 60-78% of the time). The loop calls ``loss`` once per batch (under
autocast when training in bf16) with the module it trains and a `Batch`, and ``validate`` once
per epoch with the network and the validation set (`HeldOut`); an objective sees no trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, cast

import numpy as np
import torch
import torch.nn.functional as F

from pawlab.models.generative import ConditionalVAE
from pawlab.models.network import Network

__all__ = ["Batch", "Classification", "ConditionalVAELoss", "HeldOut", "Objective", "Validation"]


@dataclass(frozen=True)
class Batch:
    """One training (or validation) batch as the network gets it."""

    x: torch.Tensor  # inputs as the loop made them: (B, C, H, W) images or (B, F) features
    y: torch.Tensor  # labels (B,)
    epoch: int  # the running epoch, 1-based


@dataclass(frozen=True)
class Validation:
    """What a validation pass produced: the metrics (``val_loss`` at least) and, for a
    classifier, every validation image's class probabilities and label: the event data that
    callbacks get with ``after_validation``."""

    metrics: dict[str, float]
    probs: np.ndarray | None = field(default=None, repr=False)  # float32 (N, classes)
    labels: np.ndarray | None = field(default=None, repr=False)  # int64 (N,)


class HeldOut(Protocol):
    """The validation set as an objective reads it."""

    @property
    def labels(self) -> np.ndarray:  # int64 (N,)
        ...

    @property
    def batch_size(self) -> int:  # the recipe's training batch size
        ...

    def logits(self, network: Network, batch_size: int) -> torch.Tensor:
        """fp32 logits (N, classes) of every validation image, on the CPU."""
        ...

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """The validation set in order, as inputs (not augmented)."""
        ...


class Objective(Protocol):
    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """The batch's loss; ``model`` is what the loop trains (wrapped for DDP or compiled)."""
        ...

    def validate(self, network: torch.nn.Module, held: HeldOut) -> Validation:
        """Metrics of the whole validation set."""
        ...


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The module a compiled or DDP wrapper runs."""
    inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)  # compiled; DDP
    return unwrapped(inner) if isinstance(inner, torch.nn.Module) else model


class Classification:
    """Cross-entropy over class logits, with optional class weights and label smoothing."""

    def __init__(self, weights: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        self.weights, self.label_smoothing = weights, label_smoothing

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        logits = model(batch.x)
        return F.cross_entropy(
            logits.float(), batch.y, weight=self.weights, label_smoothing=self.label_smoothing
        )

    def validate(self, network: torch.nn.Module, held: HeldOut) -> Validation:
        # fp32 even when training in bf16: the saved metrics are what `evaluate` will report
        logits = held.logits(cast(Network, network), held.batch_size * 2)
        y = torch.from_numpy(held.labels)
        metrics = {
            "val_loss": F.cross_entropy(logits, y).item(),
            "val_accuracy": (logits.argmax(1) == y).float().mean().item(),
        }
        return Validation(metrics, logits.softmax(1).numpy(), held.labels)


Guide = Callable[[torch.Tensor], torch.Tensor]  # [0, 1] images (B, C, H, W) -> class logits (B, K)


class ConditionalVAELoss:
    """The negative evidence lower bound of a `ConditionalVAE` per image: pixels' binary
    cross-entropy plus ``beta`` x the latent's KL divergence from N(0, I). From epoch
    ``guide_from`` on, ``guide_weight`` x the ``guide``'s cross-entropy on images decoded from
    prior latents and uniformly drawn classes is added. Inputs are [0, 1] pixels (a
    preprocessing with mean 0 and std 1)."""

    def __init__(
        self,
        beta: float = 1.0,
        guide: Guide | None = None,
        guide_weight: float = 100.0,
        guide_from: int = 1,
        seed: int = 0,
    ) -> None:
        self.beta, self.guide, self.guide_weight, self.guide_from = beta, guide, guide_weight, guide_from
        self.gen = torch.Generator().manual_seed(seed)

    def _elbo(
        self, vae: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits, mean, log_var = vae(x, y)
        rec = F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="sum") / len(x)
        kl = -0.5 * (1 + log_var - mean.pow(2) - log_var.exp()).sum() / len(x)
        return rec, kl

    def guide_loss(
        self, vae: ConditionalVAE, n: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide's cross-entropy and accuracy on ``n`` images drawn from the prior. It runs
        the decoder itself, not the DDP or compiled wrapper the loop trains through: under DDP
        its gradients still reach the shared parameters and are averaged with the rest."""
        assert self.guide is not None
        z = torch.randn(n, vae.latent, generator=self.gen).to(device)
        labels = torch.randint(vae.num_classes, (n,), generator=self.gen).to(device)
        logits = self.guide(torch.sigmoid(vae.decode(z, labels).float()))
        return F.cross_entropy(logits.float(), labels), (logits.argmax(1) == labels).float().mean()

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        x = batch.x
        rec, kl = self._elbo(model, x, batch.y)
        loss = rec + self.beta * kl
        if self.guide is not None and batch.epoch >= self.guide_from:
            vae = cast(ConditionalVAE, unwrapped(model))
            loss = loss + self.guide_weight * self.guide_loss(vae, len(x), x.device)[0]
        return loss

    def validate(self, network: torch.nn.Module, held: HeldOut) -> Validation:
        vae = cast(ConditionalVAE, network)
        vae.eval()
        rec_sum = kl_sum = 0.0
        n = len(held.labels)
        if not n:
            raise ValueError("a conditional VAE needs validation images")
        with torch.inference_mode():
            for batch in held.batches(held.batch_size * 4):
                rec, kl = self._elbo(vae, batch.x, batch.y)
                rec_sum, kl_sum = rec_sum + rec.item() * len(batch.y), kl_sum + kl.item() * len(batch.y)
            metrics = {"val_loss": (rec_sum + self.beta * kl_sum) / n, "val_kl": kl_sum / n}
            if self.guide is not None:
                device = next(vae.parameters()).device
                metrics["val_guide_accuracy"] = self.guide_loss(vae, 1000, device)[1].item()
        return Validation(metrics)
