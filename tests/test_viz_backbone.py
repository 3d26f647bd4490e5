"""Backbone pictures: recomputed attention, PCA / k-means feature maps, nearest neighbours."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.layers import Attention as TimmAttention
from timm.models.beit import Beit
from torch import nn

from mimkit.errors import UserError
from mimkit.models.vit import VisionTransformer
from mimkit.viz.attention import attention_figure, attention_maps, block_attention
from mimkit.viz.features import (
    cluster_patches,
    feature_figure,
    fit_pca,
    kmeans,
    patch_features,
    pca_rgb,
)
from mimkit.viz.grid import GREEN, RED, load_images
from mimkit.viz.neighbors import draw_neighbors, nearest_neighbors, neighbors_figure

try:  # iBOT's backbone moved to methods/ibot/
    from mimkit.methods.ibot.backbone import IBOTViT
except ImportError:
    from mimkit.methods.ibot import IBOTViT

SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def _randomise(params) -> None:
    """Zero-initialised biases and tables would make a wrong recomputation pass."""
    with torch.no_grad():
        for p in params:
            p.normal_(std=0.5)


def _mimkit_vit():
    return VisionTransformer(**SMALL), []


def _lomar_irpe():
    m = VisionTransformer(**SMALL, rel_pos="irpe", pos_embed="none")
    tables = [b.attn.rpe_k.lookup_table_weight for b in m.blocks]
    _randomise(tables)
    return m, tables


def _ibot():
    return IBOTViT(**SMALL), []


def _beit(shared: bool):
    m = Beit(
        **SMALL,
        num_classes=0,
        use_abs_pos_emb=False,
        use_rel_pos_bias=not shared,
        use_shared_rel_pos_bias=shared,
    )
    if shared:
        tables = [m.rel_pos_bias.relative_position_bias_table]
    else:
        tables = [b.attn.relative_position_bias_table for b in m.blocks]
    _randomise(tables + [p for b in m.blocks for p in (b.attn.q_bias, b.attn.v_bias)])
    return m, tables


def _mimkit_beit():
    """mimkit's BEiT (SimMIM's encoder): timm's Beit blocks, one shared bias table."""
    beit = pytest.importorskip("mimkit.models.beit", reason="mimkit's BEiT not merged yet")
    m = beit.BEiT(**SMALL)
    tables = [m.rel_pos_bias.relative_position_bias_table]
    _randomise(tables + [p for b in m.blocks for p in (b.attn.q_bias, b.attn.v_bias)])
    return m, tables


def _timm_vit():
    return timm.create_model("vit_tiny_patch16_224", pretrained=False), []


