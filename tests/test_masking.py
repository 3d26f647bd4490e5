import pytest
import torch

from mimkit import masking as M


def test_patchify_order_matches_official_layout():
    # (N,3,H,W) -> (N,3,h,p,w,p) -> (N,h,w,p,p,3) -> (N,h*w,p*p*3)
    imgs = torch.randn(2, 3, 8, 12)
    x = M.patchify(imgs, 4)
    assert x.shape == (2, 6, 48)
    # patch (row 1, col 2) is pixels [4:8, 8:12]; its vector is (p, p, c) ordered
    expected = imgs[0, :, 4:8, 8:12].permute(1, 2, 0).reshape(-1)
    assert torch.equal(x[0, 1 * 3 + 2], expected)


def test_unpatchify_inverts_patchify():
    imgs = torch.randn(3, 3, 16, 16)
    assert torch.equal(M.unpatchify(M.patchify(imgs, 4), 4), imgs)
    rect = torch.randn(1, 3, 8, 16)
    assert torch.equal(M.unpatchify(M.patchify(rect, 4), 4, grid=(2, 4)), rect)


def test_patchify_rejects_indivisible_size():
    with pytest.raises(ValueError, match="not divisible"):
        M.patchify(torch.randn(1, 3, 10, 10), 4)


@pytest.mark.parametrize(
    "length,ratio,keep", [(196, 0.75, 49), (64, 0.75, 16), (49, 0.8, 9), (10, 0.0, 10)]
)
def test_exact_keep_count(length, ratio, keep):
    m = M.random_masking(torch.rand(5, length), ratio)
    assert m.ids_keep.shape == (5, keep)
    assert torch.all(m.mask.sum(1) == length - keep)
    assert set(m.mask.unique().tolist()) <= {0.0, 1.0}


def test_mask_is_per_sample_and_decided_by_noise():
    noise = torch.rand(4, 64)
    a = M.random_masking(noise, 0.75)
    b = M.random_masking(noise.clone(), 0.75)
    assert torch.equal(a.mask, b.mask)
    assert not torch.equal(a.mask[0], a.mask[1])  # different samples, different masks
    # the kept patches are exactly those with the smallest noise
    smallest = noise.argsort(1)[:, :16]
    assert torch.equal(a.ids_keep, smallest)
    assert torch.all(a.mask.gather(1, smallest) == 0)


def test_restore_is_inverse_of_shuffle():
    noise = torch.rand(3, 20)
    m = M.random_masking(noise, 0.5)
    shuffle = noise.argsort(1)
    assert torch.equal(shuffle.gather(1, m.ids_restore), torch.arange(20).expand(3, 20))


def test_restore_with_tokens_places_visible_tokens_back():
    x = torch.arange(2 * 8).float().reshape(2, 8, 1)
    m = M.random_masking(torch.rand(2, 8), 0.5)
    visible = M.gather_tokens(x, m.ids_keep)
    fill = torch.full((1, 1, 1), -1.0)
    restored = M.restore_with_tokens(visible, fill, m.ids_restore)
    keep = m.mask == 0
    assert torch.equal(restored[keep], x[keep])
    assert torch.all(restored[~keep] == -1)


def test_bad_ratio_rejected():
    with pytest.raises(ValueError):
        M.random_masking(torch.rand(1, 4), 1.0)


def test_normalized_patches_have_zero_mean_unit_var():
    t = M.normalize_patches(torch.randn(2, 5, 48) * 3 + 7)
    assert torch.allclose(t.mean(-1), torch.zeros(2, 5), atol=1e-5)
    assert torch.allclose(t.var(-1), torch.ones(2, 5), atol=1e-3)


def test_masked_mse_ignores_visible_patches():
    pred, target = torch.randn(2, 8, 12), torch.randn(2, 8, 12)
    mask = torch.zeros(2, 8)
    mask[:, :3] = 1
    base = M.masked_mse(pred, target, mask)
    pred2 = pred.clone()
    pred2[:, 3:] += 100.0  # only visible patches change
    assert torch.equal(M.masked_mse(pred2, target, mask), base)
    pred3 = pred.clone()
    pred3[:, 0] += 1.0  # a masked patch changes
    assert M.masked_mse(pred3, target, mask) != base
