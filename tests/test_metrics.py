import pytest
import torch

from segdistill.metrics import Counts, confusion, scores, summarise


def _t(rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_known_values():
    pred = _t([[1, 1, 0, 0]])
    gt = _t([[1, 0, 1, 0]])
    c = confusion(pred, gt)
    assert (c.tp.item(), c.fp.item(), c.fn.item(), c.tn.item()) == (1, 1, 1, 1)
    s = {k: v.item() for k, v in scores(c).items()}
    assert s["iou"] == pytest.approx(1 / 3)
    assert s["dice"] == pytest.approx(0.5)
    assert s["precision"] == pytest.approx(0.5)
    assert s["recall"] == pytest.approx(0.5)
    assert s["accuracy"] == pytest.approx(0.5)


def test_empty_ground_truth_and_prediction_is_perfect():
    c = confusion(_t([[0, 0, 0]]), _t([[0, 0, 0]]))
    s = scores(c)
    assert all(v.item() == 1.0 for v in s.values())


def test_empty_ground_truth_with_prediction_scores_zero():
    s = scores(confusion(_t([[1, 0, 0]]), _t([[0, 0, 0]])))
    assert s["iou"].item() == 0.0 and s["dice"].item() == 0.0
    assert s["recall"].item() == 1.0  # nothing to find, nothing missed


def test_pooled_versus_per_image():
    # image 1: perfect small object; image 2: big object, half found
    pred = _t([[1, 0, 0, 0], [1, 1, 0, 0]])
    gt = _t([[1, 0, 0, 0], [1, 1, 1, 1]])
    m = summarise(confusion(pred, gt))
    assert m["iou"] == pytest.approx(3 / 5)  # pooled: tp=3, fn=2
    assert m["iou_per_image"] == pytest.approx((1.0 + 0.5) / 2)


def test_counts_concatenate():
    a = confusion(_t([[1, 0]]), _t([[1, 1]]))
    b = confusion(_t([[0, 0]]), _t([[0, 1]]))
    c = Counts.cat([a, b])
    assert c.tp.tolist() == [1, 0] and c.fn.tolist() == [1, 1]


def test_predicts_nothing_only_for_an_empty_prediction_of_a_non_empty_reference():
    from segdistill.metrics import predicts_nothing

    t = torch.tensor([[0, 1, 1, 0]])
    assert predicts_nothing(summarise(confusion(torch.zeros_like(t), t)))
    assert not predicts_nothing(summarise(confusion(torch.tensor([[0, 1, 0, 0]]), t)))  # partly right
    assert not predicts_nothing(summarise(confusion(torch.tensor([[1, 0, 0, 0]]), t)))  # wrong, not empty
    assert not predicts_nothing(summarise(confusion(torch.zeros_like(t), torch.zeros_like(t))))  # nothing to find
