"""Generative networks built from declarative parts: a conditional variational autoencoder.

A `ConditionalVAE` (Sohn et al., 2015) pairs two `Network`s: an ``encoder`` that reads an
image as the mean and log-variance of a latent vector (B, 2L), and a ``decoder`` (the
generator) that draws an image from a latent and a one-hot class (B, L + K) -> (B, C, H, W)
logits of each pixel being ink. After training only the decoder is kept: a latent drawn from
the prior N(0, I) and a class give an image of that class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pawlab.models.network import Network


def decoder_input(z: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Latents (B, L) and classes (B,) -> the decoder's input (B, L + K)."""
    return torch.cat([z, F.one_hot(labels, num_classes).to(z.dtype)], 1)


class ConditionalVAE(nn.Module):
    """``forward(x, y)`` -> (decoder logits (B, C, H, W), mean (B, L), log-variance (B, L)),
    the latent sampled by the reparameterisation trick so that gradients reach the encoder."""

    def __init__(self, encoder: Network, decoder: Network, num_classes: int) -> None:
        super().__init__()
        self.encoder, self.decoder, self.num_classes = encoder, decoder, num_classes
        self.latent = decoder.input_shape[0] - num_classes
        if self.latent < 1 or encoder.shapes[-1] != (2 * self.latent,):
            raise ValueError(
                f"the encoder must give 2 x {self.latent} values (mean and log-variance of the latent), "
                f"got {encoder.shapes[-1]}"
            )

    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # (B, L), (B,) -> (B, C, H, W)
        out: torch.Tensor = self.decoder(decoder_input(z, labels, self.num_classes))
        return out

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, log_var = self.encoder(x).float().chunk(2, 1)  # (B, L) each
        z = mean + torch.randn_like(mean) * (0.5 * log_var).exp()
        return self.decode(z, labels), mean, log_var
