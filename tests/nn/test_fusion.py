"""CPFusion equals the ops reference; shapes, gradients, per-node independence."""
import pytest
import torch

from ssr_engine.nn import CPFusion, SkipCPFusion, SumFusion
from ssr_engine.ops import cp_fusion_reference
from tolerances import tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cp_fusion_matches_reference_and_dense_tensor(dtype):
    torch.manual_seed(0)
    f = CPFusion(n_slots=6, dim=8, rank=3, n_out=4).to(dtype)
    with torch.no_grad():
        f.w.normal_()
    H = torch.randn(11, 6, 8, dtype=dtype)
    out = f(H)
    ref = cp_fusion_reference(H, f.K, f.V, f.Q, f.w, f.eps)
    assert out.shape == (11, 8)
    assert torch.allclose(out, ref, rtol=tol(dtype), atol=tol(dtype))
    # The CP form equals the dense band-interaction tensor W[o,s] = Q_o diag(V_os) K_s^T.
    W = torch.einsum("oir,osr,sjr->osij", f.Q, f.V, f.K)
    Z = torch.einsum("osij,nsj->noi", W, H)
    g = torch.softmax(Z @ f.w, dim=1)
    dense = (g.unsqueeze(-1) * Z * torch.rsqrt(Z.pow(2).mean(-1, keepdim=True) + f.eps)).sum(1)
    assert torch.allclose(out, dense, rtol=10 * tol(dtype), atol=10 * tol(dtype))


