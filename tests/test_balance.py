"""Class balance for single-label training (chestzoo.balance)."""

import numpy as np
import pytest
import torch
from monai.data import DistributedWeightedRandomSampler
from sklearn.utils.class_weight import compute_class_weight

from chestzoo.balance import balanced_sampler, class_counts, class_weights, sample_weights

# RSNA-like mix: 29% / 40% / 31%, here 30 / 50 / 20 so that the imbalance is plain
ITEMS = [{"label": c} for c in [0] * 30 + [1] * 50 + [2] * 20]


def test_counts_and_sample_weights():
    np.testing.assert_array_equal(class_counts(ITEMS, 3), [30, 50, 20])
    weights = sample_weights(ITEMS, 3)
    totals = [float(weights[[i for i, item in enumerate(ITEMS) if item["label"] == c]].sum()) for c in range(3)]
    np.testing.assert_allclose(totals, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="0..2"):
        class_counts(ITEMS + [{"label": 3}], 3)


def test_balanced_sampler_draws_classes_equally_often():
    sampler = balanced_sampler(ITEMS, 3, "sampler", seed=1)
    assert len(sampler) == len(ITEMS)
    drawn = np.array([ITEMS[i]["label"] for _ in range(40) for i in sampler])
    shares = np.bincount(drawn, minlength=3) / drawn.size
    np.testing.assert_allclose(shares, [1 / 3, 1 / 3, 1 / 3], atol=0.03)
    natural = np.bincount([item["label"] for item in ITEMS]) / len(ITEMS)
    assert abs(natural[1] - 1 / 3) > 0.15, "the test data must be imbalanced for this test to mean anything"


def test_sampler_only_for_sampler_mode():
    assert balanced_sampler(ITEMS, 3, "weights") is None and balanced_sampler(ITEMS, 3, "none") is None
    with pytest.raises(ValueError, match="balance"):
        balanced_sampler(ITEMS, 3, "oversample")


def test_distributed_variant_draws_its_share(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        sampler = balanced_sampler(ITEMS, 3, "sampler", distributed=True)
        assert isinstance(sampler, DistributedWeightedRandomSampler)
        drawn = np.array([ITEMS[i]["label"] for _ in range(30) for i in sampler])
    finally:
        dist.destroy_process_group()
    np.testing.assert_allclose(np.bincount(drawn, minlength=3) / drawn.size, [1 / 3] * 3, atol=0.04)


def test_class_weights_match_sklearn_balanced():
    labels = [item["label"] for item in ITEMS]
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    np.testing.assert_allclose(class_weights(ITEMS, 3, "weights").numpy(), expected, rtol=1e-6)
    assert class_weights(ITEMS, 3, "sampler") is None
    missing = class_weights(ITEMS, 4, "weights")
    assert missing[3] == 0 and torch.isfinite(missing).all()
    loss = torch.nn.CrossEntropyLoss(weight=class_weights(ITEMS, 3, "weights"))
    assert torch.isfinite(loss(torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])))
