"""The noise schedule: CVDM's learned, per-pixel schedule and fixed reference schedules.

SPEC section 1:  beta(t, x) = lambda(x) * tau_1(t),  gamma(t, x) = exp(-lambda(x) * tau_2(t)).

End points hold by construction (SPEC, "what a first implementation ran into"):
``tau_2`` is normalised so that tau_2(0) = 0 and tau_2(1) = 1, and lambda(x) >= lambda_min,
so gamma(0, x) = 1 and gamma(1, x) <= exp(-lambda_min) for every pixel and every weight.
Both time networks start from the shape of a linear log-SNR schedule (+10 to -10, as in
VDM) and learn a monotone correction to it; lambda starts constant, so a new model starts
from that standard schedule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import CVDMConfig
from .unet import UNet

GAMMA_MIN = 1e-6
GAMMA_MAX = 0.99999


def clip_gamma(gamma: torch.Tensor) -> torch.Tensor:
    return gamma.clamp(GAMMA_MIN, GAMMA_MAX)


class MonotoneTimeNet(nn.Module):
    """f(t) - f(0) with f non-decreasing by construction (positive weights, VDM style).

    f(t) = w1 t + sum_j v_j sigmoid(a_j t + b_j), all of w1, v_j, a_j >= 0 through softplus.
    """

    def __init__(self, hidden: int, init_scale: float = 0.1):
        super().__init__()
        self.raw_linear = nn.Parameter(torch.tensor(math.log(math.expm1(init_scale))))
        self.raw_slopes = nn.Parameter(torch.randn(hidden) * 0.5 + math.log(math.expm1(10.0)))
        self.offsets = nn.Parameter(-torch.rand(hidden) * 10.0)
        self.raw_heights = nn.Parameter(torch.full((hidden,), math.log(math.expm1(init_scale / hidden))))

    def _f(self, t: torch.Tensor) -> torch.Tensor:
        slopes = F.softplus(self.raw_slopes)
        heights = F.softplus(self.raw_heights)
        hidden = torch.sigmoid(t[:, None] * slopes + self.offsets)
        return F.softplus(self.raw_linear) * t + hidden @ heights

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self._f(t) - self._f(torch.zeros_like(t))


def _logsnr_shape(t: torch.Tensor, logsnr_max: float, logsnr_min: float) -> torch.Tensor:
    """-log(gamma) of a linear log-SNR schedule, shifted to 0 at t = 0."""
    logsnr = logsnr_max + (logsnr_min - logsnr_max) * t
    return F.softplus(-logsnr) - F.softplus(torch.tensor(-logsnr_max, dtype=t.dtype, device=t.device))


class Schedule(nn.Module):
    """Common interface: ``lam(x)`` once per image, ``taus(t)`` per time, ``forward`` both."""

    def lam(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        raise NotImplementedError

    def taus(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (B,), (B,)
        raise NotImplementedError

    @staticmethod
    def combine(lam: torch.Tensor, tau_1: torch.Tensor, tau_2: torch.Tensor):
        """gamma and beta from lambda (B, C, H, W) and the time functions (B,)."""
        tau_1 = tau_1.reshape(-1, 1, 1, 1)
        tau_2 = tau_2.reshape(-1, 1, 1, 1)
        gamma = clip_gamma(torch.exp(-lam * tau_2))
        beta = lam * tau_1
        return gamma, beta

    def forward(self, t: torch.Tensor, x: torch.Tensor):
        tau_1, tau_2 = self.taus(t)
        return self.combine(self.lam(x), tau_1, tau_2)

    def time_derivatives(self, t: torch.Tensor):
        """tau_1(t), tau_2(t), tau_2'(t), tau_2''(t); derivatives by autograd, graph kept."""
        with torch.enable_grad():
            t = t.detach().requires_grad_(True)
            tau_1, tau_2 = self.taus(t)
            d1 = torch.autograd.grad(tau_2.sum(), t, create_graph=True)[0]
            d2 = torch.autograd.grad(d1.sum(), t, create_graph=True, allow_unused=True)[0]
        if d2 is None:
            d2 = torch.zeros_like(d1)
        return tau_1, tau_2, d1, d2


class LearnedSchedule(Schedule):
    """CVDM's schedule: lambda(x) = lambda_min + softplus(U_lambda(x)), monotone tau_1, tau_2."""

    def __init__(self, config: CVDMConfig):
        super().__init__()
        self.config = config
        self.lambda_net = UNet(config.schedule_net, config.channels, config.channels)
        # U_lambda's output convolution starts at zero: lambda = lambda_min + log 2 everywhere,
        # which with the shapes below is exactly the linear log-SNR schedule (+10 -> -10).
        self.lambda_min = config.lambda_min
        self.tau_1_net = MonotoneTimeNet(config.time_hidden)
        self.tau_2_net = MonotoneTimeNet(config.time_hidden)
        self.raw_tau_1_scale = nn.Parameter(torch.tensor(0.0))

    def lam(self, x: torch.Tensor) -> torch.Tensor:
        return self.lambda_min + F.softplus(self.lambda_net(x))

    def _base(self, t: torch.Tensor) -> torch.Tensor:
        c = self.config
        return _logsnr_shape(t, c.logsnr_max, c.logsnr_min)

    def taus(self, t: torch.Tensor):
        t = t.to(self.tau_2_net.offsets.dtype)
        one = torch.ones_like(t)
        raw_2 = self._base(t) + self.tau_2_net(t)
        tau_2 = raw_2 / (self._base(one) + self.tau_2_net(one))
        # tau_1 starts as d tau_2 / dt of the base shape (minus its value at 0, so that
        # tau_1(0) = 0 as the spec asks) and learns a positive scale and a monotone part.
        c = self.config
        slope = c.logsnr_max - c.logsnr_min
        logsnr = c.logsnr_max - slope * t
        base_d = slope * (torch.sigmoid(-logsnr) - torch.sigmoid(torch.tensor(-c.logsnr_max, dtype=t.dtype)))
        base_d = base_d / self._base(one)
        scale = F.softplus(self.raw_tau_1_scale) / math.log(2.0)
        tau_1 = scale * base_d + self.tau_1_net(t)
        return tau_1, tau_2


class FixedSchedule(Schedule):
    """A hand-tuned schedule (the baseline CVDM replaces): same gamma for every pixel.

    ``linear``: DDPM's linear beta from 1e-4 to 0.02 over 1000 steps, in continuous time.
    ``cosine``: Nichol & Dhariwal's cosine alpha-bar with s = 0.008.
    Written as lambda = 1, tau_2 = -log gamma(t), tau_1 = d tau_2 / dt.
    """

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def lam(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x)

    def taus(self, t: torch.Tensor):
        t = t if t.is_floating_point() else t.float()
        if self.kind == "linear":
            b0, b1 = 0.1, 20.0  # 1000 * (1e-4, 0.02)
            tau_2 = b0 * t + 0.5 * (b1 - b0) * t**2
            tau_1 = b0 + (b1 - b0) * t
        else:
            s = 0.008
            angle = (t + s) / (1 + s) * math.pi / 2
            angle0 = s / (1 + s) * math.pi / 2
            cos2 = torch.cos(angle).clamp_min(1e-4) ** 2
            tau_2 = -torch.log(cos2 / math.cos(angle0) ** 2)
            tau_1 = math.pi / (1 + s) * torch.tan(angle).clamp(max=1e4)
        return tau_1, tau_2


def build_schedule(config: CVDMConfig) -> Schedule:
    if config.schedule == "learned":
        return LearnedSchedule(config)
    return FixedSchedule(config.schedule)