BACKBONES = {
    "mimkit_vit": _mimkit_vit,
    "lomar_irpe": _lomar_irpe,
    "ibot": _ibot,
    "beit_shared_rel_pos": lambda: _beit(True),
    "beit_per_block_rel_pos": lambda: _beit(False),
    "mimkit_beit": _mimkit_beit,
    "timm_vit_tiny": _timm_vit,
}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_recomputed_attention_equals_the_module_output(name):
    model, bias_tables = BACKBONES[name]()
    size = model.patch_embed.img_size[0]
    images = torch.randn(2, 3, size, size)
    got = block_attention(model, images, block=-1)
    heads = model.blocks[-1].attn.num_heads
    tokens = 1 + (size // model.patch_embed.patch_size[0]) ** 2
    assert got.probs.shape == (2, heads, tokens, tokens)
    assert (got.probs >= 0).all()
    torch.testing.assert_close(got.probs.sum(-1), torch.ones(2, heads, tokens))
    # probs @ v -> proj reproduces what the module returned on the captured input ...
    torch.testing.assert_close(got.output, got.module_output, atol=2e-5, rtol=1e-4)
    assert got.cls_maps().shape == (2, heads, *got.grid)
    if bias_tables:  # ... and the relative position bias is part of what was matched
        with torch.no_grad():
            for t in bias_tables:
                t.zero_()
        unbiased = block_attention(model, images, block=-1).module_output
        assert (unbiased - got.module_output).abs().max() > 1e-3


def test_fused_flags_untouched_and_later_blocks_skipped():
    model = VisionTransformer(**{**SMALL, "depth": 3}).train()
    flags = [b.attn.fused_attn for b in model.blocks]
    calls = []
    model.blocks[2].register_forward_hook(lambda *a: calls.append(1))
    maps0 = attention_maps(model, torch.randn(2, 3, 32, 32), block=0)
    assert calls == []  # the forward stopped after block 0
    assert [b.attn.fused_attn for b in model.blocks] == flags
    assert model.training  # eval only while capturing
    assert maps0.shape == (2, 2, 4, 4)


def test_unknown_attention_type_is_refused_clearly():
    class MyAttention(TimmAttention):  # a subclass may compute something else
        pass

    model = VisionTransformer(**SMALL)
    old = model.blocks[0].attn
    model.blocks[0].attn = MyAttention(32, num_heads=2, qkv_bias=True)
    model.blocks[0].attn.load_state_dict(old.state_dict())
    with pytest.raises(UserError, match="MyAttention.*register_attention"):
        block_attention(model, torch.randn(1, 3, 32, 32), block=0)


def test_register_tokens_are_left_out_of_the_maps():
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, reg_tokens=4
    )
    got = block_attention(model, torch.randn(1, 3, 32, 32))
    assert got.num_prefix_tokens == 5
    assert got.cls_maps().shape == (1, 3, 4, 4)
    torch.testing.assert_close(got.cls_maps().flatten(2), got.probs[:, :, 0, 5:])
    feats = patch_features(model, torch.randn(1, 3, 32, 32))
    assert feats.shape == (1, 4, 4, 192)


def test_attention_figure_has_image_mean_and_one_column_per_head():
    model = VisionTransformer(**{**SMALL, "num_heads": 4})
    picture, maps = attention_figure(model, torch.randn(3, 3, 32, 32), tile=40)
    assert isinstance(picture, Image.Image) and maps.shape == (3, 4, 4, 4)
    cols, pad = 2 + 4, 4
    assert picture.width == pad + cols * (40 + pad)
    assert picture.height > 3 * (40 + pad)


# ----------------------------------------------------------------------------- features


def test_pca_components_are_orthonormal_and_ordered():
    x = torch.randn(300, 16) * torch.linspace(3, 0.1, 16)  # distinct variances per axis
    pca = fit_pca(x, 3)
    torch.testing.assert_close(pca.components @ pca.components.T, torch.eye(3), atol=1e-5, rtol=0)
    assert (pca.variances[:-1] >= pca.variances[1:]).all()
    # the leading axis is the high-variance coordinate
    assert pca.components[0].abs().argmax() == 0
    again = fit_pca(x, 3)
    torch.testing.assert_close(again.components, pca.components)  # signs fixed


def test_pca_picture_separates_an_object_from_the_background():
    torch.manual_seed(0)
    n, h, w, d = 4, 6, 6, 24
    background, thing = torch.randn(d), torch.randn(d) * 3
    feats = background + 0.1 * torch.randn(n, h, w, d)
    centre = torch.zeros(h, w, dtype=torch.bool)
    centre[2:4, 2:4] = True
    feats[:, centre] = thing + 0.3 * torch.randn(n, 4, d)
    out = pca_rgb(feats, threshold=0.5)
    assert torch.equal(out.foreground, centre.expand(n, h, w))
    assert out.rgb.shape == (n, h, w, 3)
    assert (out.rgb[~out.foreground] == 0).all()
    assert out.rgb.min() >= 0 and out.rgb.max() <= 1
    assert out.rgb[out.foreground].amax(0).min() == 1  # each channel spans [0, 1]


