"""Weighted binary cross-entropy: Wang et al.'s per-batch form, per-class and dataset variants, edge cases."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chestzoo.losses import WeightedBCEWithLogitsLoss, pos_weight_from_labels


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64)
    target = torch.tensor([[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]], dtype=torch.float64)
    return logits, target


def _terms(logits, target):
    p = torch.sigmoid(logits)
    return -torch.log(p) * target, -torch.log(1 - p) * (1 - target)


def test_batch_form_is_the_papers_formula(batch):
    logits, target = batch
    pos, neg = _terms(logits, target)
    n_pos, n_neg = target.sum(), (1 - target).sum()
    beta_p, beta_n = (n_pos + n_neg) / n_pos, (n_pos + n_neg) / n_neg
    expected = (beta_p * pos.sum() + beta_n * neg.sum()) / target.numel()
    torch.testing.assert_close(WeightedBCEWithLogitsLoss("batch")(logits, target), expected)
    # equivalently: positives and negatives weigh the same, whatever their counts
    torch.testing.assert_close(expected, pos.sum() / n_pos + neg.sum() / n_neg)


def test_batch_per_class_form(batch):
    logits, target = batch
    pos, neg = _terms(logits, target)
    rows = target.shape[0]
    expected = 0.0
    for c in range(target.shape[1]):
        p, n = target[:, c].sum(), rows - target[:, c].sum()
        if p > 0 and n > 0:
            expected = expected + (rows / p) * pos[:, c].sum() + (rows / n) * neg[:, c].sum()
        else:  # class 3 has no positive in this batch: plain BCE for it
            expected = expected + pos[:, c].sum() + neg[:, c].sum()
    torch.testing.assert_close(WeightedBCEWithLogitsLoss("batch_per_class")(logits, target), expected / target.numel())


def test_dataset_form_matches_torch_pos_weight(batch):
    logits, target = batch
    weight = [3.0, 1.0, 0.5, 9.0]
    expected = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(weight, dtype=torch.float64))
    torch.testing.assert_close(WeightedBCEWithLogitsLoss("dataset", pos_weight=weight)(logits, target), expected)


@pytest.mark.parametrize("mode", ["batch", "batch_per_class"])
@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_batches_with_one_kind_of_label_give_plain_bce(mode, fill):
    logits = torch.randn(4, 3)
    target = torch.full((4, 3), fill)
    loss = WeightedBCEWithLogitsLoss(mode)(logits, target)
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits, target))


def test_confident_predictions_stay_finite():
    logits = torch.tensor([[100.0, -100.0], [-100.0, 100.0]], requires_grad=True)
    target = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # every prediction confidently wrong
    loss = WeightedBCEWithLogitsLoss()(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and loss > 50
    assert torch.isfinite(logits.grad).all()


def test_gradient_pushes_towards_the_labels(batch):
    logits, target = batch
    logits = logits.clone().requires_grad_(True)
    WeightedBCEWithLogitsLoss()(logits, target).backward()
    assert torch.all(logits.grad[target == 1] < 0) and torch.all(logits.grad[target == 0] > 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        WeightedBCEWithLogitsLoss("focal")
    with pytest.raises(ValueError, match="pos_weight"):
        WeightedBCEWithLogitsLoss("dataset")
    with pytest.raises(ValueError, match="pos_weight"):
        WeightedBCEWithLogitsLoss("batch", pos_weight=[1.0])
    with pytest.raises(ValueError, match="same shape"):
        WeightedBCEWithLogitsLoss()(torch.zeros(2, 3), torch.zeros(2, 4))


def test_pos_weight_from_labels():
    labels = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1]])
    assert pos_weight_from_labels(labels) == [3.0, 1.0, 1 / 3]  # the label without positives gets 1
    assert pos_weight_from_labels(labels, max_weight=2.0) == [2.0, 1.0, 1 / 3]
    with pytest.raises(ValueError, match="multi-hot"):
        pos_weight_from_labels([1, 0, 1])
