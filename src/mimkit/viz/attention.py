"""[CLS] attention of one ViT block, per head and averaged, over the images (DINO's figure).

Public functions (explicit arguments; ``mimkit inspect`` calls them):

- ``block_attention(model, images, block=-1) -> BlockAttention``: the chosen block's
  attention probabilities ``probs (N, heads, T, T)`` (rows sum to 1 over all T keys),
  recomputed from that block's attention module, with the recomputed module output
  ``proj(probs @ v)`` and the module's own output on the same input (a check).
- ``attention_maps(model, images, block=-1) -> (N, heads, h, w)``: [CLS] to each patch.
- ``draw_attention(display, maps, names=None, tile=128) -> PIL.Image``: one row per image;
  columns image, mean of the heads, head 0 .. heads-1, each map over the image.
- ``attention_figure(model, images, display=None, block=-1, names=None, tile=128)
  -> (PIL.Image, maps (N, heads, h, w))``: the two above in one call.
- ``register_attention(cls)``: a decorator adding the recomputation of another attention
  class (signature: the module's ``forward`` with the module first, returning
  ``(probs (B, heads, T, T), output (B, T, D))``).

``images``: ``(N, 3, H, W)`` normalised as the model expects (``viz.grid.load_images``
makes them from files, with the matching ``display`` images in [0, 1]).

Why an explicit recomputation: fused attention (SDPA) never materialises the
probabilities, and switching ``fused_attn`` off for the whole model changes the numerics
of every block (and is a flag each attention class names differently). Instead a forward
hook captures the chosen block's attention input (and keyword arguments: masks, BEiT's
shared relative position bias), the forward stops there, and
``softmax(q k^T * scale + biases)`` is computed from that module's own parameters by a
function chosen by the module's exact type (a subclass may change ``forward``, so it is
not assumed to compute what its parent does). Known: timm's ``Attention`` (timm ViTs),
mimkit's ``Attention`` (mimkit ViT, MAE, iBOT), ``IRPEAttention`` (LoMaR) and timm's
BEiT ``Attention`` (q/v biases, own or shared relative position bias).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from timm.layers import Attention as TimmAttention
from timm.models.beit import Attention as BeitAttention
from torch import nn

from ..errors import UserError
from ..layers.attention import Attention as MimkitAttention
from ..layers.irpe import IRPEAttention, token_grid
from .grid import compose_grid, display_from_batch, heat_overlay, to_hwc, upsample

Recompute = Callable[..., tuple[torch.Tensor, torch.Tensor]]
_RECOMPUTE: dict[type, Recompute] = {}


def register_attention(*classes: type) -> Callable[[Recompute], Recompute]:
    """Register ``fn(module, x, *args, **kwargs) -> (probs, output)`` for these exact
    attention classes (``args``/``kwargs`` as the block passes them to ``forward``)."""

    def wrap(fn: Recompute) -> Recompute:
        for cls in classes:
            _RECOMPUTE[cls] = fn
        return fn

    return wrap


def recompute_for(module: nn.Module) -> Recompute:
    """The registered recomputation for ``type(module)`` (a UserError naming the known
    types when there is none: the CLI prints it as one line)."""
    fn = _RECOMPUTE.get(type(module))
    if fn is None:
        known = ", ".join(sorted(f"{c.__module__}.{c.__qualname__}" for c in _RECOMPUTE))
        raise UserError(
            f"no attention recomputation for {type(module).__module__}."
            f"{type(module).__qualname__}; known: {known}. Add one with "
            "mimkit.viz.attention.register_attention"
        )
    return fn


# ----------------------------------------------------------------------------- the maths


def _split_qkv(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, ...]:
    """qkv: (B, T, 3 * heads * d) -> q, k, v each (B, heads, T, d)."""
    B, T, _ = qkv.shape
    return qkv.reshape(B, T, 3, num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)


def _additive(mask: torch.Tensor | None, is_causal: bool, T: int, device) -> torch.Tensor | None:
    """A mask as SDPA reads it (bool: True = attend; float: added) -> additive float."""
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, device=device).masked_fill(~mask, float("-inf"))
    if is_causal:
        causal = torch.ones(T, T, dtype=torch.bool, device=device).triu(1)
        mask = torch.zeros(T, T, device=device).masked_fill(causal, float("-inf")) + (
            0 if mask is None else mask
        )
    return mask


def softmax_scores(
    q: torch.Tensor, k: torch.Tensor, scale: float, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """q, k: (B, heads, T, d), bias broadcast to (B, heads, T, T) -> probs (B, heads, T, T),
    in float32 whatever the input precision (the picture, not the kernel, is the point)."""
    scores = (q.float() * scale) @ k.float().transpose(-2, -1)
    if bias is not None:
        scores = scores + bias.float()
    return scores.softmax(dim=-1)


def _merge_heads(probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """probs (B, heads, T, T), v (B, heads, T, d) -> (B, T, heads * d)."""
    B, H, T, d = v.shape
    return (probs.to(v.dtype) @ v).transpose(1, 2).reshape(B, T, H * d)


def _timm_output(m: TimmAttention, x: torch.Tensor, probs, v) -> torch.Tensor:
    """timm ``Attention``'s tail: scale-norm, optional sigmoid gate, projection."""
    out = m.norm(_merge_heads(probs, v))
    gate = getattr(m, "gate", None)  # timm >= 1.0.20 'gated' attention
    if gate is not None:
        out = out * gate(x).sigmoid()
    return m.proj_drop(m.proj(out))


