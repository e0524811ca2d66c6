"""Reading and writing MMRec-format data (DESIGN.md §5).

A folder holds ``<name>.inter`` (tab-separated, header with ``userID``, ``itemID``,
``x_label``; other columns ignored) and ``<modality>_feat.npy`` files row-aligned with
``itemID``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np

from .dataset import Dataset

__all__ = ["load_mmrec", "save_mmrec", "read_new_interactions"]

PathLike = Union[str, os.PathLike]


def _find_inter(folder: Path, name: Optional[str]) -> Path:
    if name is not None:
        p = folder / f"{name}.inter"
        if not p.exists():
            raise FileNotFoundError(f"no {p.name} in {folder}")
        return p
    found = sorted(folder.glob("*.inter"))
    if len(found) != 1:
        what = "none" if not found else ", ".join(p.name for p in found)
        raise FileNotFoundError(f"expected exactly one *.inter file in {folder}, found "
                                f"{what}" + ("; keep one in the folder (load_mmrec also "
                                             "takes name=)" if found else ""))
    return found[0]


def _check_fields(inter: Path, n_fields: int) -> None:
    """Every non-empty line has the header's number of tab-separated fields (one vectorised
    pass over the bytes; a line with an extra or a missing field is named)."""
    raw = np.fromfile(inter, dtype=np.uint8)
    ends = np.flatnonzero(raw == 10)
    if raw.size and raw[-1] != 10:
        ends = np.append(ends, raw.size)
    starts = np.r_[0, ends[:-1] + 1]
    length = ends - starts
    crlf = (length > 0) & (raw[np.maximum(ends - 1, 0)] == 13)
    blank = (length - crlf) == 0
    fields = np.bincount(np.searchsorted(ends, np.flatnonzero(raw == 9)),
                         minlength=ends.size)[:ends.size] + 1
    bad = np.flatnonzero((fields != n_fields) & ~blank)
    if bad.size:
        j = int(bad[0])
        raise ValueError(f"{inter.name}, line {j + 1}: {int(fields[j])} tab-separated fields, "
                         f"the header has {n_fields}" + (f" ({bad.size} such lines)"
                                                         if bad.size > 1 else ""))


_INT = re.compile(r"[+-]?[0-9]+")
_INT64 = 2 ** 63


def _first_non_integer(path: Path, idx) -> str:
    """Where the first value of the columns ``idx`` that is not an int64 is: ``", line N:
    'value'"`` (the file's line numbers, header = 1), or ``""`` if none is found."""
    with open(path, newline="\n", errors="replace") as fh:
        for n, line in enumerate(fh, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if n == 1 or not line:
                continue
            fields = line.split("\t")
            for i in idx:
                v = fields[i].strip() if i < len(fields) else ""
                if not _INT.fullmatch(v) or not -_INT64 <= int(v) < _INT64:
                    return f", line {n}: {v!r}"
    return ""


def _int_columns(path: Path, need, optional=()) -> np.ndarray:
    """The integer columns ``need`` (then those of ``optional`` the header has) of a
    tab-separated file with a header: ``[E, c]`` int64. A header without a needed column, a
    line with another number of fields, a value that is not an integer, or no rows at all
    are refused, naming the file."""
    with open(path) as fh:
        header = fh.readline().rstrip("\r\n").split("\t")
    missing = [c for c in need if c not in header]
    if missing:
        raise ValueError(f"{path.name}: header {header} lacks columns {missing}; expected a "
                         f"tab-separated MMRec file with {', '.join(need)}")
    _check_fields(path, len(header))
    cols = list(need) + [c for c in optional if c in header]
    idx = [header.index(c) for c in cols]
    try:
        data = np.loadtxt(path, delimiter="\t", skiprows=1, usecols=idx, dtype=np.int64,
                          ndmin=2)
    except ValueError as e:
        where = _first_non_integer(path, idx)
        raise ValueError(f"{path.name}: {', '.join(cols)} must be integers"
                         + (where or f" ({e})")) from e
    if data.shape[0] == 0:
        raise ValueError(f"{path.name} holds a header and no interactions")
    return data


def load_mmrec(folder: PathLike, name: Optional[str] = None,
               modalities: Optional[Iterable[str]] = None) -> Dataset:
    """Load an MMRec-format dataset.

    Args:
        folder: directory with ``<name>.inter`` and optional ``<modality>_feat.npy``.
        name: dataset name (default: the only ``*.inter`` file in ``folder``).
        modalities: modality names to load (default: every ``*_feat.npy`` present);
            ``[]`` loads none (ID-only).

    Returns:
        A :class:`Dataset`; ``n_users`` / ``n_items`` are ``max id + 1``, and every feature
        file has exactly ``n_items`` rows.

    Raises:
        FileNotFoundError: when the folder or files are missing.
        ValueError: on a malformed header, a line whose number of fields differs from the
            header's, non-integer ids, no interactions, or features that don't match.

    Example:
        >>> ds = load_mmrec("../shared/data/movielens-100k")  # doctest: +SKIP
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} does not exist")
    inter = _find_inter(folder, name)
    data = _int_columns(inter, ("userID", "itemID", "x_label"))
    users, items, split = data[:, 0], data[:, 1], data[:, 2]
    n_users = int(users.max()) + 1
    n_items = int(items.max()) + 1
    if modalities is None:
        modalities = sorted(p.name[:-len("_feat.npy")] for p in folder.glob("*_feat.npy"))
    feats = {}
    for m in modalities:
        p = folder / f"{m}_feat.npy"
        if not p.exists():
            raise FileNotFoundError(f"modality {m!r}: no {p.name} in {folder}")
        f = np.load(p, mmap_mode="r")
        if f.ndim != 2 or f.shape[0] != n_items:
            raise ValueError(f"{p.name} has shape {f.shape}; expected [{n_items}, d], one row "
                             f"per itemID 0 … {n_items - 1} of {inter.name}")
        feats[m] = np.array(f, dtype=np.float32)  # in memory and writable
    return Dataset(users, items, split, n_users, n_items, feats, name=inter.stem)


def read_new_interactions(path: PathLike) -> tuple:
    """Read a file of new training interactions in MMRec's format (what
    ``train_large.py --update`` takes): tab-separated, a header with ``userID`` and
    ``itemID`` (other columns are ignored), and, if it has ``x_label``, every label 0.

    Returns:
        ``(user_ids [E], item_ids [E])`` int64.

    Raises:
        FileNotFoundError: when the file is missing.
        ValueError: on a header without ``userID`` / ``itemID``, a line with another number
            of fields than the header, non-integer or negative ids, labels other than 0
            (validation or test rows), or no interactions.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; expected a file of new interactions (MMRec "
                         "format: userID, itemID and optionally x_label 0)")
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}")
    data = _int_columns(path, ("userID", "itemID"), optional=("x_label",))
    if data[:, :2].min() < 0:
        raise ValueError(f"{path.name}: ids must be >= 0, found {int(data[:, :2].min())}")
    if data.shape[1] == 3 and (data[:, 2] != 0).any():
        j = int(np.flatnonzero(data[:, 2] != 0)[0])
        raise ValueError(f"{path.name}, line {j + 2}: x_label {int(data[j, 2])}; new "
                         "interactions are training interactions (x_label 0)")
    return data[:, 0].copy(), data[:, 1].copy()


def save_mmrec(ds: Dataset, folder: PathLike) -> Path:
    """Write ``ds`` as ``<folder>/<name>.inter`` plus ``<modality>_feat.npy`` files.

    Returns:
        The path of the ``.inter`` file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.name}.inter"
    table = np.stack([ds.user_ids, ds.item_ids, ds.split.astype(np.int64)], axis=1)
    np.savetxt(path, table, fmt="%d", delimiter="\t", header="userID\titemID\tx_label",
               comments="")
    for m, f in ds.features.items():
        np.save(folder / f"{m}_feat.npy", f)
    return path
