"""Band reliability, band mask (training only, shared across modalities), consistency loss."""
import pytest
import torch

from ssr_engine.nn import BandMask, BandReliability, consistency_loss


def test_reliability_starts_at_one_and_scales_bands():
    r = BandReliability(2, 3)
    assert torch.allclose(r.alpha, torch.ones(2, 3))
    with torch.no_grad():
        r.rho[1, 2] = 5.0
    H = torch.ones(4, 2, 3, 6)
    out = r(H)
    assert torch.allclose(out[:, 1, 2], torch.full((4, 6), float(r.alpha[1, 2].detach())))
    out.sum().backward()
    assert r.rho.grad.shape == (2, 3) and (r.rho.grad > 0).all()


def test_mask_is_off_at_eval_and_for_p_zero():
    H = torch.randn(3, 2, 4, 5)
    m = BandMask(4, p=0.5)
    m.eval()
    assert torch.equal(m(H), H)
    assert torch.equal(BandMask(4, p=0.0).train()(H), H)


def test_mask_drops_whole_bands_shared_by_modalities():
    torch.manual_seed(0)
    m = BandMask(6, p=0.5).train()
    H = torch.ones(3, 2, 6, 4)
    seen = set()
    for _ in range(20):
        out = m(H)
        # each band is either dropped or kept scaled by 1/(1-p), the same for every node
        # and modality
        per_band = out.permute(2, 0, 1, 3).reshape(6, -1)
        assert torch.all(per_band == per_band[:, :1])
        vals = set(per_band[:, 0].tolist())
        assert vals <= {0.0, 2.0}
        seen |= vals
    assert seen == {0.0, 2.0}


def test_mask_sample_per_node():
    """``sample(n=...)``: one independent draw per node, each entry 0 or 1/(1-p); ones when
    inactive."""
    torch.manual_seed(0)
    m = BandMask(4, p=0.5).train()
    z = m.sample(n=500)
    assert z.shape == (500, 4)
    assert set(z.unique().tolist()) == {0.0, 2.0}
    assert 0.4 < float((z == 0).float().mean()) < 0.6          # p of the entries dropped
    assert len({tuple(r) for r in z.tolist()}) > 8             # rows differ
    assert torch.equal(m.eval().sample(n=3), torch.ones(3, 4))


def test_mask_rejects_bad_p_and_shapes():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        BandMask(4, p=1.0)
    with pytest.raises(ValueError, match="n, m, 4, d"):
        BandMask(4, p=0.1)(torch.randn(2, 3, 5, 2))


def test_consistency_loss_zero_without_mask_and_positive_otherwise():
    x = torch.randn(5, 8)
    assert consistency_loss(x, x).item() == 0.0
    y = x.clone()
    y[0, 0] += 2.0
    assert consistency_loss(x, y).item() == pytest.approx(4.0 / 5)
    with pytest.raises(ValueError, match="differ in shape"):
        consistency_loss(x, x[:2])
