"""The iBOT loss: [CLS] self-distillation across views + masked patch distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ibot_loss(
    student_cls: torch.Tensor,
    student_patch: torch.Tensor,
    teacher_cls: torch.Tensor,
    teacher_patch: torch.Tensor,
    masks: torch.Tensor,
    center: torch.Tensor,
    center2: torch.Tensor,
    n_global: int,
    student_temp: float,
    teacher_temp: float,
    teacher_patch_temp: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official ``iBOTLoss`` terms, in fp32 (weights applied by the caller).

    student_cls: (V*N, K), the G global views then the local ones; student_patch,
    teacher_patch: (G*N, L, K); teacher_cls: (G*N, K); masks: (G*N, L) bool.
    [CLS]: teacher view q against every student view v != q; patches: the same view,
    masked positions, sum / max(count, 1) per image, mean over images. Each term is
    the mean over its pairs. Returns (cls_loss, patch_loss).
    """
    n = masks.shape[0] // n_global  # images per view
    s_cls = (student_cls.float() / student_temp).split(n)
    s_patch = (student_patch.float() / student_temp).chunk(n_global)
    t_cls = F.softmax((teacher_cls.float() - center) / teacher_temp, dim=-1).chunk(n_global)
    t_patch = F.softmax((teacher_patch.float() - center2) / teacher_patch_temp, dim=-1)
    t_patch = t_patch.chunk(n_global)
    m = masks.float().chunk(n_global)
    log_cls = [F.log_softmax(s, dim=-1) for s in s_cls]
    cls_sum, n_cls, patch_sum = 0.0, 0, 0.0
    for q in range(n_global):
        for v in range(len(s_cls)):
            if v == q:
                ce = torch.sum(-t_patch[q] * F.log_softmax(s_patch[v], dim=-1), dim=-1)
                per_image = torch.sum(ce * m[v], dim=-1) / m[v].sum(dim=-1).clamp(min=1.0)
                patch_sum = patch_sum + per_image.mean()
            else:
                cls_sum = cls_sum + torch.sum(-t_cls[q] * log_cls[v], dim=-1).mean()
                n_cls += 1
    return cls_sum / max(n_cls, 1), patch_sum / n_global
