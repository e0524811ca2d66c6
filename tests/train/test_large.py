"""The trainer with SSRModel on a band store, and the pipeline: learning, exact resume (in
process, after a signal, after SIGKILL), SIGTERM outside training, sampled evaluation,
two-process DDP training and a dying rank."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ssr_engine.data import synthetic_dataset
from ssr_engine.distributed import run_local
from ssr_engine.train import load_checkpoint
from ssr_engine.train import Interrupted, TrainConfig, Trainer
from ssr_engine.train.pipeline import LargeRun, run_large
from ssr_engine.train.precompute import precompute_bands
from ssr_engine.train.store import BandStore
from ssr_engine import SSRModel

JOIN_S = 120.0
SIZE = (400, 200, 6000)
ID_K = 16


def _ds():
    return synthetic_dataset(*SIZE, modalities={"image": 12, "text": 6}, seed=1)


@pytest.fixture(scope="module")
def ds():
    return _ds()


@pytest.fixture(scope="module")
def store_dir(ds, tmp_path_factory):
    root = tmp_path_factory.mktemp("bands")
    precompute_bands(ds.train_graph(), ds.features, root, n_bands=3, order=16, d0=8, quiet=True,
                     id_k=ID_K)
    return root


def _model(ds, store, seed=2, id_residual="free"):
    """The one SSR model on the store's rows (partial ID basis: sparse residual)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SSRModel(ds.train_graph(), source=store.source(), dim=16, rank=4, seed=seed,
                        sparse_residual=True, id_residual=id_residual)


def _cfg(**kw):
    base = dict(epochs=3, batch_size=256, lr=5e-3, eval_users=150, seed=4, quiet=True)
    base.update(kw)
    return TrainConfig(**base)


def _trainer(ds, store_dir, checkpoint=None, distributed=False, id_residual="free", **kw):
    model = _model(ds, BandStore.open(store_dir), id_residual=id_residual)
    assert model.reads_store and model.sparse_parameters()
    return Trainer(model, ds, _cfg(**kw), checkpoint=checkpoint, distributed=distributed)


def _same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_learns_and_reports(ds, store_dir):
    tr = _trainer(ds, store_dir, epochs=4)
    res = tr.fit()
    losses = [h["loss"] for h in res.history]
    assert losses[-1] < losses[0]
    assert res.epochs_run == 4 and 1 <= res.best_epoch <= 4
    assert res.valid["recall@20"] == max(h["recall@20"] for h in res.history)
    assert 0 < res.test["n_users"] <= 150 and 0.0 <= res.test["recall@20"] <= 1.0
    assert res.test_cold["n_users"] <= res.test["n_users"]


def test_eval_users_sample(ds, store_dir):
    tr = _trainer(ds, store_dir, eval_users=40)
    r = tr.evaluate("valid")
    assert r.users.size <= 40 and np.all(np.diff(r.users) > 0)
    assert np.array_equal(r.users, _trainer(ds, store_dir, eval_users=40).evaluate("valid").users)
    everyone = _trainer(ds, store_dir, eval_users=None).evaluate("valid")
    assert everyone.users.size == int((np.diff(tr.valid_m.indptr) > 0).sum())


def test_resume_between_epochs_is_exact(ds, store_dir, tmp_path):
    straight = _trainer(ds, store_dir, tmp_path / "a.pt")
    res_a = straight.fit()
    _trainer(ds, store_dir, tmp_path / "b.pt", epochs=1).fit()
    torch.manual_seed(123)                                  # disturb the global RNGs
    np.random.seed(5)
    resumed = _trainer(ds, store_dir, tmp_path / "b.pt")
    assert resumed.epoch == 1
    res_b = resumed.fit()
    assert res_a.history == res_b.history and res_a.test == res_b.test
    _same_state(straight.model.state_dict(), resumed.model.state_dict())


