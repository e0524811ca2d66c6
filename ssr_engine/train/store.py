"""Band features on disk: computed once, read by rows during training (DESIGN.md §3).

A band store is a folder holding one ``<modality>.npy`` per modality, each ``[N, M, d_m]``
(node-major: a node's bands are one contiguous run, so a batch reads one run per node and
modality), and a ``meta.json`` that is written last. The arrays are memory-mapped for
reading, so a training step touches only the rows of its batch and the store may be larger
than the memory the process keeps resident.

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
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np
import torch

from .checkpoint import atomic_write

__all__ = ["BandStore", "BandWriter", "store_nbytes", "check_space"]

PathLike = Union[str, os.PathLike]
META = "meta.json"
FORMAT = "ssr-band-store-1"
# Space kept free beyond the store itself (checkpoints and logs still need room).
MARGIN_BYTES = 256 << 20
_DTYPES = {"float32": np.float32, "float16": np.float16}


def store_nbytes(n_nodes: int, n_bands: int, dims: Mapping[str, int],
                 dtype: str = "float32") -> int:
    """Bytes of a store's arrays: ``N · M · Σ_m d_m · itemsize``.

    Example:
        >>> store_nbytes(1000, 4, {"id": 32, "text": 16})
        768000
    """
    return int(n_nodes) * int(n_bands) * sum(int(d) for d in dims.values()) * \
        np.dtype(_DTYPES[dtype]).itemsize


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
            ``"n_nodes"``, ``"n_bands"``, ``"dims"``, ``"dtype"`` and free-form ``"info"``.
        modalities: modality names in storage order.

    Shapes:
        ``rows(nodes [n])`` -> ``{name: [n, M, d_m]}`` float32.

    Example:
        >>> import tempfile, torch
        >>> from ssr_engine.train.store import BandStore, BandWriter
        >>> root = tempfile.mkdtemp()
        >>> w = BandWriter.create(root, n_nodes=5, n_bands=2, dims={"id": 3}, key={"seed": 0})
        >>> w.write("id", torch.ones(2, 5, 3))
        >>> store = w.commit()
        >>> store.rows(torch.tensor([0, 4]))["id"].shape
        torch.Size([2, 2, 3])
        >>> BandStore.open(root, key={"seed": 0}).n_nodes
        5
    """

    def __init__(self, root: PathLike, meta: Dict[str, Any]):
        self.root = Path(root)
        self.meta = meta
        self.modalities = list(meta["dims"])
        self._arrays = {}
        for name in self.modalities:
            path = self.root / f"{name}.npy"
            arr = np.load(path, mmap_mode="r")
            want = (self.n_nodes, self.n_bands, int(meta["dims"][name]))
            if arr.shape != want or arr.dtype != _DTYPES[meta["dtype"]]:
                raise ValueError(f"{path} holds {arr.dtype} {arr.shape}, meta.json says "
                                 f"{meta['dtype']} {want}; the store is damaged — delete "
                                 f"{self.root} to recompute it")
            self._arrays[name] = arr

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
        return store_nbytes(self.n_nodes, self.n_bands, self.dims, self.meta["dtype"])

    def __repr__(self) -> str:
        return (f"BandStore({str(self.root)!r}, nodes={self.n_nodes}, bands={self.n_bands}, "
                f"dims={self.dims}, {_gb(self.nbytes)})")

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
            raise ValueError(f"{path} is not a band store written by ssr_engine "
                             f"(format {meta.get('format')!r})")
        if key is not None:
            saved = json.loads(json.dumps(meta["key"]))
            want = json.loads(json.dumps(key))
            diff = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
            if diff:
                lines = ", ".join(f"{k}: stored {saved.get(k)!r} vs now {want.get(k)!r}"
                                  for k in diff)
                raise ValueError(f"the band store in {root} was computed from other inputs "
                                 f"({lines})")
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

    def array(self, name: str) -> np.ndarray:
        """The read-only memory map ``[N, M, d_m]`` of one modality."""
        return self._arrays[name]


