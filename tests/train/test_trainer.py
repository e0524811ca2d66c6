"""Training loop: learning, early stopping, checkpoints and resume, bad inputs."""
import numpy as np
import pytest
import torch

import ssr_engine
from ssr_engine.data import Dataset, synthetic_dataset
from ssr_engine.train import TrainConfig, Trainer, load_checkpoint, save_checkpoint, \
    seed_everything
from ssr_engine.train.checkpoint import atomic_write


@pytest.fixture(scope="module")
def ds():
    return synthetic_dataset(150, 80, 2500, modalities={}, seed=3)


def _mf(ds, seed=0):
    seed_everything(seed)
    return ssr_engine.MFBPR(ds.train_graph(), dim=16)


def test_bpr_loss_decreases(ds):
    model = _mf(ds)
    tr = Trainer(model, ds, TrainConfig(lr=1e-2, batch_size=256, quiet=True, seed=0))
    losses = [tr.train_epoch() for _ in range(8)]
    assert losses[-1] < 0.8 * losses[0]


def test_fit_reports_best_validation_epoch(ds):
    model = _mf(ds)
    res = Trainer(model, ds, TrainConfig(epochs=6, lr=1e-2, batch_size=256, quiet=True)).fit()
    best = max(h["recall@20"] for h in res.history)
    assert res.valid["recall@20"] == best
    assert [h["epoch"] for h in res.history if h["recall@20"] == best][0] == res.best_epoch
    assert 0.0 <= res.test["recall@20"] <= 1.0 and res.test["n_users"] > 0


def test_early_stopping_respects_patience(ds):
    model = _mf(ds)
    # lr = 0: nothing improves after the first evaluation.
    res = Trainer(model, ds, TrainConfig(epochs=50, lr=0.0, patience=3, quiet=True)).fit()
    assert res.best_epoch == 1 and res.epochs_run == 4


def test_resume_gives_identical_continuation(ds, tmp_path):
    cfg = lambda n: TrainConfig(epochs=n, lr=1e-2, batch_size=256, quiet=True, seed=7)
    straight = tmp_path / "a.pt"
    Trainer(_mf(ds), ds, cfg(3), checkpoint=straight).fit()
    split = tmp_path / "b.pt"
    Trainer(_mf(ds), ds, cfg(1), checkpoint=split).fit()
    torch.manual_seed(12345)  # disturb the global RNG: the checkpoint must restore it
    Trainer(_mf(ds), ds, cfg(3), checkpoint=split).fit()
    a = torch.load(straight, weights_only=False)
    b = torch.load(split, weights_only=False)
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["history"] == b["history"]
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_from_other_configuration_is_refused(ds, tmp_path):
    ck = tmp_path / "c.pt"
    Trainer(_mf(ds), ds, TrainConfig(epochs=1, quiet=True), checkpoint=ck).fit()
    with pytest.raises(ValueError, match="different configuration.*lr"):
        Trainer(_mf(ds), ds, TrainConfig(epochs=2, lr=5e-3, quiet=True), checkpoint=ck)
    seed_everything(0)
    other = ssr_engine.MFBPR(ds.train_graph(), dim=8)
    with pytest.raises(ValueError, match="model.dim"):
        Trainer(other, ds, TrainConfig(epochs=2, quiet=True), checkpoint=ck)


def test_atomic_save_keeps_previous_file_on_failure(tmp_path):
    p = tmp_path / "x.pt"
    save_checkpoint({"config": {"a": 1}, "v": 1}, p)
    with pytest.raises(Exception):
        save_checkpoint({"config": {"a": 1}, "v": lambda: 0}, p)  # not picklable
    assert load_checkpoint(p, {"a": 1})["v"] == 1
    assert [f.name for f in tmp_path.iterdir()] == ["x.pt"]


def test_atomic_write_replaces_only_on_success(tmp_path):
    p = tmp_path / "m.json"
    with atomic_write(p, "w") as fh:
        fh.write("old")
    with pytest.raises(RuntimeError, match="mid-write"):
        with atomic_write(p, "w") as fh:
            fh.write("new, half written")
            raise RuntimeError("mid-write")
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["m.json"]


