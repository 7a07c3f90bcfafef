"""Frechet distance and the feature extractor (chestzoo.metrics.frechet)."""

import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn

from chestzoo.metrics.frechet import (
    FeatureExtractor,
    extract_features,
    feature_statistics,
    frechet_distance,
    frechet_distance_between,
)


def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_statistics_are_mean_and_unbiased_covariance():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(50, 4))
    mu, sigma = feature_statistics(torch.as_tensor(f, dtype=torch.float32))
    np.testing.assert_allclose(mu, f.mean(0), atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), atol=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(f[:1])
    with pytest.raises(ValueError, match="NaN"):
        feature_statistics(np.full((3, 2), np.nan))


def test_one_dimension_closed_form():
    # between N(m1, s1^2) and N(m2, s2^2) the distance is (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2)


def test_diagonal_closed_form():
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.5])
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu_a, np.diag(a), mu_b, np.diag(b)) == pytest.approx(expected)


def test_general_covariances_agree_with_sqrtm_formula():
    rng = np.random.default_rng(1)
    for d in (2, 5, 16):
        s1, s2 = _spd(rng, d), _spd(rng, d)
        m1, m2 = rng.normal(size=d), rng.normal(size=d)
        root = linalg.sqrtm(s1 @ s2).real
        expected = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * root)
        assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-6)
        assert frechet_distance(m2, s2, m1, s1) == pytest.approx(expected, rel=1e-6)  # symmetric


def test_identical_and_rank_deficient_feature_sets():
    rng = np.random.default_rng(2)
    f = rng.normal(size=(10, 40))  # fewer samples than dimensions: singular covariances
    assert frechet_distance_between(f, f) == pytest.approx(0.0, abs=1e-6)
    g = rng.normal(size=(12, 40)) + 0.5
    value = frechet_distance_between(f, g)
    assert np.isfinite(value) and value > 0


def test_sampled_gaussians_approach_the_analytic_distance():
    rng = np.random.default_rng(3)
    d = 3
    s1, s2 = _spd(rng, d), _spd(rng, d)
    m1, m2 = np.zeros(d), np.ones(d)
    a = rng.multivariate_normal(m1, s1, size=40000)
    b = rng.multivariate_normal(m2, s2, size=40000)
    assert frechet_distance_between(a, b) == pytest.approx(frechet_distance(m1, s1, m2, s2), rel=0.05)


def test_agrees_with_monai_fid_metric():
    from monai.metrics import FIDMetric

    rng = np.random.default_rng(4)
    a = torch.as_tensor(rng.normal(size=(200, 6)))
    b = torch.as_tensor(rng.normal(size=(150, 6)) * 1.5 + 0.3)
    assert frechet_distance_between(a, b) == pytest.approx(float(FIDMetric()(a, b)), rel=1e-4)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.body(x).mean(dim=(2, 3)))


def test_extractor_takes_a_layer_pools_it_and_removes_its_hook():
    torch.manual_seed(0)
    net = _Net()
    net.train()
    x = torch.rand(5, 1, 8, 8)
    extractor = FeatureExtractor(net, layer="body", pool="mean")
    assert not net.training, "the wrapped network must be switched to eval mode"
    with torch.no_grad():
        expected = net.body(x).mean(dim=(2, 3))
    torch.testing.assert_close(extractor(x), expected)
    assert not net.body._forward_hooks, "the forward hook must be removed after each call"
    extractor.train()
    assert not net.training, "train() on the wrapper must not unfreeze batch norm"
    torch.testing.assert_close(FeatureExtractor(net, layer="body", pool="max")(x), net.body(x).amax(dim=(2, 3)).detach())
    assert FeatureExtractor(net, layer="body", pool=None)(x).shape == (5, 4 * 8 * 8)
    torch.testing.assert_close(FeatureExtractor(net)(x), net(x).detach())  # the module's own output


def test_extractor_errors_are_clear():
    net = _Net()
    with pytest.raises(ValueError, match="no layer 'nope'"):
        FeatureExtractor(net, layer="nope")
    with pytest.raises(ValueError, match="pool"):
        FeatureExtractor(net, pool="median")

    class Dict(nn.Module):
        def forward(self, x):
            return {"a": x}

    with pytest.raises(TypeError, match="name a layer"):
        FeatureExtractor(Dict())(torch.rand(1, 1, 2, 2))


def test_extract_features_from_a_tensor_or_batches_of_dicts():
    torch.manual_seed(1)
    extractor = FeatureExtractor(_Net(), layer="body")
    images = torch.rand(7, 1, 8, 8)
    from_tensor = extract_features(extractor, images, batch_size=3)
    batches = [{"image": images[i : i + 2]} for i in range(0, 7, 2)]
    np.testing.assert_allclose(extract_features(extractor, batches), from_tensor, rtol=1e-6, atol=1e-7)
    assert from_tensor.shape == (7, 4) and from_tensor.dtype == np.float64
    with pytest.raises(ValueError, match="no images"):
        extract_features(extractor, [])
