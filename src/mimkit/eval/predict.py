"""Classes and probabilities of a classifier for image files (``mimkit predict``)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..data import eval_transform
from ..data.images import failure_reason, open_rgb
from ..engine import precision as precision_lib
from ..errors import UserError
from ..models import preprocessing
from ..utils.finite import first_non_finite

log = logging.getLogger("mimkit")


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return self.transform(open_rgb(self.paths[i])), i, None
        except Exception as e:  # reported and skipped by the caller
            return None, i, failure_reason(e)


def _collate(items):
    good = [(x, i) for x, i, _ in items if x is not None]
    bad = [(i, why) for x, i, why in items if x is None]
    images = torch.stack([x for x, _ in good]) if good else None
    return images, [i for _, i in good], bad


@torch.no_grad()
def predict_files(
    model,
    files: list[str],
    classes: list[str],
    device,
    topk: int = 5,
    batch_size: int = 64,
    num_workers: int = 2,
    precision: str = "auto",
    checkpoint: str | None = None,
) -> list[dict]:
    """One row per readable image: {'path', 'top': [{'class', 'prob'}, ...]}; unreadable
    images are skipped with a warning naming the reason. ``precision`` 'auto' resolves as
    training's (bf16 on CUDA and on CPUs with native bf16). Non-finite logits are an
    error naming ``checkpoint`` (the file the model came from) and the first bad weight."""
    loader = torch.utils.data.DataLoader(
        _Files(files, eval_transform(**preprocessing(model))),
        batch_size=batch_size,
        num_workers=min(num_workers, len(files)),
        collate_fn=_collate,
    )
    resolved = precision_lib.resolve_with_reason(precision, device)
    log.info("%s on %s", resolved.describe(), device)
    precision = resolved.precision
    rows = []
    k = min(topk, len(classes))
    model.to(device).eval()
    for images, idx, failed in loader:
        for i, why in failed:
            log.warning("skipped unreadable image %s (%s)", files[i], why)
        if images is None:
            continue
        with precision_lib.autocast(precision, device):
            logits = model(images.to(device)).float()
        _check_finite(logits, [files[i] for i in idx], model, checkpoint, precision)
        probs = logits.softmax(-1).cpu()
        top = probs.topk(k, dim=1)
        for row, i in enumerate(idx):
            pairs = zip(top.values[row].tolist(), top.indices[row].tolist())
            rows.append(
                {
                    "path": files[i],
                    "top": [{"class": classes[c], "prob": round(p, 6)} for p, c in pairs],
                }
            )
    return rows


def _check_finite(logits, paths: list[str], model, checkpoint: str | None, precision) -> None:
    """A NaN logit prints as a class with probability 'nan': an answer that is none."""
    finite = torch.isfinite(logits).all(1)
    if bool(finite.all()):
        return
    first = paths[int((~finite).nonzero()[0])]
    weight = first_non_finite(model)
    if weight:
        why = f"its weight {weight} holds NaN/inf"
    elif precision != "fp32":
        why = f"its weights are finite but a value overflowed in {precision} (--precision fp32)"
    else:
        why = "its weights are finite"
    who = f"checkpoint {checkpoint}" if checkpoint else "the model"
    raise UserError(f"{who} gives non-finite logits (NaN/inf) for {first}: {why}")


def class_names(path: str | None, saved: list | None, n: int) -> list[str]:
    """Names from a text file (one per line), else the checkpoint's, else the indices."""
    if path:
        names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
        if len(names) != n:
            raise UserError(f"{path} names {len(names)} classes but the model has {n}")
        return names
    return list(saved) if saved and len(saved) == n else [str(i) for i in range(n)]
