"""Weighted k-nearest-neighbour classification on L2-normalised features (as DINO)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_scores(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    test_f: torch.Tensor,
    num_classes: int,
    ks=(10, 20, 200),
    temperature: float = 0.07,
    chunk: int = 1024,
) -> dict[int, torch.Tensor]:
    """Class votes (N_test, C) for each k: neighbours by cosine similarity, each voting
    with weight exp(sim / T) for its label."""
    train_f = F.normalize(train_f.float(), dim=1)
    test_f = F.normalize(test_f.float(), dim=1)
    ks = sorted({min(k, len(train_f)) for k in ks})
    kmax = ks[-1]
    out = {k: [] for k in ks}
    for start in range(0, len(test_f), chunk):
        sim = test_f[start : start + chunk] @ train_f.T
        top_sim, top_idx = sim.topk(kmax, dim=1)
        weights = (top_sim / temperature).exp()
        votes = F.one_hot(train_y[top_idx], num_classes).float() * weights.unsqueeze(-1)
        for k in ks:
            out[k].append(votes[:, :k].sum(1))
    return {k: torch.cat(v) for k, v in out.items()}
