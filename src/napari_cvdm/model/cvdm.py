"""The CVDM module: schedule network + denoiser (+ optional ZMD mean network) and its loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import CVDMConfig
from .schedule import GAMMA_MAX, GAMMA_MIN, build_schedule
from .unet import UNet


def gamma_features(gamma: torch.Tensor) -> torch.Tensor:
    """The denoiser's noise-level input: the gamma map, plus its log-SNR / 10.

    gamma alone cannot tell 0.9999 from 0.99999 (a 10x difference in noise); the log-SNR
    channel keeps the low-noise end of the schedule visible to the network.
    """
    logsnr = torch.log(gamma) - torch.log1p(-gamma)
    return torch.cat([gamma, logsnr / 10.0], dim=1)


def prior_kl(gamma_end: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
    """KL(N(0, 1) || N(sqrt(g) y0, 1 - g)) per element, the reference's argument order."""
    g = gamma_end
    return 0.5 * (-1 + torch.log1p(-g) + 1 / (1 - g) + g * y0**2 / (1 - g))


class CVDM(nn.Module):
    """Conditional Variational Diffusion Model (della Maggiora et al., ICLR 2024).

    All tensors are normalised images on the output grid: ``x`` the conditioning input
    (already resampled by ``config.scale``), ``y`` the target, both (B, C, H, W).
    """

    def __init__(self, config: CVDMConfig, metadata: dict[str, Any] | None = None):
        super().__init__()
        self.config = config
        self.metadata: dict[str, Any] = dict(metadata or {})
        c = config.channels
        extra = c if config.mean_network else 0
        k = config.condition_channels
        self.schedule_net = build_schedule(config)
        self.denoiser = UNet(config.denoiser, in_channels=2 * c + extra + k, out_channels=c,
                             cond_channels=2 * c, cond_features=config.denoiser.base_channels)
        self.mean_net = (UNet(config.mean_net, in_channels=c + k, out_channels=c)
                         if config.mean_net is not None else None)

    # -- the pieces --------------------------------------------------------------------
    @property
    def target_scale(self) -> float:
        return self.config.residual_scale if (self.config.residual or self.mean_net) else 1.0

    def schedule(self, t: torch.Tensor, x: torch.Tensor):
        """gamma(t, x) and beta(t, x), each shaped like the target (SPEC section 3)."""
        return self.schedule_net(t, x)

    def condition_map(self, x: torch.Tensor, psf_sigma=None) -> torch.Tensor | None:
        """The PSF-width channel of a conditioned model, (B, 1, H, W); None for a blind one.

        ``psf_sigma``: the input's PSF width relative to the target, in target pixels, one
        number or one per image (B,). A blind model ignores it; a conditioned one needs it.
        """
        if not self.config.psf_conditioned:
            return None
        if psf_sigma is None:
            raise ValueError("this model is conditioned on the PSF width: give psf_sigma "
                             "(the input's blur relative to the target, in target pixels)")
        sigma = torch.as_tensor(psf_sigma, dtype=torch.float32, device=x.device).reshape(-1)
        if sigma.numel() not in (1, x.shape[0]) or not bool(torch.all(sigma > 0)):
            raise ValueError(f"psf_sigma must be one positive width or one per image, not "
                             f"{psf_sigma!r}")
        value = torch.log(sigma / self.config.psf_reference).to(x.dtype)
        return value.reshape(-1, 1, 1, 1).expand(x.shape[0], 1, *x.shape[-2:])

    def prepare(self, x: torch.Tensor, precision=None, psf_sigma=None) -> dict[str, torch.Tensor]:
        """Everything that depends on ``x`` only: evaluated once per image, not per step.

        ``center``: what the diffused variable is relative to (x, mu(x) or 0);
        ``inputs``: the conditioning channels of the denoiser; ``lam``: lambda(x).
        ``precision``: runs the mean network at that precision (a ``Precision``); the
        schedule network stays float32 (gamma = exp(-lambda tau) amplifies its rounding).
        ``psf_sigma``: the PSF width a conditioned model is told (see ``condition_map``).
        """
        cond = self.condition_map(x, psf_sigma)
        extra = [] if cond is None else [cond]
        if self.mean_net is not None:
            net_in = x if cond is None else torch.cat([x, cond], dim=1)
            if precision is not None and precision.low:
                with precision.autocast():
                    residual = self.mean_net(net_in)
                mu = x + residual.float()
            else:
                mu = x + self.mean_net(net_in)
            # The mean network learns by regression alone (its own loss term): the
            # denoiser sees and diffuses around sg(mu), so it cannot bend mu into a feature.
            center, inputs = mu.detach(), torch.cat([x, mu.detach(), *extra], dim=1)
        else:
            mu = None
            center = x if self.config.residual else torch.zeros_like(x)
            inputs = x if cond is None else torch.cat([x, cond], dim=1)
        out = {"center": center, "inputs": inputs, "lam": self.schedule_net.lam(x)}
        if mu is not None:
            out["mu"] = mu
        return out

    def network_output(self, z: torch.Tensor, inputs: torch.Tensor,
                       gamma: torch.Tensor) -> torch.Tensor:
        """The denoiser network on concat(z_t, x) and the gamma map (eps or v, see config)."""
        return self.denoiser(torch.cat([z, inputs], dim=1), gamma_features(gamma))

    def denoise(self, z: torch.Tensor, inputs: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """eps_theta(concat(z_t, x), gamma(t, x)), whatever the network's parametrisation."""
        out = self.network_output(z, inputs, gamma)
        if self.config.prediction == "v":
            out = out.float()
            return gamma.sqrt() * out + (1 - gamma).sqrt() * z
        return out

    def to_target(self, y0: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        """Map a diffused-space sample back to the normalised image.

        Only the diffused residual is bounded (by ``output_clip`` normalised units): the
        image itself is not clamped, so structures brighter than the input's 99.9th
        percentile keep their intensity.
        """
        clip = self.config.output_clip
        return center + (self.target_scale * y0).clamp(-clip, clip)

    # -- training objective ------------------------------------------------------------
    def loss(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None,
             precision=None, psf_sigma=None) -> dict[str, torch.Tensor]:
        """The named loss terms of SPEC section 1 and their weighted ``total``.

        ``precision`` (a ``napari_cvdm.precision.Precision``): the arithmetic of the denoiser
        and the mean network; the schedule, its time derivatives, the prior and every loss
        term stay float32. ``psf_sigma`` (B,): each image's PSF width, for a conditioned model.
        """
        cfg = self.config
        b = x.shape[0]
        prep = self.prepare(x, precision, psf_sigma)
        y0 = (y - prep["center"]) / self.target_scale
        lam = prep["lam"]

        t = torch.rand(b, device=x.device, generator=generator, dtype=x.dtype)
        tau_1, tau_2, d1, d2 = self.schedule_net.time_derivatives(t)
        shape = (-1, 1, 1, 1)
        tau_1, tau_2, d1, d2 = (v.reshape(shape) for v in (tau_1, tau_2, d1, d2))
        raw_gamma = torch.exp(-lam * tau_2)
        gamma = raw_gamma.clamp(GAMMA_MIN, GAMMA_MAX)
        # The derivative of a clipped gamma is zero where the clip is active.
        inside = ((raw_gamma > GAMMA_MIN) & (raw_gamma < GAMMA_MAX)).to(gamma.dtype)
        beta = lam * tau_1
        dgamma = -lam * d1 * gamma * inside                       # d gamma / dt
        d2gamma = gamma * (lam**2 * d1**2 - lam * d2) * inside    # d^2 gamma / dt^2

        eps = torch.randn(y0.shape, device=y0.device, dtype=y0.dtype, generator=generator)
        z = gamma.sqrt() * y0 + (1 - gamma).sqrt() * eps
        if precision is not None and precision.low:
            with precision.autocast():
                out = self.network_output(z, prep["inputs"], gamma)
        else:
            out = self.network_output(z, prep["inputs"], gamma)
        out = out.float()
        if cfg.prediction == "v":
            target = gamma.sqrt() * eps - (1 - gamma).sqrt() * y0
        else:
            target = eps

        steps = cfg.timesteps
        ends = torch.tensor([1.0 / steps, 1.0 - 1.0 / steps], device=x.device, dtype=x.dtype)
        end_1, end_2 = self.schedule_net.taus(ends)
        g_start, _ = self.schedule_net.combine(lam, end_1[:1].expand(b), end_2[:1].expand(b))
        g_end, _ = self.schedule_net.combine(lam, end_1[1:].expand(b), end_2[1:].expand(b))

        terms = {
            "noise": ((out - target) ** 2).mean(),
            "beta": ((dgamma + beta * gamma) ** 2).mean()
            + ((g_start - 1) ** 2).mean() + (g_end**2).mean(),
            "prior": prior_kl(g_end, y0).mean(),
            "smooth": cfg.smooth_weight * (d2gamma**2).mean(),
        }
        total = terms["noise"] + cfg.aux_weight * (terms["beta"] + terms["prior"] + terms["smooth"])
        if "mu" in prep:
            terms["mean"] = ((y - prep["mu"]) ** 2).mean()
            total = total + cfg.aux_weight * terms["mean"]
        terms["total"] = total
        terms["gamma_start"] = g_start.detach().max()
        terms["gamma_end"] = g_end.detach().max()
        return terms

    def parameter_counts(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
        out = {"denoiser": count(self.denoiser), "schedule": count(self.schedule_net),
               "mean": count(self.mean_net)}
        out["total"] = sum(out.values())
        return out


def conditioned_on_psf(model: CVDM) -> CVDM:
    """A PSF-conditioned copy of a blind model that computes exactly what the blind one did.

    The new input channel of the denoiser's and the mean network's first convolution gets
    zero weights, so training starts from the blind model's function and learns how much to
    use the width it is told.
    """
    import dataclasses

    if model.config.psf_conditioned:
        raise ValueError("the model is already conditioned on the PSF width")
    new = CVDM(dataclasses.replace(model.config, psf_conditioned=True),
               metadata=model.metadata)
    state = new.state_dict()
    for key, value in model.state_dict().items():
        target = state[key]
        if target.shape == value.shape:
            target.copy_(value)
        else:  # a stem convolution with one more input channel, appended last
            target.zero_()
            target[:, :value.shape[1]] = value
    new.load_state_dict(state)
    return new
