"""Band modulation: learnable band reliabilities, the band mask and its consistency loss.

DESIGN.md §2: a reliability ``α_{m,b} = softplus(ρ_{m,b})`` scales band ``b`` of modality
``m``; in training a band mask keeps band ``b`` with probability ``1 − p`` (one draw per band
and batch, shared by all modalities and nodes) and scales kept bands by ``1 / (1 − p)``; a
consistency loss keeps the masked and the full-spectrum outputs close. No mask at inference.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BandReliability", "BandMask", "consistency_loss"]


class BandReliability(nn.Module):
    """Per-(modality, band) reliability weights ``α = softplus(ρ)``, initialised to 1.

    Args:
        n_modalities: number of modalities ``m``.
        n_bands: number of bands ``M``.

    Shapes:
        input ``[n, m, M, d]`` -> output ``[n, m, M, d]``; ``alpha``: ``[m, M]``.

    Example:
        >>> import torch
        >>> from ssr_engine.nn import BandReliability
        >>> r = BandReliability(2, 4)
        >>> torch.allclose(r(torch.ones(3, 2, 4, 5)), torch.ones(3, 2, 4, 5))
        True
    """

    def __init__(self, n_modalities: int, n_bands: int):
        super().__init__()
        # softplus(log(e - 1)) = 1.
        self.rho = nn.Parameter(torch.full((n_modalities, n_bands), math.log(math.e - 1.0)))

    @property
    def alpha(self) -> torch.Tensor:
        return F.softplus(self.rho)

    def forward(self, H: torch.Tensor) -> torch.Tensor:
        if H.dim() != 4 or H.shape[1:3] != self.rho.shape:
            raise ValueError(f"expected H of shape [n, {self.rho.shape[0]}, "
                             f"{self.rho.shape[1]}, d], got {tuple(H.shape)}")
        return H * self.alpha.to(H.dtype)[None, :, :, None]


class BandMask(nn.Module):
    """Drop whole bands in training: ``z_b ~ Bernoulli(1 − p) / (1 − p)``, shared per batch
    (or drawn per node: ``sample(n=...)``).

    In eval mode (and for ``p = 0``) the mask is the identity.

    Args:
        n_bands: number of bands ``M``.
        p: drop probability, ``0 ≤ p < 1``.

    Shapes:
        ``sample()``: ``[M]``; ``sample(n=n)``: ``[n, M]``; input ``[n, m, M, d]`` -> output
        ``[n, m, M, d]``.

    Example:
        >>> import torch
        >>> from ssr_engine.nn import BandMask
        >>> mask = BandMask(4, p=0.5).eval()
        >>> x = torch.randn(2, 1, 4, 3)
        >>> torch.equal(mask(x), x)
        True
    """

    def __init__(self, n_bands: int, p: float = 0.2):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"band mask probability p must lie in [0, 1), got {p}")
        self.n_bands, self.p = int(n_bands), float(p)

    @property
    def active(self) -> bool:
        return self.training and self.p > 0.0

    def sample(self, device=None, dtype=torch.float32, n: Optional[int] = None) -> torch.Tensor:
        """One draw of the scaled keep mask: ``[M]``, or ``[n, M]`` (one draw per node) when
        ``n`` is given; ones when inactive."""
        shape = (self.n_bands,) if n is None else (int(n), self.n_bands)
        if not self.active:
            return torch.ones(shape, device=device, dtype=dtype)
        keep = torch.rand(shape, device=device) >= self.p
        return keep.to(dtype) / (1.0 - self.p)

    def forward(self, H: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        if H.dim() != 4 or H.shape[2] != self.n_bands:
            raise ValueError(f"expected H of shape [n, m, {self.n_bands}, d], got "
                             f"{tuple(H.shape)}")
        if not self.active:
            return H
        z = self.sample(H.device, H.dtype) if z is None else z.to(H.dtype)
        return H * z[None, None, :, None]


def consistency_loss(full: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between full-spectrum and band-masked outputs.

    Used on fused node vectors (representation consistency, ``[n, d]``) or on scores
    (prediction consistency, ``[n]`` or ``[n, k]``); zero when nothing was masked.

    Example:
        >>> import torch
        >>> x = torch.randn(4, 8)
        >>> consistency_loss(x, x).item()
        0.0
    """
    if full.shape != masked.shape:
        raise ValueError(f"full and masked outputs differ in shape: {tuple(full.shape)} vs "
                         f"{tuple(masked.shape)}")
    d = full - masked
    return d.pow(2).sum(-1).mean() if d.dim() > 1 else d.pow(2).mean()
