import json

import pytest
import torch

import mimkit
from mimkit.errors import UserError
from mimkit.methods.mae import MaskedAutoencoder
from mimkit.models import VisionTransformer

from .conftest import FIXTURES


@pytest.mark.parametrize("norm_pix", [False, True])
def test_reproduces_official_reference(reference, norm_pix):
    """loss, pred and mask of facebookresearch/mae on the same weights, images and noise."""
    model = MaskedAutoencoder(**reference["config"], norm_pix_loss=norm_pix).eval()
    model.load_state_dict(reference["state_dict"], strict=True)
    ref = reference["outputs"][f"norm_pix_loss={norm_pix}"]
    with torch.no_grad():
        loss, pred, mask = model(
            reference["imgs"], mask_ratio=reference["mask_ratio"], noise=reference["noise"]
        )
    assert torch.equal(mask, ref["mask"])
    torch.testing.assert_close(pred, ref["pred"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, ref["loss"], rtol=1e-6, atol=1e-6)


def test_fixed_sincos_tables_equal_official(reference):
    model = MaskedAutoencoder(**reference["config"])
    sd = model.state_dict()
    for key in ("pos_embed", "decoder_pos_embed"):
        torch.testing.assert_close(sd[key], reference["state_dict"][key], rtol=0, atol=1e-7)
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad


def _official_keys():
    return json.loads((FIXTURES / "mae_vit_base_patch16_keys.json").read_text())


def test_base_state_dict_matches_official_key_list():
    with torch.device("meta"):
        model = mimkit.create_model("mae_vit_base_patch16")
    own = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert own == _official_keys()


@pytest.mark.parametrize(
    "name,dim,depth,patch",
    [
        ("mae_vit_large_patch16", 1024, 24, 16),
        ("mae_vit_huge_patch14", 1280, 32, 14),
    ],
)
def test_large_and_huge_layouts(name, dim, depth, patch):
    with torch.device("meta"):
        model = mimkit.create_model(name)
    sd = model.state_dict()
    grid = 224 // patch
    assert sd["pos_embed"].shape == (1, grid * grid + 1, dim)
    assert sd["patch_embed.proj.weight"].shape == (dim, 3, patch, patch)
    assert f"blocks.{depth - 1}.mlp.fc2.weight" in sd and f"blocks.{depth}.norm1.weight" not in sd
    assert sd["decoder_embed.weight"].shape == (512, dim)
    assert "decoder_blocks.7.attn.qkv.weight" in sd and "decoder_blocks.8.norm1.weight" not in sd
    assert sd["decoder_pred.weight"].shape == (patch * patch * 3, 512)


def test_layer_norm_eps_is_1e_6():
    model = mimkit.create_model("mae_vit_tiny_cifar")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.eps == 1e-6 for m in norms)


def test_official_initialisation():
    torch.manual_seed(0)
    model = mimkit.create_model("mae_vit_small_patch16")
    assert abs(model.cls_token.std().item() - 0.02) < 0.01
    assert abs(model.mask_token.std().item() - 0.02) < 0.005
    # xavier-uniform bound for qkv (1152 x 384) and the patch projection viewed as linear
    qkv = model.blocks[0].attn.qkv.weight
    bound = (6 / (qkv.shape[0] + qkv.shape[1])) ** 0.5
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.9 * bound
    assert torch.all(model.blocks[0].attn.qkv.bias == 0)
    w = model.patch_embed.proj.weight.flatten(1)
    assert w.abs().max() <= (6 / sum(w.shape)) ** 0.5


def test_forward_shapes_and_unpacking():
    model = mimkit.create_model("mae_vit_tiny_cifar", depth=2, decoder_depth=1)
    imgs = torch.randn(3, 3, 32, 32)
    out = model(imgs)
    loss, pred, mask = out
    assert loss.ndim == 0 and pred.shape == (3, 64, 48) and mask.shape == (3, 64)
    assert torch.all(mask.sum(1) == 48)
    assert out.loss is loss


def test_loss_gradient_only_from_masked_patches():
    model = mimkit.create_model("mae_vit_tiny_cifar", depth=1, decoder_depth=1)
    imgs = torch.randn(2, 3, 32, 32)
    latent, m = model.forward_encoder(imgs, 0.75)
    pred = model.forward_decoder(latent, m.ids_restore).detach().requires_grad_(True)
    model.forward_loss(imgs, pred, m.mask).backward()
    per_patch = pred.grad.abs().sum(-1)
    assert torch.all(per_patch[m.mask == 0] == 0)
    assert torch.all(per_patch[m.mask == 1] > 0)


def test_unmasked_features_equal_plain_vit(reference):
    """The MAE's encoder is a timm ViT: its weights give the same features in a plain ViT."""
    cfg = reference["config"]
    mae = MaskedAutoencoder(**cfg).eval()
    mae.load_state_dict(reference["state_dict"])
    enc_args = {k: cfg[k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads")}
    vit = VisionTransformer(**enc_args).eval()
    mimkit.load_checkpoint(vit, _as_ckpt(reference["state_dict"]), strict=True)
    x = reference["imgs"]
    torch.testing.assert_close(mae.forward_features(x), vit.forward_features(x))


def _as_ckpt(sd):
    from mimkit.interop.checkpoint import Checkpoint

    return Checkpoint(dict(sd))


def test_registry_lists_official_names():
    names = mimkit.list_models("mae_*")
    for n in (
        "mae_vit_base_patch16",
        "mae_vit_large_patch16",
        "mae_vit_huge_patch14",
        "mae_vit_tiny_patch16",
        "mae_vit_small_patch16",
        "mae_vit_tiny_cifar",
    ):
        assert n in names
    assert "vit_base_patch16" in mimkit.list_models("vit_*")


def test_registry_errors_are_clear():
    with pytest.raises(UserError, match="did you mean mae_vit_base_patch16"):
        mimkit.create_model("mae_vit_bse_patch16")
    with pytest.raises(UserError, match="decoder_width.*accepted"):
        mimkit.create_model("mae_vit_tiny_cifar", decoder_width=3)
    with pytest.raises(UserError, match="not divisible by patch size 4"):
        mimkit.create_model("mae_vit_tiny_cifar", img_size=30)


def test_vit_sizes():
    expected = {
        "vit_tiny_patch16": (192, 12, 3),
        "vit_small_patch16": (384, 12, 6),
        "vit_base_patch16": (768, 12, 12),
    }
    for name, (dim, depth, heads) in expected.items():
        with torch.device("meta"):
            m = mimkit.create_model(name)
        assert (m.embed_dim, len(m.blocks), m.blocks[0].attn.num_heads) == (dim, depth, heads)


def test_fine_tune_layout_is_global_pool_with_fc_norm():
    with torch.device("meta"):
        m = mimkit.create_model("vit_base_patch16", global_pool="avg", num_classes=1000)
    keys = set(m.state_dict())
    assert {"fc_norm.weight", "head.weight"} <= keys and "norm.weight" not in keys


@pytest.mark.parametrize("name", mimkit.list_models())
def test_arch_config_rebuilds_every_model(name):
    with torch.device("meta"):
        model = mimkit.create_model(name)
        again = mimkit.create_model(name, **model.arch_config())
    shapes = lambda m: {k: v.shape for k, v in m.state_dict().items()}
    assert shapes(again) == shapes(model)
    assert again.arch_config() == model.arch_config()
