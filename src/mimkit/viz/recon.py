"""Reconstruction grids as in the official MAE demo:
original | masked | reconstruction | reconstruction with the visible patches pasted back."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch

from .. import masking
from ..data.transforms import denormalize, eval_transform
from ..errors import UserError

log = logging.getLogger("mimkit")


@torch.no_grad()
def reconstruct(
    model, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """imgs: (N, 3, H, W) normalised -> dict of (N, 3, H, W) images in [0, 1]:
    original, masked, recon, pasted; plus the loss and mask (N, L).

    With ``norm_pix_loss`` the prediction is in per-patch normalised space: it is mapped
    back with the target patches' own mean and variance (as the official demo).
    """
    model.eval()
    out = model(imgs, mask_ratio=mask_ratio, noise=noise)
    p = model.patch_size
    pred = out.pred.float()
    if model.norm_pix_loss:
        target = masking.patchify(imgs, p)
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mean
    grid = model.grid_size
    recon = masking.unpatchify(pred, p, grid)
    pixel_mask = masking.unpatchify(
        out.mask.unsqueeze(-1).expand(-1, -1, p * p * 3).float(), p, grid
    )
    masked = imgs * (1 - pixel_mask)
    pasted = imgs * (1 - pixel_mask) + recon * pixel_mask
    return {
        "original": denormalize(imgs),
        "masked": denormalize(masked) * (1 - pixel_mask) + 0.5 * pixel_mask,  # grey holes
        "recon": denormalize(recon),
        "pasted": denormalize(pasted),
        "loss": out.loss,
        "mask": out.mask,
    }


@torch.no_grad()
def reconstruct_windows(
    model, imgs: torch.Tensor, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """LoMaR: the same four views on the whole image, where only the sampled windows
    take part: outside them the image is dimmed, inside them masked patches are grey
    (``masked``) or predicted (``recon``, ``pasted``). Adds ``boxes`` (N, M, 3): each
    window's top-left pixel (row, col) and its side in pixels, for drawing."""
    model.eval()
    n, p = imgs.shape[0], model.patch_size
    grid, ws = model.grid_size, model.window_size
    # reproducible pictures: corners and masks drawn from ``generator``
    corners = _seeded_corners(n, model.num_window, grid, ws, generator).to(imgs.device)
    noise = torch.rand(n * model.num_window, ws * ws, generator=generator).to(imgs.device)
    win = model.sample(imgs, corners=corners, noise=noise, pairing="per_image")
    out = model(imgs, windows=win)
    target = masking.patchify(imgs, p)  # (N, L, ppc)
    pred = out.pred.float()
    if model.norm_pix_loss:
        t = target[win.image.unsqueeze(1), win.patches]
        pred = pred * (t.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + t.mean(dim=-1, keepdim=True)
    inside = torch.zeros(target.shape[:2], device=imgs.device)
    masked = torch.zeros_like(inside)
    recon = target.clone()
    inside[win.image.unsqueeze(1), win.patches] = 1.0
    masked[win.image.unsqueeze(1), win.patches] = win.mask
    recon[win.image.unsqueeze(1), win.patches] = pred
    as_img = lambda x: masking.unpatchify(x, p, grid)  # noqa: E731
    pix = lambda m: as_img(m.unsqueeze(-1).expand(-1, -1, target.shape[-1]))  # noqa: E731
    inside, masked = pix(inside), pix(masked)
    dim = 0.35 * denormalize(imgs) * (1 - inside)
    visible = denormalize(imgs) * inside * (1 - masked)
    return {
        "original": denormalize(imgs),
        "masked": dim + visible + 0.5 * masked,
        "recon": dim + denormalize(as_img(recon)) * inside,
        "pasted": dim + visible + denormalize(as_img(recon)) * masked,
        "loss": out.loss,
        "mask": out.mask,
        "boxes": torch.cat([corners * p, torch.full_like(corners[..., :1], ws * p)], -1),
    }


def _seeded_corners(n, m, grid, ws, generator) -> torch.Tensor:
    rows = torch.randint(0, grid[0] - ws + 1, (n, m), generator=generator)
    cols = torch.randint(0, grid[1] - ws + 1, (n, m), generator=generator)
    return torch.stack([rows, cols], -1)


MAE_COLUMNS = (
    ("original", "original"),
    ("masked", "masked"),
    ("recon", "reconstruction"),
    ("pasted", "reconstruction + visible"),
)


def save_grid(
    images: dict[str, torch.Tensor], path: str | Path, title: str = "", columns=MAE_COLUMNS
) -> Path:
    """One row per image, one column per (key, label) of ``columns``, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = list(columns)
    n = images["original"].shape[0]
    fig, axes = plt.subplots(n, len(cols), figsize=(len(cols) * 2.2, n * 2.2), squeeze=False)
    for r in range(n):
        for c, (key, label) in enumerate(cols):
            ax = axes[r][c]
            ax.imshow(images[key][r].permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=10)
            for top, left, side in images["boxes"][r].tolist() if "boxes" in images else []:
                ax.add_patch(
                    plt.Rectangle((left - 0.5, top - 0.5), side, side, fill=False, ec="yellow")
                )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / n) if title else None)
    if title:
        fig.suptitle(title, fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def reconstruction_grid(
    model, paths: list[str], out, mask_ratio: float | None, seed: int, device
) -> float:
    """Write the grid for ``paths``; unreadable files are skipped and named. Returns the
    masked-patch loss. MAE: random masks from ``seed``; LoMaR: its windows and masks."""
    from ..data.images import failure_reason, open_rgb

    if mask_ratio is not None and not 0.0 < mask_ratio < 1.0:
        raise UserError(
            f"mask ratio must be between 0 and 1 (exclusive: the loss is taken on the masked "
            f"patches), got {mask_ratio}"
        )
    transform = eval_transform(model.patch_embed.img_size[0])
    images = []
    for p in paths:
        try:
            images.append(transform(open_rgb(p)))
        except Exception as e:  # any decode failure
            log.warning("skipped unreadable image %s (%s)", p, failure_reason(e))
    if not images:
        raise UserError("none of the given images could be read")
    imgs = torch.stack(images).to(device)
    g = torch.Generator().manual_seed(seed)
    if hasattr(model, "teacher"):  # iBOT: block masks and prototypes
        return prototype_grid(model, imgs, out, g, mask_ratio)
    if hasattr(model, "window_size"):  # LoMaR: windows, their masks and predictions
        result = reconstruct_windows(model, imgs, g)
        loss = float(result["loss"])
        title = f"{model.num_window} windows of {model.window_size}x{model.window_size}, "
        save_grid(result, out, title=title + f"masked-patch loss {loss:.4f}")
        return loss
    noise = torch.rand(len(images), model.patch_embed.num_patches, generator=g).to(device)
    ratio = model.mask_ratio if mask_ratio is None else mask_ratio
    result = reconstruct(model, imgs, ratio, noise)
    loss = float(result["loss"])
    save_grid(result, out, title=f"mask ratio {ratio:.2f}, masked-patch loss {loss:.4f}")
    return loss


IBOT_COLUMNS = (
    ("original", "original"),
    ("masked", "block mask"),
    ("teacher", "teacher prototypes"),
    ("student", "student at masked"),
)


@torch.no_grad()
def prototype_grid(
    model, imgs: torch.Tensor, out, generator: torch.Generator, mask_ratio: float | None = None
) -> float:
    """iBOT: each image with a block mask drawn as in training (``mask_ratio`` of the
    patches, 0.4 by default: the upper end of the official 0.1-0.5 draw), its patches
    coloured by the teacher's argmax prototype (the online tokenizer's 'visual words'),
    and the student's argmax at the masked patches (what it predicts there). Returns the
    share of masked patches where the two agree."""
    from ..masking import block_mask

    model.eval()
    n, p = imgs.shape[0], model.patch_embed.patch_size[0]
    gh, gw = model.patch_embed.grid_size
    mask_ratio = 0.4 if mask_ratio is None else mask_ratio
    rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=generator)))
    masks = torch.stack([block_mask(gh, gw, mask_ratio, rng) for _ in range(n)]).to(imgs.device)
    _, t_patch = model.teacher(imgs)
    _, s_patch = model.student(imgs, masks)
    teacher = t_patch.argmax(-1).reshape(n, gh, gw)
    student = s_patch.argmax(-1).reshape(n, gh, gw)
    pixel = masks.repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1).float()
    original = denormalize(imgs)
    shown = {
        "original": original,
        "masked": original * (1 - pixel) + 0.5 * pixel,
        "teacher": _colour(teacher, p),
        "student": _colour(student, p) * pixel + original * (1 - pixel) * 0.3,
    }
    agree = (teacher == student)[masks].float().mean().item() if masks.any() else 0.0
    title = (
        f"{model.center.shape[-1]} prototypes; student = teacher at {100 * agree:.0f}% of masked"
    )
    save_grid(shown, out, title=title, columns=IBOT_COLUMNS)
    return agree


def _colour(ids: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, h, w) prototype ids -> (N, 3, H, W) colours, one fixed colour per id."""
    import colorsys

    hue = (ids.float() * 0.618033988749895) % 1.0  # golden-ratio hues: neighbours differ
    flat = [colorsys.hsv_to_rgb(h, 0.65, 0.95) for h in hue.flatten().tolist()]
    rgb = torch.tensor(flat).reshape(*ids.shape, 3).permute(0, 3, 1, 2)
    return rgb.repeat_interleave(patch, 2).repeat_interleave(patch, 3).to(ids.device)
