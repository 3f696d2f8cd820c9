"""The reverse process: the reference sampler (T ancestral steps) and the few-step sampler.

Both walk a per-pixel sequence of signal levels gamma_K > ... > gamma_0 and share one
update, the general DDIM step (Song et al. 2021, eq. 12) written per pixel:

    y0_hat = (z_t - sqrt(1 - g_t) eps_hat) / sqrt(g_t)
    sigma  = eta * sqrt((1 - g_s) / (1 - g_t)) * sqrt(1 - g_t / g_s)
    z_s    = sqrt(g_s) y0_hat + sqrt(1 - g_s - sigma^2) eps_hat + sigma * noise

With eta = 1 this is the ancestral DDPM step, with eta = 0 it is deterministic.

- reference: gamma_bar_k = prod_{j<=k} alpha_j with alpha_j = clip(1 - beta(j/T, x) / T),
  the beta head of the schedule, as the authors sample (SPEC section 1);
- ddim: gamma(s_k, x) of the schedule itself at K evenly spaced times s_k = k / K.
The last step returns y0_hat (at s_0 = 0 gamma is clipped to just below 1).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import torch

from .model.cvdm import CVDM
from .model.schedule import GAMMA_MAX, GAMMA_MIN
from .precision import FP32_CPU as FP32
from .precision import Precision, low_precision_denoise

SAMPLERS = ("ddim", "reference")


def gamma_sequence(model: CVDM, lam: torch.Tensor, steps: int, sampler: str) -> Iterator[torch.Tensor]:
    """Yield the gamma maps gamma_K, ..., gamma_1, gamma_0 (K + 1 maps) for one batch."""
    schedule = model.schedule_net
    device = lam.device
    if sampler == "ddim":
        times = torch.linspace(1.0, 0.0, steps + 1, device=device)
        tau_1, tau_2 = schedule.taus(times)
        for k in range(steps + 1):
            gamma, _ = schedule.combine(lam, tau_1[k:k + 1], tau_2[k:k + 1])
            yield gamma
        return
    if sampler != "reference":
        raise ValueError(f"sampler must be one of {SAMPLERS}, not {sampler!r}")
    t_count = model.config.timesteps
    times = torch.arange(1, t_count + 1, device=device, dtype=torch.float32) / t_count
    tau_1, _ = schedule.taus(times)

    def log_alpha(j: int) -> torch.Tensor:
        return torch.log((1 - lam * tau_1[j] / t_count).clamp(GAMMA_MIN, 1.0))

    # log gamma_bar_k for k = T first, then peel one alpha off per step. The T log-alpha
    # maps are recomputed (cheap, elementwise) rather than kept: memory stays O(1) in T.
    log_gamma = torch.zeros_like(lam)
    for j in range(t_count):
        log_gamma = log_gamma + log_alpha(j)
    for k in range(t_count, 0, -1):
        yield log_gamma.exp().clamp(GAMMA_MIN, GAMMA_MAX)
        log_gamma = log_gamma - log_alpha(k - 1)
    yield torch.full_like(lam, GAMMA_MAX)


def ddim_step(z: torch.Tensor, eps_hat: torch.Tensor, g_t: torch.Tensor, g_s: torch.Tensor,
              eta: float, noise: torch.Tensor | None, y0_limit: float):
    """One per-pixel DDIM update from signal level g_t to g_s; returns (z_s, y0_hat)."""
    y0_hat = ((z - (1 - g_t).sqrt() * eps_hat) / g_t.sqrt()).clamp(-y0_limit, y0_limit)
    # Re-derive eps from the clipped y0_hat so that the two stay consistent.
    eps_hat = (z - g_t.sqrt() * y0_hat) / (1 - g_t).sqrt()
    sigma = eta * ((1 - g_s) / (1 - g_t) * (1 - g_t / g_s)).clamp_min(0).sqrt()
    z_s = g_s.sqrt() * y0_hat + (1 - g_s - sigma**2).clamp_min(0).sqrt() * eps_hat
    if noise is not None and eta > 0:
        z_s = z_s + sigma * noise
    return z_s, y0_hat


def _network(model: CVDM, denoise: Callable[..., torch.Tensor], precision: Precision):
    """The denoiser at ``precision``, float32 out; a non-finite output is re-run in float32.

    On a CPU a cached low-precision copy of the denoiser runs (no per-call weight casts, no
    float32 round trips between layers: see ``precision.low_precision_denoise``); elsewhere,
    or with a caller's ``denoise`` (e.g. compiled), the call runs under autocast.
    """
    if not precision.low:
        return lambda z, inputs, gamma: denoise(z, inputs, gamma).float()
    fast = (low_precision_denoise(model, precision)
            if precision.device_type == "cpu" and denoise == model.denoise else None)

    def call(z, inputs, gamma):
        if fast is not None:
            out = fast(z, inputs, gamma)
        else:
            with precision.autocast():
                out = denoise(z, inputs, gamma)
        out = out.float()
        if not bool(torch.isfinite(out).all()):
            warnings.warn(f"the denoiser gave non-finite values in {precision.name}; this "
                          "call was run again in float32", RuntimeWarning, stacklevel=3)
            out = denoise(z, inputs, gamma).float()
        return out

    return call


def sample(model: CVDM, x: torch.Tensor, initial_noise: torch.Tensor, *, steps: int = 50,
           eta: float = 1.0, sampler: str = "ddim", generator: torch.Generator | None = None,
           on_evaluation: Callable[[], None] | None = None, precision: Precision | None = None,
           prepared: dict[str, torch.Tensor] | None = None,
           denoise: Callable[..., torch.Tensor] | None = None, psf_sigma=None) -> torch.Tensor:
    """Draw samples for the conditioning batch ``x`` (N, C, H, W).

    ``initial_noise`` (S, N, C, H, W) is z at the start (pure noise): the number of samples
    S comes from it. Returns the reconstructions, (S, N, C, H, W), in normalised units.
    ``on_evaluation`` is called after every denoiser evaluation (progress, cancellation).
    ``prepared``: ``model.prepare(x)`` when the caller already has it (it depends on x
    only, so a caller drawing several batches of samples for one x computes it once).
    ``denoise``: a drop-in for ``model.denoise`` (e.g. a ``torch.compile``d one).
    ``precision``: the networks' arithmetic (None: float32); the sampler state stays float32.
    ``psf_sigma``: the input's PSF width, for a PSF-conditioned model (``CVDM.prepare``).
    Everything inside the step loop stays on x's device: no host copies, and no syncs but
    one per denoiser call in low precision (whether its output is finite; a call that is
    not runs again in float32).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, not {sampler!r}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be between 0 and 1, not {eta}")
    s, n = initial_noise.shape[:2]
    prep = model.prepare(x, psf_sigma=psf_sigma) if prepared is None else prepared  # once per x, not per step
    denoise = model.denoise if denoise is None else denoise

    def repeat(v: torch.Tensor) -> torch.Tensor:  # (N, ...) -> (S*N, ...), sample-major
        return v if s == 1 else v.repeat(s, 1, 1, 1)

    inputs, center, lam = repeat(prep["inputs"]), repeat(prep["center"]), prep["lam"]
    z = initial_noise.reshape(s * n, *initial_noise.shape[2:]).to(x.dtype)
    y0_limit = 2 * model.config.output_clip / model.target_scale

    network = _network(model, denoise, precision or FP32)
    gammas = gamma_sequence(model, lam, steps, sampler)
    g_t = repeat(next(gammas))
    y0_hat = z
    for g_next in gammas:
        g_s = repeat(g_next)
        eps_hat = network(z, inputs, g_t)
        noise = (torch.randn(z.shape, device=z.device, dtype=z.dtype, generator=generator)
                 if eta > 0 else None)
        z, y0_hat = ddim_step(z, eps_hat, g_t, g_s, eta, noise, y0_limit)
        g_t = g_s
        if on_evaluation is not None:
            on_evaluation()
    out = model.to_target(y0_hat, center)
    return out.reshape(s, n, *out.shape[1:])


def evaluations(steps: int, sampler: str, timesteps: int) -> int:
    """Denoiser evaluations per sample: K for ddim, T for the reference sampler."""
    return timesteps if sampler == "reference" else steps
