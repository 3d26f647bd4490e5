"""Hugging Face transformers folders in and out: same numbers on both sides (tiny models)."""

import json

import pytest
import torch

import mimkit
from mimkit.errors import UserError
from mimkit.interop.checkpoint import model_from_checkpoint, read_checkpoint
from mimkit.interop.export import export_hf_checkpoint
from mimkit.interop.hf import export_hf, is_hf_folder, read_hf_folder

transformers = pytest.importorskip("transformers")

TOL = 1e-5
ENC = dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4)
MAE = dict(ENC, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4, norm_pix_loss=True)
HF_ENC = dict(
    image_size=32,
    patch_size=4,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=256,
    layer_norm_eps=1e-6,
)
HF_MAE = dict(
    HF_ENC,
    decoder_hidden_size=32,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=4,
    decoder_intermediate_size=128,
    norm_pix_loss=True,
)
HF_BEIT = dict(
    HF_ENC,
    use_absolute_position_embeddings=True,
    layer_scale_init_value=0.0,
    use_mean_pooling=True,
    drop_path_rate=0.0,
)
L = 64  # patches of a 32 px image with 4 px patches


def _jitter(model):
    """Move every weight off its init (unit LayerNorms, zero biases would hide mix-ups)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


def _report(name, **diffs):
    print(f"\n[hf max abs diff] {name}: " + ", ".join(f"{k}={v:.3g}" for k, v in diffs.items()))
    assert all(v <= TOL for v in diffs.values()), diffs


@pytest.fixture
def imgs():
    return torch.randn(2, 3, 32, 32)


@pytest.fixture
def noise():
    return torch.rand(2, L)


def _mimkit_mae():
    return _jitter(mimkit.create_model("mae_vit", **MAE))


def _hf_mae():
    return _jitter(transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(**HF_MAE)))


# ---------------------------------------------------------------------------- MAE


def test_hf_mae_into_mimkit_same_loss_pred_mask(tmp_path, imgs, noise):
    hf = _hf_mae()
    hf.save_pretrained(tmp_path)
    assert is_hf_folder(tmp_path)
    ours, report = model_from_checkpoint(tmp_path, kind="pretrain")
    assert not report.missing and not report.unexpected
    assert ours.decoder_num_heads == 4 and ours.norm_pix_loss and ours.mask_ratio == 0.75
    with torch.no_grad():
        a, b = ours.eval()(imgs, noise=noise), hf(pixel_values=imgs, noise=noise)
    assert torch.equal(a.mask, b.mask)
    _report("HF MAE -> mimkit", loss=_diff(a.loss, b.loss), pred=_diff(a.pred, b.logits))


def test_mimkit_mae_into_hf_same_loss_pred_mask(tmp_path, imgs, noise):
    ours = _mimkit_mae()
    export_hf(ours, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["ViTMAEForPreTraining"] and cfg["layer_norm_eps"] == 1e-6
    assert cfg["decoder_num_attention_heads"] == 4 and cfg["norm_pix_loss"] is True
    hf = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path).eval()
    auto = transformers.AutoModel.from_pretrained(tmp_path).eval()
    assert type(auto).__name__ == "ViTMAEModel"
    with torch.no_grad():
        a, b = ours(imgs, noise=noise), hf(pixel_values=imgs, noise=noise)
        latent, _ = ours.forward_encoder(imgs, ours.mask_ratio, noise)
        feats = auto(pixel_values=imgs, noise=noise).last_hidden_state
    assert torch.equal(a.mask, b.mask)
    _report(
        "mimkit MAE -> HF",
        loss=_diff(a.loss, b.loss),
        pred=_diff(a.pred, b.logits),
        automodel_latent=_diff(latent, feats),
    )


@pytest.mark.parametrize("norm_pix", [False, True])
def test_official_mae_weights_in_hf_reproduce_the_official_outputs(tmp_path, reference, norm_pix):
    """facebookresearch/mae weights -> mimkit -> ViTMAEForPreTraining: the reference's
    own loss, pred and mask (so HF sees the official MAE, not only ours)."""
    ours = mimkit.create_model("mae_vit", **reference["config"], norm_pix_loss=norm_pix)
    ours.load_state_dict(reference["state_dict"], strict=True)
    export_hf(ours, tmp_path)
    hf = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path).eval()
    ref = reference["outputs"][f"norm_pix_loss={norm_pix}"]
    with torch.no_grad():
        out = hf(pixel_values=reference["imgs"], noise=reference["noise"])
    assert torch.equal(out.mask, ref["mask"])
    _report(
        f"official MAE reference -> HF (norm_pix_loss={norm_pix})",
        loss=_diff(out.loss, ref["loss"]),
        pred=_diff(out.logits, ref["pred"]),
    )


def test_three_hf_key_layouts_read_the_same(tmp_path):
    """The Hub's (4.x), 5.x's save (decoder.decoder_encoder.layer) and 5.x's in-memory."""
    from safetensors.torch import load_file, save_file

    hf = _hf_mae()
    hf.save_pretrained(tmp_path / "v5save")
    saved = load_file(str(tmp_path / "v5save" / "model.safetensors"))
    assert any(".decoder_encoder.layer." in k for k in saved)  # what 5.x writes
    hub = {k.replace("decoder_encoder.layer.", "decoder_layers."): v for k, v in saved.items()}
    memory = {k: v.contiguous() for k, v in hf.state_dict().items()}
    for name, sd in (("hub", hub), ("memory", memory)):
        (tmp_path / name).mkdir()
        save_file(sd, str(tmp_path / name / "model.safetensors"), metadata={"format": "pt"})
        (tmp_path / name / "config.json").write_text((tmp_path / "v5save/config.json").read_text())
    ref = read_hf_folder(tmp_path / "v5save").state_dict
    for name in ("hub", "memory"):
        sd = read_checkpoint(tmp_path / name).state_dict
        assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)


