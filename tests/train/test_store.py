"""Band store: round trip, key checks, incomplete stores, and a full disk refused up front."""
import errno
import json
import os

import numpy as np
import pytest
import torch

from ssr_engine.train import store as store_mod
from ssr_engine.train.store import BandStore, BandWriter, store_nbytes

KEY = {"graph": [5, 3, 9, 123], "seed": 0}


def _bands(M, n, d, seed):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((M, n, d))).float()


def test_round_trip_rows_and_columns(tmp_path):
    n, M = 11, 3
    w = BandWriter.create(tmp_path, n, M, {"id": 4, "text": 6}, KEY)
    ids = _bands(M, n, 4, 0)
    text = _bands(M, n, 6, 1)
    w.write("id", ids[:, :5], 0)                      # rows in two pieces
    w.write("id", ids[:, 5:], 5)
    w.write("text", text[:, :, :2], 0, slice(0, 2))    # columns in two pieces
    w.write("text", text[:, :, 2:], 0, slice(2, 6))
    assert not (tmp_path / "meta.json").exists()       # not readable before commit
    store = w.commit({"plan": {"order": 8}})
    nodes = np.array([0, 3, 10])
    rows = BandStore.open(tmp_path, KEY).rows(nodes)
    assert torch.equal(rows["id"], ids[:, nodes].transpose(0, 1))
    assert torch.equal(rows["text"], text[:, nodes].transpose(0, 1))
    assert rows["id"].shape == (3, M, 4) and rows["id"].dtype == torch.float32
    assert store.meta["info"]["plan"]["order"] == 8
    assert store.nbytes == store_nbytes(n, M, {"id": 4, "text": 6}) == n * M * 10 * 4
    assert not list(tmp_path.glob("*.partial")) and not (tmp_path / "pending.json").exists()


def test_float16_storage(tmp_path):
    w = BandWriter.create(tmp_path, 4, 2, {"id": 3}, KEY, dtype="float16")
    b = _bands(2, 4, 3, 2)
    w.write("id", b)
    rows = w.commit().rows(torch.arange(4))["id"]
    assert rows.dtype == torch.float32
    torch.testing.assert_close(rows, b.transpose(0, 1), rtol=1e-3, atol=1e-3)


def test_key_mismatch_and_incomplete_store(tmp_path):
    w = BandWriter.create(tmp_path, 4, 2, {"id": 3}, KEY)
    w.write("id", _bands(2, 4, 3, 0))
    w.commit()
    with pytest.raises(ValueError, match=r"seed: stored 0 vs now 1"):
        BandStore.open(tmp_path, dict(KEY, seed=1))
    assert BandStore.open_if_valid(tmp_path, dict(KEY, seed=1)) is None
    # Starting a new store invalidates the old one at once; until committed there is none.
    BandWriter.create(tmp_path, 4, 2, {"id": 3}, dict(KEY, seed=1))
    with pytest.raises(FileNotFoundError, match="no complete band store"):
        BandStore.open(tmp_path)
    assert BandStore.open_if_valid(tmp_path, KEY) is None


def test_attach_fills_other_rows(tmp_path):
    b = _bands(2, 6, 3, 4)
    w0 = BandWriter.create(tmp_path, 6, 2, {"id": 3}, KEY)
    w1 = BandWriter.attach(tmp_path)                   # e.g. another process
    w0.write("id", b[:, :2], 0)
    w1.write("id", b[:, 2:], 2)
    w1.flush()
    store = w0.commit()
    assert torch.equal(store.rows(np.arange(6))["id"], b.transpose(0, 1))


def test_rejects_bad_writes(tmp_path):
    w = BandWriter.create(tmp_path, 4, 2, {"id": 3}, KEY)
    with pytest.raises(ValueError, match="unknown modality"):
        w.write("image", _bands(2, 4, 3, 0))
    with pytest.raises(ValueError, match="do not fit"):
        w.write("id", _bands(2, 4, 3, 0), 1)
    with pytest.raises(ValueError, match="do not fit"):
        w.write("id", _bands(3, 4, 3, 0))
    with pytest.raises(ValueError, match="dtype"):
        BandWriter.create(tmp_path / "x", 4, 2, {"id": 3}, KEY, dtype="int8")
    with pytest.raises(ValueError, match="file name"):
        BandWriter.create(tmp_path / "y", 4, 2, {"../id": 3}, KEY)


