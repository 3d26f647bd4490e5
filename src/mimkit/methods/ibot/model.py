"""iBOT (Zhou et al., ICLR 2022): masked image modeling with an online tokenizer, as the
official bytedance/ibot ``main_ibot.py``.

A student and a teacher (the EMA of the student) share one architecture: a ViT that
returns all tokens and an ``IBOTHead`` projecting [CLS] and patch tokens to K prototypes.
The teacher sees the unmasked global crops; the student sees the same crops with block
masks (masked patch embeddings replaced by ``masked_embed``) and, [CLS] only, the local
crops. Loss = [CLS] cross-entropy across views (DINO) + patch cross-entropy at masked
positions of the same view (MIM), teacher outputs centred and sharpened.

Key names are the official ones below ``student.`` / ``teacher.`` (``backbone.*`` =
timm's ViT keys plus ``masked_embed``; ``head.mlp.{0,2,4}``, ``head.last_layer.weight_g/v``);
``official.py`` maps the official checkpoint files.

Batch (``multicrop_collate``): ``{'global': [(N, 3, H, W)] * G, 'local': [(N, 3, h, w)] * n,
'masks': [(N, H/p, W/p) bool, True = masked] * G}``.
"""

from __future__ import annotations

import torch
from torch import nn

from ...engine.optim import dino_param_groups
from ...models.registry import register_model
from ...models.vit import ENCODER_KEYS, VIT_SIZES
from ...utils import distributed as dist
from .backbone import IBOTViT
from .head import IBOTHead, IBOTNet
from .loss import ibot_loss


