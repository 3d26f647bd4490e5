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

import argparse
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

# The non-tensor globals the official full checkpoint needs under
# ``torch.load(weights_only=True)`` (found with
# ``torch.serialization.get_unsafe_globals_in_checkpoint``): the ``args`` Namespace and
# the optimizer's NumPy float64 lr / weight decay (a NumPy scalar is pickled as
# ``numpy._core.multiarray.scalar(dtype, bytes)``, the dtype as ``numpy.dtype`` rebuilt
# from ``numpy.dtypes.Float64DType``). The released teacher file needs none. Files pickled
# under NumPy < 2 name the scalar ``numpy.core.multiarray.scalar``: the same function is
# allowed under that name too.
_SCALAR = (np._core if hasattr(np, "_core") else np.core).multiarray.scalar
IBOT_SAFE_GLOBALS = [
    argparse.Namespace,
    _SCALAR,
    (_SCALAR, "numpy.core.multiarray.scalar"),
    np.dtype,
    np.dtypes.Float64DType,
]

_STUDENT, _TEACHER = "student.", "teacher."


def load_official(path: str | Path) -> dict:
    """``torch.load`` an official iBOT file with ``weights_only=True`` and only the
    globals it needs (never ``weights_only=False``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    with torch.serialization.safe_globals(IBOT_SAFE_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True)


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