def test_signal_mid_epoch_saves_and_resumes_exactly(ds, store_dir, tmp_path):
    ref = _trainer(ds, store_dir, tmp_path / "ref.pt", epochs=2)
    res_ref = ref.fit()
    tr = _trainer(ds, store_dir, tmp_path / "sig.pt", epochs=2)
    net, calls = tr.net, {"n": 0}
    before = signal.getsignal(signal.SIGINT)          # SIG_IGN under nohup, else the default

    def net_that_gets_signalled(*args):
        calls["n"] += 1
        if calls["n"] == tr.steps_per_epoch + 3:                # step 3 of epoch 2
            os.kill(os.getpid(), signal.SIGINT)
        return net(*args)

    tr.net = net_that_gets_signalled
    with pytest.raises(Interrupted, match="SIGINT after 1 epochs and 3 steps") as info:
        tr.fit()
    assert info.value.epoch == 1 and info.value.step == 3
    saved = torch.load(tmp_path / "sig.pt", weights_only=False)
    assert (saved["epoch"], saved["step"]) == (1, 3)
    assert signal.getsignal(signal.SIGINT) is before                       # restored
    resumed = _trainer(ds, store_dir, tmp_path / "sig.pt", epochs=2)
    assert (resumed.epoch, resumed.step) == (1, 3)
    res = resumed.fit()
    assert res.history == res_ref.history and res.test == res_ref.test
    _same_state(ref.model.state_dict(), resumed.model.state_dict())


def test_checkpoint_of_other_run_is_refused(ds, store_dir, tmp_path):
    _trainer(ds, store_dir, tmp_path / "c.pt", epochs=1).fit()
    with pytest.raises(ValueError, match=r"batch_size: saved 256 vs now 128"):
        _trainer(ds, store_dir, tmp_path / "c.pt", batch_size=128)


def test_checkpoint_on_another_basis_is_refused(ds, store_dir, tmp_path):
    # A recomputed store can hold another basis of the same eigenspaces (other thread
    # counts): coefficients learned on one basis must not be applied to another.
    _trainer(ds, store_dir, tmp_path / "b.pt", epochs=1).fit()
    other = tmp_path / "other"
    shutil.copytree(store_dir, other)
    meta = json.loads((other / "meta.json").read_text())
    meta["info"]["id"]["crc32"] += 1
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="basis_crc32"):
        Trainer(_model(ds, BandStore.open(other)), ds, _cfg(), checkpoint=tmp_path / "b.pt")


# -- the pipeline in a subprocess, killed with SIGKILL -----------------------------------------
def _pipeline_cmd(out: Path, *flags: str):
    code = ("import sys; from pathlib import Path; from ssr_engine.train.pipeline import "
            "LargeRun, run_large; run_large(LargeRun(out=Path(sys.argv[1]), synthetic=(800, "
            "400, 12000), epochs=3, batch_size=128, lr=5e-3, eval_users=200, d0=8, dim=16, "
            "rank=4, order=16, n_bands=3, quiet=True, threads=1, resume='--resume' in sys.argv, "
            "fresh='--fresh' in sys.argv))")
    return [sys.executable, "-c", code, str(out), *flags]


def test_sigkill_mid_epoch_then_resume_matches(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    straight = tmp_path / "straight"
    subprocess.run(_pipeline_cmd(straight), check=True, env=env, timeout=300)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_pipeline_cmd(killed), env=env)
    ckpt = killed / "checkpoint.pt"
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), "no checkpoint appeared before the run ended"
    time.sleep(0.3)                                              # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "metrics.json").exists()
    done = load_checkpoint(ckpt, torch.load(ckpt, weights_only=False)["config"])
    assert done["step"] == 0 and done["epoch"] >= 1            # an epoch-boundary checkpoint
    subprocess.run(_pipeline_cmd(killed, "--resume"), check=True, env=env, timeout=300)
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    for key in ("valid", "test", "test_cold", "history", "best_epoch"):
        assert a[key] == b[key], key


_TINY = dict(synthetic=(300, 150, 4000), epochs=1, batch_size=256, eval_users=100, d0=4, dim=8,
             rank=2, order=16, n_bands=2, quiet=True, threads=1)


def test_sigterm_while_writing_metrics_leaves_no_temporary_file(tmp_path):
    # The report is written after training, where the trainer's handler is not installed: a
    # SIGTERM arriving in the middle of that write used to kill the process on the spot and
    # leave "metrics.json.<random>.tmp" behind.
    code = ("import contextlib, os, signal, sys, time; from pathlib import Path\n"
            "import ssr_engine.train.pipeline as P\n"
            "real = P.atomic_write\n"
            "@contextlib.contextmanager\n"
            "def signalled(path, mode='wb'):\n"
            "    with real(path, mode) as fh:\n"
            "        fh.write(b'{' if 'b' in mode else '{'); fh.flush()\n"
            "        os.kill(os.getpid(), signal.SIGTERM); time.sleep(60)\n"
            "        yield fh\n"
            "P.atomic_write = signalled\n"
            f"P.run_large(P.LargeRun(out=Path(sys.argv[1]), **{_TINY!r}))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "SIGTERM while writing a file: stopping" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bands", "checkpoint.pt"]
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 1
    # A file a SIGKILLed writer could not remove goes when the next run starts; resuming the
    # finished run then writes the report.
    (tmp_path / "checkpoint.pt.q1w2e3r4.tmp").write_bytes(b"torn")
    report = run_large(LargeRun(out=tmp_path, resume=True, **_TINY))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bands", "checkpoint.pt",
                                                          "metrics.json", "test_per_user.npz"]
    assert json.loads((tmp_path / "metrics.json").read_text())["test"] == report["test"]