class IBOT(nn.Module):
    """Student, teacher (EMA, no gradients) and the iBOT loss with its centres.

    ``forward(batch)`` returns the loss dict and, in training mode, updates the centres
    (``center`` (1, K), ``center2`` (1, 1, K): buffers, so checkpoints resume exactly).
    The teacher temperatures are set per epoch by the task (``set_teacher_temps``); the
    EMA step is ``update_teacher(momentum)``. Recipe values that only the training
    schedule reads (teacher temperature warmup, EMA momentum, weight decay end, frozen
    last layer, multi-crop and masking settings) are stored here too so that a preset
    holds them as ``model.args``; see ``recipe()`` and ``multicrop_args()``.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        out_dim: int = 8192,
        patch_out_dim: int | None = None,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        head_layers: int = 3,
        norm_last_layer: bool = True,
        shared_head: bool = True,
        shared_head_teacher: bool = True,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        lambda1: float = 1.0,
        lambda2: float = 1.0,
        # schedule recipe (read by IBOTTask.from_model)
        momentum_teacher: float = 0.996,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.04,
        warmup_teacher_patch_temp: float = 0.04,
        teacher_patch_temp: float = 0.07,
        warmup_teacher_temp_epochs: int = 30,
        weight_decay_end: float = 0.4,
        freeze_last_layer: int = 1,
        # data recipe (read by the multi-crop transform through multicrop_args())
        global_crops_number: int = 2,
        local_crops_number: int = 10,
        local_img_size: int = 96,
        global_crops_scale: tuple[float, float] | None = None,
        local_crops_scale: tuple[float, float] = (0.05, 0.25),
        pred_ratio: float | list[float] = (0.0, 0.3),
        pred_ratio_var: float | list[float] = (0.0, 0.2),
    ):
        super().__init__()
        if (shared_head or shared_head_teacher) and patch_out_dim not in (None, out_dim):
            raise ValueError(  # the official code enforces the same (``same_dim``)
                "a shared head (student or teacher) scores patches on the [CLS] prototypes: "
                f"patch_out_dim must equal out_dim ({out_dim}), got {patch_out_dim}"
            )
        vit = dict(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
        )
        head = dict(
            out_dim=out_dim,
            patch_out_dim=patch_out_dim,
            hidden_dim=head_hidden_dim,
            bottleneck_dim=head_bottleneck_dim,
            nlayers=head_layers,
        )
        self.student = IBOTNet(
            IBOTViT(**vit, drop_path_rate=drop_path_rate, masked_embed=True),
            IBOTHead(embed_dim, **head, norm_last_layer=norm_last_layer, shared_head=shared_head),
        )
        self.teacher = IBOTNet(
            IBOTViT(**vit, masked_embed=False),
            IBOTHead(embed_dim, **head, shared_head=shared_head_teacher),
        )
        # as official: the teacher loads the student's weights (masked_embed left out)
        self.teacher.load_state_dict(self.student.state_dict(), strict=False)
        self.teacher.requires_grad_(False)
        k2 = out_dim if (shared_head or shared_head_teacher) else (patch_out_dim or out_dim)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center2", torch.zeros(1, 1, k2))
        self.temps = (warmup_teacher_temp, warmup_teacher_patch_temp)
        self._args = dict(
            vit,
            drop_path_rate=drop_path_rate,
            out_dim=out_dim,
            patch_out_dim=patch_out_dim,
            head_hidden_dim=head_hidden_dim,
            head_bottleneck_dim=head_bottleneck_dim,
            head_layers=head_layers,
            norm_last_layer=norm_last_layer,
            shared_head=shared_head,
            shared_head_teacher=shared_head_teacher,
            student_temp=student_temp,
            center_momentum=center_momentum,
            lambda1=lambda1,
            lambda2=lambda2,
            momentum_teacher=momentum_teacher,
            warmup_teacher_temp=warmup_teacher_temp,
            teacher_temp=teacher_temp,
            warmup_teacher_patch_temp=warmup_teacher_patch_temp,
            teacher_patch_temp=teacher_patch_temp,
            warmup_teacher_temp_epochs=warmup_teacher_temp_epochs,
            weight_decay_end=weight_decay_end,
            freeze_last_layer=freeze_last_layer,
            global_crops_number=global_crops_number,
            local_crops_number=local_crops_number,
            local_img_size=local_img_size,
            global_crops_scale=_pair_or_none(global_crops_scale),
            local_crops_scale=list(local_crops_scale),
            pred_ratio=_list_or_float(pred_ratio),
            pred_ratio_var=_list_or_float(pred_ratio_var),
        )

    # ------------------------------------------------------------------ configuration
    def arch_config(self) -> dict:
        """Constructor arguments that rebuild this model (saved in checkpoints)."""
        return dict(self._args)

    def encoder_config(self) -> dict:
        """Arguments of the plain ViT that carries the (teacher) backbone downstream."""
        return {k: v for k, v in self._args.items() if k in ENCODER_KEYS}

    def recipe(self) -> dict:
        """The schedule values ``IBOTTask.from_model`` reads."""
        keys = (
            "momentum_teacher",
            "warmup_teacher_temp",
            "teacher_temp",
            "warmup_teacher_patch_temp",
            "teacher_patch_temp",
            "warmup_teacher_temp_epochs",
            "weight_decay_end",
            "freeze_last_layer",
        )
        return {k: self._args[k] for k in keys}

    def multicrop_args(self) -> dict:
        """Keyword arguments of ``data.multicrop.MultiCropTransform`` for this recipe."""
        a = self._args
        return dict(
            global_size=a["img_size"],
            local_size=a["local_img_size"],
            global_crops=a["global_crops_number"],
            local_crops=a["local_crops_number"],
            global_scale=a["global_crops_scale"],
            local_scale=a["local_crops_scale"],
            patch_size=a["patch_size"],
            pred_ratio=a["pred_ratio"],
            pred_ratio_var=a["pred_ratio_var"],
        )

    @property
    def patch_embed(self):
        """The student's patch embedding (input size, patch size) for generic code."""
        return self.student.backbone.patch_embed

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.student.backbone.set_grad_checkpointing(enable)
        self.teacher.backbone.set_grad_checkpointing(enable)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """The student's official optimizer groups: [decayed, not decayed] (see
        ``engine.optim.dino_param_groups``); the teacher has no trainable parameters."""
        return dino_param_groups(self.student, weight_decay)

    def set_teacher_temps(self, cls_temp: float, patch_temp: float) -> None:
        self.temps = (float(cls_temp), float(patch_temp))

    # ------------------------------------------------------------------ training
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """batch: {'global': [(N,3,H,W)] * G, 'local': [(N,3,h,w)] * n,
        'masks': [(N,H/p,W/p) bool] * G} -> {'loss', 'cls_loss', 'patch_loss', 'acc',
        'mask_ratio'} (scalars; ``agreement``: teacher [CLS] argmax on view 1 = student's on view 2,
        the official diagnostic)."""
        glob, local = torch.cat(batch["global"]), batch.get("local") or []
        masks = torch.cat(batch["masks"]).flatten(1)  # (G*N, L)
        n_global = len(batch["global"])
        with torch.no_grad():
            t_cls, t_patch = self.teacher(glob)
        s_cls, s_patch = self.student(glob, masks)
        if local:
            s_cls = torch.cat([s_cls, self.student.forward_cls(torch.cat(local))])
        a = self._args
        cls_loss, patch_loss = ibot_loss(
            s_cls,
            s_patch,
            t_cls,
            t_patch,
            masks,
            self.center,
            self.center2,
            n_global,
            a["student_temp"],
            *self.temps,
        )
        cls_loss, patch_loss = cls_loss * a["lambda1"], patch_loss * a["lambda2"]
        if self.training:
            self.update_center(t_cls, t_patch)
        n = glob.shape[0] // n_global
        agree = t_cls[:n].argmax(-1) == s_cls[n : 2 * n].argmax(-1) if n_global > 1 else None
        out = {
            "loss": cls_loss + patch_loss,
            "cls_loss": cls_loss.detach(),
            "patch_loss": patch_loss.detach(),
            "mask_ratio": masks.float().mean(),
        }
        if agree is not None:
            out["agreement"] = agree.float().mean()
        return out

    @torch.no_grad()
    def update_center(self, teacher_cls: torch.Tensor, teacher_patch: torch.Tensor) -> None:
        """EMA of the teacher's batch means (over all ranks): [CLS] (G*N, K) -> (1, K);
        patches (G*N, L, K) -> mean over tokens, then over images -> (1, 1, K)."""
        m = self._args["center_momentum"]
        world = dist.world_size()
        cls = dist.all_reduce_sum(torch.sum(teacher_cls.float(), dim=0, keepdim=True))
        cls = cls / (len(teacher_cls) * world)
        patch = torch.sum(teacher_patch.float().mean(1), dim=0, keepdim=True)
        patch = dist.all_reduce_sum(patch) / (len(teacher_patch) * world)
        self.center.copy_(self.center * m + cls * (1 - m))
        self.center2.copy_(self.center2 * m + patch * (1 - m))

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- m * teacher + (1 - m) * student, for the parameters both have
        (by name, as official: the student's ``masked_embed`` has no teacher twin)."""
        student = dict(self.student.named_parameters())
        pairs = [(t, student[k]) for k, t in self.teacher.named_parameters() if k in student]
        t, s = [p for p, _ in pairs], [q.detach() for _, q in pairs]
        torch._foreach_mul_(t, momentum)
        torch._foreach_add_(t, torch._foreach_mul(s, 1 - momentum))

    def last_layer_params(self):
        """The student's ``last_layer*`` parameters (gradients dropped while frozen)."""
        return [p for n, p in self.student.named_parameters() if "last_layer" in n]


def _pair_or_none(x):
    return None if x is None else [float(v) for v in x]


def _list_or_float(x):
    return float(x) if isinstance(x, (int, float)) else [float(v) for v in x]


def _ibot(size: str, patch: int, **overrides) -> IBOT:
    dim, depth, heads = VIT_SIZES[size]
    args = dict(embed_dim=dim, depth=depth, num_heads=heads, patch_size=patch)
    args.update(overrides)
    return IBOT(**args)


# What the official ImageNet recipes share: K 8192, one head for [CLS] and patches,
# teacher temperature warming up to 0.07, drop path 0.1 on the student.
_OFFICIAL = dict(out_dim=8192, shared_head=True, teacher_temp=0.07, drop_path_rate=0.1)


@register_model(model_cls=IBOT)
def ibot_vit(**kw) -> IBOT:
    """Any iBOT by explicit arguments."""
    return IBOT(**kw)


@register_model(model_cls=IBOT)
def ibot_vit_small_patch16(**kw) -> IBOT:
    """The official ViT-S/16 recipe (800 epochs): K 8192, shared head, last layer not
    normalised, teacher temperature 0.04 -> 0.07 over 30 epochs, 10 local crops."""
    recipe = dict(_OFFICIAL, norm_last_layer=False, warmup_teacher_temp_epochs=30)
    return _ibot("small", 16, **{**recipe, **kw})


@register_model(model_cls=IBOT)
def ibot_vit_base_patch16(**kw) -> IBOT:
    """The official ViT-B/16 recipe: as ViT-S/16 with the last layer normalised
    (``norm_last_layer``) and the temperature warmup over 50 epochs."""
    recipe = dict(_OFFICIAL, norm_last_layer=True, warmup_teacher_temp_epochs=50)
    return _ibot("base", 16, **{**recipe, **kw})


@register_model(model_cls=IBOT)
def ibot_vit_tiny_cifar(**kw) -> IBOT:
    """ViT-Tiny on 32 px CIFAR (4 px patches, 8x8 grid), six 16 px local crops (4x4).

    K = 4096 prototypes: CIFAR-10 has ~10 classes but the patch head clusters local
    parts; with batches of 256 (512 global views, ~32k patch tokens a step) 4096 keeps
    every prototype reachable (DINO's ablations show K well above the class count helps)
    while the (G*N, 64, K) teacher softmax stays small. Head hidden 2048 / bottleneck 256
    as official; 20 temperature warmup epochs for a shorter (e.g. 400-epoch) schedule.
    """
    recipe = dict(
        img_size=32,
        out_dim=4096,
        norm_last_layer=False,
        shared_head=True,
        teacher_temp=0.07,
        warmup_teacher_temp_epochs=20,
        drop_path_rate=0.1,
        local_crops_number=6,
        local_img_size=16,
        local_crops_scale=(0.05, 0.25),
    )
    return _ibot("tiny", 4, **{**recipe, **kw})
