"""Baselines of the harness: MF-BPR and LightGCN (as configured in MMRec).

Both learn one free ``[N, d]`` embedding table (Xavier-uniform, as MMRec), score by dot
product, and regularise the batch's ego embeddings:
``λ_reg · mean_batch(‖e_u‖² + ‖e_i‖² + mean_neg ‖e_j‖²) / 2``.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn

from ..graph import InteractionGraph
from .recommender import Recommender, ranking_loss

__all__ = ["MFBPR", "LightGCN"]


def _ego_reg(u: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    return (u.pow(2).sum(-1) + p.pow(2).sum(-1) + n.pow(2).sum(-1).mean(-1)).mean() / 2


class MFBPR(Recommender):
    """Matrix factorisation trained with BPR (or BCE).

    Args:
        graph: training interaction graph (gives sizes and the seen items).
        dim: embedding size ``d``.
        reg: ``λ_reg`` on the batch embeddings.
        loss: ``"bpr"`` or ``"bce"``.

    Shapes:
        ``node_embeddings()``: ``([n_users, d], [n_items, d])``.

    Example:
        >>> import torch, ssr_engine
        >>> g = ssr_engine.InteractionGraph([0, 1, 2], [1, 0, 2])
        >>> m = ssr_engine.MFBPR(g, dim=8)
        >>> sorted(m.loss(torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))
        ['loss', 'rec', 'reg']
    """

    def __init__(self, graph: InteractionGraph, dim: int = 64, reg: float = 1e-4,
                 loss: str = "bpr"):
        super().__init__(graph.interaction_matrix(), loss)
        self.dim, self.reg = int(dim), float(reg)
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, dim)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, dim)))

    def config(self) -> Dict:
        return {"model": "mf", "n_users": self.n_users, "n_items": self.n_items,
                "dim": self.dim, "reg": self.reg, "loss": self.loss_kind}

    def node_embeddings(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.user_emb, self.item_emb

    def _batch_loss(self, users, pos, neg) -> Dict[str, torch.Tensor]:
        u, p, n = self.user_emb[users], self.item_emb[pos], self.item_emb[neg]
        rec = ranking_loss((u * p).sum(-1), (u.unsqueeze(1) * n).sum(-1), self.loss_kind)
        reg = self.reg * _ego_reg(u, p, n)
        return {"loss": rec + reg, "rec": rec, "reg": reg}


class LightGCN(Recommender):
    """LightGCN: ``E = mean_{l=0..L} Â^l E_0`` on the normalised bipartite adjacency.

    Every training step propagates the whole graph (``L`` sparse products), as in MMRec.

    Args:
        graph: training interaction graph.
        dim: embedding size ``d``.
        n_layers: propagation depth ``L`` (MMRec's setting: 3).
        reg: ``λ_reg`` on the batch's ego (layer-0) embeddings.
        loss: ``"bpr"`` or ``"bce"``.

    Shapes:
        ``propagate()``: ``[N, d]`` (users first).

    Example:
        >>> import torch, ssr_engine
        >>> g = ssr_engine.InteractionGraph([0, 1, 2], [1, 0, 2])
        >>> m = ssr_engine.LightGCN(g, dim=8)
        >>> [t.shape[0] for t in m.node_embeddings()]
        [3, 3]
    """

    def __init__(self, graph: InteractionGraph, dim: int = 64, n_layers: int = 3,
                 reg: float = 1e-4, loss: str = "bpr"):
        super().__init__(graph.interaction_matrix(), loss)
        if n_layers < 0:
            raise ValueError(f"n_layers must be >= 0, got {n_layers}")
        self.dim, self.n_layers, self.reg = int(dim), int(n_layers), float(reg)
        self.emb = nn.Parameter(nn.init.xavier_uniform_(
            torch.empty(self.n_users + self.n_items, dim)))
        self._graph = graph

    def config(self) -> Dict:
        return {"model": "lightgcn", "n_users": self.n_users, "n_items": self.n_items,
                "dim": self.dim, "n_layers": self.n_layers, "reg": self.reg,
                "loss": self.loss_kind}

    def propagate(self) -> torch.Tensor:
        """Layer-averaged embeddings of all nodes ``[N, d]``."""
        a = self._graph.adjacency(dtype=self.emb.dtype, device=self.emb.device)
        x, acc = self.emb, self.emb
        for _ in range(self.n_layers):
            x = a @ x
            acc = acc + x
        return acc / (self.n_layers + 1)

    def node_embeddings(self) -> Tuple[torch.Tensor, torch.Tensor]:
        e = self.propagate()
        return e[:self.n_users], e[self.n_users:]

    def _batch_loss(self, users, pos, neg) -> Dict[str, torch.Tensor]:
        e = self.propagate()
        off = self.n_users
        u, p, n = e[users], e[off + pos], e[off + neg]
        rec = ranking_loss((u * p).sum(-1), (u.unsqueeze(1) * n).sum(-1), self.loss_kind)
        reg = self.reg * _ego_reg(self.emb[users], self.emb[off + pos], self.emb[off + neg])
        return {"loss": rec + reg, "rec": rec, "reg": reg}
