"""The Gaussian-mixture VAE: objectives (chestzoo.losses.gmvae), network and generation (chestzoo.networks.gmvae),
sample-quality judge (chestzoo.metrics.sample_quality)."""

import math

import numpy as np
import pytest
import torch
from torch import distributions as D

from chestzoo.losses.gmvae import (
    GMVAELoss,
    discretized_logistic_log_prob,
    iwae_bound,
    kl_normal,
    kl_sampled,
    log_mean_exp,
    log_normal,
    log_normal_mixture,
    reparameterize,
)
from chestzoo.metrics.sample_quality import conditional_fidelity, load_or_train_reference, train_reference_classifier
from chestzoo.networks.gmvae import (
    GMVAE,
    ComponentReviver,
    GMVAEGenerator,
    LatentSamples,
    finding_requests,
    generation_rows,
    revive_components,
    untrained_copy,
)

LABELS = [f"f{i}" for i in range(5)]
SMALL = dict(image_size=16, channels=(4, 8), latent_dim=6, components=3, num_labels=5)


@pytest.fixture(autouse=True)
def one_thread():
    """These networks are tiny: one thread is faster than two fighting for a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small(**kw) -> GMVAE:
    torch.manual_seed(0)
    return GMVAE(**{**SMALL, **kw})


# --- densities and KL ----------------------------------------------------------------------------------------------


def test_log_normal_matches_torch_distributions():
    torch.manual_seed(0)
    x, mean, logvar = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    expected = D.Normal(mean, torch.exp(0.5 * logvar)).log_prob(x).sum(-1)
    torch.testing.assert_close(log_normal(x, mean, logvar), expected)


def test_mixture_density_matches_torch_mixture():
    torch.manual_seed(1)
    k, d = 5, 3
    means, logvars = torch.randn(k, d) * 2, torch.randn(k, d) * 0.5
    z = torch.randn(7, 2, d) * 3
    mixture = D.MixtureSameFamily(D.Categorical(torch.ones(k) / k),
                                  D.Independent(D.Normal(means, torch.exp(0.5 * logvars)), 1))
    torch.testing.assert_close(log_normal_mixture(z, means, logvars), mixture.log_prob(z))
    with pytest.raises(ValueError, match=r"\(K, D\)"):
        log_normal_mixture(z, means[0], logvars[0])


def test_log_mean_exp_survives_underflow():
    x = torch.tensor([-1000.0, -1000.0 + math.log(3.0)])
    assert float(log_mean_exp(x, 0)) == pytest.approx(-1000.0 + math.log(2.0))


def test_analytic_kl_matches_torch():
    torch.manual_seed(2)
    qm, ql, pm, pl = (torch.randn(4, 3) for _ in range(4))
    expected = D.kl_divergence(D.Normal(qm, torch.exp(0.5 * ql)), D.Normal(pm, torch.exp(0.5 * pl))).sum(-1)
    torch.testing.assert_close(kl_normal(qm, ql, pm, pl), expected)


@pytest.mark.parametrize("components", [1, 4])
def test_sampled_kl_tends_to_the_closed_form_for_a_single_gaussian_prior(components):
    """With one component (or K identical ones) the sampled estimate averages to the analytic Gaussian KL."""
    torch.manual_seed(3)
    d = 4
    q_mean, q_logvar = torch.tensor([[0.5, -1.0, 2.0, 0.0]]), torch.tensor([[-0.5, 0.3, 0.0, -1.2]])
    p_mean, p_logvar = torch.tensor([0.2, 0.1, -0.3, 1.0]), torch.tensor([0.4, -0.2, 0.1, 0.0])
    n = 200_000
    z = reparameterize(q_mean, q_logvar, samples=n)  # (n, 1, d)
    estimates = kl_sampled(z, q_mean, q_logvar, p_mean.expand(components, d), p_logvar.expand(components, d))
    exact = float(kl_normal(q_mean, q_logvar, p_mean, p_logvar))
    standard_error = float(estimates.std()) / math.sqrt(n)
    assert float(estimates.mean()) == pytest.approx(exact, abs=4 * standard_error + 1e-4)


def test_sampled_kl_against_a_mixture_prior_matches_numerical_integration():
    """No closed form for a mixture prior: in one dimension the KL integral can be taken on a grid instead."""
    torch.manual_seed(4)
    q_mean, q_logvar = torch.tensor([[0.3]]), torch.tensor([[-0.7]])
    means, logvars = torch.tensor([[-1.5], [0.0], [2.0]]), torch.tensor([[0.0], [-1.0], [0.5]])
    grid = torch.linspace(-12, 12, 200_001, dtype=torch.float64).unsqueeze(-1)
    log_q = log_normal(grid, q_mean.double(), q_logvar.double())
    log_p = log_normal_mixture(grid, means.double(), logvars.double())
    exact = float(torch.trapezoid(torch.exp(log_q) * (log_q - log_p), grid.squeeze(-1)))
    z = reparameterize(q_mean, q_logvar, samples=200_000)
    estimates = kl_sampled(z, q_mean, q_logvar, means, logvars)
    assert float(estimates.mean()) == pytest.approx(exact, abs=4 * float(estimates.std()) / math.sqrt(len(z)) + 1e-4)


def test_iwae_bound_on_a_linear_gaussian_model():
    """p(z) = N(0, I), p(x|z) = N(Wz + b, s^2 I): log p(x) is known, the ELBO sits below the IWAE bound, which
    tightens with more samples and is exact when q is the true posterior."""
    torch.manual_seed(5)
    dz, dx, s2 = 2, 3, 0.5
    w, b = torch.randn(dx, dz, dtype=torch.float64), torch.randn(dx, dtype=torch.float64)
    x = torch.randn(dx, dtype=torch.float64)
    log_px = float(D.MultivariateNormal(b, w @ w.T + s2 * torch.eye(dx, dtype=torch.float64)).log_prob(x))
    precision = torch.eye(dz, dtype=torch.float64) + w.T @ w / s2
    post_cov = torch.linalg.inv(precision)
    post_mean = post_cov @ w.T @ (x - b) / s2

    def log_weights(q_mean, q_logvar, m):
        z = reparameterize(q_mean, q_logvar, samples=m)
        log_lik = log_normal(x, z @ w.T + b, torch.full((dx,), math.log(s2), dtype=torch.float64))
        return log_lik + log_normal(z, torch.zeros(dz, dtype=torch.float64), torch.zeros(dz, dtype=torch.float64)) - log_normal(z, q_mean, q_logvar)

    # an imperfect (mean-field, shifted) q
    q_mean, q_logvar = post_mean + 0.3, torch.log(torch.diagonal(post_cov)) + 0.5
    elbo = float(log_weights(q_mean, q_logvar, 100_000).mean())
    iwae_1 = float(torch.stack([iwae_bound(log_weights(q_mean, q_logvar, 1)) for _ in range(2000)]).mean())
    iwae_100 = float(torch.stack([iwae_bound(log_weights(q_mean, q_logvar, 100)) for _ in range(200)]).mean())
    assert iwae_1 == pytest.approx(elbo, abs=0.1)  # one sample: the IWAE bound is the ELBO
    assert elbo < iwae_100 <= log_px + 1e-3
    assert log_px - iwae_100 < 0.5 * (log_px - elbo)

    # the exact posterior (full covariance through its Cholesky factor) makes every weight equal to p(x)
    chol = torch.linalg.cholesky(post_cov)
    z = post_mean + torch.randn(10, dz, dtype=torch.float64) @ chol.T
    exact_q = D.MultivariateNormal(post_mean, post_cov).log_prob(z)
    log_w = log_normal(x, z @ w.T + b, torch.full((dx,), math.log(s2), dtype=torch.float64)) \
        + log_normal(z, torch.zeros(dz, dtype=torch.float64), torch.zeros(dz, dtype=torch.float64)) - exact_q
    assert float(iwae_bound(log_w)) == pytest.approx(log_px, abs=1e-9)


# --- the pixel likelihood --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mean,log_scale", [(0.5, -3.0), (0.0, -6.0), (1.0, -1.0), (0.3, -9.0), (2.0, -4.0), (-0.7, 1.0)])
def test_discretized_logistic_is_a_distribution_over_the_grey_levels(mean, log_scale):
    levels = torch.arange(256, dtype=torch.float64) / 255
    log_p = discretized_logistic_log_prob(levels, torch.tensor(mean, dtype=torch.float64), torch.tensor(log_scale, dtype=torch.float64))
    assert torch.isfinite(log_p).all()
    assert float(torch.exp(log_p).sum()) == pytest.approx(1.0, abs=1e-9)
    assert (log_p <= 1e-12).all()


def test_discretized_logistic_matches_the_cdf_difference():
    levels = torch.arange(256, dtype=torch.float64) / 255
    mean, scale = torch.tensor(0.42, dtype=torch.float64), torch.tensor(0.05, dtype=torch.float64)
    cdf = lambda v: torch.sigmoid((v - mean) / scale)  # noqa: E731
    h = 0.5 / 255
    expected = cdf(levels + h) - cdf(levels - h)
    expected[0], expected[-1] = cdf(levels[0] + h), 1 - cdf(levels[-1] - h)
    torch.testing.assert_close(torch.exp(discretized_logistic_log_prob(levels, mean, torch.log(scale))), expected)


def test_discretized_logistic_snaps_to_levels_and_has_finite_gradients():
    x = torch.tensor([0.1001, 0.5, 0.9999, 0.0])
    snapped = torch.round(x * 255) / 255
    mean = torch.full_like(x, 0.3, requires_grad=True)
    log_scale = torch.full_like(x, -12.0, requires_grad=True)  # far narrower than a level: mass piles up in one bin
    log_p = discretized_logistic_log_prob(x, mean, log_scale)
    torch.testing.assert_close(log_p, discretized_logistic_log_prob(snapped, mean, log_scale))
    log_p.sum().backward()
    assert torch.isfinite(log_p).all() and torch.isfinite(mean.grad).all() and torch.isfinite(log_scale.grad).all()


# --- the loss -------------------------------------------------------------------------------------------------------


def test_loss_combines_nelbo_per_pixel_classification_and_consistency():
    pred = {
        "recon": torch.zeros(2, 1, 4, 4),
        "nll": torch.tensor([32.0, 48.0]),
        "kl": torch.tensor([8.0, 16.0]),
        "logits": torch.tensor([[0.0, 2.0], [1.0, -1.0]]),
    }
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(pred["logits"], target)
    loss = GMVAELoss(classification_weight=2.0, kl_weight=0.5)(pred, target)
    assert float(loss) == pytest.approx((40.0 + 0.5 * 12.0) / 16 + 2.0 * float(bce))
    fn = GMVAELoss(consistency_weight=3.0)
    with_consistency = fn({**pred, "consistency_logits": pred["logits"], "consistency_labels": target}, target)
    assert float(with_consistency) == pytest.approx((40.0 + 12.0) / 16 + float(bce) + 3.0 * float(bce))
    assert fn.terms["nelbo"] == pytest.approx(52.0) and fn.terms["consistency"] == pytest.approx(float(bce))
    with pytest.raises(ValueError):
        GMVAELoss(kl_weight=-1.0)


# --- the network ----------------------------------------------------------------------------------------------------


def test_forward_shapes_and_label_requirements():
    x, y = torch.rand(3, 1, 16, 16), (torch.rand(3, 5) > 0.5).float()
    for conditional in (False, True):
        net = small(conditional=conditional).train()
        out = net(x, y)
        assert out["recon"].shape == x.shape and 0 <= float(out["recon"].min()) and float(out["recon"].max()) <= 1
        assert out["nll"].shape == out["kl"].shape == (3,)
        assert out["probs"].shape == out["logits"].shape == (3, 5)
        assert out["z"].shape == (3, 6)
        assert ("consistency_logits" in out) == conditional  # only the conditional model draws for given findings
    with pytest.raises(ValueError, match="needs the label vector"):
        small(conditional=True)(x)
    with pytest.raises(ValueError, match="divisible"):
        GMVAE(image_size=20, channels=(4, 8, 16))
    with pytest.raises(ValueError, match="expected images"):
        small()(torch.rand(2, 1, 8, 8))


def test_unconditional_decoder_ignores_labels_and_conditional_one_uses_them():
    z = torch.randn(2, 6)
    y0, y1 = torch.zeros(2, 5), torch.ones(2, 5)
    plain = small(conditional=False).eval()
    torch.testing.assert_close(plain.decode(z, y0)[0], plain.decode(z, y1)[0])
    cond = small(conditional=True).eval()
    assert not torch.allclose(cond.decode(z, y0)[0], cond.decode(z, y1)[0])


def test_bounds_iwae_is_never_below_the_averaged_elbo():
    net = small(conditional=True).eval()
    x, y = torch.rand(4, 1, 16, 16), (torch.rand(4, 5) > 0.5).float()
    out = net.bounds(x, y, samples=8, generator=torch.Generator().manual_seed(0))
    # log-mean-exp of the log-weights >= their mean (Jensen), for the very same draws
    assert (out["iwae"] >= -out["nelbo"] - 1e-3).all()
    torch.testing.assert_close(out["nelbo"], out["nll"] + out["kl"])
    again = net.bounds(x, y, samples=8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out["iwae"], again["iwae"])  # seeded: repeatable


def test_consistency_term_trains_the_decoder_only():
    net = small(conditional=True).train()
    x, y = torch.rand(4, 1, 16, 16), (torch.rand(4, 5) > 0.5).float()
    out = net(x, y)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out["consistency_logits"], out["consistency_labels"])
    net.zero_grad()
    loss.backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(grads[n] is None or not grads[n].any() for n in grads if n.startswith(("trunk.", "classifier.", "posterior.")))
    assert any(grads[n] is not None and grads[n].abs().sum() > 0 for n in grads if n.startswith(("up.", "head.", "project.")))
    running = {n: b.clone() for n, b in net.named_buffers() if "running" in n}
    net._classify_frozen(torch.rand(4, 1, 16, 16))
    assert all(torch.equal(running[n], b) for n, b in net.named_buffers() if "running" in n)


def test_training_lowers_the_nelbo_and_learns_the_labels():
    """A few dozen steps on images whose label is a bright square: the bound drops and q(y|x) separates them."""
    torch.manual_seed(0)
    y = (torch.rand(32, 5) > 0.5).float()
    x = torch.full((32, 1, 16, 16), 0.2) + 0.02 * torch.rand(32, 1, 16, 16)
    for i in range(5):
        x[y[:, i] > 0, :, 3 * i : 3 * i + 3, 2:6] = 0.9
    net = small(conditional=True, components=2)
    loss_fn = GMVAELoss()
    optimiser = torch.optim.Adam(net.parameter_groups(0.05), lr=3e-3)
    first = None
    for step in range(80):
        loss = loss_fn(net(x, y), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        first = first if first is not None else loss_fn.terms["nelbo"]
    assert loss_fn.terms["nelbo"] < 0.7 * first
    net.eval()
    from chestzoo.metrics.classification import mean_auroc

    assert mean_auroc(net.encode(x, y)["logits"].detach(), y) > 0.9


def test_prior_learning_rate_group():
    net = small()
    groups = net.parameter_groups(0.5)
    assert groups[1]["lr"] == 0.5 and groups[1]["params"] == [net.prior_means, net.prior_logvars]
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in net.parameters())
    assert "lr" not in net.parameter_groups()[1]


def test_generator_loads_gmvae_weights_and_scripts():
    net = small(conditional=True).eval()
    gen = GMVAEGenerator(**{**SMALL, "conditional": True})
    gen.load_state_dict(net.state_dict())
    gen.eval()
    z, y = torch.randn(2, 6), torch.zeros(2, 5)
    y[0, 1] = 1
    torch.testing.assert_close(gen(z, y), net.decode(z, y)[0])
    torch.testing.assert_close(gen(z), net.decode(z, torch.zeros(2, 5))[0])  # no y: "No Finding"
    scripted = torch.jit.script(gen)
    torch.testing.assert_close(scripted(z, y), gen(z, y))
    torch.testing.assert_close(scripted(z), gen(z))
    with pytest.raises(ValueError, match="latent"):
        gen(torch.randn(2, 5))


def test_sampling_from_one_component_and_untrained_copy():
    net = small()
    with torch.no_grad():
        net.prior_means[1].fill_(40.0)
        net.prior_logvars[1].fill_(-12.0)  # the lowest log-variance the prior allows: sd 0.0025
    z, ks = net.sample_latent(5, component=1, generator=torch.Generator().manual_seed(0))
    assert (ks == 1).all() and torch.allclose(z, torch.full_like(z, 40.0), atol=0.02)
    assert net.responsibilities(z).argmax(1).eq(1).all()
    fresh = untrained_copy(net)
    assert type(fresh) is type(net) and fresh.arguments == net.arguments
    assert not torch.equal(fresh.prior_means, net.prior_means)
    with pytest.raises(ValueError, match="out of range"):
        net.sample_latent(1, component=7)


def test_revive_moves_only_unused_components():
    net = small()
    with torch.no_grad():
        net.prior_means.copy_(torch.tensor([[0.0] * 6, [50.0] * 6, [1.0] * 6]))
    z = torch.randn(20, 6) * 0.5  # every posterior near components 0 and 2
    usage = net.responsibilities(z).sum(0)
    before = net.prior_means.detach().clone()
    moved = revive_components(net, z, usage / usage.sum(), min_usage=0.1, generator=torch.Generator().manual_seed(0))
    assert moved == [1]
    assert any(torch.allclose(net.prior_means[1], row) for row in z)
    torch.testing.assert_close(net.prior_means[[0, 2]], before[[0, 2]])
    torch.testing.assert_close(net.prior_logvars[1], net.prior_logvars[[0, 2]].mean(0))
    assert revive_components(net, z, torch.full((3,), 1 / 3)) == []


def test_reviver_handler_runs_on_trainer_output():
    from ignite.engine import Engine

    net = small()
    with torch.no_grad():
        net.prior_means[2].fill_(80.0)
    batches = [torch.randn(8, 6) for _ in range(3)]
    engine = Engine(lambda e, z: {"pred": {"z": z}, "loss": torch.tensor(0.0)})
    reviver = ComponentReviver(net, min_usage=0.1)
    reviver.attach(engine)
    engine.run(batches, max_epochs=1)
    assert reviver.revived == [(1, [2])]
    assert float(net.prior_means[2].abs().max()) < 10
    bad = Engine(lambda e, z: {"pred": z})
    ComponentReviver(net).attach(bad)
    with pytest.raises(RuntimeError, match="decollate=False"):
        bad.run(batches, max_epochs=1)


def test_latent_samples_follow_the_prior_read_at_fetch_time():
    net = small(conditional=True)
    rows = generation_rows(net, LABELS, ["No Finding", "f1", ["f2", "f4"]], per_request=4, per_component=2)
    assert [(r[0], r[1]) for r in rows[:3]] == [("finding", "No Finding"), ("finding", "f1"), ("finding", "f2+f4")]
    assert len(rows) == 3 + net.components
    data = LatentSamples(net, rows, seed=0)
    assert len(data) == 3 * 4 + 3 * 2
    with torch.no_grad():
        net.prior_means.add_(100.0)  # as a checkpoint loaded after the dataset was built
    item = data[5]  # request "f1", draw 1: component 1
    assert item["row"] == "f1" and item["component"] == 1 and item["label"].tolist() == [0, 1, 0, 0, 0]
    means, logvars = net.prior()
    torch.testing.assert_close(item["image"], means[1].detach() + torch.exp(0.5 * logvars[1]).detach() * data.eps[5])
    assert data[12]["kind"] == "component" and data[12]["component"] == 0
    torch.testing.assert_close(data[5]["image"], LatentSamples(net, rows, seed=0)[5]["image"])
    unconditional = generation_rows(small(conditional=False), LABELS, per_request=3, per_component=0)
    assert [(r[1], r[4]) for r in unconditional] == [("prior", 3)]


def test_finding_requests():
    requests = finding_requests(LABELS, ["No Finding", "f0", ["f1", "f3"]])
    assert requests == {"No Finding": [0.0] * 5, "f0": [1.0, 0, 0, 0, 0], "f1+f3": [0, 1.0, 0, 1.0, 0]}
    assert list(finding_requests(LABELS)) == ["No Finding", *LABELS]
    with pytest.raises(ValueError, match="unknown findings"):
        finding_requests(LABELS, ["Mass"])


# --- the independent judge ----------------------------------------------------------------------------------------


def test_reference_classifier_learns_and_is_cached(tmp_path):
    torch.manual_seed(0)
    y = (torch.rand(96, 3) > 0.5).float()
    x = 0.1 * torch.rand(96, 1, 16, 16)
    for i in range(3):
        x[y[:, i] > 0, :, 5 * i : 5 * i + 4, 4:12] += 0.8
    path = str(tmp_path / "ref.pt")
    net = load_or_train_reference(path, x, y, epochs=8, width=4, batch_size=16)
    with torch.no_grad():
        scores = torch.sigmoid(net(x))
    assert conditional_fidelity(scores, y)["mean_auroc"] > 0.9
    again = load_or_train_reference(path, x, y, epochs=8, width=4, batch_size=16)
    torch.testing.assert_close(again.state_dict()["head.weight"], net.state_dict()["head.weight"])
    other = load_or_train_reference(path, x, 1 - y, epochs=1, width=4, batch_size=16)  # other data: retrained
    assert not torch.equal(other.state_dict()["head.weight"], net.state_dict()["head.weight"])
    # the global random state is left alone (the judge is trained under its own seed)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    train_reference_classifier(x[:8], y[:8], epochs=1, width=4, batch_size=4)
    torch.testing.assert_close(torch.rand(3), expected)


def test_fidelity_is_the_auroc_of_requested_findings():
    requested = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 0]])
    perfect = requested * 0.9 + 0.05
    assert conditional_fidelity(perfect, requested)["mean_auroc"] == 1.0
    blind = torch.full((4, 2), 0.5)
    assert conditional_fidelity(blind, requested)["mean_auroc"] == 0.5
    assert np.isclose(conditional_fidelity(1 - perfect, requested)["mean_auroc"], 0.0)