class BandWriter:
    """Fill a new band store; :meth:`commit` makes it readable.

    Args (of :meth:`create`):
        root: the store folder (created; an older store in it is invalidated first).
        n_nodes: ``N``.
        n_bands: ``M``.
        dims: modality name -> feature width ``d_m`` (the storage order).
        key: JSON-serialisable description of what the bands are computed from; a later
            :meth:`BandStore.open` with the same key reuses the store.
        dtype: ``"float32"`` (default) or ``"float16"`` storage.

    Raises:
        OSError: ``errno.ENOSPC`` when the disk cannot hold the store (checked before any
            data is written; nothing else in ``root`` is touched).
        ValueError: on bad sizes, names or dtype.
    """

    def __init__(self, root: Path, meta: Dict[str, Any]):
        self.root, self.meta = root, meta
        self._maps = {name: np.load(root / f"{name}.npy.partial", mmap_mode="r+")
                      for name in meta["dims"]}

    @classmethod
    def create(cls, root: PathLike, n_nodes: int, n_bands: int, dims: Mapping[str, int],
               key: Dict[str, Any], dtype: str = "float32") -> "BandWriter":
        root = Path(root)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if n_nodes < 1 or n_bands < 1 or not dims or min(dims.values()) < 1:
            raise ValueError(f"need n_nodes, n_bands >= 1 and positive widths, got {n_nodes}, "
                             f"{n_bands}, {dict(dims)}")
        for name in dims:
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"modality name {name!r} cannot be a file name")
        root.mkdir(parents=True, exist_ok=True)
        meta_path = root / META
        if meta_path.exists():
            meta_path.unlink()                       # the old store is no longer valid
        need = store_nbytes(n_nodes, n_bands, dims, dtype)
        old = sum((root / f"{n}{s}").stat().st_size for n in dims for s in (".npy", ".npy.partial")
                  if (root / f"{n}{s}").exists())
        check_space(root, need, old)
        for name in dims:
            for suffix in (".npy", ".npy.partial"):
                p = root / f"{name}{suffix}"
                if p.exists():
                    p.unlink()
        meta = {"format": FORMAT, "key": json.loads(json.dumps(key)), "n_nodes": int(n_nodes),
                "n_bands": int(n_bands), "dims": {k: int(v) for k, v in dims.items()},
                "dtype": dtype, "info": {}}
        try:
            for name, d in dims.items():
                path = root / f"{name}.npy.partial"
                arr = np.lib.format.open_memmap(path, mode="w+", dtype=_DTYPES[dtype],
                                                shape=(int(n_nodes), int(n_bands), int(d)))
                del arr
                with open(path, "r+b") as fh:            # reserve the blocks now
                    os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
        except OSError as e:
            for name in dims:
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
        arr = self._maps.get(name)
        if arr is None:
            raise ValueError(f"unknown modality {name!r}; the store holds {list(self._maps)}")
        b = bands.detach().cpu().numpy() if isinstance(bands, torch.Tensor) else np.asarray(bands)
        columns = slice(0, arr.shape[2]) if columns is None else columns
        width = len(range(*columns.indices(arr.shape[2])))
        M, n, c = b.shape
        if M != arr.shape[1] or c != width or not 0 <= row_start <= arr.shape[0] - n:
            raise ValueError(f"bands [{M}, {n}, {c}] at row {row_start}, columns {columns} do "
                             f"not fit {name!r} [{arr.shape[0]}, {arr.shape[1]}, {arr.shape[2]}]")
        for lo in range(0, n, 1 << 16):
            hi = min(n, lo + (1 << 16))
            arr[row_start + lo:row_start + hi, :, columns] = b[:, lo:hi].transpose(1, 0, 2)

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
        for name in self.meta["dims"]:
            os.replace(self.root / f"{name}.npy.partial", self.root / f"{name}.npy")
        meta = dict(self.meta, info=json.loads(json.dumps(info or {})))
        _atomic_json(meta, self.root / META)
        pending = self.root / "pending.json"
        if pending.exists():
            pending.unlink()
        return BandStore(self.root, meta)
