"""The decomposition loss: cross-band correlation of each node's band slots."""
import math

import pytest
import torch

from ssr_engine.nn import decomposition_loss


def test_known_values():
    e = torch.eye(4, dtype=torch.float64)
    assert float(decomposition_loss(e.expand(3, 4, 4), [0, 1, 2, 3])) == 0.0
    assert float(decomposition_loss(torch.ones(3, 4, 5), [0, 1, 2, 3])) == pytest.approx(1.0)
    # two slots at 60 degrees: cos^2 = 1/4
    H = torch.tensor([[[1.0, 0.0], [0.5, math.sqrt(3) / 2]]])
    assert float(decomposition_loss(H, [0, 1])) == pytest.approx(0.25)
    # random directions in R^d: E cos^2 = 1/d
    torch.manual_seed(0)
    d = 32
    v = float(decomposition_loss(torch.randn(4000, 3, d, dtype=torch.float64), [0, 1, 2]))
    assert v == pytest.approx(1 / d, rel=0.05)


def test_same_band_pairs_and_zero_slots_do_not_count():
    # slots 0 and 1 are one band in two modalities (parallel), slot 2 another band
    H = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]]])
    assert float(decomposition_loss(H, [0, 0, 1])) == 0.0
    assert float(decomposition_loss(H, [0, 1, 2])) == pytest.approx(1 / 3)
    Z = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    assert float(decomposition_loss(Z, [0, 1])) == 0.0
    assert float(decomposition_loss(H, [0, 0, 0])) == 0.0          # one band: no pairs
    half = Z.half().requires_grad_()                                 # 1e-12 underflows there
    v = decomposition_loss(half, [0, 1])
    v.backward()
    assert float(v) == 0.0 and torch.isfinite(half.grad).all()


def test_gradient_pushes_bands_apart():
    torch.manual_seed(1)
    H = torch.randn(16, 4, 8, requires_grad=True)
    before = float(decomposition_loss(H, [0, 1, 2, 3]).detach())
    opt = torch.optim.SGD([H], lr=5.0)
    for _ in range(100):
        opt.zero_grad()
        decomposition_loss(H, [0, 1, 2, 3]).backward()
        opt.step()
    assert float(decomposition_loss(H, [0, 1, 2, 3]).detach()) < 0.1 * before


def test_shape_error():
    with pytest.raises(ValueError, match="len\\(band_of_slot\\)"):
        decomposition_loss(torch.randn(2, 3, 4), [0, 1])