# ---------------------------------------------------------------------------- encoder


def test_mimkit_encoder_into_vitmae_model(tmp_path, imgs):
    ours = _jitter(mimkit.create_model("vit", **ENC))
    export_hf(ours, tmp_path)
    hf = transformers.AutoModel.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "ViTMAEModel" and hf.config.mask_ratio == 0.0
    in_order = torch.arange(L).expand(2, L)  # ascending noise keeps image order
    with torch.no_grad():
        ref = ours.forward_features(imgs)
        out = hf(pixel_values=imgs, noise=in_order)
        shuffled = hf(pixel_values=imgs)  # random order, nothing removed
    assert out.mask.sum() == 0
    tokens = torch.gather(
        shuffled.last_hidden_state[:, 1:], 1, shuffled.ids_restore[..., None].expand(-1, -1, 64)
    )
    _report(
        "mimkit encoder -> ViTMAEModel",
        features=_diff(ref, out.last_hidden_state),
        unshuffled=_diff(ref[:, 1:], tokens),
    )


def test_vitmae_model_into_mimkit_encoder(tmp_path, imgs):
    hf = _jitter(transformers.ViTMAEModel(transformers.ViTMAEConfig(**HF_ENC, mask_ratio=0.0)))
    hf.save_pretrained(tmp_path)
    ours, report = model_from_checkpoint(tmp_path, kind="encoder")
    assert not report.missing and not report.unexpected and ours.num_classes == 0
    with torch.no_grad():
        ref = hf(pixel_values=imgs, noise=torch.arange(L).expand(2, L)).last_hidden_state
        out = ours.eval().forward_features(imgs)
    _report("ViTMAEModel -> mimkit encoder", features=_diff(ref, out))


def test_vit_model_folder_into_mimkit_encoder(tmp_path, imgs):
    """A plain ViTModel: same features; its pooler (dense + tanh) has no use here."""
    hf = _jitter(transformers.ViTModel(transformers.ViTConfig(**HF_ENC)))
    hf.save_pretrained(tmp_path)
    ours, report = model_from_checkpoint(tmp_path)
    assert not report.missing and not report.unexpected
    with torch.no_grad():
        ref = hf(pixel_values=imgs).last_hidden_state
        out = ours.eval().forward_features(imgs)
    _report("ViTModel -> mimkit encoder", features=_diff(ref, out))


