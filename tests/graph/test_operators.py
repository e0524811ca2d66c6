import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ssr_engine import Operator, as_operator
from tolerances import tol


def random_sym(n=30, density=0.2, seed=0):
    m = sp.random(n, n, density=density, random_state=seed, format="csr")
    return (m + m.T).tocsr()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["scipy", "torch_csr", "torch_coo", "dense", "numpy"])
def test_as_operator_accepts_all_inputs(kind, dtype):
    m = random_sym()
    src = {"scipy": m, "torch_csr": torch.from_numpy(m.toarray()).to_sparse_csr(),
           "torch_coo": torch.from_numpy(m.toarray()).to_sparse(),
           "dense": torch.from_numpy(m.toarray()), "numpy": m.toarray()}[kind]
    op = as_operator(src, dtype=dtype)
    x = torch.randn(30, 4, dtype=dtype)
    ref = m.toarray() @ x.double().numpy()
    np.testing.assert_allclose((op @ x).double().numpy(), ref, rtol=tol(dtype), atol=tol(dtype))
    assert op.dtype == dtype


def test_scale_shift_vector_and_numpy_roundtrip():
    m = random_sym()
    op = Operator(as_operator(m, dtype=torch.float64).matrix, scale=-0.5, shift=2.0)
    x = np.random.default_rng(0).standard_normal(30)
    y = op @ x
    assert isinstance(y, np.ndarray) and y.shape == (30,)
    np.testing.assert_allclose(y, -0.5 * (m @ x) + 2.0 * x, atol=1e-12)
    np.testing.assert_allclose(op.to_scipy().toarray(), -0.5 * m.toarray() + 2 * np.eye(30))
    np.testing.assert_allclose(op.to_dense().numpy(), -0.5 * m.toarray() + 2 * np.eye(30))


def test_rectangular_transpose():
    m = sp.random(20, 7, density=0.3, random_state=1, format="csr")
    op = as_operator(m, dtype=torch.float64)
    y = torch.randn(20, 3, dtype=torch.float64)
    np.testing.assert_allclose(op.rmatmul(y).numpy(), m.T @ y.numpy(), atol=1e-12)
    np.testing.assert_allclose((op.T @ y).numpy(), m.T @ y.numpy(), atol=1e-12)
    assert op.T.shape == (7, 20)


def test_empty_block_and_shape_errors():
    op = as_operator(random_sym(), dtype=torch.float32)
    assert (op @ torch.zeros(30, 0)).shape == (30, 0)
    with pytest.raises(ValueError, match=r"expected \[30\] or \[30, B\]"):
        op @ torch.zeros(29, 2)
    with pytest.raises(ValueError, match="must be square"):
        Operator(torch.zeros(3, 4), shift=1.0)
    with pytest.raises(TypeError, match="cannot make an operator"):
        as_operator([[1, 2], [3, 4]])


def test_dtype_device_conversion_keeps_values():
    op = as_operator(random_sym(), dtype=torch.float64)
    op32 = op.to(dtype=torch.float32)
    x = torch.randn(30, 2, dtype=torch.float64)
    np.testing.assert_allclose((op32 @ x.float()).double().numpy(), (op @ x).numpy(),
                               rtol=tol(torch.float32), atol=tol(torch.float32))
