"""The small-budget presets (``*_vit_tiny_cpu``): each resolves, builds a model smaller
than its full CIFAR preset, trains one step with a finite loss, and carries its budget
and monitor settings."""

import pytest
import torch

from mimkit import config as C
from mimkit.methods import method_for
from mimkit.recipes.pretrain import build_model

CPU_PRESETS = ["mae_vit_tiny_cpu", "lomar_vit_tiny_cpu", "ibot_vit_tiny_cpu", "simmim_vit_tiny_cpu"]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset", CPU_PRESETS)
def test_cpu_preset_builds_a_smaller_model_that_trains(preset):
    torch.manual_seed(0)
    cfg = C.load_config(preset)
    assert cfg.train.time_budget is None and cfg.eval.monitor
    model = build_model(cfg)
    full = build_model(C.load_config(preset.replace("_cpu", "_cifar")))
    assert len(method_for(model).encoder(model).blocks) == 6
    assert n_params(model) < n_params(full)
    method = method_for(model)
    assert method is not None and preset.startswith(method.name)
    batch = method.synthetic_batch(model, 4, torch.device("cpu"), torch.Generator().manual_seed(0))
    out = model(batch)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
