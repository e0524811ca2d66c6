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
