"""Backend choice: auto, explicit, the SSR_BACKEND override and unsupported dtypes."""
import pytest
import torch

from ssr_engine.ops import resolve_backend


def test_auto_picks_torch_on_cpu(monkeypatch):
    monkeypatch.delenv("SSR_BACKEND", raising=False)
    assert resolve_backend("auto", torch.zeros(2)) == "torch"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_picks_triton_on_cuda_but_torch_for_float64(monkeypatch):
    monkeypatch.delenv("SSR_BACKEND", raising=False)
    assert resolve_backend("auto", torch.zeros(2, device="cuda")) == "triton"
    assert resolve_backend("auto", torch.zeros(2, device="cuda", dtype=torch.float64)) == "torch"


def test_env_override(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("SSR_BACKEND", "torch")
    assert resolve_backend("auto", torch.zeros(2)) == "torch"
    monkeypatch.setenv("SSR_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("auto", torch.zeros(2)) == "triton"
    # float64 stays on torch even when the environment asks for Triton
    assert resolve_backend("auto", torch.zeros(2, dtype=torch.float64)) == "torch"
    monkeypatch.setenv("SSR_BACKEND", "cuda")
    with pytest.raises(ValueError, match="SSR_BACKEND"):
        resolve_backend("auto", torch.zeros(2))


def test_auto_picks_numba_on_cpu_for_ops_that_have_a_kernel(monkeypatch):
    pytest.importorskip("numba")
    monkeypatch.delenv("SSR_BACKEND", raising=False)
    assert resolve_backend("auto", torch.zeros(2), numba=True) == "numba"
    assert resolve_backend("auto", torch.zeros(2, dtype=torch.float64), numba=True) == "numba"
    assert resolve_backend("auto", torch.zeros(2, dtype=torch.float16), numba=True) == "torch"
    monkeypatch.setenv("SSR_BACKEND", "torch")
    assert resolve_backend("auto", torch.zeros(2), numba=True) == "torch"
    monkeypatch.setenv("SSR_BACKEND", "numba")
    assert resolve_backend("auto", torch.zeros(2), numba=True) == "numba"
    assert resolve_backend("auto", torch.zeros(2)) == "torch"       # no numba kernel
    # an override the op cannot take falls back to the default choice
    monkeypatch.setenv("SSR_BACKEND", "triton")
    assert resolve_backend("auto", torch.zeros(2), numba=True, triton=False) == "numba"


def test_explicit_errors(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("cupy", torch.zeros(2))
    with pytest.raises(ValueError, match="no numba kernel"):
        resolve_backend("numba", torch.zeros(2))
    with pytest.raises(ValueError, match="no Triton kernel"):
        resolve_backend("triton", torch.zeros(2), numba=True, triton=False)
    pytest.importorskip("triton")
    with pytest.raises(TypeError, match="float64"):
        resolve_backend("triton", torch.zeros(2, dtype=torch.float64))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CUDA"):
        resolve_backend("triton", torch.zeros(2))
