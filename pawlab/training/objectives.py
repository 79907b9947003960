"""What the loop minimises and how a validation pass scores the network: its objective.

`Classification` (the default) is cross-entropy over class logits and validation loss and
accuracy. `ConditionalVAELoss` trains a `pawlab.models.generative.ConditionalVAE`: the
evidence lower bound, optionally with a guide classifier's cross-entropy on images drawn from
the prior, which keeps the latent from absorbing the class (a plain conditional VAE draws the
requested digit only 60-78% of the time). The loop calls ``loss`` once per batch (under
autocast when training in bf16) and ``validate`` once per epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

import torch
import torch.nn.functional as F

from pawlab.models.generative import ConditionalVAE
from pawlab.models.network import Network

if TYPE_CHECKING:
    from pawlab.training.loop import Trainer

__all__ = ["Classification", "ConditionalVAELoss", "Objective"]


class Objective(Protocol):
    def loss(self, trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch's loss: inputs ``x`` as `Trainer.inputs` made them, labels ``y`` (B,)."""
        ...

    def validate(self, trainer: Trainer) -> dict[str, float]:
        """Metrics of the whole validation set; ``val_loss`` at least."""
        ...


class Classification:
    """Cross-entropy over class logits, with optional class weights and label smoothing."""

    def __init__(self, weights: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        self.weights, self.label_smoothing = weights, label_smoothing

    def loss(self, trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = trainer.model(x)
        return F.cross_entropy(logits.float(), y, weight=self.weights, label_smoothing=self.label_smoothing)

    def validate(self, trainer: Trainer) -> dict[str, float]:
        # fp32 even when training in bf16: the saved metrics are what `evaluate` will report
        network = cast(Network, trainer.network)
        val = trainer.val_set
        logits = trainer.inputs.logits(network, val.images, trainer.config.batch_size * 2)
        y = torch.from_numpy(val.labels)
        trainer.state.val_probs = logits.softmax(1).numpy()
        return {
            "val_loss": F.cross_entropy(logits, y).item(),
            "val_accuracy": (logits.argmax(1) == y).float().mean().item(),
        }


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

    def loss(self, trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rec, kl = self._elbo(trainer.model, x, y)
        loss = rec + self.beta * kl
        if self.guide is not None and trainer.state.epoch >= self.guide_from:
            vae = cast(ConditionalVAE, trainer.network)
            loss = loss + self.guide_weight * self.guide_loss(vae, len(x), x.device)[0]
        return loss

    def validate(self, trainer: Trainer) -> dict[str, float]:
        vae = cast(ConditionalVAE, trainer.network)
        vae.eval()
        rec_sum = kl_sum = 0.0
        images, labels = torch.from_numpy(trainer.val_set.images), torch.from_numpy(trainer.val_set.labels)
        if not len(images):
            raise ValueError("a conditional VAE needs validation images")
        with torch.inference_mode():
            for idx in torch.arange(len(images)).split(trainer.config.batch_size * 4):
                x = trainer.inputs.batch(images[idx], augment=False)
                rec, kl = self._elbo(vae, x, labels[idx].to(x.device))
                rec_sum, kl_sum = rec_sum + rec.item() * len(idx), kl_sum + kl.item() * len(idx)
            metrics = {
                "val_loss": (rec_sum + self.beta * kl_sum) / len(images),
                "val_kl": kl_sum / len(images),
            }
            if self.guide is not None:
                metrics["val_guide_accuracy"] = self.guide_loss(vae, 1000, trainer.device)[1].item()
        return metrics
