"""BEiT-style Vision Transformer: timm's ``Beit`` with mimkit's backbone contract.

The layout of BEiT and of SimMIM's official ViT: ``q_bias`` / ``v_bias`` (no key bias),
layer scale ``gamma_1`` / ``gamma_2``, relative position biases (one table shared by all
blocks, or one per block) and, optionally, no absolute position embedding; LayerNorm eps
1e-6. Key names are timm's, so timm loads these weights as they are
(``timm.create_model('beit_base_patch16_224', use_shared_rel_pos_bias=True, ...)``).

``global_pool='token'`` (the default here) keeps the final ``norm`` a pretrained encoder
has; ``'avg'`` is the BEiT / SimMIM fine-tuning layout (``fc_norm`` on the mean of the
patch tokens, ``norm`` = Identity).
"""

from __future__ import annotations

import torch
from timm.layers import resize_rel_pos_bias_table
from timm.models.beit import Beit as _TimmBeit

from ..errors import UserError
from .registry import register_model
from .vit import HEADS_FOR_DIM, LayerNorm6, check_img_size, count_blocks


class BEiT(_TimmBeit):
    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        global_pool: str = "token",
        init_values: float | None = 0.1,
        use_abs_pos_emb: bool = False,
        use_rel_pos_bias: bool = False,
        use_shared_rel_pos_bias: bool = True,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
    ):
        check_img_size(img_size, patch_size)
        if embed_dim % num_heads:
            raise UserError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            global_pool=global_pool,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
            norm_layer=LayerNorm6,
            init_values=init_values,
            use_abs_pos_emb=use_abs_pos_emb,
            use_rel_pos_bias=use_rel_pos_bias,
            use_shared_rel_pos_bias=use_shared_rel_pos_bias,
        )
        self.patch_size = patch_size
        self._args = dict(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            num_classes=num_classes,
            global_pool=global_pool,
            init_values=init_values,
            use_abs_pos_emb=use_abs_pos_emb,
            use_rel_pos_bias=use_rel_pos_bias,
            use_shared_rel_pos_bias=use_shared_rel_pos_bias,
        )

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.patch_embed.grid_size)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def arch_config(self) -> dict:
        """Constructor arguments that rebuild this model (saved in checkpoints)."""
        return dict(self._args, num_classes=self.num_classes, global_pool=self.global_pool)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Embeddings and the shared relative position table -> group 0, block i -> i + 1,
        the final norm / fc_norm / head unmatched (one last group at full lr), as mimkit's
        ViT does, so layer-wise lr decay gives the same scales for both."""
        return dict(
            stem=r"^cls_token|pos_embed|patch_embed|rel_pos_bias",
            blocks=[(r"^blocks\.(\d+)", None)],
        )

    def resize_checkpoint_tensor(self, key: str, value: torch.Tensor, target: torch.Tensor):
        """A relative position table of another grid (pretrained at 224, fine-tuned at 384)
        resized as timm does it (bicubic on the 2-D table, the 3 cls entries kept)."""
        if not key.endswith("relative_position_bias_table"):
            return None
        old = (int(((value.shape[0] - 3) ** 0.5) + 1) // 2,) * 2
        new = (int(((target.shape[0] - 3) ** 0.5) + 1) // 2,) * 2
        return resize_rel_pos_bias_table(
            value, new_window_size=new, new_bias_shape=tuple(target.shape), old_window_size=old
        )


def is_beit_state_dict(sd: dict) -> bool:
    """timm / BEiT layout: split q/v biases and layer scale (no fused ``qkv.bias``)."""
    return "blocks.0.attn.q_bias" in sd or "blocks.0.gamma_1" in sd


def infer_beit_args(sd: dict[str, torch.Tensor]) -> dict:
    """BEiT constructor arguments read off the tensor shapes (the head count from the
    relative position table where there is one, else the usual value for the width)."""
    if "patch_embed.proj.weight" not in sd:
        raise UserError("not a BEiT checkpoint: no 'patch_embed.proj.weight'")
    dim, in_chans, p, _ = sd["patch_embed.proj.weight"].shape
    shared = "rel_pos_bias.relative_position_bias_table" in sd
    per_block = "blocks.0.attn.relative_position_bias_table" in sd
    table = sd.get("rel_pos_bias.relative_position_bias_table")
    if table is None:
        table = sd.get("blocks.0.attn.relative_position_bias_table")
    heads = table.shape[1] if table is not None else HEADS_FOR_DIM.get(dim, max(1, dim // 64))
    args = dict(
        embed_dim=dim,
        depth=count_blocks(sd, "blocks."),
        patch_size=p,
        in_chans=in_chans,
        num_heads=heads,
        mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        init_values=0.1 if "blocks.0.gamma_1" in sd else None,
        use_abs_pos_emb="pos_embed" in sd,
        use_rel_pos_bias=per_block,
        use_shared_rel_pos_bias=shared,
    )
    if table is not None:  # (2g - 1)^2 + 3 entries for a g x g grid
        grid = (int(round((table.shape[0] - 3) ** 0.5)) + 1) // 2
        args["img_size"] = grid * p
    elif "pos_embed" in sd:
        args["img_size"] = int(round((sd["pos_embed"].shape[1] - 1) ** 0.5)) * p
    if "fc_norm.weight" in sd:
        args["global_pool"] = "avg"
    if "head.weight" in sd:
        args["num_classes"] = sd["head.weight"].shape[0]
    return args


@register_model(model_cls=BEiT)
def beit(**kw) -> BEiT:
    """Any BEiT-style ViT by explicit arguments (shared relative position bias, layer
    scale 0.1, no absolute position embedding unless told otherwise)."""
    return BEiT(**kw)


@register_model(model_cls=BEiT)
def beit_base_patch16(**kw) -> BEiT:
    return BEiT(**({"embed_dim": 768, "depth": 12, "num_heads": 12} | kw))


@register_model(model_cls=BEiT)
def beit_tiny_cifar(**kw) -> BEiT:
    """ViT-Tiny width on 32 px / 4 px patches."""
    return BEiT(**({"img_size": 32, "patch_size": 4, "embed_dim": 192, "num_heads": 3} | kw))
