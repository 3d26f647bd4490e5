"""``mimkit blocks``: kNN and linear accuracy of every block's [CLS], average-pooled and
concatenated features, from one pass over the data (every block's features cached), as a
table and a plot. Which block a method's features are best read from is chosen here on a
validation split drawn from the training images, never on the test split (the split the
protocols then report); pass it to any protocol as ``eval.block``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import config as config_lib
from ..data import open_splits
from ..eval.attentive import every_block
from ..eval.knn import knn_scores
from ..eval.monitor import holdout
from ..utils import distributed as dist
from .backbone import load_backbone, split_features
from .registry import Recipe, register
from .results import Result
from .run import start

log = logging.getLogger("mimkit")
KINDS = ("cls", "avg", "cat")


@dataclass
class BlocksConfig:
    val_fraction: float = 0.1  # of the training images: the split blocks are chosen on
    k: int = 20  # kNN neighbours (weighted, eval.knn_temperature)
    linear_epochs: int = 30  # linear probe on the cached features (AdamW, BN + linear)


class AllBlocks(nn.Module):
    """Features (N, depth, 2, D): each block's [CLS] and mean patch token (final norm)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.depth = len(backbone.blocks)

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        f = every_block(self.backbone, imgs)
        return torch.stack([f["cls"], f["avg"]], dim=2).transpose(0, 1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x

    @property
    def patch_embed(self):
        return self.backbone.patch_embed

    def arch_config(self) -> dict:
        arch = getattr(self.backbone, "arch_config", lambda: {})()
        return {**arch, "every_block": True}


def features_of(block: torch.Tensor, kind: str) -> torch.Tensor:
    """(N, 2, D) of one block -> (N, D) or (N, 2D) for ``kind`` cls | avg | cat."""
    return {"cls": block[:, 0], "avg": block[:, 1], "cat": block.flatten(1)}[kind]


def linear_accuracy(
    train: torch.Tensor, ty: torch.Tensor, val: torch.Tensor, vy: torch.Tensor, epochs: int
) -> float:
    """Top-1 (%) of BatchNorm + linear trained with AdamW on cached features (seeded)."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    head = nn.Sequential(nn.BatchNorm1d(train.shape[1], affine=False), nn.Linear(train.shape[1],
                         int(ty.max()) + 1))  # fmt: skip
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    steps = epochs * -(-len(train) // 256)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        for idx in torch.randperm(len(train), generator=g).split(256):
            if len(idx) < 2:
                continue
            loss = nn.functional.cross_entropy(head(train[idx]), ty[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    head.eval()
    with torch.no_grad():
        return 100.0 * (head(val).argmax(1) == vy).float().mean().item()


def run(cfg: config_lib.Config, resume: Path | None = None) -> Result:
    ctx = start(cfg)
    b = cfg.blocks
    splits = open_splits(
        cfg.data.path, cfg.data.file_list, cfg.data.val_list, cfg.data.image_key, cfg.data.label_key
    )
    # the blocks are chosen on images drawn from train: the test split is not looked at
    fit_part, choose_part = holdout(splits.train, b.val_fraction, cfg.train.seed)
    splits = type(splits)(fit_part, choose_part, splits.classes)
    out = ctx.run_dir()
    backbone, _ = load_backbone(cfg, ctx.device)
    train, val, _ = split_features(ctx, AllBlocks(backbone).to(ctx.device), splits)
    rows = sweep(train, val, len(splits.classes), b.k, cfg.eval.knn_temperature, b.linear_epochs)
    best = {p: max(rows, key=lambda r: r[p]) for p in ("knn", "linear")}
    metrics = {
        "protocol": "blocks",
        "checkpoint": cfg.model.checkpoint,
        "chosen_on": f"{len(choose_part)} training images held out ({b.val_fraction:.0%})",
        "rows": rows,
        "best": {
            p: {"block": r["block"], "kind": r["kind"], "top1": r[p]} for p, r in best.items()
        },
    }
    picture = None
    if dist.is_main():
        print(table(rows))
        for p, r in best.items():
            print(
                f"best for {p}: block {r['block']} {r['kind']} ({r[p]:.2f}%): "
                f"eval.block={r['block']}"
            )
        from ..utils.io import write_json
        from ..viz.curves import plot_blocks

        write_json(out / "metrics.json", metrics)
        picture = plot_blocks(rows, out / "blocks.png")
    ctx.finish([picture])
    return Result(out=out, metrics=metrics, config=cfg, picture=picture)


def sweep(train: dict, val: dict, num_classes: int, k: int, temperature: float, epochs: int):
    """One row per (block, kind): kNN and linear top-1 (%)."""
    tf, vf = train["features"], val["features"]  # (N, depth, 2, D)
    ty, vy = train["labels"], val["labels"]
    rows = []
    for block in range(tf.shape[1]):
        for kind in KINDS:
            a, v = features_of(tf[:, block], kind), features_of(vf[:, block], kind)
            votes = next(iter(knn_scores(a, ty, v, num_classes, (k,), temperature).values()))
            knn = 100.0 * (votes.argmax(1) == vy).float().mean().item()
            rows.append(
                {
                    "block": block,
                    "kind": kind,
                    "knn": knn,
                    "linear": linear_accuracy(a, ty, v, vy, epochs),
                }
            )
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'block':>5s}  " + "  ".join(f"{p}/{k:<4s}" for p in ("knn", "lin") for k in KINDS)]
    for block in sorted({r["block"] for r in rows}):
        cells = {(r["kind"]): r for r in rows if r["block"] == block}
        vals = [cells[k]["knn"] for k in KINDS] + [cells[k]["linear"] for k in KINDS]
        lines.append(f"{block:5d}  " + "  ".join(f"{v:8.2f}" for v in vals))
    return "\n".join(lines)


RECIPE = register(
    Recipe(
        "blocks",
        run,
        help="kNN and linear accuracy of every block's features (cls, avg, both): pick eval.block",
        section=("blocks", BlocksConfig),
        trains=False,
        backbone=True,
        api_args=("checkpoint",),
        order=15,
    )
)