def test_avg_pool_encoder_is_beit_model(tmp_path, imgs):
    ours = _jitter(mimkit.create_model("vit", **ENC, global_pool="avg"))
    export_hf(ours, tmp_path)
    hf = transformers.AutoModel.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "BeitModel"
    with torch.no_grad():
        feats = ours.forward_features(imgs)
        pooled = ours.forward_head(feats, pre_logits=True)
        out = hf(pixel_values=imgs)
    _report(
        "avg-pool encoder -> BeitModel",
        features=_diff(feats, out.last_hidden_state),
        pooled=_diff(pooled, out.pooler_output),
    )


def test_hf_mae_folder_gives_encoder_too(tmp_path, imgs, noise):
    """kind='encoder' on a ViTMAEForPreTraining folder: the encoder, decoder ignored."""
    hf = _hf_mae()
    hf.save_pretrained(tmp_path)
    ours, report = model_from_checkpoint(tmp_path, kind="encoder")
    assert report.ignored and not report.missing
    hf.config.mask_ratio = 0.0
    with torch.no_grad():
        ref = hf.vit(pixel_values=imgs, noise=torch.arange(L).expand(2, L)).last_hidden_state
        out = ours.eval().forward_features(imgs)
    _report("ViTMAEForPreTraining folder -> mimkit encoder", features=_diff(ref, out))


# ---------------------------------------------------------------------------- classifiers


def test_token_classifier_both_ways(tmp_path, imgs):
    ours = _jitter(mimkit.create_model("vit", **ENC, num_classes=5, global_pool="token"))
    export_hf(ours, tmp_path / "out", class_names=["a", "b", "c", "d", "e"])
    hf = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert type(hf).__name__ == "ViTForImageClassification" and hf.config.id2label[4] == "e"
    theirs = _jitter(
        transformers.ViTForImageClassification(transformers.ViTConfig(**HF_ENC, num_labels=3))
    )
    theirs.save_pretrained(tmp_path / "in")
    back, report = model_from_checkpoint(tmp_path / "in")
    assert not report.missing and not report.unexpected and back.global_pool == "token"
    with torch.no_grad():
        out = _diff(ours(imgs), hf(pixel_values=imgs).logits)
        inn = _diff(back.eval()(imgs), theirs(pixel_values=imgs).logits)
    _report("token classifier", mimkit_to_hf=out, hf_to_mimkit=inn)


def test_avg_pool_classifier_goes_through_beit(tmp_path, imgs):
    """MAE fine-tuned layout (fc_norm on the mean of patch tokens): BEiT computes it."""
    ours = _jitter(mimkit.create_model("vit", **ENC, num_classes=5, global_pool="avg"))
    assert ours.blocks[0].attn.qkv.bias[64:128].abs().sum() > 0  # a key bias to drop
    export_hf(ours, tmp_path / "out")
    hf = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert type(hf).__name__ == "BeitForImageClassification"
    theirs = _jitter(
        transformers.BeitForImageClassification(transformers.BeitConfig(**HF_BEIT, num_labels=3))
    )
    theirs.save_pretrained(tmp_path / "in")
    back, report = model_from_checkpoint(tmp_path / "in")
    assert not report.missing and not report.unexpected and back.global_pool == "avg"
    with torch.no_grad():
        out = _diff(ours(imgs), hf(pixel_values=imgs).logits)
        inn = _diff(back.eval()(imgs), theirs(pixel_values=imgs).logits)
    _report("avg-pool classifier via BEiT", mimkit_to_hf=out, hf_to_mimkit=inn)


# ---------------------------------------------------------------------------- round trip


@pytest.mark.parametrize(
    "name,args",
    [
        ("mae_vit", MAE),
        ("vit", ENC),
        ("vit", dict(ENC, num_classes=5, global_pool="token")),
        ("vit", dict(ENC, num_classes=5, global_pool="avg")),
    ],
)
def test_round_trip_state_dict(tmp_path, name, args):
    ours = _jitter(mimkit.create_model(name, **args))
    export_hf(ours, tmp_path)
    ckpt = read_checkpoint(tmp_path)
    back = mimkit.create_model(ckpt.meta["model_name"], **ckpt.meta["model_args"])
    mimkit.load_checkpoint(back, ckpt, strict=True)
    assert back.arch_config() == ours.arch_config()
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        if args.get("global_pool") == "avg" and k.endswith("attn.qkv.bias"):
            # BEiT has no key bias (softmax ignores it): the key third comes back zero
            assert torch.equal(a[k][:64], b[k][:64]) and torch.equal(a[k][128:], b[k][128:])
            assert not b[k][64:128].any()
        else:
            assert torch.equal(a[k], b[k]), k


