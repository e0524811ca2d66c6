"""The interface every recommender of the harness implements (SSR and the baselines).

A recommender maps users and items to ``d``-dimensional vectors and scores a pair by their
dot product. Training calls :meth:`Recommender.loss` on sampled ``(user, positive,
negatives)`` triplets; evaluation calls :meth:`Recommender.scorer` once and ranks blocks of
users against all items.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Recommender", "ranking_loss"]

LOSSES = ("bpr", "bce")


def ranking_loss(pos: torch.Tensor, neg: torch.Tensor, kind: str = "bpr") -> torch.Tensor:
    """Pairwise BPR or pointwise BCE loss.

    Args:
        pos: ``[B]`` scores of the positive pairs.
        neg: ``[B, n_neg]`` scores of the sampled negatives.
        kind: ``"bpr"`` (``-log σ(pos - neg)``, mean over pairs) or ``"bce"`` (positives
            labelled 1, negatives 0, mean over the positives and over the negatives).

    Returns:
        Scalar loss.
    """
    if kind == "bpr":
        return -F.logsigmoid(pos.unsqueeze(1) - neg).mean()
    if kind == "bce":
        return (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
                + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg)))
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")


class Recommender(nn.Module):
    """Base class: dot-product recommenders trained on sampled triplets.

    Subclasses implement :meth:`embed` (training-time vectors of a batch of nodes plus the
    auxiliary losses), :meth:`node_embeddings` (inference vectors of all nodes) and
    :meth:`config` (the constructor arguments, used to refuse foreign checkpoints).

    Args:
        seen: ``[n_users, n_items]`` sparse matrix of the training interactions (items that
            :meth:`recommend` excludes).
        loss: ``"bpr"`` or ``"bce"``.
    """

    def __init__(self, seen: sp.spmatrix, loss: str = "bpr"):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self._seen = sp.csr_matrix(seen)
        self.n_users, self.n_items = self._seen.shape
        self.loss_kind = loss

    # -- to implement ------------------------------------------------------------------
    def config(self) -> Dict:
        raise NotImplementedError

    def node_embeddings(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Inference vectors ``(users [n_users, d], items [n_items, d])``."""
        raise NotImplementedError

    def _batch_loss(self, users: torch.Tensor, pos: torch.Tensor,
                    neg: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Losses of one batch of validated ids (:meth:`loss` is the public entry point);
        ``"loss"`` is the total to minimise."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def sparse_parameters(self):
        """Parameters whose gradients are sparse (for ``torch.optim.SparseAdam``); none
        unless a subclass says otherwise."""
        return []

    def fusion_parameters(self):
        """Parameters of a learned fusion (the trainer can give them their own learning rate
        and weight decay); none unless a subclass says otherwise."""
        return []

    def check_inputs(self, nodes: torch.Tensor) -> None:
        """Raise ValueError when the fixed inputs of ``nodes`` (users first, items offset by
        ``n_users``) are damaged; the trainer calls it after a non-finite loss. Models with
        nothing read from disk have nothing to check."""

    def dense_parameters(self):
        """All other parameters (for ``torch.optim.Adam``)."""
        sparse = {id(p) for p in self.sparse_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]

    @torch.no_grad()
    def embed(self, nodes, chunk: int = 8192, progress=None) -> torch.Tensor:
        """Inference vectors of ``nodes`` (users first, items offset by ``n_users``): ``[n, d]``.

        This default computes :meth:`node_embeddings` and picks the rows; models whose
        vectors are per node (SSR) embed only the nodes asked for.

        Args:
            nodes: ``[n]`` node ids.
            chunk: nodes per block (where the model works in blocks).
            progress: optional tqdm bar, advanced by the nodes done.
        """
        nodes = self._check_ids(nodes, self.n_users + self.n_items, "node")
        u, i = self.node_embeddings()
        out = torch.cat([u, i])[nodes.to(u.device)]
        if progress is not None:
            progress.update(nodes.numel())
        return out

    def forward(self, users: torch.Tensor, pos: torch.Tensor,
                neg: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The training losses (:meth:`loss`); a module call, so DDP can wrap it."""
        return self.loss(users, pos, neg)

    def _check_ids(self, ids: torch.Tensor, n: int, what: str) -> torch.Tensor:
        ids = torch.as_tensor(ids, device=self.device)
        if ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{what} ids must be an integer tensor, got {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
            raise ValueError(f"{what} ids must lie in [0, {n}); got "
                             f"{int(ids.min())}..{int(ids.max())}")
        return ids.long()

    def loss(self, users, pos, neg) -> Dict[str, torch.Tensor]:
        """Training losses of a batch of triplets (validated ids).

        Args:
            users: ``[B]`` user ids.
            pos: ``[B]`` positive item ids.
            neg: ``[B]`` or ``[B, n_neg]`` negative item ids.

        Returns:
            Dict of scalar tensors; ``"loss"`` is the total.
        """
        users = self._check_ids(users, self.n_users, "user")
        pos = self._check_ids(pos, self.n_items, "item")
        neg = self._check_ids(neg, self.n_items, "item")
        if neg.dim() == 1:
            neg = neg.unsqueeze(1)
        if not (users.shape[0] == pos.shape[0] == neg.shape[0]):
            raise ValueError(f"users, pos and neg differ in batch size: {users.shape[0]}, "
                             f"{pos.shape[0]}, {neg.shape[0]}")
        return self._batch_loss(users, pos, neg)

    @torch.no_grad()
    def scorer(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function ``users [b] -> scores [b, n_items]`` with embeddings computed once."""
        u_emb, i_emb = self.node_embeddings()
        return lambda users: u_emb[users.to(u_emb.device)] @ i_emb.T

    @torch.no_grad()
    def score(self, users, items) -> torch.Tensor:
        """Scores of pairs ``(users[j], items[j])``: ``[n]``.

        Example:
            >>> import torch, ssr_engine
            >>> g = ssr_engine.InteractionGraph([0, 1], [1, 0])
            >>> m = ssr_engine.MFBPR(g, dim=8)
            >>> m.score(torch.tensor([0, 1]), torch.tensor([0, 0])).shape
            torch.Size([2])
        """
        users = self._check_ids(users, self.n_users, "user")
        items = self._check_ids(items, self.n_items, "item")
        if users.shape != items.shape:
            raise ValueError(f"users and items must have the same shape, got "
                             f"{tuple(users.shape)} and {tuple(items.shape)}")
        u_emb, i_emb = self.node_embeddings()
        return (u_emb[users] * i_emb[items]).sum(-1)

    @torch.no_grad()
    def recommend(self, users, k: int = 10, exclude_seen: bool = True
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` items for each user.

        Args:
            users: ``[b]`` user ids.
            k: list length (``1 ≤ k ≤ n_items``).
            exclude_seen: never recommend the user's training items.

        Returns:
            ``(scores [b, k], items [b, k])``, best first.
        """
        users = self._check_ids(users, self.n_users, "user")
        if not 1 <= int(k) <= self.n_items:
            raise ValueError(f"k must lie in [1, {self.n_items}], got {k}")
        was_training = self.training
        self.eval()
        scores = self.scorer()(users)
        self.train(was_training)
        if exclude_seen:
            ex = self._seen[users.cpu().numpy()]
            rows = torch.from_numpy(np.repeat(np.arange(users.numel()), np.diff(ex.indptr)))
            cols = torch.from_numpy(ex.indices.astype(np.int64))
            scores[rows.to(scores.device), cols.to(scores.device)] = -torch.inf
        return torch.topk(scores, int(k), dim=1)
