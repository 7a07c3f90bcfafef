"""Gaussian-mixture VAE for chest X-rays: convolutional encoder and decoder, mixture prior, joint classifier.

The model (after the CS236 GMVAE / FS-GMVAE project, with its named weaknesses addressed):

- ``p(z) = 1/K sum_k N(m_k, diag v_k)``: K learnable components of equal weight;
- ``q(z|x)`` (or ``q(z|x, y)`` when ``conditional``): a convolutional trunk, then a linear map of the flattened
  feature map (plus the label vector) to the Gaussian's mean and log-variance;
- ``p(x|z)`` (or ``p(x|z, y)``): a linear map of ``z`` (plus ``y``) to a small feature map, then nearest-neighbour
  upsampling and convolutions back to half size and a depth-to-space step to full size (the encoder starts with
  the inverse, space-to-depth), with the label vector modulating every level (FiLM) in the conditional model. The
  output is a discretised logistic per pixel (mean and log-scale), a proper likelihood of 8-bit images in [0, 1]
  (see :mod:`chestzoo.losses.gmvae`);
- ``q(y|x)``: 14 Bernoulli outputs from the trunk's features (average and max pooled), trained jointly with the
  ELBO as in the semi-supervised VAE, so the generative model classifies and reports its own AUROC.

Two training aids keep the model's generative side honest: :class:`ComponentReviver` moves prior components that
no posterior uses back where the posteriors are (otherwise samples from them decode to noise), and, for the
conditional model, a label-consistency term makes the decoder draw the findings it is asked for (see ``GMVAE``).

``forward(x, y)`` returns a dict of tensors: ``probs``/``logits`` (B, L) of ``q(y|x)``, ``recon`` (B, C, H, W) the
decoder's mean for the sampled ``z``, per-image ``nll`` (``-log p(x|z)`` in nats) and ``kl`` (the sampled
``log q(z|x) - log p(z)``), and ``z``, ``q_mean``, ``q_logvar``. :class:`GMVAEGenerator` is the same network, same
weights, whose ``forward(z, y)`` decodes latent vectors to images: it is what inference and export use.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..losses.gmvae import (
    discretized_logistic_log_prob,
    iwae_bound,
    kl_sampled,
    log_normal,
    reparameterize,
)

logger = logging.getLogger(__name__)

NORMS = ("batch", "group", "none")
LOGVAR_RANGE = (-12.0, 8.0)  # keeps exp(logvar) finite in float32 early in training


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """3x3 convolution, normalisation, SiLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, norm: str = "batch"):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=norm == "none"),
            _norm(norm, out_channels),
            nn.SiLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Nearest-neighbour x2 upsampling and convolutions; the label vector scales and shifts the result (FiLM)."""

    def __init__(self, in_channels: int, out_channels: int, blocks: int, norm: str, num_labels: int = 0):
        super().__init__()
        self.convs = nn.Sequential(
            ConvBlock(in_channels, out_channels, norm=norm),
            *[ConvBlock(out_channels, out_channels, norm=norm) for _ in range(blocks - 1)],
        )
        self.film: Optional[nn.Linear] = None
        if num_labels:
            self.film = nn.Linear(num_labels, 2 * out_channels)
            nn.init.zeros_(self.film.weight)  # starts as the identity: the label is learned in, not imposed
            nn.init.zeros_(self.film.bias)

    def forward(self, h: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.convs(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        film = self.film
        if film is not None and y is not None:
            scale, shift = film(y).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
            h = h * (1.0 + scale) + shift
        return h


class GMVAE(nn.Module):
    """Gaussian-mixture VAE with a joint multi-label classifier; ``conditional=True`` gives the label-conditioned
    model (the label vector goes to the encoder and to the decoder).

    Args:
        image_size: side of the square input; must be divisible by ``2 ** len(channels)``.
        in_channels: image channels (1 for radiographs).
        latent_dim: dimension of ``z``.
        components: K, the number of mixture components of the prior.
        num_labels: length of the multi-hot label vector (14 for ChestX-ray14).
        conditional: give ``y`` to encoder and decoder (FS-GMVAE); ``forward`` then requires ``y``.
        classifier: train ``q(y|x)`` jointly (False gives a GMVAE without a classifier).
        channels: encoder channels, one stride-2 level each; the decoder mirrors them.
        blocks: convolutions per level.
        norm: "batch", "group" or "none".
        bins: grey levels of the discretised likelihood (256 for 8-bit images).
        min_log_scale: lower bound of the pixel log-scale.
        dropout: dropout before the classifier's linear layer.
        label_consistency: (conditional model) during training, also decode draws from the prior for given label
            vectors and return the classifier's logits on them (``consistency_logits``/``consistency_labels``),
            computed through detached copies of the trunk's and classifier's weights so that only the decoder
            learns from them. A decoder that also receives ``z`` from an encoder that saw the image can ignore
            ``y`` (the ELBO barely rewards using it); this term asks it to draw the findings it is given, the
            classifier-on-samples idea of CVAE-GAN (Bao et al. 2017) with the model's own ``q(y|x)`` as critic.
        consistency_fraction: share of each batch drawn for that term (it costs a decoder and a trunk pass).
    """

    def __init__(
        self,
        image_size: int = 224,
        in_channels: int = 1,
        latent_dim: int = 64,
        components: int = 10,
        num_labels: int = 14,
        conditional: bool = False,
        classifier: bool = True,
        channels: Sequence[int] = (32, 64, 128, 256, 256),
        blocks: int = 1,
        norm: str = "batch",
        bins: int = 256,
        min_log_scale: float = -7.0,
        dropout: float = 0.0,
        label_consistency: bool = True,
        consistency_fraction: float = 0.5,
    ):
        super().__init__()
        from ..utils import as_bool

        channels = tuple(int(c) for c in channels)
        image_size, levels = int(image_size), len(channels)
        if levels < 1 or image_size % (2**levels) != 0:
            raise ValueError(f"image_size {image_size} must be divisible by 2**{levels} (one halving per channel entry)")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")
        if int(components) < 1 or int(latent_dim) < 1 or int(blocks) < 1:
            raise ValueError("components, latent_dim and blocks must be at least 1")
        self.arguments = dict(
            image_size=image_size, in_channels=int(in_channels), latent_dim=int(latent_dim), components=int(components),
            num_labels=int(num_labels), conditional=as_bool(conditional), classifier=as_bool(classifier),
            channels=channels, blocks=int(blocks), norm=norm, bins=int(bins), min_log_scale=float(min_log_scale),
            dropout=float(dropout), label_consistency=as_bool(label_consistency),
            consistency_fraction=float(consistency_fraction),
        )
        self.label_consistency = as_bool(label_consistency)
        if not 0.0 < float(consistency_fraction) <= 1.0:
            raise ValueError(f"consistency_fraction must be in (0, 1], not {consistency_fraction}")
        self.consistency_fraction = float(consistency_fraction)
        self.image_size, self.in_channels = image_size, int(in_channels)
        self.latent_dim, self.components, self.num_labels = int(latent_dim), int(components), int(num_labels)
        self.conditional, self.has_classifier = as_bool(conditional), as_bool(classifier)
        self.bins, self.min_log_scale = int(bins), float(min_log_scale)
        self.base = image_size // (2**levels)
        y_dim = self.num_labels if self.conditional else 0

        # The first halving is a lossless space-to-depth (2x2 pixels -> 4 channels) and the last doubling its inverse,
        # so no convolution runs at full resolution: the network costs about a third of a full-resolution one.
        layers: list[nn.Module] = [nn.PixelUnshuffle(2)]
        previous = 4 * self.in_channels
        for i, width in enumerate(channels):
            layers.append(ConvBlock(previous, width, stride=1 if i == 0 else 2, norm=norm))
            layers += [ConvBlock(width, width, norm=norm) for _ in range(int(blocks) - 1)]
            previous = width
        self.trunk = nn.Sequential(*layers)
        flat = channels[-1] * self.base * self.base
        self.posterior = nn.Linear(flat + y_dim, 2 * self.latent_dim)
        self.classifier: Optional[nn.Module] = None
        if self.has_classifier:
            self.classifier = nn.Sequential(nn.Dropout(float(dropout)), nn.Linear(2 * channels[-1], self.num_labels))

        self.top_channels = channels[-1]
        self.project = nn.Linear(self.latent_dim + y_dim, flat)
        ups, previous = [], channels[-1]
        for width in reversed(channels[:-1]):
            ups.append(UpBlock(previous, width, int(blocks), norm, y_dim))
            previous = width
        self.up = nn.ModuleList(ups)
        # mean and log-scale of each of the 2x2 pixels of a half-resolution cell, then depth-to-space
        self.head = nn.Conv2d(previous, 2 * 4 * self.in_channels, 3, padding=1)
        self.to_pixels = nn.PixelShuffle(2)
        with torch.no_grad():  # start with a broad pixel scale (about 0.14) rather than e**0 = 1
            self.head.bias[4 * self.in_channels :].fill_(-2.0)

        # Mixture prior: K learnable means and log-variances, uniform weights.
        self.prior_means = nn.Parameter(0.1 * torch.randn(self.components, self.latent_dim))
        self.prior_logvars = nn.Parameter(torch.zeros(self.components, self.latent_dim))

    def parameter_groups(self, prior_lr: Optional[float] = None) -> list[dict]:
        """Optimiser parameter groups: the prior's means and log-variances, with their own learning rate when
        ``prior_lr`` is given, and everything else. The encoder moves the posteriors by whole units within a few
        hundred steps; at the network's learning rate the prior would trail far behind them and leave most of its
        components where no posterior is (prior "holes" that decode to noise)."""
        prior = [self.prior_means, self.prior_logvars]
        rest = [p for n, p in self.named_parameters() if n not in ("prior_means", "prior_logvars")]
        group: dict = {"params": prior}
        if prior_lr is not None:
            group["lr"] = float(prior_lr)
        return [{"params": rest}, group]

    # -- pieces -------------------------------------------------------------------------------------------------------

    def prior(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Component means and log-variances, (K, D) each."""
        return self.prior_means, self.prior_logvars.clamp(LOGVAR_RANGE[0], LOGVAR_RANGE[1])

    def _label(self, y: Optional[torch.Tensor], batch: int, like: torch.Tensor, required: bool) -> Optional[torch.Tensor]:
        if not self.conditional:
            return None
        if y is None:
            if required:
                raise ValueError("the conditional GMVAE needs the label vector y")
            return torch.zeros(batch, self.num_labels, dtype=like.dtype, device=like.device)
        if y.dim() != 2 or y.shape[0] != batch or y.shape[1] != self.num_labels:
            raise ValueError("y must be (batch, num_labels) like the images' batch")
        return y.to(like.dtype)

    def encode(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """``q(z|x[,y])`` parameters and, with a classifier, ``q(y|x)`` logits."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(
                f"expected images (B, {self.in_channels}, {self.image_size}, {self.image_size}), got {tuple(x.shape)}"
            )
        y = self._label(y, x.shape[0], x, required=True)
        h = self.trunk(x)
        features = h.flatten(1)
        if y is not None:
            features = torch.cat([features, y], dim=1)
        # the densities are evaluated in float32 even under mixed precision
        q_mean, q_logvar = self.posterior(features).float().chunk(2, dim=1)
        out = {"q_mean": q_mean, "q_logvar": q_logvar.clamp(LOGVAR_RANGE[0], LOGVAR_RANGE[1])}
        if self.classifier is not None:
            pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
            out["logits"] = self.classifier(pooled).float()
        return out

    def decode(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel distribution ``p(x|z[,y])``: mean in [0, 1] and log-scale, each (B, C, H, W)."""
        y = self._label(y, z.shape[0], z, required=False)
        inputs = z if y is None else torch.cat([z, y], dim=1)
        h = self.project(inputs).view(z.shape[0], self.top_channels, self.base, self.base)
        for block in self.up:
            h = block(h, y)
        raw_mean, raw_log_scale = self.to_pixels(self.head(h)).float().chunk(2, dim=1)
        return torch.sigmoid(raw_mean), raw_log_scale.clamp(min=self.min_log_scale)

    def log_likelihood(self, x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
        """``log p(x|z)`` per image, nats."""
        return discretized_logistic_log_prob(x, mean, log_scale, self.bins).flatten(1).sum(1)

    # -- training / evaluation ----------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        q = self.encode(x, y)
        z = reparameterize(q["q_mean"], q["q_logvar"])
        mean, log_scale = self.decode(z, y)
        prior_means, prior_logvars = self.prior()
        out = dict(q)
        out.update(
            z=z,
            recon=mean,
            nll=-self.log_likelihood(x, mean, log_scale),
            kl=kl_sampled(z, q["q_mean"], q["q_logvar"], prior_means, prior_logvars),
        )
        if "logits" in out:
            out["probs"] = torch.sigmoid(out["logits"])
        if self.training and self.label_consistency and self.conditional and self.classifier is not None:
            # Draw from the prior for the batch's label vectors (shifted by one, so z and y are unrelated) and
            # let the classifier, its weights held fixed, say whether the findings are there (label_consistency).
            n = max(2, int(round(self.consistency_fraction * x.shape[0])))
            y_drawn = y.roll(1, dims=0)[:n].to(x.dtype)
            z_drawn, _ = self.sample_latent(y_drawn.shape[0])
            drawn = self.decode(z_drawn, y_drawn)[0]
            out["consistency_logits"] = self._classify_frozen(drawn)
            out["consistency_labels"] = y_drawn
        return out

    def _classify_frozen(self, x: torch.Tensor) -> torch.Tensor:
        """``q(y|x)`` logits through detached copies of the trunk's and classifier's weights (batch statistics for
        batch norm, running statistics untouched): gradients reach ``x`` (the decoder) and nothing else."""

        def call(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
            state = {n: p.detach() for n, p in module.named_parameters()}
            state.update({n: b.clone() for n, b in module.named_buffers()})
            return torch.func.functional_call(module, state, (inputs,))

        h = call(self.trunk, x)
        return call(self.classifier, torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))

    @torch.no_grad()
    def bounds(self, x: torch.Tensor, y: Optional[torch.Tensor] = None, samples: int = 64,
               generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        """Per-image estimates from ``samples`` draws of ``z``: the ELBO terms averaged over the draws
        (``nll``, ``kl``, ``nelbo``) and the importance-weighted bound ``iwae`` on ``log p(x[|y])`` (nats)."""
        q = self.encode(x, y)
        prior_means, prior_logvars = self.prior()
        y_ = self._label(y, x.shape[0], x, required=True)
        log_w, nll, kl = [], [], []
        for _ in range(int(samples)):
            z = reparameterize(q["q_mean"], q["q_logvar"], generator=generator)
            mean, log_scale = self.decode(z, y_)
            log_px = self.log_likelihood(x, mean, log_scale)
            kl_m = kl_sampled(z, q["q_mean"], q["q_logvar"], prior_means, prior_logvars)
            log_w.append(log_px - kl_m)
            nll.append(-log_px)
            kl.append(kl_m)
        nll_, kl_ = torch.stack(nll).mean(0), torch.stack(kl).mean(0)
        out = {"nll": nll_, "kl": kl_, "nelbo": nll_ + kl_, "iwae": iwae_bound(torch.stack(log_w), dim=0)}
        if "logits" in q:
            out["probs"] = torch.sigmoid(q["logits"])
        return out

    # -- generation ---------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample_latent(self, n: int, component: Optional[int] = None,
                      generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` draws from the prior (or from one component): ``z`` (n, D) and each draw's component (n,)."""
        means, logvars = self.prior()
        if component is None:
            ks = torch.randint(self.components, (n,), generator=generator,
                               device=None if generator is None else generator.device).to(means.device)
        else:
            if not 0 <= int(component) < self.components:
                raise ValueError(f"component {component} out of range 0..{self.components - 1}")
            ks = torch.full((n,), int(component), dtype=torch.long, device=means.device)
        eps = torch.randn(n, self.latent_dim, generator=generator, device=None if generator is None else generator.device)
        eps = eps.to(means)
        return means[ks] + torch.exp(0.5 * logvars[ks]) * eps, ks

    @torch.no_grad()
    def sample(self, n: int, y: Optional[torch.Tensor] = None, component: Optional[int] = None,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``n`` images (their decoder means) from the prior; ``y`` (L,) or (n, L) conditions a conditional model."""
        z, _ = self.sample_latent(n, component, generator)
        if y is not None and y.dim() == 1:
            y = y.unsqueeze(0).expand(n, -1)
        return self.decode(z, None if y is None else y.to(z))[0]

    def responsibilities(self, z: torch.Tensor) -> torch.Tensor:
        """``p(k|z)`` under the prior, (B, K): which component explains each latent vector."""
        means, logvars = self.prior()
        per_component = log_normal(z.unsqueeze(-2), means, logvars)
        return torch.softmax(per_component, dim=-1)


@torch.no_grad()
def revive_components(network: GMVAE, z: torch.Tensor, usage: torch.Tensor, min_usage: float = 0.1,
                      generator: Optional[torch.Generator] = None) -> list[int]:
    """Move the prior components that no posterior uses onto latent vectors the encoder produced.

    ``usage`` (K,) is each component's share of the responsibilities ``p(k|z)`` over recent training batches (it
    sums to 1); a component whose share is below ``min_usage / K`` takes a randomly chosen row of ``z`` (recent
    posterior samples) as its mean and the average log-variance of the used components. With the log-mean-exp KL
    only the component nearest to a posterior receives its gradient, so a component left behind early never
    recovers by itself, and samples drawn from it decode to noise; moving it where the posteriors are can only
    raise ``p(z)`` there (the same remedy as restarting an empty k-means cluster). Returns the moved components.
    """
    if z.dim() != 2 or z.shape[1] != network.latent_dim or usage.shape != (network.components,):
        raise ValueError("z must be (N, latent_dim) and usage (components,)")
    dead = torch.nonzero(usage < float(min_usage) / network.components).flatten().tolist()
    if not dead or len(dead) == network.components or z.shape[0] == 0:
        return []
    alive = [k for k in range(network.components) if k not in dead]
    logvar = network.prior_logvars[alive].mean(0)
    rows = torch.randint(z.shape[0], (len(dead),), generator=generator)
    for k, row in zip(dead, rows.tolist()):
        network.prior_means[k].copy_(z[row].to(network.prior_means))
        network.prior_logvars[k].copy_(logvar)
    return dead


class ComponentReviver:
    """Ignite handler for the trainer: every ``interval`` epochs, :func:`revive_components` on what the epoch's
    batches used.

    It reads the sampled ``z`` from the trainer's output (``output["pred"]["z"]``, so the trainer runs with
    ``decollate=False``), sums the prior responsibilities per component and keeps the last ``keep`` vectors. Under
    DistributedDataParallel the usage is summed over ranks and rank 0's revived prior is broadcast, so the replicas
    stay identical. ``min_usage=0`` turns it off.
    """

    def __init__(self, network: nn.Module, min_usage: float = 0.1, interval: int = 1, keep: int = 2048, seed: int = 0):
        self.network = network
        self.min_usage, self.interval, self.keep = float(min_usage), int(interval), int(keep)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.usage: Optional[torch.Tensor] = None
        self.recent: list[torch.Tensor] = []
        self.revived: list[tuple[int, list[int]]] = []  # (epoch, components) for logs and tests

    @property
    def model(self) -> GMVAE:
        return getattr(self.network, "module", self.network)  # unwrap DistributedDataParallel

    def attach(self, engine) -> None:
        from ignite.engine import Events

        if self.min_usage <= 0:
            return
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=max(self.interval, 1)), self._revive)

    def _collect(self, engine) -> None:
        output = engine.state.output
        pred = output.get("pred") if isinstance(output, dict) else None
        if not isinstance(pred, dict) or "z" not in pred:
            raise RuntimeError("ComponentReviver needs the trainer output's pred['z']: run the trainer with decollate=False")
        z = pred["z"].detach()
        with torch.no_grad():
            usage = self.model.responsibilities(z).sum(0).cpu()
        self.usage = usage if self.usage is None else self.usage + usage
        self.recent.append(z.cpu())
        while sum(len(r) for r in self.recent) - len(self.recent[0]) >= self.keep:
            self.recent.pop(0)

    def _revive(self, engine) -> None:
        import torch.distributed as dist

        if self.usage is None:
            return
        usage = self.usage.clone()
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            usage = usage.to(self.model.prior_means.device)
            dist.all_reduce(usage)
            usage = usage.cpu()
        moved = revive_components(self.model, torch.cat(self.recent), usage / usage.sum(), self.min_usage, self.generator)
        if distributed:
            dist.broadcast(self.model.prior_means.data, src=0)
            dist.broadcast(self.model.prior_logvars.data, src=0)
        if moved:
            self.revived.append((int(engine.state.epoch), moved))
            logger.info("epoch %d: moved unused prior components %s onto posterior samples",
                                             engine.state.epoch, moved)
        self.usage, self.recent = None, []


class GMVAEGenerator(GMVAE):
    """The GMVAE as an image generator: ``forward(z, y)`` decodes latent vectors (B, latent_dim) to images
    (B, C, H, W) in [0, 1], the decoder's mean. ``y`` (B, num_labels) is the finding combination to draw for the
    conditional model (all zeros, "No Finding", when omitted). Same parameters as :class:`GMVAE`, so a GMVAE
    checkpoint loads unchanged; TorchScript-compatible."""

    def forward(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:  # type: ignore[override]
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError("expected latent vectors of shape (B, latent_dim)")
        return self.decode(z, y)[0]


class LatentSamples(torch.utils.data.Dataset):
    """Latent vectors drawn from a GMVAE's prior: the input of generator inference.

    ``rows`` is a list of ``(kind, name, y, component, count)``: ``count`` draws for the multi-hot label vector ``y``
    (ignored by an unconditional model), from mixture component ``component``, or, when it is None, from the whole
    mixture, cycling through the components so that every row shows all of them. Item ``i`` is
    ``{"image": z (D,), "label": y (L,), "component": k, "kind": kind, "row": name, "index": j}``.

    The noise is fixed by ``seed``; the prior's means and variances are read when an item is fetched, so a dataset
    built before the checkpoint is loaded (as a bundle config builds it) still samples the trained prior.
    """

    def __init__(self, network: GMVAE, rows: Sequence[tuple], seed: int = 0):
        self.network = network
        self.items: list[tuple[str, str, torch.Tensor, int, int]] = []
        for kind, name, y, component, count in rows:
            y = torch.as_tensor(y, dtype=torch.float32)
            if y.shape != (network.num_labels,):
                raise ValueError(f"row {name!r} has {tuple(y.shape)} labels, the network {network.num_labels}")
            if component is not None and not 0 <= int(component) < network.components:
                raise ValueError(f"row {name!r}: component {component} out of range 0..{network.components - 1}")
            for j in range(int(count)):
                k = int(component) if component is not None else j % network.components
                self.items.append((str(kind), str(name), y, k, j))
        if not self.items:
            raise ValueError("no latent vectors requested")
        self.eps = torch.randn(len(self.items), network.latent_dim, generator=torch.Generator().manual_seed(int(seed)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        kind, name, y, k, j = self.items[i]
        with torch.no_grad():
            means, logvars = self.network.prior()
            z = means[k].detach().cpu() + torch.exp(0.5 * logvars[k]).detach().cpu() * self.eps[i]
        return {"image": z, "label": y, "component": k, "kind": kind, "row": name, "index": j}


def generation_rows(network: GMVAE, labels: Sequence[str], combinations=None, per_request: int = 8,
                    per_component: int = 8) -> list[tuple]:
    """Rows for :class:`LatentSamples`: ``per_request`` draws for each finding combination (conditional model; an
    unconditional one gets a single "prior" row) and ``per_component`` draws from each mixture component (labelled
    "No Finding" for the conditional model)."""
    rows: list[tuple] = []
    if network.conditional:
        for name, y in finding_requests(labels, combinations).items():
            rows.append(("finding", name, y, None, int(per_request)))
    elif int(per_request) > 0:
        rows.append(("finding", "prior", [0.0] * len(labels), None, int(per_request)))
    if int(per_component) > 0:
        for k in range(network.components):
            rows.append(("component", f"component {k}", [0.0] * len(labels), k, int(per_component)))
    return rows


def finding_requests(labels: Sequence[str], combinations: Sequence[Sequence[str] | str] | None = None) -> dict[str, list[float]]:
    """Name -> multi-hot vector for finding combinations: ``"No Finding"`` (all zeros), single findings ("Mass")
    or combinations (["Effusion", "Atelectasis"], named "Effusion+Atelectasis"). ``None`` gives "No Finding"
    and each label on its own."""
    labels = list(labels)
    if combinations is None:
        combinations = ["No Finding", *labels]
    out: dict[str, list[float]] = {}
    for combination in combinations:
        names = [combination] if isinstance(combination, str) else list(combination)
        names = [n for n in names if n != "No Finding"]
        unknown = [n for n in names if n not in labels]
        if unknown:
            raise ValueError(f"unknown findings {unknown}; known: {labels} and 'No Finding'")
        vector = [0.0] * len(labels)
        for n in names:
            vector[labels.index(n)] = 1.0
        out["+".join(names) or "No Finding"] = vector
    return out


def untrained_copy(network: GMVAE, seed: int = 0) -> GMVAE:
    """A freshly initialised network of the same architecture: the baseline that sample quality is measured against."""
    state = torch.random.get_rng_state()
    torch.manual_seed(int(seed))
    try:
        fresh = type(network)(**network_arguments(network))
    finally:
        torch.random.set_rng_state(state)
    return fresh.to(next(network.parameters()).device).eval()


def network_arguments(network: GMVAE) -> dict:
    """Constructor arguments that rebuild ``network``'s architecture."""
    return dict(network.arguments)
