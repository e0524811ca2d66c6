"""Rebuilding a trained SSR model from a checkpoint: same vectors; clear refusals."""
import pytest
import torch

from ssr_engine.data import Dataset, synthetic_dataset
from ssr_engine.explain import load_trained_model
from ssr_engine.nn import MFBPR
from ssr_engine.train import TrainConfig, Trainer
from tolerances import tol


def test_rebuilt_model_equals_trained(tiny_run):
    _, ckpt, ds, model = tiny_run
    rebuilt = load_trained_model(ckpt, ds)
    assert not rebuilt.training and rebuilt.config() == model.config()
    for a, b in zip(rebuilt.node_embeddings(), model.node_embeddings()):
        assert torch.allclose(a, b, rtol=tol(torch.float32), atol=tol(torch.float32))
    last = load_trained_model(ckpt, ds, which="last")
    assert last.modalities == model.modalities


def test_refusals(tiny_run, tmp_path):
    _, ckpt, ds, _ = tiny_run
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_trained_model(tmp_path / "none.pt", ds)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt is damaged or not a checkpoint"):
        load_trained_model(junk, ds)
    no_image = Dataset(ds.user_ids, ds.item_ids, ds.split, ds.n_users, ds.n_items,
                       {"text": ds.features["text"]}, name="tiny")
    with pytest.raises(ValueError, match="modality 'image' with 5 dims"):
        load_trained_model(ckpt, no_image)
    other = synthetic_dataset(80, 50, 900, modalities={"text": 10, "image": 5}, seed=4)
    with pytest.raises(ValueError, match="different configuration"):
        load_trained_model(ckpt, other)
    with pytest.raises(ValueError, match="which must be"):
        load_trained_model(ckpt, ds, which="first")


def test_baseline_checkpoint_is_refused(tmp_path):
    ds = synthetic_dataset(60, 40, 500, modalities={}, seed=0)
    ckpt = tmp_path / "mf.pt"
    Trainer(MFBPR(ds.train_graph(), dim=8), ds, TrainConfig(epochs=1, quiet=True),
            checkpoint=ckpt).fit()
    with pytest.raises(TypeError, match="'mf'.*not an SSR model"):
        load_trained_model(ckpt, ds)