def test_gradients_reach_every_factor():
    torch.manual_seed(1)
    f = CPFusion(4, 8, 2)
    H = torch.randn(5, 4, 8, requires_grad=True)
    (f(H) * torch.randn(5, 8)).sum().backward()
    for name, p in [("H", H)] + list(f.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_batched_equals_per_node():
    torch.manual_seed(2)
    f = CPFusion(3, 8, 4)
    H = torch.randn(7, 3, 8)
    out = f(H)
    single = torch.cat([f(H[i:i + 1]) for i in range(7)])
    assert torch.allclose(out, single, rtol=tol(torch.float32), atol=tol(torch.float32))


def test_shape_errors():
    f = CPFusion(3, 8, 4)
    with pytest.raises(ValueError, match=r"\[n, 3, 8\]"):
        f(torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match=">= 1"):
        CPFusion(0, 8, 4)


def test_slot_scales_fold_into_every_fusion():
    torch.manual_seed(3)
    H, a = torch.randn(4, 5, 8), torch.rand(5) + 0.5
    sk = SkipCPFusion(5, 8, 3)
    with torch.no_grad():
        sk.gamma.fill_(0.7)
    for f in (CPFusion(5, 8, 3), sk, SumFusion()):
        assert torch.allclose(f(H, a), f(H * a[:, None]), rtol=tol(torch.float32),
                              atol=tol(torch.float32))
    assert torch.allclose(SumFusion()(H), H.sum(1))
    want = H.sum(1) + 0.7 * sk.cp(H)
    assert torch.allclose(sk(H), want, atol=tol(torch.float32))


def _dense(f):
    """The band-interaction tensor ``W[o, s] = Q_o diag(V_os) K_sᵀ`` formed explicitly."""
    return torch.einsum("oir,osr,sjr->osij", f.Q, f.V, f.K)


@pytest.mark.parametrize("gates,normalise", [(True, False), (False, True), (False, False)])
def test_variants_equal_the_dense_tensor_with_their_output_weights(gates, normalise):
    torch.manual_seed(4)
    f = CPFusion(6, 8, 3, n_out=2, gates=gates, normalise=normalise).double()
    with torch.no_grad():
        f.w.normal_()
    H = torch.randn(9, 6, 8, dtype=torch.float64)
    Z = torch.einsum("osij,nsj->noi", _dense(f), H)
    c = torch.ones(9, 2, dtype=torch.float64)
    if gates:
        c = c * torch.softmax(Z @ f.w, dim=1) * (1 if normalise else 2)
    if normalise:
        c = c / torch.sqrt(Z.pow(2).mean(-1) + f.eps)
    assert torch.allclose(f(H), (c.unsqueeze(-1) * Z).sum(1), atol=1e-12)
    a = torch.rand(6, dtype=torch.float64) + 0.5
    assert torch.allclose(f(H, a), f(H * a[:, None]), atol=1e-12)


@pytest.mark.parametrize("n_out", [1, 2, 4])
def test_identity_init_is_the_band_map_and_starts_as_the_sum(n_out):
    # 2 modalities x 4 bands; slot s = j*4 + b goes to output band floor(b * O / 4).
    bands = [0, 1, 2, 3, 0, 1, 2, 3]
    f = CPFusion(8, 6, 7, n_out=n_out, init="identity", normalise=False, band_of_slot=bands)
    W = _dense(f)
    for o in range(n_out):
        for s, b in enumerate(bands):
            want = torch.eye(6) if b * n_out // 4 == o else torch.zeros(6, 6)
            assert torch.equal(W[o, s], want), (o, s)
    H = torch.randn(5, 8, 6)
    assert torch.allclose(f(H), H.sum(1), atol=1e-6)                 # gates uniform at w = 0
    # the same without gates; with the scale normalisation each output band is rescaled
    g = CPFusion(8, 6, 6, n_out=4, init="identity", gates=False, normalise=False,
                 band_of_slot=bands)
    assert torch.allclose(g(H), H.sum(1), atol=1e-6)


def test_identity_init_refuses_a_rank_below_dim_and_missing_bands():
    with pytest.raises(ValueError, match="rank >= dim"):
        CPFusion(4, 8, 4, init="identity", band_of_slot=[0, 1, 0, 1])
    with pytest.raises(ValueError, match="band_of_slot"):
        CPFusion(4, 8, 8, init="identity")
    with pytest.raises(ValueError, match="init must be"):
        CPFusion(4, 8, 8, init="eye")
    with pytest.raises(ValueError, match="without a slot"):
        CPFusion(4, 8, 8, n_out=3, init="identity", band_of_slot=[0, 1, 0, 1])


def test_penalty_is_never_negative_in_float32():
    # a tiny deviation from the identity anchor: the expansion ‖W‖² − 2⟨W, W⁰⟩ + ‖W⁰‖²
    # cancels to rounding level, which float32 arithmetic could push below 0
    for seed in range(20):
        torch.manual_seed(seed)
        f = CPFusion(40, 16, 16, n_out=4, init="identity", band_of_slot=[b % 4 for b in range(40)])
        with torch.no_grad():
            f.K.add_(1e-5 * torch.randn_like(f.K))
        W0 = torch.einsum("oir,osr,sjr->osij", f.Q0, f.V0, f.K0).double()
        want = (_dense(f).double() - W0).pow(2).sum() / (40 * 16)
        got = f.penalty()
        assert got.dtype == torch.float32 and float(got) >= 0.0
        assert float(got) == pytest.approx(float(want), rel=1e-3, abs=1e-12)


def test_penalty_is_the_distance_of_the_dense_tensor_from_its_anchor():
    torch.manual_seed(5)
    S, d = 4, 5
    # random init: anchor 0, so the penalty is ||W||_F^2 / (S d)
    f = CPFusion(S, d, 3, n_out=2).double()
    assert torch.allclose(f.penalty(), _dense(f).pow(2).sum() / (S * d), rtol=1e-12)
    # identity init: 0 at the start; K = 2 [I, 0] gives W = 2 I on each slot's band, so the
    # distance is ||I||^2 = d per slot and the penalty 1
    g = CPFusion(S, d, 6, n_out=2, init="identity", band_of_slot=[0, 1, 0, 1]).double()
    assert float(g.penalty()) == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        g.K.mul_(2)
    assert float(g.penalty()) == pytest.approx(1.0, rel=1e-12)
    # any perturbation: equals the explicit distance, and its gradient reaches every factor
    with torch.no_grad():
        for p in (g.K, g.V, g.Q):
            p.add_(0.1 * torch.randn_like(p))
    W0 = torch.einsum("oir,osr,sjr->osij", g.Q0, g.V0, g.K0)
    want = (_dense(g) - W0).pow(2).sum() / (S * d)
    pen = g.penalty()
    assert torch.allclose(pen, want, rtol=1e-10)
    pen.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (g.K, g.V, g.Q))
    sk = SkipCPFusion(S, d, 6, n_out=2, init="identity", band_of_slot=[0, 1, 0, 1])
    assert float(sk.penalty()) == pytest.approx(0.0, abs=1e-6)
