"""Band features on disk: computed once, read by rows during training (DESIGN.md §3).

A band store is a folder holding one ``<modality>.npy`` per content modality, each
``[N, M, d_m]`` (node-major: a node's bands are one contiguous run, so a batch reads one run
per node and modality), the ID modality's eigenbasis ``basis.npy`` ``[N, K]`` (its eigenvalues
in the metadata), and a ``meta.json`` that is written last. :meth:`BandStore.source` turns it
into the :class:`~ssr_engine.nn.sources.BandSource` of an :class:`~ssr_engine.SSRModel`.
The arrays are memory-mapped for reading, so a training step touches only the rows of its
batch and the store may be larger than the memory the process keeps resident.

Writing is crash- and disk-safe: the space is checked with :func:`shutil.disk_usage` and
reserved with ``posix_fallocate`` before a byte is written (a full disk is an ``OSError``
with ``errno.ENOSPC`` and a clear message up front, never a ``SIGBUS`` from a mapped page);
data goes to ``*.npy.partial`` files that are renamed, and ``meta.json`` written atomically,
only when every modality is complete. A folder without a valid ``meta.json`` is not a store.
Several processes may fill disjoint rows of the same store (one creates it, the others
:meth:`BandWriter.attach`).
"""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
import zlib
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np
import torch

from ..nn.sources import BandSource, StoredRows
from .checkpoint import atomic_write

__all__ = ["BandStore", "BandWriter", "store_nbytes", "check_space", "key_diff"]

PathLike = Union[str, os.PathLike]
META = "meta.json"
FORMAT = "ssr-band-store-2"          # 2: the ID eigenbasis replaced the ID projection
# Space kept free beyond the store itself (checkpoints and logs still need room).
MARGIN_BYTES = 256 << 20
_DTYPES = {"float32": np.float32, "float16": np.float16}
#: file name (without ``.npy``) of the ID eigenbasis.
BASIS = "basis"


def _files(meta: Mapping[str, Any]) -> Dict[str, tuple]:
    """The store's arrays: file name -> shape (the content modalities, then the basis)."""
    N, M = int(meta["n_nodes"]), int(meta["n_bands"])
    out = {name: (N, M, int(d)) for name, d in meta["dims"].items()}
    if int(meta.get("basis", 0)):
        out[BASIS] = (N, int(meta["basis"]))
    return out


def store_nbytes(n_nodes: int, n_bands: int, dims: Mapping[str, int],
                 dtype: str = "float32", basis: int = 0) -> int:
    """Bytes of a store's arrays: ``N · (M · Σ_m d_m + K) · itemsize`` (``K = basis``).

    Example:
        >>> store_nbytes(1000, 4, {"image": 32, "text": 16}, basis=64)
        1024000
    """
    return int(n_nodes) * (int(n_bands) * sum(int(d) for d in dims.values()) + int(basis)) * \
        np.dtype(_DTYPES[dtype]).itemsize


def key_diff(saved: Mapping[str, Any], want: Mapping[str, Any]) -> str:
    """The entries in which two store keys differ, as ``"name: stored X vs now Y, ..."``
    (empty when they are equal).

    Example:
        >>> key_diff({"d0": 64, "seed": 0}, {"d0": 32, "seed": 0})
        'd0: stored 64 vs now 32'
    """
    saved, want = json.loads(json.dumps(saved)), json.loads(json.dumps(want))
    diff = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
    return ", ".join(f"{k}: stored {saved.get(k)!r} vs now {want.get(k)!r}" for k in diff)


def check_space(root: PathLike, nbytes: int, reclaimable: int = 0) -> None:
    """Raise ``OSError(ENOSPC)`` unless the disk of ``root`` (or of its nearest existing
    parent) has ``nbytes`` plus a margin free, counting ``reclaimable`` bytes that writing
    will release (an older store being replaced).

    Example:
        >>> check_space("/tmp", 1024)
    """
    path = Path(root)
    while not path.exists() and path != path.parent:
        path = path.parent
    free = shutil.disk_usage(path).free + int(reclaimable)
    if free < nbytes + MARGIN_BYTES:
        raise _no_space(Path(root), nbytes, free)


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _atomic_json(obj: Dict, path: Path) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, indent=1)


