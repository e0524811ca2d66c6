"""Linear operators on ``[N, B]`` blocks: ``y = scale * (M @ x) + shift * x``.

One class, :class:`Operator`, serves every graph operator of the engine (normalised
adjacency, Laplacian, the scaled Laplacian of Chebyshev work and the bipartite R̃) and any
user-supplied matrix: a torch sparse tensor (CSR or COO), a scipy sparse matrix or a dense
tensor / array. It keeps the matrix as a torch CSR (or dense) tensor on one device in one
dtype, multiplies blocks with one SpMM, and exports itself as a
:class:`scipy.sparse.linalg.LinearOperator` for scipy's solvers.
"""
from __future__ import annotations

import warnings
from typing import Optional, Union

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

__all__ = ["Operator", "FunctionOperator", "as_operator", "csr_tensor"]

ArrayLike = Union[torch.Tensor, np.ndarray]


def csr_tensor(matrix: sp.spmatrix, dtype: torch.dtype = torch.float32,
               device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """Convert a scipy sparse matrix to a torch CSR tensor.

    Indices are int32 while the number of nonzeros fits, int64 beyond.

    Args:
        matrix: any scipy sparse matrix ``[m, n]``.
        dtype: value dtype of the result.
        device: torch device of the result.

    Returns:
        A ``torch.sparse_csr`` tensor ``[m, n]``.
    """
    m = sp.csr_matrix(matrix)
    m.sum_duplicates()
    index_dtype = np.int32 if m.nnz < 2**31 - 1 else np.int64
    crow = torch.from_numpy(m.indptr.astype(index_dtype, copy=False))
    col = torch.from_numpy(m.indices.astype(index_dtype, copy=False))
    val = torch.from_numpy(np.asarray(m.data)).to(dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        out = torch.sparse_csr_tensor(crow, col, val, size=m.shape, check_invariants=False)
    return out.to(device) if device is not None else out


class Operator:
    """``y = scale * (M @ x) + shift * x`` for a sparse or dense matrix ``M``.

    Args:
        matrix: ``[m, n]`` torch CSR or dense tensor.
        scale: multiplies ``M @ x``.
        shift: multiplies the identity; only for square operators.
        transpose: optional ``[n, m]`` CSR of ``M.T`` (used by :meth:`rmatmul`); built on
            first use when absent.
        symmetric: whether the operator is known to be symmetric.

    Shapes:
        ``matmul``: ``[n]`` or ``[n, B]`` -> ``[m]`` or ``[m, B]``.

    Example:
        >>> import torch, ssr_engine
        >>> g = ssr_engine.InteractionGraph([0, 1, 1], [0, 0, 1])
        >>> L = g.laplacian(dtype=torch.float64)
        >>> y = L @ torch.ones(4, 2, dtype=torch.float64)
        >>> y.shape
        torch.Size([4, 2])
    """

    def __init__(self, matrix: torch.Tensor, scale: float = 1.0, shift: float = 0.0,
                 transpose: Optional[torch.Tensor] = None, symmetric: bool = False):
        if matrix.dim() != 2:
            raise ValueError(f"operator matrix must be 2-D, got shape {tuple(matrix.shape)}")
        if shift != 0.0 and matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"a shifted operator must be square, got shape {tuple(matrix.shape)}")
        self.matrix = matrix
        self.scale = float(scale)
        self.shift = float(shift)
        self.symmetric = bool(symmetric)
        self._transpose = transpose

    # -- description -------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return tuple(self.matrix.shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    @property
    def is_sparse(self) -> bool:
        return self.matrix.layout == torch.sparse_csr

    @property
    def nnz(self) -> int:
        return int(self.matrix.values().numel()) if self.is_sparse else self.matrix.numel()

    def __repr__(self) -> str:
        kind = f"csr, nnz={self.nnz}" if self.is_sparse else "dense"
        return (f"Operator(shape={self.shape}, {kind}, scale={self.scale:g}, "
                f"shift={self.shift:g}, dtype={self.dtype}, device={self.device})")

    # -- products ----------------------------------------------------------------------
    def _prepare(self, x: ArrayLike, n: int):
        as_numpy = isinstance(x, np.ndarray)
        xt = torch.from_numpy(x) if as_numpy else x
        if not isinstance(xt, torch.Tensor):
            raise TypeError(f"expected a torch tensor or numpy array, got {type(x).__name__}")
        if xt.dim() not in (1, 2) or xt.shape[0] != n:
            raise ValueError(f"operator with {n} columns cannot multiply a block of shape "
                             f"{tuple(xt.shape)}; expected [{n}] or [{n}, B]")
        vec = xt.dim() == 1
        xt = xt.reshape(n, -1).to(device=self.device, dtype=self.dtype)
        return xt, vec, as_numpy, (x.dtype if as_numpy else None)

    @staticmethod
    def _finish(y: torch.Tensor, vec: bool, as_numpy: bool, np_dtype):
        if vec:
            y = y[:, 0]
        return y.cpu().numpy().astype(np_dtype, copy=False) if as_numpy else y

    @staticmethod
    def _product(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 0:
            return x.new_zeros(m.shape[0], 0)
        return m @ x

    def matmul(self, x: ArrayLike) -> ArrayLike:
        """Return ``scale * M @ x + shift * x`` for ``x`` of shape ``[n]`` or ``[n, B]``.

        A numpy input gives a numpy output of the same dtype; a torch input a tensor of the
        operator's dtype on its device.
        """
        xt, vec, as_numpy, np_dtype = self._prepare(x, self.shape[1])
        y = self._product(self.matrix, xt.contiguous())
        if self.scale != 1.0:
            y.mul_(self.scale)
        if self.shift != 0.0:
            y.add_(xt, alpha=self.shift)
        return self._finish(y, vec, as_numpy, np_dtype)

    def __matmul__(self, x: ArrayLike) -> ArrayLike:
        return self.matmul(x)

    def __call__(self, x: ArrayLike) -> ArrayLike:
        return self.matmul(x)

    def transpose_matrix(self) -> torch.Tensor:
        """``M.T`` as a CSR (or dense) tensor, built once and kept."""
        if self._transpose is None:
            if self.is_sparse:
                self._transpose = self.matrix.t().to_sparse_csr() if self.matrix.device.type != "cpu" \
                    else csr_tensor(self.to_scipy(unscaled=True).T, self.dtype, self.device)
            else:
                self._transpose = self.matrix.t().contiguous()
        return self._transpose

    def rmatmul(self, y: ArrayLike) -> ArrayLike:
        """Return ``(scale * M + shift * I).T @ y`` for ``y`` of shape ``[m]`` or ``[m, B]``."""
        if self.symmetric:
            return self.matmul(y)
        yt, vec, as_numpy, np_dtype = self._prepare(y, self.shape[0])
        x = self._product(self.transpose_matrix(), yt.contiguous())
        if self.scale != 1.0:
            x.mul_(self.scale)
        if self.shift != 0.0:
            x.add_(yt, alpha=self.shift)
        return self._finish(x, vec, as_numpy, np_dtype)

    @property
    def T(self) -> "Operator":
        """The transposed operator (shares storage)."""
        if self.symmetric:
            return self
        return Operator(self.transpose_matrix(), self.scale, self.shift, transpose=self.matrix)

    # -- conversions -------------------------------------------------------------------
    def to(self, dtype: Optional[torch.dtype] = None,
           device: Union[str, torch.device, None] = None) -> "Operator":
        """A copy in another dtype and/or on another device."""
        tr = self._transpose
        conv = lambda t: None if t is None else t.to(device=device or t.device, dtype=dtype or t.dtype)
        return Operator(conv(self.matrix), self.scale, self.shift, conv(tr), self.symmetric)

    def to_scipy(self, unscaled: bool = False) -> sp.csr_matrix:
        """The operator as a scipy CSR matrix (float64). ``unscaled`` returns ``M`` alone."""
        m = self.matrix.cpu()
        if self.is_sparse:
            out = sp.csr_matrix((m.values().double().numpy(), m.col_indices().numpy(),
                                 m.crow_indices().numpy()), shape=self.shape)
        else:
            out = sp.csr_matrix(m.double().numpy())
        if unscaled:
            return out
        out = out * self.scale
        if self.shift != 0.0:
            out = (out + self.shift * sp.identity(self.shape[0], format="csr")).tocsr()
        return out

    def to_dense(self) -> torch.Tensor:
        """The operator as a dense tensor; only sensible for small operators."""
        m = self.matrix.to_dense() if self.is_sparse else self.matrix.clone()
        m = m * self.scale
        if self.shift != 0.0:
            m += self.shift * torch.eye(self.shape[0], dtype=m.dtype, device=m.device)
        return m

    def as_linear_operator(self) -> spla.LinearOperator:
        """A :class:`scipy.sparse.linalg.LinearOperator` view (numpy in, numpy out)."""
        np_dtype = np.float64 if self.dtype == torch.float64 else np.float32
        return spla.LinearOperator(self.shape, matvec=self.matmul, matmat=self.matmul,
                                   rmatvec=self.rmatmul, rmatmat=self.rmatmul, dtype=np_dtype)

    def to_pylops(self):
        """The operator as a ``pylops.LinearOperator`` (numpy in, numpy out; needs pylops,
        ``pip install pylops``), to use it inside pylops solvers and compositions.

        Example:
            >>> import numpy as np, torch, ssr_engine
            >>> g = ssr_engine.InteractionGraph([0, 1, 1], [0, 0, 1])
            >>> L = g.laplacian(dtype=torch.float64)
            >>> P = L.to_pylops()
            >>> P.shape, bool(np.allclose(P @ np.ones(4), L @ np.ones(4)))
            ((4, 4), True)
        """
        try:
            import pylops
        except ImportError as e:                 # optional dependency
            raise ImportError("to_pylops needs pylops: pip install pylops") from e
        return pylops.LinearOperator(Op=self.as_linear_operator())


class FunctionOperator(Operator):
    """A matrix-free operator given by its products, e.g. a ``pylops.LinearOperator`` or a
    ``scipy.sparse.linalg.LinearOperator`` (what :func:`as_operator` makes of them).

    Products go through numpy on the CPU: the wrapped object is called with ``[n, B]``
    arrays of its dtype (``matmat``, or ``matvec`` per column when it has no ``matmat``).

    Args:
        linop: an object with ``shape``, ``matvec`` (and optionally ``matmat``, ``rmatvec``,
            ``rmatmat``).
        dtype: torch dtype of the products (default: from ``linop.dtype``, else float64).
        symmetric: whether the operator is known to be symmetric.
    """

    def __init__(self, linop, dtype: Optional[torch.dtype] = None, symmetric: bool = False):
        shape = tuple(int(x) for x in linop.shape)
        if len(shape) != 2:
            raise ValueError(f"expected a 2-D operator, got shape {shape}")
        if dtype is None:
            dtype = torch.float32 if np.dtype(getattr(linop, "dtype", np.float64)) == \
                np.float32 else torch.float64
        self.linop, self._shape, self._dtype = linop, shape, dtype
        self.scale, self.shift, self.symmetric = 1.0, 0.0, bool(symmetric)
        self.matrix, self._transpose = None, None

    @property
    def shape(self) -> tuple:
        return self._shape

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def is_sparse(self) -> bool:
        return False

    @property
    def nnz(self) -> int:
        """Unknown for a matrix-free operator: the dense size, an upper bound."""
        return self._shape[0] * self._shape[1]

    def __repr__(self) -> str:
        return (f"FunctionOperator(shape={self.shape}, {type(self.linop).__name__}, "
                f"dtype={self.dtype})")

    def _apply(self, x: ArrayLike, transpose: bool) -> ArrayLike:
        m, n = self._shape if not transpose else self._shape[::-1]
        xt, vec, as_numpy, np_dtype = self._prepare(x, n)
        arr = xt.detach().cpu().numpy()
        mat = getattr(self.linop, "rmatmat" if transpose else "matmat", None)
        one = getattr(self.linop, "rmatvec" if transpose else "matvec", None)
        if mat is not None:
            y = np.asarray(mat(arr))
        elif one is not None:
            y = np.stack([np.asarray(one(arr[:, j])) for j in range(arr.shape[1])], axis=1)
        else:
            raise TypeError(f"{type(self.linop).__name__} has no "
                            f"{'rmatvec' if transpose else 'matvec'}")
        y = torch.from_numpy(np.ascontiguousarray(y.reshape(m, -1))).to(self.dtype)
        return self._finish(y, vec, as_numpy, np_dtype)

    def matmul(self, x: ArrayLike) -> ArrayLike:
        return self._apply(x, False)

    def rmatmul(self, y: ArrayLike) -> ArrayLike:
        return self.matmul(y) if self.symmetric else self._apply(y, True)

    @property
    def T(self) -> "Operator":
        raise TypeError("a matrix-free operator has no transpose matrix; use rmatmul")

    def to(self, dtype: Optional[torch.dtype] = None,
           device: Union[str, torch.device, None] = None) -> "Operator":
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError("a matrix-free operator computes on the CPU (numpy)")
        return FunctionOperator(self.linop, dtype or self.dtype, self.symmetric)

    def to_scipy(self, unscaled: bool = False) -> sp.csr_matrix:
        raise TypeError("a matrix-free operator has no sparse matrix; use as_linear_operator")

    def to_dense(self) -> torch.Tensor:
        return self.matmul(torch.eye(self._shape[1], dtype=self.dtype))


def as_operator(a, dtype: Optional[torch.dtype] = None,
                device: Union[str, torch.device, None] = None,
                symmetric: bool = False) -> Operator:
    """Wrap a matrix-like object as an :class:`Operator`.

    Args:
        a: an :class:`Operator`, a torch sparse (CSR/COO) or dense tensor, a scipy sparse
            matrix, a numpy array, or a matrix-free ``pylops.LinearOperator`` /
            ``scipy.sparse.linalg.LinearOperator`` (wrapped as a :class:`FunctionOperator`);
            ``[m, n]``.
        dtype: value dtype (default: the input's floating dtype, float32 for scipy/numpy
            float32 and float64 for float64 input).
        device: torch device (default: the input's, CPU for scipy/numpy).
        symmetric: whether ``a`` is symmetric (saves building the transpose).

    Returns:
        An :class:`Operator`.

    Example:
        >>> import scipy.sparse as sp, torch
        >>> from ssr_engine import as_operator
        >>> op = as_operator(sp.identity(3, format="csr"), dtype=torch.float64)
        >>> (op @ torch.ones(3, dtype=torch.float64)).tolist()
        [1.0, 1.0, 1.0]
    """
    if isinstance(a, Operator):
        return a if dtype is None and device is None else a.to(dtype=dtype, device=device)
    if sp.issparse(a):
        dt = dtype or (torch.float64 if a.dtype == np.float64 else torch.float32)
        return Operator(csr_tensor(a, dt, device), symmetric=symmetric)
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(a)
    if isinstance(a, torch.Tensor):
        if a.dim() != 2:
            raise ValueError(f"expected a 2-D matrix, got shape {tuple(a.shape)}")
        dt = dtype or (a.dtype if a.dtype.is_floating_point else torch.float32)
        if a.layout in (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc):
            m = a.to_sparse_csr() if a.layout != torch.sparse_csr else a
            m = m.to(dtype=dt, device=device or m.device)
        elif a.layout == torch.strided:
            m = a.to(dtype=dt, device=device or a.device)
        else:
            raise TypeError(f"unsupported tensor layout {a.layout}")
        return Operator(m, symmetric=symmetric)
    if hasattr(a, "matvec") and hasattr(a, "shape"):       # pylops / scipy LinearOperator
        return FunctionOperator(a, dtype, symmetric)
    raise TypeError(f"cannot make an operator from {type(a).__name__}; pass a torch tensor, "
                    "a scipy sparse matrix or LinearOperator, a pylops LinearOperator, a "
                    "numpy array or an ssr_engine.Operator")
