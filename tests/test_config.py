import pytest

from mimkit import config as C
from mimkit.errors import UserError


def test_preset_then_overrides():
    cfg = C.load_config("mae_vit_tiny_cifar", ["train.epochs=3", "optim.blr=1e-3", "data.path=/x"])
    assert cfg.model.name == "mae_vit_tiny_cifar" and cfg.data.img_size == 32
    assert cfg.train.epochs == 3 and cfg.optim.blr == 1e-3 and cfg.data.path == "/x"
    assert cfg.name == "mae_vit_tiny_cifar"


def test_defaults_without_preset_and_nested_model_args():
    cfg = C.load_config(None, ["model.args.depth=2", "optim.betas=[0.9,0.99]"])
    assert cfg.model.name == "mae_vit_base_patch16" and cfg.model.args == {"depth": 2}
    assert cfg.optim.betas == [0.9, 0.99]


def test_yaml_path_preset(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("train:\n  epochs: 7\n")
    assert C.load_config(str(p)).train.epochs == 7
    assert C.load_config(str(p)).name == "exp"


def test_every_packaged_preset_resolves():
    names = C.list_presets()
    assert "mae_vit_base_patch16" in names and "mae_vit_tiny_cifar" in names
    for name in names:
        C.load_config(name)


@pytest.mark.parametrize(
    "override,pattern",
    [
        (["train.epoch=3"], r"unknown config key 'train.epoch'.*did you mean 'train.epochs'"),
        (["foo=1"], r"unknown config key 'foo'"),
        (["train.epochs=three"], r"config key 'train.epochs'"),
        (["train.precision=fp8"], r"'train.precision' must be one of"),
        (["model.mask_ratio=1.0"], r"model.mask_ratio"),
        (["data.batch_size=0"], r"data.batch_size"),
        (["epochs"], r"not key=value"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(override, pattern):
    with pytest.raises(UserError, match=pattern) as e:
        C.load_config("mae_vit_tiny_cifar", override)
    assert "\n" not in str(e.value)


def test_unknown_preset_suggests():
    with pytest.raises(UserError, match="did you mean mae_vit_tiny_cifar"):
        C.load_config("mae_vit_tiny_cifr")
    with pytest.raises(UserError, match="config file not found"):
        C.load_config("missing.yaml")


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = C.load_config("mae_vit_tiny_cifar", ["model.args.depth=2"])
    p = tmp_path / "config.yaml"
    p.write_text(C.to_yaml(cfg))
    again = C.load_config(str(p))
    assert C.to_dict(again) | {"name": None} == C.to_dict(cfg) | {"name": None}


def test_eval_checkpoint_is_a_deprecated_alias_of_model_checkpoint(caplog):
    import logging

    logger = logging.getLogger("mimkit")  # may not propagate once the console is set up
    logger.addHandler(caplog.handler)
    try:
        cfg = C.load_config(None, ["eval.checkpoint=a.pth"], task="knn")
    finally:
        logger.removeHandler(caplog.handler)
    assert cfg.model.checkpoint == "a.pth" and cfg.eval.checkpoint is None
    assert "deprecated" in caplog.text