def _no_space(root: Path, need: int, free: int, cause: Optional[BaseException] = None) -> OSError:
    err = OSError(errno.ENOSPC,
                  f"the band store needs {_gb(need)} (plus {_gb(MARGIN_BYTES)} kept free) in "
                  f"{root} but only {_gb(free)} is free; free some space, put the store on "
                  f"another disk, or shrink it (fewer bands, smaller d0, float16 storage)")
    if cause is not None:
        err.__cause__ = cause
    return err


class BandStore:
    """Read access to a complete band store (use :meth:`open` or :meth:`BandWriter.commit`).

    Attributes:
        root: the store folder.
        meta: the ``meta.json`` content: ``"key"`` (what the bands were computed from),
            ``"n_nodes"``, ``"n_bands"``, ``"dims"``, ``"basis"`` (``K``), ``"dtype"`` and
            free-form ``"info"`` (the pipeline keeps the band plan under ``"plan"`` and the
            ID basis' eigenvalues under ``"id"``).
        modalities: content modality names in storage order.

    Shapes:
        ``rows(nodes [n])`` -> ``{name: [n, M, d_m]}`` float32; ``basis_rows(nodes [n])`` ->
        ``[n, K]``.

    Example:
        >>> import tempfile, torch
        >>> from ssr_engine.train.store import BandStore, BandWriter
        >>> root = tempfile.mkdtemp()
        >>> w = BandWriter.create(root, n_nodes=5, n_bands=2, dims={"text": 3}, key={"seed": 0},
        ...                       basis=4)
        >>> w.write("text", torch.ones(2, 5, 3))
        >>> w.write_basis(torch.eye(5, 4))
        >>> store = w.commit({"plan": {"edges": [0.0, 1.0, 2.0]},
        ...                   "id": {"eigenvalues": [0.0, 0.5, 1.5, 2.0], "partial": True}})
        >>> store.rows(torch.tensor([0, 4]))["text"].shape, store.basis_rows([0, 4]).shape
        (torch.Size([2, 2, 3]), torch.Size([2, 4]))
        >>> BandStore.open(root, key={"seed": 0}).n_nodes
        5
    """

    def __init__(self, root: PathLike, meta: Dict[str, Any]):
        self.root = Path(root)
        self.meta = meta
        self.modalities = list(meta["dims"])
        self._arrays = {}
        for name, want in _files(meta).items():
            path = self.root / f"{name}.npy"
            arr = np.load(path, mmap_mode="r")
            if arr.shape != want or arr.dtype != _DTYPES[meta["dtype"]]:
                raise ValueError(f"{path} holds {arr.dtype} {arr.shape}, meta.json says "
                                 f"{meta['dtype']} {want}; the store is damaged — delete "
                                 f"{self.root} to recompute it")
            self._arrays[name] = arr
        self._basis = self._arrays.pop(BASIS, None)
        if self._basis is not None:
            info = meta.get("info", {})
            lam = info.get("id", {}).get("eigenvalues")
            problem = None
            if "plan" not in info or lam is None:
                problem = "meta.json lacks the band plan or the ID basis' eigenvalues"
            elif len(lam) != self.basis_width:
                problem = (f"meta.json lists {len(lam)} eigenvalues for a basis of "
                           f"{self.basis_width} vectors")
            elif not all(math.isfinite(x) for x in lam):
                problem = "the ID basis' eigenvalues in meta.json are not all finite"
            elif any(b < a for a, b in zip(lam, lam[1:])):
                problem = "the ID basis' eigenvalues in meta.json are not ascending"
            if problem:
                raise ValueError(f"the band store in {self.root} is damaged ({problem}); delete "
                                 f"{self.root} to recompute it")

    @property
    def basis_width(self) -> int:
        return int(self.meta.get("basis", 0))

    @property
    def n_nodes(self) -> int:
        return int(self.meta["n_nodes"])

    @property
    def n_bands(self) -> int:
        return int(self.meta["n_bands"])

    @property
    def dims(self) -> Dict[str, int]:
        return {k: int(v) for k, v in self.meta["dims"].items()}

    @property
    def nbytes(self) -> int:
        return store_nbytes(self.n_nodes, self.n_bands, self.dims, self.meta["dtype"],
                            self.basis_width)

    def __repr__(self) -> str:
        return (f"BandStore({str(self.root)!r}, nodes={self.n_nodes}, bands={self.n_bands}, "
                f"dims={self.dims}, basis={self.basis_width}, {_gb(self.nbytes)})")

    @classmethod
    def open(cls, root: PathLike, key: Optional[Dict[str, Any]] = None) -> "BandStore":
        """Open a complete store, optionally requiring that it was computed from ``key``.

        Raises:
            FileNotFoundError: when ``root`` holds no complete store (no ``meta.json``).
            ValueError: when the store was computed from a different ``key`` (the differing
                entries are listed) or its files disagree with ``meta.json``.
        """
        root = Path(root)
        path = root / META
        if not path.is_file():
            raise FileNotFoundError(f"{root} holds no complete band store (no {META})")
        meta = json.loads(path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a band store of this version of ssr_engine "
                             f"(format {meta.get('format')!r}, expected {FORMAT!r})")
        if key is not None:
            diff = key_diff(meta["key"], key)
            if diff:
                raise ValueError(f"the band store in {root} was computed from other inputs "
                                 f"({diff})")
        return cls(root, meta)

    @classmethod
    def open_if_valid(cls, root: PathLike, key: Dict[str, Any]) -> Optional["BandStore"]:
        """The store in ``root`` when it is complete and was computed from ``key``, else None."""
        try:
            return cls.open(root, key)
        except (FileNotFoundError, ValueError):
            return None

    def rows(self, nodes) -> Dict[str, torch.Tensor]:
        """Band features of ``nodes``: ``{name: [n, M, d_m]}`` float32 CPU tensors.

        Args:
            nodes: ``[n]`` int node ids (numpy or torch); sorted ids read fastest.
        """
        idx = nodes.detach().cpu().numpy() if isinstance(nodes, torch.Tensor) else \
            np.asarray(nodes)
        return {name: torch.from_numpy(np.asarray(arr[idx], dtype=np.float32))
                for name, arr in self._arrays.items()}

    def basis_rows(self, nodes) -> torch.Tensor:
        """Rows of the ID eigenbasis: ``[n, K]`` float32."""
        if self._basis is None:
            raise ValueError(f"the band store in {self.root} holds no ID basis")
        idx = nodes.detach().cpu().numpy() if isinstance(nodes, torch.Tensor) else \
            np.asarray(nodes)
        return torch.from_numpy(np.asarray(self._basis[idx], dtype=np.float32))

    def array(self, name: str) -> np.ndarray:
        """The read-only memory map ``[N, M, d_m]`` of one modality."""
        return self._arrays[name]

    def source(self) -> BandSource:
        """The store as the band source of an :class:`~ssr_engine.SSRModel`: content bands
        and ID basis read by rows, edges and eigenvalues from the metadata. Its identity
        (part of the model's configuration, so of a checkpoint's) is the store's key and the
        checksum of the basis: the basis of a recomputed store can differ (a rotation inside
        a degenerate eigenspace, with other thread counts), and coefficients learned on one
        basis mean nothing on another.

        Raises:
            ValueError: when the store lacks the ID basis or the band plan (written by an
                older version, or not by the pipeline): recompute it.
        """
        info = self.meta.get("info", {})
        if self._basis is None:
            raise ValueError(f"the band store in {self.root} holds no ID basis; it was not "
                             "written by precompute_bands")
        plan = info["plan"]
        lam = torch.tensor(info["id"]["eigenvalues"], dtype=torch.float64)
        return BandSource(self.n_nodes, torch.tensor(plan["edges"], dtype=torch.float64),
                          {name: StoredRows(arr, str(self.root / f"{name}.npy"))
                           for name, arr in self._arrays.items()},
                          lam, StoredRows(self._basis, str(self.root / f"{BASIS}.npy")),
                          bool(info["id"]["partial"]),
                          report=plan, identity={"store": self.meta["key"],
                                                 "basis_crc32": info["id"].get("crc32")})


