"""Spectral InfoNCE: closed form on a tiny case, aligned < random, symmetry, degenerate cases."""
import math

import pytest
import torch
import torch.nn.functional as F

from ssr_engine.nn import SpectralInfoNCE
from tolerances import tol


def _loop_reference(Z, tau):
    """Anchor-by-anchor reference: positives (i, b, other modality); negatives (j != i, b)
    and (i, b' != b) in the other modality; averaged over anchors, bands, both directions."""
    z = F.normalize(Z, dim=-1)
    n, m, M, _ = Z.shape
    losses = []
    for a in range(m):
        for c in range(m):
            if a == c:
                continue
            for b in range(M):
                for i in range(n):
                    pos = z[i, a, b] @ z[i, c, b] / tau
                    cands = [z[i, a, b] @ z[j, c, b] / tau for j in range(n)]
                    cands += [z[i, a, b] @ z[i, c, bb] / tau for bb in range(M) if bb != b]
                    losses.append(torch.logsumexp(torch.stack(cands), 0) - pos)
    return torch.stack(losses).mean()


@pytest.mark.parametrize("m", [2, 3])
def test_matches_loop_reference(m):
    torch.manual_seed(0)
    Z = torch.randn(5, m, 3, 4, dtype=torch.float64)
    got = SpectralInfoNCE(0.3)(Z)
    assert got.item() == pytest.approx(_loop_reference(Z, 0.3).item(),
                                       rel=tol(torch.float64))


def test_aligned_views_give_low_loss():
    torch.manual_seed(1)
    n, M, d = 64, 4, 32
    base = torch.randn(n, 1, M, d)
    aligned = SpectralInfoNCE(0.05)(base.expand(n, 2, M, d).contiguous())
    random = SpectralInfoNCE(0.05)(torch.randn(n, 2, M, d))
    assert aligned.item() < 0.05 < math.log(n) < random.item()


def test_symmetric_in_modalities_and_zero_without_pairs():
    torch.manual_seed(2)
    Z = torch.randn(6, 2, 3, 4)
    loss = SpectralInfoNCE(0.2)
    assert loss(Z).item() == pytest.approx(loss(Z.flip(1)).item(), rel=tol(torch.float32))
    assert loss(Z[:, :1]).item() == 0.0
    with pytest.raises(ValueError, match="tau"):
        SpectralInfoNCE(0.0)
