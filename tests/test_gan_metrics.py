"""GAN losses (label smoothing, WGAN-GP penalty), generative metrics (diversity, memorisation, accuracies), the
feature network, the training monitor and the weight average."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from chestzoo.losses.gan import (
    DiscriminatorLoss,
    GeneratorLoss,
    WassersteinCriticLoss,
    WassersteinGeneratorLoss,
    gan_losses,
    gradient_penalty,
    prepare_reals,
    smoothed_targets,
)
from chestzoo.metrics import generative as gm
from chestzoo.networks.ema import WeightAverage


class MeanCritic(nn.Module):
    """Logit = mean pixel value of each image: a discriminator whose answers a test can predict."""

    def forward(self, x):
        return x.mean(dim=(1, 2, 3))


class LinearCritic(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())

    def forward(self, x):
        return (x.flatten(1) * self.weight.flatten()).sum(1)


def _images(values):
    return torch.tensor(values, dtype=torch.float32)[:, None, None, None].expand(-1, 1, 4, 4).contiguous()


# --- losses ---------------------------------------------------------------------------------------------------


def test_smoothed_targets_stay_in_their_range():
    g = torch.Generator().manual_seed(0)
    real = smoothed_targets(5000, (0.85, 1.0), generator=g)
    fake = smoothed_targets(5000, (0.0, 0.15), generator=g)
    assert real.min() >= 0.85 and real.max() <= 1.0 and real.std() > 0.03
    assert fake.min() >= 0.0 and fake.max() <= 0.15 and fake.std() > 0.03
    assert torch.equal(smoothed_targets(4, (1.0, 1.0)), torch.ones(4))
    for bad in ((0.9, 0.8), (-0.1, 0.2), (0.5, 1.2)):
        with pytest.raises(ValueError):
            smoothed_targets(3, bad)


def test_discriminator_loss_hard_and_smoothed_targets():
    d = MeanCritic()
    reals, fakes = _images([2.0, 1.0, -0.5]), _images([-1.0, 0.5, -3.0, -2.0])
    hard = DiscriminatorLoss(d, label_smoothing="false")  # the command-line string form is a false flag
    expected = F.binary_cross_entropy_with_logits(torch.tensor([2.0, 1.0, -0.5]), torch.ones(3)) + \
        F.binary_cross_entropy_with_logits(torch.tensor([-1.0, 0.5, -3.0, -2.0]), torch.zeros(4))
    torch.testing.assert_close(hard(fakes, reals), expected)
    # accuracies at logit 0, counted on the right side for each: reals > 0, fakes < 0
    assert hard.last["D accuracy real"] == pytest.approx(2 / 3)
    assert hard.last["D accuracy fake"] == pytest.approx(3 / 4)

    smooth = DiscriminatorLoss(d, label_smoothing=True, real_range=(0.85, 1.0), fake_range=(0.0, 0.15))
    torch.manual_seed(3)
    loss = smooth(fakes, reals)
    torch.manual_seed(3)  # the same draws, in the same order (reals, then fakes)
    t_real, t_fake = smoothed_targets(3, (0.85, 1.0)), smoothed_targets(4, (0.0, 0.15))
    manual = F.binary_cross_entropy_with_logits(torch.tensor([2.0, 1.0, -0.5]), t_real) + \
        F.binary_cross_entropy_with_logits(torch.tensor([-1.0, 0.5, -3.0, -2.0]), t_fake)
    torch.testing.assert_close(loss, manual)
    assert not torch.isclose(loss, expected)
    assert smooth.last["D accuracy real"] == pytest.approx(2 / 3)  # smoothing does not move the decision threshold


def test_discriminator_step_leaves_the_generator_alone():
    g = nn.Linear(3, 16)
    d = nn.Sequential(nn.Flatten(), nn.Linear(16, 1), nn.Flatten(0))
    fakes = g(torch.randn(5, 3)).view(5, 1, 4, 4)
    DiscriminatorLoss(d)(fakes, torch.randn(5, 1, 4, 4)).backward()
    assert g.weight.grad is None and d[1].weight.grad is not None


def test_generator_loss_is_non_saturating():
    g_loss = GeneratorLoss(MeanCritic())
    fakes = _images([-1.0, 0.5, 2.0, -3.0])
    torch.testing.assert_close(g_loss(fakes), F.softplus(-torch.tensor([-1.0, 0.5, 2.0, -3.0])).mean())
    assert g_loss.last["G fooling rate"] == pytest.approx(0.5)


def test_gradient_penalty_on_a_linear_critic():
    """For C(x) = <w, x> the gradient is w everywhere, so the penalty is exactly (||w|| - 1)^2."""
    torch.manual_seed(0)
    w = torch.randn(1, 4, 4)
    critic = LinearCritic(w)
    reals, fakes = torch.randn(6, 1, 4, 4), torch.randn(6, 1, 4, 4)
    gp = gradient_penalty(critic, reals, fakes)
    norm = float(w.norm())
    assert float(gp) == pytest.approx((norm - 1.0) ** 2, rel=1e-5)
    gp.backward()  # the penalty must train the critic (create_graph): d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    torch.testing.assert_close(critic.weight.grad, 2 * (norm - 1.0) * w / norm, rtol=1e-4, atol=1e-6)
    unit = LinearCritic(w / w.norm())
    assert float(gradient_penalty(unit, reals, fakes)) == pytest.approx(0.0, abs=1e-10)
    assert gradient_penalty(critic, reals[:4], fakes).shape == ()  # a short last real batch is paired, not an error


def test_wasserstein_losses():
    torch.manual_seed(0)
    w = torch.randn(1, 4, 4)
    critic = LinearCritic(w)
    reals, fakes = torch.randn(8, 1, 4, 4) + 1.0, torch.randn(8, 1, 4, 4)
    loss = WassersteinCriticLoss(critic, gp_weight=10.0)
    value = loss(fakes, reals)
    distance = critic(reals).mean() - critic(fakes).mean()
    torch.testing.assert_close(value, -distance + 10.0 * (w.norm() - 1.0) ** 2, rtol=1e-5, atol=1e-5)
    assert loss.last["Wasserstein estimate"] == pytest.approx(float(distance), rel=1e-5)
    torch.testing.assert_close(WassersteinGeneratorLoss(critic)(fakes), -critic(fakes).mean())


def test_gan_losses_factory_and_prepare_reals():
    d = MeanCritic()
    assert [type(x).__name__ for x in gan_losses("dcgan", d)] == ["DiscriminatorLoss", "GeneratorLoss"]
    assert [type(x).__name__ for x in gan_losses("wgan_gp", d)] == ["WassersteinCriticLoss", "WassersteinGeneratorLoss"]
    with pytest.raises(ValueError, match="gan must be one of"):
        gan_losses("wgan", d)
    batch = {"image": torch.ones(2, 1, 4, 4), "image_path": ["a", "b"]}
    assert torch.equal(prepare_reals(batch, "cpu"), torch.ones(2, 1, 4, 4))


# --- metrics --------------------------------------------------------------------------------------------------


def test_rank_auc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 40).astype(float), rng.integers(0, 4, 30).astype(float)
    expected = roc_auc_score(np.r_[np.ones(40), np.zeros(30)], np.r_[pos, neg])
    assert gm.rank_auc(pos, neg) == pytest.approx(expected)


def test_discriminator_accuracies():
    out = gm.discriminator_accuracies(torch.tensor([2.0, 1.0, -1.0, 0.5]), torch.tensor([-2.0, 3.0, -0.1]))
    assert out["D accuracy real"] == pytest.approx(0.75)
    assert out["D accuracy fake"] == pytest.approx(2 / 3)
    assert out["G fooling rate"] == pytest.approx(1 / 3)
    assert out["D accuracy"] == pytest.approx((0.75 + 2 / 3) / 2)
    critic = gm.discriminator_accuracies(torch.tensor([5.0, 6.0]), torch.tensor([1.0, 2.0]), threshold=None)
    assert critic == {"D AUC": 1.0}  # a critic's scores have no threshold


def test_diversity_ratio_shows_mode_collapse():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(50, 8))
    assert gm.diversity_ratio(real, real) == pytest.approx(1.0)
    collapsed = np.repeat(real[:1], 50, axis=0) + rng.normal(scale=0.01, size=(50, 8))
    assert gm.diversity_ratio(collapsed, real) < 0.02
    assert gm.mean_pairwise_distance(np.array([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)


def test_pairwise_ms_ssim():
    torch.manual_seed(0)
    same = torch.rand(1, 1, 64, 64).repeat(8, 1, 1, 1) * 2 - 1
    noise = torch.rand(8, 1, 64, 64) * 2 - 1
    assert gm.pairwise_ms_ssim(same, pairs=20) == pytest.approx(1.0, abs=1e-4)
    assert gm.pairwise_ms_ssim(noise, pairs=20) < 0.2
    weights = gm.ms_ssim_scales(64)
    assert len(weights) == 4 and sum(weights) == pytest.approx(1.0)
    assert len(gm.ms_ssim_scales(256)) == 5 and len(gm.ms_ssim_scales(32)) == 3


def test_memorisation_check_catches_copies():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(60, 1, 8, 8))
    heldout = rng.normal(size=(30, 1, 8, 8))
    copies = train[rng.integers(0, 60, 20)] + rng.normal(scale=0.01, size=(20, 1, 8, 8))
    copied = gm.memorisation(copies, train, heldout)
    assert copied["NN distance ratio"] < 0.05 and copied["near-copy rate"] == 1.0
    fresh = gm.memorisation(rng.normal(size=(20, 1, 8, 8)), train, heldout)
    assert 0.7 < fresh["NN distance ratio"] < 1.4 and fresh["near-copy rate"] < 0.3
    dist, index = gm.nearest_neighbours(train[[5, 7]], train)
    assert list(index) == [5, 7] and np.allclose(dist, 0.0, atol=0.02)  # float32 matrix-product distances


def test_feature_net_learns_position_and_class():
    """Toy images with a bright bar at height t (and a spot for class 1): the network must learn both targets."""
    rng = np.random.default_rng(0)
    n, size = 96, 32
    t = rng.uniform(0.1, 0.9, n)
    labels = rng.integers(0, 2, n)
    images = np.full((n, 1, size, size), -1.0, np.float32)
    for i in range(n):
        row = int(t[i] * (size - 4))
        images[i, 0, row:row + 4, 4:28] = 1.0
        if labels[i]:
            images[i, 0, 2:8, 2:8] = 1.0
    x = torch.tensor(images)
    net = gm.train_feature_net(x[:64], torch.tensor(t[:64]), torch.tensor(labels[:64]), num_classes=2, epochs=25, batch_size=16, lr=3e-3)
    quality = gm.feature_net_quality(net, x[64:], torch.tensor(t[64:]), torch.tensor(labels[64:]))
    assert quality["feature net position MAE"] < 0.12  # a constant guess gives about 0.2
    assert quality["feature net accuracy"] > 0.85
    features = gm.extract_features(net, x)
    assert features.shape == (n, net.feature_dim)
    again = gm.train_feature_net(x[:64], torch.tensor(t[:64]), torch.tensor(labels[:64]), num_classes=2, epochs=25, batch_size=16, lr=3e-3)
    np.testing.assert_allclose(gm.extract_features(again, x), features, rtol=1e-4, atol=1e-5)  # seeded


# --- training-time pieces -------------------------------------------------------------------------------------


def test_weight_average():
    live = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    avg = WeightAverage(live, decay=0.9)
    before = avg.averaged[0].weight.clone()
    with torch.no_grad():
        live[0].weight.add_(1.0)
        live[1].running_mean.fill_(5.0)
    avg.update()
    torch.testing.assert_close(avg.averaged[0].weight, before + 0.1)
    assert torch.equal(avg.averaged[1].running_mean, torch.full((3,), 5.0))  # buffers follow the live network
    assert not any(p.requires_grad for p in avg.averaged.parameters())
    assert "averaged.0.weight" in avg.state_dict() and "source" not in str(list(avg.state_dict()))
    plain = WeightAverage(live, decay=0.0)
    with torch.no_grad():
        live[0].weight.mul_(2.0)
    plain.update()
    torch.testing.assert_close(plain.averaged[0].weight, live[0].weight)
    with pytest.raises(ValueError):
        WeightAverage(live, decay=1.0)


def test_monitor_records_accuracies_curves_and_samples(tmp_path):
    """Two epochs of MONAI's GanTrainer with the chestzoo losses: per-epoch means in state.metrics, history, PNGs."""
    from monai.engines import GanTrainer
    from torch.utils.data import DataLoader

    from chestzoo.metrics.gan_training import GanTrainingMonitor
    from chestzoo.networks.dcgan import DCGANDiscriminator, DCGANGenerator

    torch.manual_seed(0)
    g, d = DCGANGenerator(latent_size=8, ngf=4, image_size=8), DCGANDiscriminator(ndf=4, image_size=8)
    d_loss, g_loss = gan_losses("dcgan", d, label_smoothing=True)
    monitor = GanTrainingMonitor(d_loss, g_loss, g, str(tmp_path), latent_size=8, num_samples=4)
    data = [{"image": torch.rand(1, 8, 8) * 2 - 1} for _ in range(12)]
    trainer = GanTrainer(
        device=torch.device("cpu"), max_epochs=2, train_data_loader=DataLoader(data, batch_size=4),
        g_network=g, g_optimizer=torch.optim.Adam(g.parameters(), 1e-3), g_loss_function=g_loss,
        d_network=d, d_optimizer=torch.optim.Adam(d.parameters(), 1e-3), d_loss_function=d_loss,
        latent_shape=8, d_prepare_batch=prepare_reals, train_handlers=[monitor],
    )
    trainer.run()
    history = json.loads((tmp_path / "train_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    for key in ("D loss", "G loss", "D accuracy real", "D accuracy fake", "G fooling rate"):
        assert key in history[-1] and key in trainer.state.metrics
        if "accuracy" in key or "fooling" in key:
            assert 0.0 <= history[-1][key] <= 1.0
    assert (tmp_path / "02_training_curves.png").is_file()
    assert (tmp_path / "samples" / "epoch_0002.png").is_file()
    assert g.training  # the sample grid put the generator back in training mode