class BandWriter:
    """Fill a new band store; :meth:`commit` makes it readable.

    Args (of :meth:`create`):
        root: the store folder (created; an older store in it is invalidated first).
        n_nodes: ``N``.
        n_bands: ``M``.
        dims: content modality name -> feature width ``d_m`` (the storage order).
        key: JSON-serialisable description of what the bands are computed from; a later
            :meth:`BandStore.open` with the same key reuses the store.
        dtype: ``"float32"`` (default) or ``"float16"`` storage.
        basis: width ``K`` of the ID eigenbasis (0: none).

    Raises:
        OSError: ``errno.ENOSPC`` when the disk cannot hold the store (checked before any
            data is written; nothing else in ``root`` is touched).
        ValueError: on bad sizes, names or dtype.
    """

    def __init__(self, root: Path, meta: Dict[str, Any]):
        self.root, self.meta = root, meta
        self._maps = {name: np.load(root / f"{name}.npy.partial", mmap_mode="r+")
                      for name in _files(meta)}

    @classmethod
    def create(cls, root: PathLike, n_nodes: int, n_bands: int, dims: Mapping[str, int],
               key: Dict[str, Any], dtype: str = "float32", basis: int = 0) -> "BandWriter":
        root = Path(root)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if n_nodes < 1 or n_bands < 1 or basis < 0 or (dims and min(dims.values()) < 1) \
                or not (dims or basis):
            raise ValueError(f"need n_nodes, n_bands >= 1, positive widths and an array to "
                             f"store, got {n_nodes}, {n_bands}, {dict(dims)}, basis {basis}")
        for name in dims:
            if not name or "/" in name or name.startswith(".") or name == BASIS:
                raise ValueError(f"modality name {name!r} cannot be a file name of the store")
        root.mkdir(parents=True, exist_ok=True)
        meta_path = root / META
        if meta_path.exists():
            meta_path.unlink()                       # the old store is no longer valid
        meta = {"format": FORMAT, "key": json.loads(json.dumps(key)), "n_nodes": int(n_nodes),
                "n_bands": int(n_bands), "dims": {k: int(v) for k, v in dims.items()},
                "basis": int(basis), "dtype": dtype, "info": {}}
        shapes = _files(meta)
        need = store_nbytes(n_nodes, n_bands, dims, dtype, basis)
        old = sum((root / f"{n}{s}").stat().st_size for n in shapes
                  for s in (".npy", ".npy.partial") if (root / f"{n}{s}").exists())
        check_space(root, need, old)
        for name in shapes:
            for suffix in (".npy", ".npy.partial"):
                p = root / f"{name}{suffix}"
                if p.exists():
                    p.unlink()
        try:
            for name, shape in shapes.items():
                path = root / f"{name}.npy.partial"
                arr = np.lib.format.open_memmap(path, mode="w+", dtype=_DTYPES[dtype],
                                                shape=shape)
                del arr
                with open(path, "r+b") as fh:            # reserve the blocks now
                    os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
        except OSError as e:
            for name in shapes:
                p = root / f"{name}.npy.partial"
                if p.exists():
                    p.unlink()
            if e.errno == errno.ENOSPC:
                raise _no_space(root, need, shutil.disk_usage(root).free, e) from e
            raise
        _atomic_json(meta, root / "pending.json")
        return cls(root, meta)

    @classmethod
    def attach(cls, root: PathLike) -> "BandWriter":
        """Open a store that another process created, to fill other rows of it."""
        root = Path(root)
        return cls(root, json.loads((root / "pending.json").read_text()))

    def write(self, name: str, bands, row_start: int = 0,
              columns: Optional[slice] = None) -> None:
        """Write ``bands [M, n, c]`` into rows ``row_start … row_start+n-1`` of one modality
        (all its columns, or the column range ``columns``)."""
        arr = self._maps.get(name) if name != BASIS else None
        if arr is None:
            raise ValueError(f"unknown modality {name!r}; the store holds "
                             f"{list(self.meta['dims'])}")
        b = bands.detach().cpu().numpy() if isinstance(bands, torch.Tensor) else np.asarray(bands)
        if not np.isfinite(b).all():
            raise ValueError(f"band signals of {name!r} contain NaN or inf; nothing was written")
        columns = slice(0, arr.shape[2]) if columns is None else columns
        width = len(range(*columns.indices(arr.shape[2])))
        M, n, c = b.shape
        if M != arr.shape[1] or c != width or not 0 <= row_start <= arr.shape[0] - n:
            raise ValueError(f"bands [{M}, {n}, {c}] at row {row_start}, columns {columns} do "
                             f"not fit {name!r} [{arr.shape[0]}, {arr.shape[1]}, {arr.shape[2]}]")
        for lo in range(0, n, 1 << 16):
            hi = min(n, lo + (1 << 16))
            arr[row_start + lo:row_start + hi, :, columns] = b[:, lo:hi].transpose(1, 0, 2)

    def write_basis(self, vectors, row_start: int = 0) -> None:
        """Write ID eigenbasis rows ``vectors [n, K]`` from row ``row_start`` on."""
        arr = self._maps.get(BASIS)
        v = vectors.detach().cpu().numpy() if isinstance(vectors, torch.Tensor) else \
            np.asarray(vectors)
        if arr is None or v.ndim != 2 or v.shape[1] != arr.shape[1] \
                or not 0 <= row_start <= arr.shape[0] - v.shape[0]:
            want = "no basis" if arr is None else f"[{arr.shape[0]}, {arr.shape[1]}]"
            raise ValueError(f"basis rows {tuple(v.shape)} at row {row_start} do not fit the "
                             f"store's basis ({want})")
        if not np.isfinite(v).all():
            raise ValueError("ID basis rows contain NaN or inf; nothing was written")
        for lo in range(0, v.shape[0], 1 << 16):
            arr[row_start + lo:row_start + lo + (1 << 16)] = v[lo:lo + (1 << 16)]

    def basis_crc32(self) -> int:
        """CRC-32 of the basis as stored (its identity; see :meth:`BandStore.source`)."""
        arr, crc = self._maps[BASIS], 0
        for lo in range(0, arr.shape[0], 1 << 16):
            crc = zlib.crc32(np.ascontiguousarray(arr[lo:lo + (1 << 16)]).tobytes(), crc)
        return int(crc)

    def flush(self) -> None:
        """Write this process's mapped pages to disk."""
        for arr in self._maps.values():
            arr.flush()

    def commit(self, info: Optional[Dict[str, Any]] = None) -> BandStore:
        """Flush, rename the files into place and write ``meta.json``; returns the store.

        Call once, after every process has flushed its rows.
        """
        self.flush()
        self._maps = {}
        for name in _files(self.meta):
            os.replace(self.root / f"{name}.npy.partial", self.root / f"{name}.npy")
        meta = dict(self.meta, info=json.loads(json.dumps(info or {})))
        _atomic_json(meta, self.root / META)
        pending = self.root / "pending.json"
        if pending.exists():
            pending.unlink()
        return BandStore(self.root, meta)
