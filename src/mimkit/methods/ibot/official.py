"""Official iBOT (bytedance/ibot) checkpoint layouts <-> mimkit's ``IBOT`` state dict.

Official files:
- full ``checkpoint.pth``: ``student`` (DDP keys ``module.backbone.*``, ``module.head.*``),
  ``teacher`` (``backbone.*``, ``head.*``), ``optimizer`` (lr / weight decay as NumPy
  scalars), ``epoch``, ``args`` (argparse.Namespace), ``ibot_loss`` (``center``, ``center2``);
- released ``checkpoint_teacher.pth``: ``{'state_dict': backbone keys}`` (no prefix).

Backbone keys are timm's ViT keys (the student adds ``masked_embed``), so a backbone
loads into our ``VisionTransformer`` and into ``timm.create_model('vit_...')`` as is.
mimkit's ``IBOT`` keys: ``student.backbone.*``, ``student.head.*``, ``teacher.*``,
``center``, ``center2``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import UserError
from ...utils.io import SAFE_GLOBALS, safe_torch_load

# The official full checkpoint needs exactly the allow-list every mimkit load uses: the
# ``args`` Namespace and the optimizer's NumPy float64 lr / weight decay (scalar, dtype,
# Float64DType; the NumPy < 2 name of the scalar too). The released teacher file needs none.
IBOT_SAFE_GLOBALS = SAFE_GLOBALS

_STUDENT, _TEACHER = "student.", "teacher."


def load_official(path: str | Path, trust: bool = False) -> dict:
    """An official iBOT file, loaded with ``weights_only=True`` and the allow-list."""
    return safe_torch_load(path, trust=trust)


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _net(sd: dict) -> dict:
    """One official network (``[module.]backbone.*``, ``[module.]head.*``) -> ours."""
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if k.startswith(("backbone.", "head."))}


def official_to_ibot(ckpt: dict) -> dict[str, torch.Tensor]:
    """Official full checkpoint -> our ``IBOT`` state dict (student, teacher, centres)."""
    missing = [k for k in ("student", "teacher") if k not in ckpt]
    if missing:
        raise UserError(f"not an official iBOT checkpoint: no {', '.join(missing)}")
    out = {_STUDENT + k: v for k, v in _net(ckpt["student"]).items()}
    out |= {_TEACHER + k: v for k, v in _net(ckpt["teacher"]).items()}
    loss = ckpt.get("ibot_loss") or {}
    for k in ("center", "center2"):
        if k in loss:
            out[k] = loss[k]
    return out


def ibot_to_official(sd: dict[str, torch.Tensor], epoch: int = 0) -> dict:
    """Our ``IBOT`` state dict -> the official full layout (without optimizer / args),
    e.g. to evaluate with the official scripts."""
    return {
        "student": {"module." + k: v for k, v in _strip(sd, _STUDENT).items()},
        "teacher": _strip(sd, _TEACHER),
        "epoch": epoch,
        "ibot_loss": {"center": sd["center"], "center2": sd["center2"]},
    }


def backbone_state_dict(source, which: str = "teacher") -> dict[str, torch.Tensor]:
    """Plain ViT backbone keys (``cls_token``, ``pos_embed``, ``patch_embed.*``,
    ``blocks.*``, ``norm.*``) from any iBOT layout: a path or loaded object of an official
    full checkpoint, a released ``{'state_dict': ...}`` backbone file, a mimkit IBOT
    state dict or checkpoint (``{'model': ...}``). ``which``: 'teacher' (default, as the
    released weights) or 'student'. The student's ``masked_embed`` is dropped."""
    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    obj = load_official(source) if isinstance(source, (str, Path)) else source
    if "student" in obj and "teacher" in obj:  # official full checkpoint
        sd = _net(obj[which])
        sd = _strip(sd, "backbone.")
    else:
        sd = obj.get("model", obj.get("state_dict", obj))
        if any(k.startswith(_STUDENT) for k in sd):  # mimkit IBOT
            sd = _strip(sd, f"{which}.backbone.")
        elif which == "student":
            raise UserError("this file holds one backbone (the released teacher), no student")
        else:
            sd = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in sd.items()}
            sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    sd.pop("masked_embed", None)
    if "patch_embed.proj.weight" not in sd:
        raise UserError("no ViT backbone found (no 'patch_embed.proj.weight')")
    return sd
