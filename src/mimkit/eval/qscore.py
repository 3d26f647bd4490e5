"""Q-score (Kalibhat et al., "Understanding Failure Modes of Self-Supervised Learning",
arXiv 2203.01881): how sparse and peaked a representation is; low Q flags images the
representation handles poorly."""

from __future__ import annotations

import torch


def qscore(h: torch.Tensor) -> torch.Tensor:
    """h: (N, D) -> (N,): ((max h - mean h) / std h) / ||h||_1 (std unbiased)."""
    h = h.double()
    z = (h.max(dim=1).values - h.mean(dim=1)) / h.std(dim=1).clamp(min=1e-12)
    return (z / h.abs().sum(dim=1).clamp(min=1e-12)).float()
