"""Band projection fused with CP fusion: kernels and torch path against the plain reference."""
import pytest
import torch

from ssr_engine.ops import band_cp_fusion, band_cp_fusion_reference
from tolerances import tol

triton = pytest.importorskip("triton")


def problem(N, n, k, edges, Mb, S_R, d, r, O, index_dtype, seed=0):
    """Inputs in float64: differentiable factors, and the constant basis / index."""
    g = torch.Generator().manual_seed(seed)
    f = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)
    B = len(edges) - 1 if edges else 0
    S = Mb * B + S_R
    diff = {"K": f(S, d, r) / d ** 0.5, "V": f(O, S, r) / S ** 0.5, "Q": f(O, d, r) / r ** 0.5,
            "w": f(d)}
    const = {"band_ptr": edges}
    if edges:
        const["basis"] = f(N, k) / k ** 0.5
        diff["coef"] = f(Mb, k, d)
    if S_R:
        diff["bands"] = f(S_R, N, d)
    if index_dtype is not None:
        const["index"] = torch.randint(0, N, (n,), generator=g).to(index_dtype)
    return diff, const


def run(fn, diff, const, conv, grad_out=None, **kw):
    ins = {k: conv(v).requires_grad_() for k, v in diff.items()}
    cst = {k: (conv(v) if k == "basis" else v) for k, v in const.items()}
    out = fn(ins["K"], ins["V"], ins["Q"], ins["w"], coef=ins.get("coef"),
             bands=ins.get("bands"), **cst, **kw)
    if grad_out is None:
        return out, None
    grads = torch.autograd.grad(out, list(ins.values()), grad_out.to(out))
    return out, dict(zip(ins, grads))


CASES = {  # N, n, k, band edges, modalities, row slots, d, r, O, index dtype
    "mixed": (40, 63, 10, [0, 3, 3, 10], 2, 1, 5, 3, 2, torch.int64),
    "basis-all-nodes": (130, 130, 64, [0, 16, 40, 64], 3, 0, 64, 16, 4, None),
    "rows-one-node": (50, 1, 0, None, 0, 3, 8, 4, 2, torch.int32),
    "partial-basis": (90, 70, 37, [5, 20, 30], 1, 2, 20, 6, 3, torch.int32),
}


@pytest.mark.parametrize("case,dtype", [(c, torch.float32) for c in CASES]
                         + [("mixed", torch.bfloat16), ("partial-basis", torch.bfloat16)])
def test_kernel_matches_reference(case, dtype, device, rel_err):
    diff, const = problem(*CASES[case])
    low = lambda t: t.to(dtype).double()                    # inputs as the kernel sees them
    gout = torch.randn(CASES[case][1], CASES[case][6], dtype=torch.float64,
                       generator=torch.Generator().manual_seed(1))
    ref, ref_g = run(band_cp_fusion_reference, diff, const, low, grad_out=gout)
    dev_const = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in const.items()}
    out, g = run(band_cp_fusion, diff, dev_const, lambda t: t.to(device, dtype), grad_out=gout,
                 backend="triton")
    assert out.dtype == dtype
    # the same computation in plain torch at float32 bounds what the problem's conditioning allows
    t32, t32_g = run(band_cp_fusion_reference, diff, const, lambda t: t.to(dtype).float(),
                     grad_out=gout)
    errs = {"h": (rel_err(out, ref), rel_err(t32, ref))}
    errs.update({k: (rel_err(g[k], ref_g[k]), rel_err(t32_g[k], ref_g[k])) for k in g})
    bad = {k: e for k, (e, e32) in errs.items() if not e < max(tol(dtype), 4 * e32)}
    assert not bad, f"relative errors above {tol(dtype)} (and 4x torch float32): {bad}"


@pytest.mark.parametrize("case", CASES)
def test_torch_path_matches_reference(case, rel_err):
    diff, const = problem(*CASES[case], seed=3)
    gout = torch.randn(CASES[case][1], CASES[case][6], dtype=torch.float64,
                       generator=torch.Generator().manual_seed(2))
    ref, ref_g = run(band_cp_fusion_reference, diff, const, lambda t: t.clone(), grad_out=gout)
    out, g = run(band_cp_fusion, diff, const, lambda t: t.clone(), grad_out=gout,
                 backend="torch")
    assert rel_err(out, ref) < tol(torch.float64)
    for k in g:
        assert rel_err(g[k], ref_g[k]) < tol(torch.float64), k


def test_kernel_writes_every_output(device):
    from ssr_engine.kernels.cp_fusion import fusion_forward
    N, k, d, r, O, S = 80, 20, 8, 4, 2, 3
    U = torch.randn(N, k, device=device)
    W = torch.randn(S, k, r, device=device)
    lo = torch.tensor([0, 7, 7], dtype=torch.int32, device=device)
    hi = torch.tensor([7, 20, 7], dtype=torch.int32, device=device)
    V, Q, w = (torch.randn(O, S, r, device=device), torch.randn(O, d, r, device=device),
               torch.randn(d, device=device))
    index = torch.arange(N - 1, -1, -1, device=device)
    out = torch.full((N, d), float("nan"), device=device)
    fusion_forward(N, V, Q, w, 1e-6, index=index, U=U, W=W, lo=lo, hi=hi, out=out)
    assert not out.isnan().any()


def test_example_shapes_and_empty_index():
    diff, const = problem(*CASES["mixed"])
    const["index"] = const["index"][:0]
    out = band_cp_fusion(diff["K"], diff["V"], diff["Q"], diff["w"], coef=diff["coef"],
                         bands=diff["bands"], **const)
    assert out.shape == (0, 5)


def test_validation():
    diff, const = problem(*CASES["mixed"])
    K, V, Q, w = diff["K"], diff["V"], diff["Q"], diff["w"]
    kw = dict(coef=diff["coef"], bands=diff["bands"], **const)
    with pytest.raises(ValueError, match="give the basis slots"):
        band_cp_fusion(K, V, Q, w)
    with pytest.raises(ValueError, match="go together"):
        band_cp_fusion(K, V, Q, w, basis=const["basis"], bands=diff["bands"])
    with pytest.raises(ValueError, match="non-decreasing"):
        band_cp_fusion(K, V, Q, w, **dict(kw, band_ptr=[0, 5, 3, 10]))
    with pytest.raises(ValueError, match="index values"):
        band_cp_fusion(K, V, Q, w, **dict(kw, index=torch.tensor([0, 40])))
    with pytest.raises(ValueError, match="no gradient"):
        band_cp_fusion(K, V, Q, w, **dict(kw, basis=const["basis"].clone().requires_grad_()))
    with pytest.raises(ValueError, match="shape mismatch"):
        band_cp_fusion(K[:-1], V, Q, w, **kw)
    with pytest.raises(ValueError, match="bands must be"):
        band_cp_fusion(K, V, Q, w, **dict(kw, bands=diff["bands"][:, :10]))