def test_checkpoint_file_exports_with_class_names(tmp_path):
    ours = mimkit.create_model("vit", **ENC, num_classes=3, global_pool="token")
    path = tmp_path / "ft.pth"
    meta = dict(model_name="vit", model_args=ours.arch_config(), classes=["cat", "dog", "owl"])
    torch.save({"model": ours.state_dict(), **meta}, path)
    out = export_hf_checkpoint(path, tmp_path / "hf")
    assert read_checkpoint(out).meta["classes"] == ["cat", "dog", "owl"]
    proc = transformers.AutoImageProcessor.from_pretrained(out)
    assert proc.size == {"height": 32, "width": 32}


def test_pytorch_model_bin_folder(tmp_path):
    from safetensors.torch import load_file

    export_hf(_mimkit_mae(), tmp_path)
    st = tmp_path / "model.safetensors"
    torch.save(load_file(str(st)), tmp_path / "pytorch_model.bin")
    ref = read_hf_folder(tmp_path).state_dict
    st.unlink()
    sd = read_hf_folder(tmp_path).state_dict
    assert all(torch.equal(sd[k], ref[k]) for k in ref)


# ---------------------------------------------------------------------------- refusals


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(cfg | changes))


@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(qkv_bias=False), "qkv_bias"),
        (dict(hidden_act="gelu_new"), "hidden_act"),
        (dict(model_type="swin"), "model_type 'swin'"),
        (dict(decoder_intermediate_size=64), "decoder_intermediate_size"),
    ],
)
def test_unsupported_configs_are_one_line(tmp_path, changes, match):
    export_hf(_mimkit_mae(), tmp_path)
    _edit_config(tmp_path, **changes)
    with pytest.raises(UserError, match=match) as e:
        read_checkpoint(tmp_path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(use_relative_position_bias=True), "relative"),
        (dict(layer_scale_init_value=0.1), "layer scale"),
        (dict(use_absolute_position_embeddings=False), "use_absolute_position_embeddings"),
    ],
)
def test_unsupported_beit_configs(tmp_path, changes, match):
    export_hf(mimkit.create_model("vit", **ENC, num_classes=2, global_pool="avg"), tmp_path)
    _edit_config(tmp_path, **changes)
    with pytest.raises(UserError, match=match):
        read_checkpoint(tmp_path)


def test_folder_without_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a transformers model folder"):
        read_checkpoint(tmp_path)
    with pytest.raises(UserError, match="not a transformers folder"):
        read_hf_folder(tmp_path)


def test_lomar_and_convmixer_are_refused(tmp_path):
    lomar = mimkit.create_model("lomar_vit", **ENC, window_size=4)
    with pytest.raises(UserError, match="iRPE"):
        export_hf(lomar, tmp_path)
    convmixer = mimkit.create_model("convmixer_256_8", depth=1)
    with pytest.raises(UserError, match="ConvMixer has no transformers counterpart"):
        export_hf(convmixer, tmp_path)


def test_cli_export_hf_and_any_checkpoint_flag_reads_the_folder(
    tmp_path, tiny_mae_ckpt, labeled_root
):
    from transformers import AutoModel, ViTMAEForPreTraining

    from mimkit.cli import main

    out = tmp_path / "hf"
    assert (
        main(["export", "--checkpoint", str(tiny_mae_ckpt), "--format", "hf", "--out", str(out)])
        == 0
    )
    assert isinstance(ViTMAEForPreTraining.from_pretrained(out), ViTMAEForPreTraining)
    assert AutoModel.from_pretrained(out) is not None
    ours = mimkit.interop.checkpoint.model_from_checkpoint(tiny_mae_ckpt, kind="pretrain")[0]
    back = mimkit.interop.checkpoint.model_from_checkpoint(out, kind="pretrain")[0]
    for k, v in ours.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    knn = tmp_path / "knn"
    code = main(
        [
            "knn",
            "--checkpoint",
            str(out),
            "--data",
            str(labeled_root),
            "--out",
            str(knn),
            "eval.cache_dir=none",
            "data.num_workers=0",
        ]
    )
    assert code == 0 and (knn / "metrics.json").is_file()
