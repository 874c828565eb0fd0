"""Multimodal VAE fusion (Wu & Goodman, 2018): a product-of-experts joint latent."""

from __future__ import annotations

import torch
from torch import nn

from fusionstream.engines.fusion.base import DEFAULT_MODALITIES, FusionHead, mlp, stack_masked

#: logvar clamp: keeps exp() finite in float16 and stops an expert claiming infinite certainty.
LOGVAR_RANGE = (-8.0, 8.0)


class VAEHead(FusionHead):
    """Each present modality is a Gaussian expert ``q(z | e_m) = N(μ_m, σ_m²)``; the joint
    posterior is their product with the prior expert ``N(0, I)``:

        precision = 1 + Σ_present 1/σ_m²,   μ = Σ_present μ_m/σ_m² / precision.

    Absent experts are left out of the product (with nothing present the joint is the
    prior). The classifier reads the joint μ, in training and inference alike, so logits
    are deterministic. :meth:`forward_train` adds ``beta · KL(q ‖ prior)`` plus
    ``recon_weight ·`` the error of decoding each present embedding from a sample of ``z``.
    """

    name = "vae"

    def __init__(
        self,
        embed_dim: int,
        n_classes: int,
        *,
        modalities: int = DEFAULT_MODALITIES,
        latent_dim: int | None = None,
        hidden: int | None = None,
        dropout: float = 0.1,
        beta: float = 1e-2,
        recon_weight: float = 1.0,
    ) -> None:
        latent = latent_dim or embed_dim // 2 or 1
        super().__init__(embed_dim, n_classes, latent, modalities)
        width = hidden or 2 * embed_dim
        self.latent_dim = latent
        self.beta = beta
        self.recon_weight = recon_weight
        self.experts = nn.ModuleList(mlp(embed_dim, width, 2 * latent, 0.0) for _ in range(modalities))
        self.decoders = nn.ModuleList(mlp(latent, width, embed_dim, 0.0) for _ in range(modalities))
        self.classifier = mlp(latent, width, n_classes, dropout)

    def posterior(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint posterior ``(μ, logvar)``, each ``[B, latent_dim]``, of ``(*embeddings, mask)``."""
        embeddings, mask = self.split(inputs)
        x, present = stack_masked(embeddings, mask)
        stats = torch.stack([expert(x[:, i]) for i, expert in enumerate(self.experts)], dim=1)  # [B, M, 2Z]
        mu, logvar = stats.chunk(2, dim=-1)
        precision = torch.exp(-logvar.clamp(*LOGVAR_RANGE))
        precision = torch.where(present.unsqueeze(-1), precision, torch.zeros_like(precision))
        joint_precision = 1.0 + precision.sum(dim=1)  # the 1 is the prior expert
        joint_mu = (precision * mu).sum(dim=1) / joint_precision
        return joint_mu, -torch.log(joint_precision)

    def fuse(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The joint posterior mean."""
        return self.posterior(*inputs)[0]

    def forward_train(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, beta · KL + recon_weight · reconstruction MSE)``, both terms averaged over the batch."""
        embeddings, mask = self.split(inputs)
        mu, logvar = self.posterior(*inputs)
        logits = self.classifier(self.with_nothing(mu, mask))
        kl = 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(dim=-1).mean()
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        x, present = stack_masked(embeddings, mask)
        # Targets are detached: the encoders learn from the task loss, and the decoders cannot
        # pull every embedding towards an easy-to-reconstruct constant.
        errors = torch.stack(
            [(decoder(z) - x[:, i].detach()).pow(2).mean(dim=-1) for i, decoder in enumerate(self.decoders)], dim=1
        )  # [B, M]
        recon = torch.where(present, errors, torch.zeros_like(errors)).sum() / present.sum().clamp_min(1)
        return logits, self.beta * kl + self.recon_weight * recon
