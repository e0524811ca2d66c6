"""G-HSNO CP fusion: Triton kernels (forward and every gradient) against the torch reference."""
import pytest
import torch

from ssr_engine.ops import cp_fusion, cp_fusion_reference
from tolerances import tol

triton = pytest.importorskip("triton")


def factors(n, S, d, r, O, seed=0):
    """H, K, V, Q, w in float64, scaled so the gates are neither flat nor saturated."""
    g = torch.Generator().manual_seed(seed)
    f = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)
    return [f(n, S, d), f(S, d, r) / d ** 0.5, f(O, S, r) / S ** 0.5, f(O, d, r) / r ** 0.5,
            f(d)]


def check_against_reference(ins, dtype, device, rel_err, eps=1e-6):
    low = [t.to(dtype) for t in ins]                      # what the kernel sees
    ref_in = [t.double().requires_grad_() for t in low]
    ref = cp_fusion_reference(*ref_in, eps=eps)
    grad = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref_g = torch.autograd.grad(ref, ref_in, grad)
    ker_in = [t.to(device).requires_grad_() for t in low]
    out = cp_fusion(*ker_in, eps=eps, backend="triton")
    assert out.dtype == dtype and out.shape == ref.shape
    ker_g = torch.autograd.grad(out, ker_in, grad.to(device, dtype))
    assert all(g.dtype == dtype for g in ker_g)
    # the same computation in plain torch at float32 bounds what the problem's conditioning allows
    t32_in = [t.float().requires_grad_() for t in low]
    t32 = cp_fusion_reference(*t32_in, eps=eps)
    t32_g = torch.autograd.grad(t32, t32_in, grad.float())
    errs = {"h": (rel_err(out, ref), rel_err(t32, ref))}
    errs.update({name: (rel_err(a, b), rel_err(c, b))
                 for name, a, b, c in zip("HKVQw", ker_g, ref_g, t32_g)})
    bad = {k: e for k, (e, e32) in errs.items() if not e < max(tol(dtype), 4 * e32)}
    assert not bad, f"relative errors above {tol(dtype)} (and 4x torch float32): {bad}"


@pytest.mark.parametrize("n,S,d,r,O", [(1, 3, 5, 3, 2), (63, 5, 20, 6, 3), (130, 12, 64, 16, 4),
                                       (1000, 2, 8, 4, 1)])
def test_kernel_float32(n, S, d, r, O, device, rel_err):
    check_against_reference(factors(n, S, d, r, O), torch.float32, device, rel_err)


@pytest.mark.parametrize("n,S,d,r,O", [(63, 5, 20, 6, 3), (64, 12, 64, 16, 4)])
def test_kernel_bfloat16(n, S, d, r, O, device, rel_err):
    check_against_reference(factors(n, S, d, r, O, seed=2), torch.bfloat16, device, rel_err)


def test_kernel_writes_every_output(device):
    from ssr_engine.kernels.cp_fusion import fusion_forward
    n, S, d, r, O = 70, 3, 24, 5, 3
    H, K, V, Q, w = [t.float().to(device) for t in factors(n, S, d, r, O)]
    out = torch.full((n, d), float("nan"), device=device)
    h, C = fusion_forward(n, V, Q, w, 1e-6, rows=H, row_stride=S * d, slot_stride=d, K=K,
                          store_c=True, out=out)
    assert h is out and not out.isnan().any() and not C.isnan().any()
    assert torch.allclose(out.cpu().double(), cp_fusion_reference(*factors(n, S, d, r, O)),
                          atol=10 * tol(torch.float32))


def test_kernel_without_grad_matches(device):
    ins = [t.float().to(device) for t in factors(50, 4, 16, 4, 2)]
    with torch.no_grad():
        out = cp_fusion(*ins, backend="triton")
    assert torch.allclose(out, cp_fusion_reference(*ins), atol=10 * tol(torch.float32))


def test_torch_backend_is_the_reference():
    ins = factors(20, 3, 8, 4, 2)
    assert torch.equal(cp_fusion(*ins, backend="torch"), cp_fusion_reference(*ins))


def test_validation():
    H, K, V, Q, w = factors(4, 3, 8, 4, 2)
    with pytest.raises(ValueError, match="shape mismatch"):
        cp_fusion(H, K[:2], V, Q, w)
    with pytest.raises(ValueError, match="H must be"):
        cp_fusion(H[0], K, V, Q, w)
    with pytest.raises(TypeError, match="one dtype"):
        cp_fusion(H.float(), K, V, Q, w)
    with pytest.raises(TypeError, match="float64"):
        cp_fusion(H, K, V, Q, w, backend="triton")
