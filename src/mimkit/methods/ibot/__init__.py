"""iBOT behind the method contract: the model (``model.py``: student, teacher, loss,
centres), its schedules and hooks (``task.py``), the official checkpoint layouts
(``official.py``), the multi-crop views with block masks (``data.multicrop``) and its
picture (each patch coloured by the teacher's argmax prototype)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import torch

from ...data.multicrop import MultiCropTransform
from ...data.transforms import denormalize
from ...masking import block_mask
from ...models.vit import ENCODER_KEYS, infer_vit_args
from ...utils import distributed as dist
from ...viz.recon import colour_ids, save_grid
from ..base import LoaderParts, PretrainMethod, TrainingParts, register_method
from .backbone import IBOTViT
from .head import IBOTHead, IBOTNet, WeightNormLinear
from .loss import ibot_loss
from .model import IBOT
from .official import backbone_state_dict, ibot_to_official, official_to_ibot
from .task import IBOTTask

__all__ = [
    "IBOT",
    "IBOTHead",
    "IBOTNet",
    "IBOTTask",
    "IBOTViT",
    "WeightNormLinear",
    "backbone_state_dict",
    "ibot_loss",
    "ibot_to_official",
    "official_to_ibot",
]


@register_method
class IBOTMethod(PretrainMethod):
    name = "ibot"
    model_cls = IBOT
    summary = "self-distillation with an online tokenizer: [CLS] across views + masked patches"
    pretraining_only = re.compile(r"^(student|teacher)\.head\.|^center")

    def build_args(self, mask_ratio, norm_pix_loss, drop_path, img_size) -> dict:
        # no pixel target or mask ratio (block masks come from model.args.pred_ratio:
        # model.mask_ratio does not apply);
        # the student keeps its recipe's drop path unless model.drop_path sets one
        return ({"drop_path_rate": drop_path} if drop_path else {}) | (
            {"img_size": img_size} if img_size else {}
        )

    def encoder(self, model):
        return dist.unwrap(model).teacher.backbone  # the released network

    # ------------------------------------------------------------------ data
    def loader_parts(self, model, crop) -> LoaderParts:
        return LoaderParts(MultiCropTransform(**model.multicrop_args()), ("files", "shards"))

    def synthetic_batch(self, model, batch_size, device, generator) -> dict:
        a = model.multicrop_args()
        grid = a["global_size"] // a["patch_size"]
        masks = torch.rand(batch_size, grid, grid, generator=generator) < 0.3

        def images(size):
            return torch.randn(batch_size, 3, size, size, generator=generator).to(device)

        return {
            "global": [images(a["global_size"]) for _ in range(a["global_crops"])],
            "local": [images(a["local_size"]) for _ in range(a["local_crops"])],
            "masks": [masks.to(device) for _ in range(a["global_crops"])],
        }

    # ------------------------------------------------------------------ training
    def training_parts(self, model, schedule, weight_decay, clip_grad) -> TrainingParts:
        """As the official main_ibot: per-iteration schedules (lr, weight decay, EMA),
        per-parameter clipping in a hook (so the loop's global clipping is off)."""
        task = IBOTTask.from_model(
            model, schedule.epochs, schedule.steps_per_epoch, weight_decay, clip_grad
        )
        return TrainingParts(
            task,
            lambda m, wd: m.param_groups(wd),
            {"schedule": "cosine_iter", "clip_grad": None},
        )

    # ------------------------------------------------------------------ checkpoints
    def recognizes(self, sd) -> bool:
        return "teacher.backbone.patch_embed.proj.weight" in sd

    def read_official(self, obj: dict):
        if isinstance(obj.get("student"), dict) and isinstance(obj.get("teacher"), dict):
            return official_to_ibot(obj), {"epoch": obj.get("epoch"), "source": "official iBOT"}
        return None

    def encoder_state_dict(self, sd: dict, network: str = "teacher") -> dict:
        return backbone_state_dict(sd, network)

    def from_backbone(self, sd: dict) -> dict:
        """A backbone starts both networks (the official teacher starts as the student)."""
        return {f"{net}.backbone.{k}": v for net in ("student", "teacher") for k, v in sd.items()}

    def infer_args(self, sd) -> tuple[str, dict]:
        """An official iBOT file's architecture from its shapes: the teacher backbone's
        ViT and the student head's sizes (training-only settings keep their defaults)."""
        vit = infer_vit_args(backbone_state_dict(sd, "teacher"))
        head = "student.head."
        layers = [k for k in sd if k.startswith(head + "mlp.") and k.endswith(".weight")]
        v = sd[head + "last_layer.weight_v"]
        args = {k: vit[k] for k in ENCODER_KEYS if k in vit and k != "rel_pos"}
        args.update(
            out_dim=v.shape[0],
            head_bottleneck_dim=v.shape[1],
            head_hidden_dim=sd[head + "mlp.0.weight"].shape[0],
            head_layers=len(layers),
        )
        second = sd.get(head + "last_layer2.weight_v")
        args["shared_head"] = second is None or torch.equal(second, v)
        if not args["shared_head"]:
            args["patch_out_dim"] = second.shape[0]
        return "ibot_vit", args

    # ------------------------------------------------------------------ picture
    def picture(self, model, imgs, out: Path, generator, mask_ratio=None, **_) -> str:
        agree = prototype_grid(model, imgs, out, generator, mask_ratio)
        return f"student = teacher prototype at {agree:.4f} of masked patches"


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
    """Each image with a block mask drawn as in training (``mask_ratio`` of the
    patches, 0.4 by default: the upper end of the official 0.1-0.5 draw), its patches
    coloured by the teacher's argmax prototype (the online tokenizer's 'visual words'),
    and the student's argmax at the masked patches (what it predicts there). Returns the
    share of masked patches where the two agree."""
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
        "teacher": colour_ids(teacher, p),
        "student": colour_ids(student, p) * pixel + original * (1 - pixel) * 0.3,
    }
    agree = (teacher == student)[masks].float().mean().item() if masks.any() else 0.0
    title = (
        f"{model.center.shape[-1]} prototypes; student = teacher at {100 * agree:.0f}% of masked"
    )
    save_grid(shown, out, title=title, columns=IBOT_COLUMNS)
    return agree
