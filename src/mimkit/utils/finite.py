"""Which weight holds NaN or inf: one NaN in a checkpoint makes every feature, logit and
exported file NaN while each command still prints a plausible-looking number, so the
commands that read weights check them and name the first bad tensor."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from ..errors import UserError


def first_non_finite(weights) -> str | None:
    """The name of the first floating-point tensor holding NaN or +-inf, else None.

    ``weights``: an ``nn.Module`` (its parameters and buffers, by ``state_dict`` name)
    or a mapping of tensors, nested mappings allowed (a checkpoint dict: ``model.x``).
    Integer and meta tensors are skipped (they cannot hold NaN or hold no values)."""
    for name, t in _named_tensors(weights):
        if t.is_floating_point() and t.device.type != "meta" and not bool(t.isfinite().all()):
            return name
    return None


def _named_tensors(weights, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(weights, torch.nn.Module):
        weights = weights.state_dict(keep_vars=False)
    if not isinstance(weights, Mapping):
        return
    for key, value in weights.items():
        name = f"{prefix}{key}"
        if torch.is_tensor(value):
            yield name, value
        elif isinstance(value, Mapping):
            yield from _named_tensors(value, name + ".")


def refuse_non_finite(model) -> None:
    """An exported NaN loads everywhere without a word and answers NaN: refuse it here."""
    bad = first_non_finite(model)
    if bad:
        raise UserError(
            f"not exported: weight {bad} holds NaN/inf (a diverged run or a damaged file); "
            "export a checkpoint from before it"
        )
