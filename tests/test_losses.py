import math

import pytest
import torch
from torch.nn import functional as F

from segdistill.losses import (
    bce_loss,
    cwd_loss,
    dice_loss,
    feature_loss,
    focal_loss,
    jaccard_loss,
    lovasz_hinge_loss,
    make_task_loss,
    prob_to_logit,
    soft_bce_loss,
)


def test_bce_known_value():
    logits = torch.zeros(1, 1, 2, 2)
    assert bce_loss(logits, torch.full_like(logits, 0.5)).item() == pytest.approx(math.log(2))


def test_pos_weight_scales_positive_term():
    logits = torch.zeros(1, 1, 1, 1)
    t = torch.ones_like(logits)
    assert bce_loss(logits, t, pos_weight=3.0).item() == pytest.approx(3 * math.log(2))


def test_dice_and_jaccard_known_values():
    big = torch.full((1, 1, 2, 2), 50.0)  # sigmoid = 1
    t = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    # p = all ones (4), t has 2 ones: dice = (2*2+1)/(4+2+1) = 5/7; iou = (2+1)/(4+2-2+1) = 3/5
    assert dice_loss(big, t).item() == pytest.approx(1 - 5 / 7, abs=1e-6)
    assert jaccard_loss(big, t).item() == pytest.approx(1 - 3 / 5, abs=1e-6)
    assert dice_loss(torch.where(t > 0, 50.0, -50.0), t).item() == pytest.approx(0.0, abs=1e-6)


def test_focal_is_bce_weighted_by_confidence():
    logits = torch.tensor([[[[2.0, -1.0]]]])
    t = torch.tensor([[[[1.0, 0.0]]]])
    p = torch.sigmoid(logits)
    pt = torch.where(t > 0, p, 1 - p)
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    expected = (ce * (1 - pt) ** 2).mean()
    assert focal_loss(logits, t, alpha=None).item() == pytest.approx(expected.item())


def test_lovasz_hinge_known_values():
    t = torch.zeros(1, 1, 3, 3)
    t[..., 0, :] = 1  # 3 foreground pixels
    sure = torch.where(t > 0, 2.0, -2.0)  # every margin >= 1: no hinge error at all
    assert lovasz_hinge_loss(sure, t).item() == pytest.approx(0.0)
    # all logits 0: every pixel has error 1, so the loss is the Jaccard loss of the full error set = 1
    assert lovasz_hinge_loss(torch.zeros_like(t), t).item() == pytest.approx(1.0)
    # one background pixel at logit 0 (error 1), the rest sure: 1 - IoU after that one mistake = 1 - 3/4
    one_fp = sure.clone()
    one_fp[0, 0, 2, 2] = 0.0
    assert lovasz_hinge_loss(one_fp, t).item() == pytest.approx(1 - 3 / 4)
    # images are scored separately and averaged: a perfect image and the one above give half of it
    both = lovasz_hinge_loss(torch.cat([sure, one_fp]), torch.cat([t, t]))
    assert both.item() == pytest.approx((1 - 3 / 4) / 2)


def test_lovasz_hinge_on_empty_mask_penalises_false_positives_only():
    t = torch.zeros(1, 1, 2, 2)
    assert lovasz_hinge_loss(torch.full_like(t, -3.0), t).item() == pytest.approx(0.0)
    x = torch.full_like(t, -3.0)
    x[0, 0, 0, 0] = 1.0  # error 2 on one pixel; with no foreground its weight is 1
    assert lovasz_hinge_loss(x, t).item() == pytest.approx(2.0)


@pytest.mark.parametrize("name", ["bce", "dice", "jaccard", "focal", "bce_dice", "lovasz", "bce_lovasz"])
def test_task_losses_decrease_towards_target(name):
    t = (torch.rand(2, 1, 8, 8) > 0.5).float()
    fn = make_task_loss(name)
    good = fn(torch.where(t > 0, 4.0, -4.0), t)
    bad = fn(torch.where(t > 0, -4.0, 4.0), t)
    assert good < bad


def test_soft_bce_temperature_scaling():
    s, t = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    q = torch.sigmoid(t)
    assert soft_bce_loss(s, t, 1.0).item() == pytest.approx(F.binary_cross_entropy_with_logits(s, q).item())
    T = 3.0
    expected = F.binary_cross_entropy_with_logits(s / T, torch.sigmoid(t / T)).item() * T * T
    assert soft_bce_loss(s, t, T).item() == pytest.approx(expected, rel=1e-5)


def test_soft_bce_minimised_by_teacher_logits():
    t = torch.randn(1, 1, 4, 4)
    s = torch.zeros_like(t, requires_grad=True)
    opt = torch.optim.SGD([s], lr=5.0)
    for _ in range(300):
        opt.zero_grad()
        soft_bce_loss(s, t, 2.0).backward()
        opt.step()
    assert torch.allclose(s.detach(), t, atol=0.05)


def test_cwd_single_channel_gives_signal():
    t = torch.randn(2, 1, 6, 6)
    assert cwd_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(2, 1, 6, 6, requires_grad=True)
    loss = cwd_loss(s, t)
    loss.backward()
    assert loss.item() > 0 and s.grad.abs().sum() > 0
    # channel-softmax KD on one channel is constant: softmax over a single class is always 1
    assert torch.all(torch.softmax(s, dim=1) == 1)


def test_feature_loss_zero_for_identical_and_scale_invariant():
    f = [torch.randn(2, 4, 8, 8)]
    assert feature_loss(f, f).item() == pytest.approx(0.0, abs=1e-6)
    assert feature_loss([f[0] * 10 + 3], f).item() == pytest.approx(0.0, abs=1e-4)


def test_prob_to_logit_inverts_sigmoid_and_stays_finite():
    p = torch.tensor([0.0, 0.25, 0.5, 1.0])
    x = prob_to_logit(p)
    assert torch.isfinite(x).all()
    assert torch.sigmoid(x)[1].item() == pytest.approx(0.25, abs=1e-6)