def test_full_disk_refused_before_writing(tmp_path, monkeypatch):
    total = 1 << 40
    monkeypatch.setattr(store_mod.shutil, "disk_usage",
                        lambda p: type("U", (), {"total": total, "used": total, "free": 1 << 20})())
    with pytest.raises(OSError) as info:
        BandWriter.create(tmp_path, 100_000, 4, {"id": 64}, KEY)
    assert info.value.errno == errno.ENOSPC
    assert "needs 0.10 GB" in str(info.value) and "only 0.00 GB is free" in str(info.value)
    assert not list(tmp_path.iterdir())


def test_disk_full_during_reservation_cleans_up(tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(store_mod.os, "posix_fallocate", no_space)
    keep = tmp_path / "checkpoint.pt"
    keep.write_bytes(b"previous checkpoint")
    with pytest.raises(OSError) as info:
        BandWriter.create(tmp_path, 10, 2, {"id": 3, "text": 2}, KEY)
    assert info.value.errno == errno.ENOSPC and "band store needs" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert keep.read_bytes() == b"previous checkpoint"


def test_damaged_store_is_reported(tmp_path):
    w = BandWriter.create(tmp_path, 4, 2, {"id": 3}, KEY)
    w.write("id", _bands(2, 4, 3, 0))
    w.commit()
    np.save(tmp_path / "id.npy", np.zeros((4, 2, 2), np.float32))
    with pytest.raises(ValueError, match="damaged"):
        BandStore.open(tmp_path)
    assert os.path.exists(tmp_path / "meta.json")


def _basis_store(tmp_path, lam=(0.0, 0.5, 1.5)):
    w = BandWriter.create(tmp_path, 4, 2, {"text": 3}, KEY, basis=3)
    w.write("text", _bands(2, 4, 3, 0))
    w.write_basis(torch.eye(4, 3))
    return w.commit({"plan": {"edges": [0.0, 1.0, 2.0]},
                     "id": {"eigenvalues": list(lam), "partial": True,
                            "crc32": w.basis_crc32()}})


def test_basis_and_source(tmp_path):
    store = _basis_store(tmp_path)
    src = store.source()
    assert src.n_bands == 2 and src.partial and src.dims == {"text": 3}
    assert torch.equal(src.basis[torch.tensor([1, 3])], torch.eye(4, 3)[[1, 3]])
    assert src.identity == {"store": KEY, "basis_crc32": store.meta["info"]["id"]["crc32"]}
    assert store.nbytes == store_nbytes(4, 2, {"text": 3}, basis=3) == 4 * (2 * 3 + 3) * 4


@pytest.mark.parametrize("lam, problem", [((0.0, 0.5), "2 eigenvalues for a basis of 3"),
                                          ((0.0, 1.5, 0.5), "not ascending"),
                                          ((0.0, float("nan"), 1.5), "not all finite")])
def test_inconsistent_metadata_is_damage(tmp_path, lam, problem):
    _basis_store(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["info"]["id"]["eigenvalues"] = list(lam)
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"damaged.*{problem}"):
        BandStore.open(tmp_path, KEY)
    assert BandStore.open_if_valid(tmp_path, KEY) is None       # the pipeline recomputes


def test_older_format_is_not_reused(tmp_path):
    _basis_store(tmp_path)
    meta = tmp_path / "meta.json"
    meta.write_text(meta.read_text().replace(store_mod.FORMAT, "ssr-band-store-1"))
    with pytest.raises(ValueError, match="not a band store of this version"):
        BandStore.open(tmp_path, KEY)
    assert BandStore.open_if_valid(tmp_path, KEY) is None


def test_non_finite_rows_are_not_written(tmp_path):
    w = BandWriter.create(tmp_path, 4, 2, {"text": 3}, KEY, basis=3)
    bad = _bands(2, 4, 3, 0)
    bad[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf; nothing was written"):
        w.write("text", bad)
    with pytest.raises(ValueError, match="NaN or inf; nothing was written"):
        w.write_basis(torch.full((4, 3), float("inf")))


@pytest.mark.parametrize("target", ["text", "basis"])
def test_store_damaged_after_writing_is_named_when_rows_are_read(tmp_path, target):
    # before: NaN rows written into a committed store (bit rot, another program) trained
    # into "loss became nan ... lower the learning rate"
    _basis_store(tmp_path)
    arr = np.load(tmp_path / f"{target}.npy", mmap_mode="r+")
    arr[2] = np.nan
    arr.flush()
    del arr
    src = BandStore.open(tmp_path, KEY).source()
    table = src.content["text"] if target == "text" else src.basis
    table.check(torch.tensor([0, 1, 3]))                               # other rows are fine
    with pytest.raises(ValueError, match=f"{target}.npy holds NaN or inf in 1 row.*nodes 2.*"
                                         "delete the band store"):
        table.check(torch.tensor([1, 2, 2]))
    with pytest.raises(ValueError, match="NaN or inf"):
        table.block(0, 4)
