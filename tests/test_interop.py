"""Official MAE / timm / mimkit checkpoints in, one clear report out."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import mimkit
from mimkit.errors import UserError
from mimkit.interop.checkpoint import infer_vit_args, model_from_checkpoint, read_checkpoint
from mimkit.methods.mae import MaskedAutoencoder
from mimkit.models import VisionTransformer

ENC = dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4)


@pytest.fixture
def official_full(tmp_path, reference):
    """An official 'visualize'-style file: {'model': full state dict}."""
    path = tmp_path / "mae_visualize_tiny.pth"
    torch.save({"model": reference["state_dict"]}, path)
    return path


@pytest.fixture
def official_encoder(tmp_path, reference):
    """An official pretrain file: encoder only."""
    sd = {
        k: v
        for k, v in reference["state_dict"].items()
        if not k.startswith(("decoder_", "mask_token"))
    }
    path = tmp_path / "mae_pretrain_tiny.pth"
    torch.save({"model": sd}, path)
    return path


def test_official_full_checkpoint_loads_strictly(official_full, reference):
    model = MaskedAutoencoder(**reference["config"])
    model.load_state_dict(torch.load(official_full)["model"])  # strict by default
    report = mimkit.load_checkpoint(model, official_full, strict=True)
    assert report.loaded == len(reference["state_dict"]) and not report.missing


def test_encoder_only_file_into_mae_reports_missing_decoder(official_encoder, reference):
    model = MaskedAutoencoder(**reference["config"])
    report = mimkit.load_checkpoint(model, official_encoder)
    assert report.missing and all(k.startswith(("decoder_", "mask_token")) for k in report.missing)
    assert "missing" in str(report)
    with pytest.raises(UserError, match="does not match"):
        mimkit.load_checkpoint(model, official_encoder, strict=True)


def test_full_file_into_encoder_ignores_decoder(official_full):
    vit = VisionTransformer(**ENC)
    report = mimkit.load_checkpoint(vit, official_full)
    assert not report.missing and not report.unexpected
    assert len(report.ignored) > 0 and "ignored" in str(report)


def test_fine_tuned_layout_loads_and_other_head_is_new(tmp_path):
    src = VisionTransformer(**ENC, global_pool="avg", num_classes=10)
    path = tmp_path / "finetuned.pth"
    torch.save({"model": src.state_dict()}, path)
    same = VisionTransformer(**ENC, global_pool="avg", num_classes=10)
    assert not mimkit.load_checkpoint(same, path, strict=True).missing
    other = VisionTransformer(**ENC, global_pool="avg", num_classes=100)
    report = mimkit.load_checkpoint(other, path)
    assert report.dropped == ["head.weight", "head.bias"]
    assert torch.equal(other.fc_norm.weight, src.fc_norm.weight)


def test_safetensors_and_prefixes(tmp_path, reference):
    sd = {f"module._orig_mod.{k}": v.contiguous() for k, v in reference["state_dict"].items()}
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path), metadata={"model_name": "mae_vit"})
    model = MaskedAutoencoder(**reference["config"])
    mimkit.load_checkpoint(model, path, strict=True)
    assert torch.equal(model.cls_token, reference["state_dict"]["cls_token"])
    assert read_checkpoint(path).meta["model_name"] == "mae_vit"


def _official_interpolate(pos, new):
    """facebookresearch/mae util/pos_embed.interpolate_pos_embed, restated for the test."""
    extra, tokens = pos[:, :1], pos[:, 1:]
    old = int(tokens.shape[1] ** 0.5)
    tokens = tokens.reshape(-1, old, old, pos.shape[-1]).permute(0, 3, 1, 2)
    tokens = F.interpolate(tokens, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([extra, tokens.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)


def test_pos_embed_interpolated_as_official(official_encoder, reference):
    vit = VisionTransformer(**{**ENC, "img_size": 48})  # 12x12 grid instead of 8x8
    report = mimkit.load_checkpoint(vit, official_encoder)
    assert report.reshaped == ["pos_embed 8x8 -> 12x12"]
    expected = _official_interpolate(reference["state_dict"]["pos_embed"], 12)
    torch.testing.assert_close(vit.pos_embed.data, expected, rtol=1e-6, atol=1e-6)


def test_other_architecture_is_one_clear_line(official_encoder):
    vit = VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=3, num_heads=4)
    with pytest.raises(UserError) as e:
        mimkit.load_checkpoint(vit, official_encoder)
    msg = str(e.value)
    assert (
        "embed dim 64 in checkpoint vs 32 in model" in msg and "depth 2 in checkpoint vs 3" in msg
    )
    assert "\n" not in msg


def test_unreadable_files_are_user_errors(tmp_path, official_full):
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(official_full.read_bytes()[:1000])
    with pytest.raises(UserError, match="truncated.pth"):
        read_checkpoint(bad)
    with pytest.raises(UserError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")
    torch.save({"foo": 1}, tmp_path / "odd.pth")
    with pytest.raises(UserError, match="no state dict"):
        read_checkpoint(tmp_path / "odd.pth")


def test_infer_args_from_official_shapes(reference):
    args = infer_vit_args(reference["state_dict"])
    assert args["embed_dim"] == 64 and args["depth"] == 2 and args["patch_size"] == 4
    assert args["img_size"] == 32 and args["decoder_embed_dim"] == 32 and args["decoder_depth"] == 1


def test_model_from_official_file_without_metadata(official_full, reference):
    mae, report = model_from_checkpoint(
        official_full, kind="pretrain", num_heads=4, decoder_num_heads=4
    )
    assert not report.missing and isinstance(mae, MaskedAutoencoder)
    vit, report = model_from_checkpoint(official_full, kind="encoder", num_heads=4)
    assert isinstance(vit, VisionTransformer) and not hasattr(vit, "decoder_embed")
    assert report.ignored


def test_encoder_only_file_cannot_visualize(official_encoder):
    with pytest.raises(UserError, match="no decoder"):
        model_from_checkpoint(official_encoder, kind="pretrain")


def test_timm_loads_our_encoder_weights():
    """Same key layout as timm's VisionTransformer: strict load and equal features."""
    import timm

    ours = mimkit.create_model("vit_tiny_cifar", depth=2).eval()
    theirs = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2, num_classes=0, pretrained=False
    ).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    # timm's own LayerNorm eps is 1e-6 too for this model
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours.forward_features(x), theirs.forward_features(x))
