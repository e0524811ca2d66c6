"""A tiny trained SSR checkpoint on MMRec-format files, shared by the restore and CLI tests."""
import pytest
import torch

from ssr_engine.data import save_mmrec, synthetic_dataset
from ssr_engine.nn import SSRModel
from ssr_engine.train import TrainConfig, Trainer


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``(data_dir, checkpoint, dataset, trained model)`` after two epochs of training."""
    root = tmp_path_factory.mktemp("tiny_run")
    ds = synthetic_dataset(80, 50, 900, modalities={"text": 10, "image": 5}, seed=3, name="tiny")
    save_mmrec(ds, root / "data")
    ckpt = root / "checkpoint.pt"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = SSRModel(ds.train_graph(), ds.features, n_bands=3, dim=8, rank=4)
        Trainer(model, ds, TrainConfig(epochs=2, batch_size=128, quiet=True),
                checkpoint=ckpt).fit()
    finally:
        torch.set_num_threads(before)
    return root / "data", ckpt, ds, model.eval()


@pytest.fixture(autouse=True)
def one_thread():
    """Run each test with one torch thread: dense eigh/SVD thrash when the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
