"""Rebuild a trained SSR model from a training checkpoint and its dataset."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import torch

from ..data import Dataset
from ..nn.model import SSRModel
from ..train.checkpoint import load_checkpoint, read_checkpoint
from ..train.trainer import _fingerprint

__all__ = ["load_trained_model"]

PathLike = Union[str, os.PathLike]
#: config keys that describe the data, not constructor arguments.
_NOT_ARGS = ("model", "n_users", "n_items", "features")


def _saved_config(path: Path) -> dict:
    # Memory-mapped read: only the config is touched here.
    st = read_checkpoint(path, mmap=True)
    if "model" not in st["config"]:
        raise ValueError(f"{path} is not a checkpoint written by ssr_engine.train")
    return st["config"]


def load_trained_model(checkpoint: PathLike, dataset: Dataset, which: str = "best",
                       device: Union[str, torch.device] = "cpu") -> SSRModel:
    """Rebuild the :class:`~ssr_engine.SSRModel` of a :class:`~ssr_engine.train.Trainer` checkpoint.

    The model is constructed from the checkpoint's model configuration on ``dataset``'s
    training graph and features, then the checkpoint is loaded with
    :func:`~ssr_engine.train.load_checkpoint`, which refuses it unless the dataset's
    fingerprint and the rebuilt configuration match the saved ones.

    Args:
        checkpoint: ``checkpoint.pt`` written by the trainer.
        dataset: the dataset the model was trained on (with the features it used).
        which: ``"best"`` (the state of the best validation epoch, what ``Trainer.fit``
            ends with) or ``"last"`` (the last completed epoch).
        device: where to put the model.

    Returns:
        The model in eval mode.

    Raises:
        FileNotFoundError: when the checkpoint does not exist.
        TypeError: when the checkpoint holds a baseline (not an SSR model).
        ValueError: when it is not a checkpoint, the model read its bands from a band store,
            the dataset lacks a modality it used, or the dataset / configuration differ from
            the saved ones.

    Example:
        >>> from ssr_engine.explain import load_trained_model
        >>> model = load_trained_model("runs/ml/checkpoint.pt", ds)  # doctest: +SKIP
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    saved = _saved_config(path)
    mcfg = saved["model"]
    if not isinstance(mcfg, dict) or mcfg.get("model") != "ssr":
        kind = mcfg.get("model") if isinstance(mcfg, dict) else mcfg
        raise TypeError(f"{path} holds a {kind!r} model, not an SSR model; explanations need "
                        "frequency bands (train with --model ssr)")
    if "source" in mcfg:
        raise ValueError(f"{path} holds a model that read its bands from a band store "
                         "(--pipeline stored); this needs a model whose bands are computed in "
                         "memory (train it with --pipeline memory)")
    if (mcfg["n_users"], mcfg["n_items"]) != (dataset.n_users, dataset.n_items):
        raise ValueError(f"{path} was trained on {mcfg['n_users']} users x {mcfg['n_items']} "
                         f"items; dataset {dataset.name!r} has {dataset.n_users} x "
                         f"{dataset.n_items}")
    feats = {}
    for name, dim in mcfg["features"].items():
        f = dataset.features.get(name)
        if f is None or f.shape[1] != dim:
            have = {k: v.shape[1] for k, v in dataset.features.items()}
            raise ValueError(f"the model used modality {name!r} with {dim} dims; the dataset "
                             f"has {have}. Load the data with that modality")
        feats[name] = f
    model = SSRModel(dataset.train_graph(), feats,
                     **{k: v for k, v in mcfg.items() if k not in _NOT_ARGS})
    expected = dict(saved, model=model.config(), data=_fingerprint(dataset))
    state = load_checkpoint(path, expected)
    weights = state["model"]
    if which == "best" and state.get("best", {}).get("state") is not None:
        weights = state["best"]["state"]
    model.load_state_dict(weights)
    return model.to(device).eval()