def test_kmeans_is_seeded_and_lowers_inertia():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    x = centres.repeat_interleave(50, 0) + 0.5 * torch.randn(150, 2, generator=g)
    a, b = kmeans(x, 3, seed=7), kmeans(x, 3, seed=7)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centers, b.centers)
    assert all(later <= earlier * (1 + 1e-12) for earlier, later in zip(a.inertia, a.inertia[1:]))
    single = kmeans(x, 3, seed=7, iters=1)
    assert a.inertia[-1] < single.inertia[0]
    # the three blobs are found: each blob is one cluster
    for blob in a.labels.view(3, 50):
        assert blob.unique().numel() == 1
    assert a.labels.view(3, 50)[:, 0].unique().numel() == 3


def test_feature_figure_on_a_vit():
    model = VisionTransformer(**{**SMALL, "patch_size": 4})
    picture, maps = feature_figure(model, torch.randn(2, 3, 32, 32), k=3, tile=32)
    assert maps.features.shape == (2, 8, 8, 32)
    assert maps.labels.shape == (2, 8, 8) and set(maps.labels.unique().tolist()) <= {0, 1, 2}
    assert picture.width == 4 + 3 * (32 + 4)
    same = cluster_patches(maps.features, k=3, seed=0)
    assert torch.equal(same, maps.labels)


def test_load_images_gives_model_input_and_display(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (255, 0, 0)).save(path)
    batch, display = load_images([path, Image.new("RGB", (32, 32), (0, 0, 255))], img_size=32)
    assert batch.shape == display.shape == (2, 3, 32, 32)
    torch.testing.assert_close(
        display[0, :, 5, 5], torch.tensor([1.0, 0.0, 0.0]), atol=1e-3, rtol=0
    )
    assert batch[0, 0].mean() > 2  # normalised: (1 - 0.485) / 0.229


# ----------------------------------------------------------------------------- neighbours


def test_a_query_in_the_gallery_finds_itself_first():
    gallery = torch.randn(20, 8)
    queries = gallery[[3, 11]] * 5.0  # cosine: the scale does not matter
    sims, idx = nearest_neighbors(queries, gallery, k=4)
    assert idx[:, 0].tolist() == [3, 11]
    torch.testing.assert_close(sims[:, 0], torch.ones(2))
    assert (sims[:, :-1] >= sims[:, 1:]).all()
    assert (sims[:, 1:] < 1 - 1e-4).all()


def _colour_count(picture: Image.Image, rgb) -> int:
    return int((np.asarray(picture) == np.array(rgb, dtype=np.uint8)).all(-1).sum())


def test_neighbour_frames_say_same_or_other_class():
    grey = [Image.new("RGB", (16, 16), (128, 128, 128)) for _ in range(6)]
    feats = torch.randn(6, 4)
    picture, sims, idx = neighbors_figure(
        feats[:2], feats, grey[:2], grey, k=3, query_labels=[0, 0], gallery_labels=[0] * 6
    )
    assert idx.shape == (2, 3)
    assert _colour_count(picture, GREEN) > 0 and _colour_count(picture, RED) == 0
    other = draw_neighbors(grey[:2], grey, sims, idx, ["cat", "cat"], ["dog"] * 6, tile=32)
    assert _colour_count(other, RED) > 0 and _colour_count(other, GREEN) == 0
    unlabelled = draw_neighbors(grey[:2], grey, sims, idx, tile=32)
    assert _colour_count(unlabelled, RED) == _colour_count(unlabelled, GREEN) == 0


def test_neighbors_figure_checks_lengths():
    with pytest.raises(ValueError, match="gallery images"):
        neighbors_figure(torch.randn(1, 4), torch.randn(5, 4), ["q.png"], ["a.png"], k=2)


def test_attention_maps_refuse_what_has_no_blocks():
    model = nn.Sequential()  # no blocks, no patch_embed
    with pytest.raises(UserError, match="no transformer blocks"):
        attention_maps(model, torch.randn(1, 3, 32, 32))
    with pytest.raises(UserError, match="block 5 out of range: the model has 2 blocks"):
        attention_maps(VisionTransformer(**SMALL), torch.randn(1, 3, 32, 32), block=5)