@register_attention(TimmAttention, MimkitAttention)
def _timm_attention(m, x: torch.Tensor, attn_mask=None, is_causal: bool = False):
    """timm ViT attention (and mimkit's, which only picks SDPA per call)."""
    q, k, v = _split_qkv(m.qkv(x), m.num_heads)
    q, k = m.q_norm(q), m.k_norm(k)
    probs = softmax_scores(q, k, m.scale, _additive(attn_mask, is_causal, x.shape[1], x.device))
    return probs, _timm_output(m, x, probs, v)


@register_attention(IRPEAttention)
def _irpe_attention(m, x: torch.Tensor, attn_mask=None, is_causal: bool = False):
    """LoMaR: scores gain ``q_i . r[bucket(i, j)]`` with the unscaled query."""
    q, k, v = _split_qkv(m.qkv(x), m.num_heads)
    q, k = m.q_norm(q), m.k_norm(k)
    bias = m.rpe_k(q, token_grid(x.shape[1], m.rpe_k.skip))
    mask = _additive(attn_mask, is_causal, x.shape[1], x.device)
    if mask is not None:
        bias = bias + mask
    probs = softmax_scores(q, k, m.scale, bias)
    return probs, _timm_output(m, x, probs, v)


def beit_relative_bias(m: BeitAttention) -> torch.Tensor:
    """A BEiT block's own bias table -> (1, heads, T, T) (index is (T, T) of bucket ids)."""
    index = m.relative_position_index
    bias = m.relative_position_bias_table[index.reshape(-1)].reshape(*index.shape, -1)
    return bias.permute(2, 0, 1).unsqueeze(0)


@register_attention(BeitAttention)
def _beit_attention(m, x: torch.Tensor, shared_rel_pos_bias=None):
    """timm BEiT (SimMIM's encoder): q/v biases (k's is a zero buffer), the block's own
    relative position bias and/or the model's shared one (heads, T, T)."""
    if m.q_bias is None:
        qkv = m.qkv(x)
    else:
        qkv_bias = torch.cat((m.q_bias, m.k_bias, m.v_bias))
        separate = m.qkv_bias_separate
        qkv = m.qkv(x) + qkv_bias if separate else F.linear(x, m.qkv.weight, qkv_bias)
    q, k, v = _split_qkv(qkv, m.num_heads)
    bias = beit_relative_bias(m) if m.relative_position_bias_table is not None else None
    if shared_rel_pos_bias is not None:
        bias = shared_rel_pos_bias if bias is None else bias + shared_rel_pos_bias
    probs = softmax_scores(q, k, m.scale, bias)
    return probs, m.proj_drop(m.proj(_merge_heads(probs, v)))


# ----------------------------------------------------------------------------- capture


@dataclass
class BlockAttention:
    """One block's attention on a batch.

    probs: (N, heads, T, T) float32, softmax over keys (T = prefix + h * w tokens);
    output: (N, T, D) ``proj(probs @ v)`` recomputed; module_output: (N, T, D) what the
    module itself returned on the same input; grid: (h, w) patches."""

    probs: torch.Tensor
    output: torch.Tensor
    module_output: torch.Tensor
    num_prefix_tokens: int
    grid: tuple[int, int]

    def cls_maps(self) -> torch.Tensor:
        """(N, heads, h, w): [CLS] (token 0) attention to each patch token."""
        n, heads = self.probs.shape[:2]
        return self.probs[:, :, 0, self.num_prefix_tokens :].reshape(n, heads, *self.grid)


class _Captured(Exception):
    """Raised by the hook to stop the forward once the chosen block has run."""