def test_pipeline_guards(tmp_path):
    opts = _TINY
    run_large(LargeRun(out=tmp_path, **opts))
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        run_large(LargeRun(out=tmp_path, **opts))
    with pytest.raises(ValueError, match="no checkpoint"):
        run_large(LargeRun(out=tmp_path / "new", resume=True, **opts))
    with pytest.raises(ValueError, match="too large for --approx exact"):
        run_large(LargeRun(out=tmp_path / "big", **dict(opts, synthetic=(400_000, 200_000, 10**6)),
                           approx="exact"))
    # a smoothed residual on a graph whose ID basis is full: refused before any band exists
    with pytest.raises(ValueError, match="--id-residual smooth .* pass --id-basis K"):
        run_large(LargeRun(out=tmp_path / "smooth", **dict(opts, id_residual="smooth")))
    assert not (tmp_path / "smooth").exists()


def test_resume_with_other_band_settings_changes_nothing(tmp_path):
    run_large(LargeRun(out=tmp_path, **_TINY))
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "bands").iterdir()}
    with pytest.raises(ValueError, match="d0: stored 4 vs now 6.*nothing was computed"):
        run_large(LargeRun(out=tmp_path, resume=True, **dict(_TINY, d0=6)))
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "bands").iterdir()} == files


def test_pipeline_full_disk_keeps_checkpoint(tmp_path, monkeypatch):
    from ssr_engine.train import store as store_mod
    opts = _TINY
    run_large(LargeRun(out=tmp_path, **opts))
    before = (tmp_path / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(store_mod.shutil, "disk_usage",
                        lambda p: type("U", (), {"total": 1 << 30, "used": 1 << 30, "free": 0})())
    with pytest.raises(OSError, match="checkpoint .* is untouched") as info:
        run_large(LargeRun(out=tmp_path, resume=True, **dict(opts, d0=6)))   # new store needed
    assert info.value.errno == 28
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


# -- two processes ---------------------------------------------------------------------------
def _ddp_worker(rank: int, root: str, epochs: int, die_at: int, id_residual: str = "free"):
    ds = _ds()
    store, _ = precompute_bands(ds.train_graph(), ds.features, root, n_bands=3, order=16, d0=8,
                                distributed=True, quiet=True, id_k=ID_K)
    model = _model(ds, store, id_residual=id_residual)
    tr = Trainer(model, ds, _cfg(epochs=epochs), distributed=True)
    if die_at:
        net = tr.net

        def dying(*args):
            if rank == 1 and tr.step == die_at:
                os._exit(3)
            return net(*args)
        tr.net = dying
    res = tr.fit()
    return res.valid, res.test, res.history


@pytest.mark.parametrize("id_residual", ["free", "smooth"])
def test_two_process_training_matches_one(ds, store_dir, tmp_path, id_residual):
    results = run_local(_ddp_worker, 2, args=(str(tmp_path / "dist"), 3, 0, id_residual),
                        join_timeout=JOIN_S)
    (v0, t0, h0), (v1, t1, h1) = results
    assert v0 == v1 and t0 == t1 and h0 == h1                 # every rank reports the same
    single = _trainer(ds, store_dir, epochs=3, id_residual=id_residual).fit()
    # Same global batches, averaged gradients: the runs agree up to rounding and the
    # per-process alignment subsets.
    for a, b in zip(h0, single.history):
        assert abs(a["loss"] - b["loss"]) <= 0.02 * b["loss"]
    assert abs(t0["recall@20"] - single.test["recall@20"]) <= 0.05


def test_dead_rank_makes_the_other_fail(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        run_local(_ddp_worker, 2, args=(str(tmp_path / "dist"), 2, 3), timeout=30.0,
                  join_timeout=JOIN_S)
    msg = str(info.value)
    assert "rank 1 exited with code 3" in msg
    assert "RankFailure: rank 0 of 2: training step 3 of epoch 1 failed" in msg
    assert time.monotonic() - t0 < JOIN_S
