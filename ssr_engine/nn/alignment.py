"""Band-wise cross-modal alignment: spectral InfoNCE (DESIGN.md §2, Alignment).

For modalities ``(a, b)`` and band ``β``, the anchor ``(i, β, a)`` must pick its positive
``(i, β, b)`` among the negatives ``(j ≠ i, β, b)`` (other items, same band) and
``(i, β' ≠ β, b)`` (same item, other bands). Similarities are cosines divided by the
temperature ``τ``; the loss is the cross-entropy of the positive, averaged over anchors,
bands, modality pairs and both directions (``a → b`` and ``b → a``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SpectralInfoNCE"]


class SpectralInfoNCE(nn.Module):
    """Symmetric band-wise InfoNCE across modalities.

    Args:
        tau: temperature ``τ > 0``.

    Shapes:
        input ``[n, m, M, d]`` (``n`` items, ``m ≥ 2`` modalities, ``M`` bands) -> scalar.
        With ``m < 2`` or ``n·M < 2`` there is nothing to align and the loss is 0.

    Example:
        >>> import torch
        >>> from ssr_engine.nn import SpectralInfoNCE
        >>> z = torch.randn(32, 1, 4, 16)
        >>> aligned = SpectralInfoNCE(0.1)(z.expand(32, 2, 4, 16))
        >>> random = SpectralInfoNCE(0.1)(torch.randn(32, 2, 4, 16))
        >>> bool(aligned < random)
        True
    """

    def __init__(self, tau: float = 0.2):
        super().__init__()
        if not tau > 0:
            raise ValueError(f"temperature tau must be > 0, got {tau}")
        self.tau = float(tau)

    def _direction(self, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        # za, zb: [n, M, d] unit vectors.
        n, M, _ = za.shape
        items = torch.einsum("ibd,jbd->bij", za, zb) / self.tau            # [M, n, n]
        bands = torch.einsum("ibd,icd->bic", za, zb) / self.tau            # [M, n, M]
        other = ~torch.eye(M, dtype=torch.bool, device=za.device)          # [M, M]
        bands = bands.masked_select(other[:, None, :]).view(M, n, M - 1)   # drop c = b
        logits = torch.cat([items, bands], dim=2).reshape(M * n, n + M - 1)
        target = torch.arange(n, device=za.device).repeat(M)
        return F.cross_entropy(logits, target)

    def forward(self, Z: torch.Tensor) -> torch.Tensor:
        if Z.dim() != 4:
            raise ValueError(f"expected Z of shape [n, m, M, d], got {tuple(Z.shape)}")
        n, m, M, _ = Z.shape
        if m < 2 or n * M < 2:
            return Z.new_zeros(())
        z = F.normalize(Z, dim=-1)
        total, count = Z.new_zeros(()), 0
        for a in range(m):
            for b in range(a + 1, m):
                total = total + self._direction(z[:, a], z[:, b]) + self._direction(z[:, b],
                                                                                    z[:, a])
                count += 2
        return total / count