def patch_grid(model: nn.Module, images: torch.Tensor) -> tuple[int, int]:
    """The (h, w) patch grid of ``images`` (N, 3, H, W) for a ViT's patch size."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is None:
        raise UserError(f"{type(model).__name__} has no patch_embed.patch_size: not a ViT")
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    return images.shape[-2] // ph, images.shape[-1] // pw


def attention_module(model: nn.Module, block: int) -> nn.Module:
    """``model.blocks[block].attn`` with a clear message when the model has none."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not len(blocks):
        raise UserError(f"{type(model).__name__} has no transformer blocks (model.blocks)")
    if not -len(blocks) <= block < len(blocks):
        raise UserError(f"block {block} out of range: the model has {len(blocks)} blocks")
    attn = getattr(blocks[block], "attn", None)
    if attn is None:
        raise UserError(f"block {block} ({type(blocks[block]).__name__}) has no .attn")
    return attn


def _run_to(model: nn.Module, attn: nn.Module, images: torch.Tensor) -> dict:
    """Forward until ``attn`` has run; returns its args, kwargs and output."""
    seen: dict = {}

    def before(_m, args, kwargs):
        seen["args"], seen["kwargs"] = args, dict(kwargs)

    def after(_m, _args, output):
        seen["output"] = output
        raise _Captured  # later blocks are not needed

    hooks = [
        attn.register_forward_pre_hook(before, with_kwargs=True),
        attn.register_forward_hook(after),
    ]
    forward = getattr(model, "forward_features", model)
    try:
        forward(images)
    except _Captured:
        pass
    finally:
        for h in hooks:
            h.remove()
    if "output" not in seen:
        raise RuntimeError(f"the forward of {type(model).__name__} never ran that block")
    return seen


@torch.no_grad()
def block_attention(model: nn.Module, images: torch.Tensor, block: int = -1) -> BlockAttention:
    """images: (N, 3, H, W) -> the chosen block's attention (see ``BlockAttention``)."""
    attn = attention_module(model, block)
    recompute = recompute_for(attn)
    was_training = model.training
    model.eval()  # no dropout / drop path: the maps must be repeatable
    try:
        seen = _run_to(model, attn, images)
    finally:
        model.train(was_training)
    args, kwargs = seen["args"], seen["kwargs"]
    x, rest = (args[0], args[1:]) if args else (kwargs.pop("x"), ())
    probs, output = recompute(attn, x, *rest, **kwargs)
    grid = patch_grid(model, images)
    prefix = getattr(model, "num_prefix_tokens", x.shape[1] - grid[0] * grid[1])
    if prefix + grid[0] * grid[1] != x.shape[1]:
        raise ValueError(
            f"{x.shape[1]} tokens do not make {prefix} prefix tokens + a {grid} patch grid"
        )
    return BlockAttention(probs, output, seen["output"], prefix, grid)


def attention_maps(model: nn.Module, images: torch.Tensor, block: int = -1) -> torch.Tensor:
    """images: (N, 3, H, W) -> [CLS] attention to the patches (N, heads, h, w)."""
    return block_attention(model, images, block).cls_maps()


# ----------------------------------------------------------------------------- picture


def _scaled(m: torch.Tensor) -> torch.Tensor:
    """Each map min-max scaled on its own, so weak heads stay visible."""
    lo = m.flatten(-2).amin(-1)[..., None, None]
    hi = m.flatten(-2).amax(-1)[..., None, None]
    return (m - lo) / (hi - lo).clamp(min=1e-12)


def draw_attention(
    display: torch.Tensor,
    maps: torch.Tensor,
    names: Sequence[str] = (),
    tile: int = 128,
    cmap: str = "inferno",
) -> Image.Image:
    """display: (N, 3, H, W) in [0, 1], maps: (N, heads, h, w) -> the grid (one row per
    image; columns: image, mean of the heads, each head)."""
    n, heads = maps.shape[:2]
    with_mean = torch.cat([maps.mean(1, keepdim=True), maps], dim=1).float().cpu()
    heat = _scaled(upsample(with_mean, tuple(display.shape[-2:]))).numpy()
    rows = []
    for i in range(n):
        image = to_hwc(display[i])
        rows.append([image] + [heat_overlay(image, heat[i, j], cmap) for j in range(heads + 1)])
    titles = ["image", "mean"] + [f"head {h}" for h in range(heads)]
    return compose_grid(rows, titles, names, tile=tile)


def attention_figure(
    model: nn.Module,
    images: torch.Tensor,
    display: torch.Tensor | None = None,
    block: int = -1,
    names: Sequence[str] = (),
    tile: int = 128,
) -> tuple[Image.Image, torch.Tensor]:
    """images: (N, 3, H, W) normalised; display: the same in [0, 1] (default: ``images``
    min-max scaled) -> (picture, maps (N, heads, h, w))."""
    maps = attention_maps(model, images, block)
    shown = display if display is not None else display_from_batch(images)
    return draw_attention(shown, maps, names, tile), maps
