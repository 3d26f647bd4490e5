"""Units of the evaluation protocols: kNN, metrics, Q-score, layer decay, LARS, freezing."""

import pytest
import torch

import mimkit
from mimkit.eval import classify as K
from mimkit.eval.knn import knn_scores
from mimkit.eval.metrics import classification_metrics, roc_auc
from mimkit.eval.qscore import qscore


def test_knn_on_separable_features_is_perfect():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 16, generator=g) * 10
    train_y = torch.arange(5).repeat(20)
    test_y = torch.arange(5).repeat(7)
    train_f = centers[train_y] + torch.randn(100, 16, generator=g) * 0.1
    test_f = centers[test_y] + torch.randn(35, 16, generator=g) * 0.1
    for k, votes in knn_scores(train_f, train_y, test_f, 5, ks=(1, 10, 20)).items():
        assert votes.argmax(1).equal(test_y), k


def test_knn_votes_are_temperature_weighted():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    labels = torch.tensor([0, 1, 1])
    test = torch.tensor([[1.0, 0.0]])
    votes = knn_scores(train, labels, test, 2, ks=(2,), temperature=0.5)[2]
    # neighbours by cosine: train 0 (sim 1.0, class 0), train 2 (sim 0.6, class 1)
    expected = torch.tensor([[torch.tensor(2.0).exp(), torch.tensor(1.2).exp()]])
    torch.testing.assert_close(votes, expected)


def test_classification_metrics():
    scores = torch.tensor([[3.0, 1, 0, 0, 0, 0], [0, 3.0, 1, 0, 0, 0], [3.0, 0, 0, 0, 0, 1]])
    m = classification_metrics(scores, torch.tensor([0, 2, 5]), list("abcdef"))
    assert m["top1"] == pytest.approx(100 / 3, abs=1e-3) and m["top5"] == pytest.approx(100)
    assert (
        m["per_class"]["a"] == 100.0 and m["per_class"]["c"] == 0.0 and m["per_class"]["d"] is None
    )
    assert m["confusion"][2][1] == 1 and m["num_images"] == 3


def test_roc_auc_against_pair_counting():
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 10, (60,), generator=g).float()  # many ties
    pos = torch.rand(60, generator=g) > 0.4
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in scores[pos] for b in scores[~pos]]
    assert roc_auc(scores, pos) == pytest.approx(sum(pairs) / len(pairs))
    assert roc_auc(torch.tensor([1.0, 2.0]), torch.tensor([True, True])) != roc_auc(
        torch.tensor([1.0, 2.0]), torch.tensor([True, True])
    )  # NaN when one class is empty


def test_qscore_formula():
    h = torch.tensor([[0.0, 0.0, 0.0, 4.0], [1.0, -1.0, 1.0, -1.0]])
    q = qscore(h)
    z0 = (4 - 1) / torch.tensor([0.0, 0, 0, 4]).std()
    assert q[0].item() == pytest.approx((z0 / 4).item(), rel=1e-6)
    z1 = (1 - 0) / torch.tensor([1.0, -1, 1, -1]).std()
    assert q[1].item() == pytest.approx((z1 / 4).item(), rel=1e-6)
    assert q[0] > q[1]  # sparse, peaked features score higher


@pytest.mark.parametrize("global_pool", ["avg", "token"])
def test_layer_decay_scales_follow_mae(global_pool):
    depth, decay = 4, 0.75
    model = mimkit.create_model(
        "vit",
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=depth,
        num_heads=2,
        num_classes=3,
        global_pool=global_pool,
    )
    groups = K.layer_decay_groups(model, 0.05, decay)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}

    def mae_layer_id(name):  # facebookresearch/mae util/lr_decay.get_layer_id_for_vit
        if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
            return 0
        if name.startswith("blocks"):
            return int(name.split(".")[1]) + 1
        return depth + 1

    for name, p in model.named_parameters():
        assert scale[id(p)] == pytest.approx(decay ** (depth + 1 - mae_layer_id(name))), name
        no_wd = p.ndim == 1 or name in ("cls_token", "pos_embed")
        assert wd[id(p)] == (0.0 if no_wd else 0.05), name


def test_partial_finetuning_freezes_early_blocks():
    model = mimkit.create_model(
        "vit",
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=4,
        num_heads=2,
        num_classes=3,
        global_pool="avg",
    )
    K.freeze_all_but_last(model, 1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith(("blocks.3.", "fc_norm.", "head.")) for n in trainable)
    assert "blocks.3.attn.qkv.weight" in trainable and "head.weight" in trainable
    groups = K.layer_decay_groups(model, 0.05, 0.75)
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    with pytest.raises(mimkit.errors.UserError, match="between 0 and 4"):
        K.freeze_all_but_last(model, 5)


def test_lars_step_equals_mae_formula():
    torch.manual_seed(0)
    head = K.LinearProbe(8, 3)
    opt = K.probe_optimizer(head, "lars", lr=0.5, weight_decay=0.0)
    w0, b0 = head[1].weight.detach().clone(), head[1].bias.detach().clone()
    head.train()
    loss = torch.nn.functional.cross_entropy(head(torch.randn(16, 8)), torch.randint(0, 3, (16,)))
    loss.backward()
    gw, gb = head[1].weight.grad.clone(), head[1].bias.grad.clone()
    opt.step()
    # MAE util/lars.py: matrices scaled by trust 0.001 * |w| / |g|; 1-D params plain momentum SGD
    trust = 0.001 * w0.norm() / gw.norm()
    torch.testing.assert_close(head[1].weight.detach(), w0 - 0.5 * trust * gw)
    torch.testing.assert_close(head[1].bias.detach(), b0 - 0.5 * gb)


def test_probe_head_is_mae_style():
    head = K.LinearProbe(64, 10)
    assert isinstance(head[0], torch.nn.BatchNorm1d) and not head[0].affine and head[0].eps == 1e-6
    assert head[1].weight.std().item() == pytest.approx(0.01, rel=0.2)
    assert torch.all(head[1].bias == 0)