def test_split_without_validation_is_refused():
    ds = synthetic_dataset(60, 40, 500, modalities={}, seed=0)
    no_valid = Dataset(ds.user_ids, ds.item_ids, np.where(ds.split == 1, 0, ds.split),
                       ds.n_users, ds.n_items, name="novalid")
    with pytest.raises(ValueError, match="no validation interactions"):
        Trainer(ssr_engine.MFBPR(no_valid.train_graph()), no_valid)


def test_model_dataset_size_mismatch_is_refused(ds):
    small = synthetic_dataset(40, 30, 250, modalities={}, seed=0)
    with pytest.raises(ValueError, match="users x"):
        Trainer(ssr_engine.MFBPR(small.train_graph()), ds)


class _Payload:
    """Unpickling this runs code: it creates the file named by ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_with_a_pickle_payload_is_refused_and_runs_nothing(ds, tmp_path):
    # before: torch.load(weights_only=False) ran the payload (train_large.py --resume,
    # python -m ssr_engine.explain --checkpoint)
    ck, marker = tmp_path / "checkpoint.pt", tmp_path / "pwned"
    torch.save({"config": {"a": 1}, "evil": _Payload(marker)}, ck)
    with pytest.raises(ValueError, match="refused to load .*checkpoint.pt.*arbitrary code"):
        load_checkpoint(ck, {"a": 1})
    assert not marker.exists()
    from ssr_engine.train.checkpoint import read_checkpoint
    with pytest.raises(ValueError, match="refused to load"):
        read_checkpoint(ck, mmap=True)
    assert not marker.exists()


def test_trainer_checkpoint_holds_tensors_and_plain_values_only(ds, tmp_path):
    ck = tmp_path / "checkpoint.pt"
    Trainer(_mf(ds), ds, TrainConfig(epochs=1, quiet=True), checkpoint=ck).fit()
    st = torch.load(ck, weights_only=True)                 # raises on anything else
    assert isinstance(st["rng"]["numpy"]["keys"], torch.Tensor)


@pytest.mark.parametrize("damage,message", [
    (lambda p: p.write_bytes(b""), "is empty"),
    (lambda p: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]), "damaged"),
    (lambda p: p.write_bytes(b"\x80\x04K\x01."), "damaged or not a checkpoint"),
])
def test_damaged_checkpoint_is_named_with_its_problem(ds, tmp_path, damage, message):
    # before: raw PytorchStreamReader / UnpicklingError / EOFError tracebacks
    ck = tmp_path / "checkpoint.pt"
    cfg = TrainConfig(epochs=1, quiet=True)
    Trainer(_mf(ds), ds, cfg, checkpoint=ck).fit()
    damage(ck)
    with pytest.raises(ValueError, match=f"checkpoint {ck}.*{message}.*--fresh"):
        Trainer(_mf(ds), ds, cfg, checkpoint=ck).fit()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_write_gives_the_permissions_of_any_new_file(tmp_path, umask):
    # before: mkstemp's 0600 whatever the umask
    import os
    old = os.umask(umask)
    try:
        with atomic_write(tmp_path / "a.txt", "w") as fh:
            fh.write("x")
        with open(tmp_path / "b.txt", "w") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    mode = lambda p: (tmp_path / p).stat().st_mode & 0o777
    assert mode("a.txt") == mode("b.txt") == 0o666 & ~umask


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(ds, tmp_path,
                                                                     disk_fills_after):
    # before: RuntimeError "[enforce fail at inline_container.cc]" and no word of the disk
    import errno
    ck = tmp_path / "checkpoint.pt"
    Trainer(_mf(ds), ds, TrainConfig(epochs=1, quiet=True), checkpoint=ck).fit()
    old = ck.read_bytes()
    disk_fills_after(2000)
    with pytest.raises(OSError, match="no space left on the device; the previous checkpoint is "
                                      "kept") as e:
        Trainer(_mf(ds), ds, TrainConfig(epochs=2, quiet=True), checkpoint=ck,
                fresh=True).fit()
    assert e.value.errno == errno.ENOSPC
    assert ck.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == [ck.name]


def test_test_groups_report_users_without_training_and_activity_quartiles(ds):
    # before: users without training interactions were ranked and counted without a word,
    # and the cold group (<= 5 interactions) was the only breakdown
    from ssr_engine.train import result_notes
    split = ds.split.copy()
    u0 = np.flatnonzero(np.bincount(ds.user_ids[split == 2], minlength=ds.n_users))[:3]
    split[np.isin(ds.user_ids, u0) & (split == 0)] = 1         # 3 test users lose training
    d2 = Dataset(ds.user_ids, ds.item_ids, split, ds.n_users, ds.n_items, name="holes")
    cfg = TrainConfig(epochs=1, quiet=True)
    res = Trainer(ssr_engine.MFBPR(d2.train_graph(), dim=8), d2, cfg).fit()
    g = res.test_groups
    assert g["without_training"]["n_users"] == 3
    assert g["with_training"]["n_users"] == res.test["n_users"] - 3
    quartiles = {k: v for k, v in g.items() if k.startswith("activity ")}
    assert 2 <= len(quartiles) <= 4
    assert sum(v["n_users"] for v in quartiles.values()) == res.test["n_users"]
    # the overall mean is the users' mean over the quartiles
    total = sum(v["recall@20"] * v["n_users"] for v in quartiles.values())
    assert abs(total / res.test["n_users"] - res.test["recall@20"]) < 1e-9
    notes = result_notes(res, cfg)
    assert any("3 test user(s) have no training interactions" in n for n in notes)
    assert not any("cold-start" in n for n in notes)
    # a cold group that holds nearly everyone says so
    cold = TrainConfig(epochs=1, quiet=True, cold_max=10 ** 6)
    res = Trainer(ssr_engine.MFBPR(d2.train_graph(), dim=8), d2, cold).fit()
    assert res.test_cold["n_users"] == res.test["n_users"]
    assert any("100% of the test users are cold-start" in n for n in result_notes(res, cold))


def _ssr_cp(ds, fusion="cp", seed=0):
    seed_everything(seed)
    return ssr_engine.SSRModel(ds.train_graph(), {}, n_bands=2, dim=16, rank=4, fusion=fusion,
                               approx="exact", seed=seed)


def test_fusion_factors_get_their_own_learning_rate_and_weight_decay(ds):
    model = _ssr_cp(ds)
    cfg = TrainConfig(lr=1e-2, fusion_lr=1e-4, fusion_weight_decay=1e-3, batch_size=256,
                      quiet=True, seed=0)
    tr = Trainer(model, ds, cfg)
    groups = tr.opt.param_groups
    fusion = {id(p) for p in model.fusion.parameters()}
    assert fusion and len(groups) == 2
    assert {id(p) for p in groups[1]["params"]} == fusion
    assert groups[1]["lr"] == 1e-4 and groups[1]["weight_decay"] == 1e-3
    assert groups[0]["lr"] == 1e-2 and groups[0]["weight_decay"] == 0.0
    assert not fusion & {id(p) for p in groups[0]["params"]}
    n_all = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups) == n_all


def test_a_tiny_fusion_learning_rate_freezes_the_factors_only(ds):
    model = _ssr_cp(ds)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tr = Trainer(model, ds, TrainConfig(lr=1e-2, fusion_lr=1e-12, batch_size=256, quiet=True,
                                        seed=0))
    tr.train_epoch()
    moved = {n: float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters()}
    fus = [n for n in moved if n.startswith("fusion.")]
    rest = [n for n in moved if not n.startswith("fusion.")]
    assert fus and max(moved[n] for n in fus) < 1e-9
    assert max(moved[n] for n in rest) > 1e-4


def test_fusion_settings_are_refused_without_fusion_factors(ds):
    for model in (_mf(ds), _ssr_cp(ds, fusion="sum")):
        with pytest.raises(ValueError, match="has none"):
            Trainer(model, ds, TrainConfig(fusion_lr=1e-3, quiet=True))
        with pytest.raises(ValueError, match="has none"):
            Trainer(model, ds, TrainConfig(fusion_weight_decay=1e-3, quiet=True))
    for bad in (dict(fusion_lr=0.0), dict(fusion_lr=-1e-3), dict(fusion_lr=float("nan")),
                dict(fusion_weight_decay=-1.0)):
        with pytest.raises(ValueError, match="fusion_"):
            Trainer(_ssr_cp(ds), ds, TrainConfig(quiet=True, **bad))


def test_fusion_settings_count_in_the_identity_only_when_set():
    plain = TrainConfig().identity()
    assert "fusion_lr" not in plain and "fusion_weight_decay" not in plain
    own = TrainConfig(fusion_lr=1e-4, fusion_weight_decay=1e-3).identity()
    assert own["fusion_lr"] == 1e-4 and own["fusion_weight_decay"] == 1e-3
