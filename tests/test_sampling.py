"""The samplers: the DDIM/DDPM step against the closed-form posterior, and an oracle run."""

import pytest
import torch

from napari_cvdm import CVDM, CVDMConfig
from napari_cvdm.model.schedule import GAMMA_MAX
from napari_cvdm.sampling import ddim_step, gamma_sequence, sample

from conftest import randomized


def test_ancestral_step_equals_the_ddpm_posterior():
    g_t, g_s = torch.tensor(0.3), torch.tensor(0.5)
    y0 = torch.tensor(0.8)
    z = torch.tensor(-0.4)
    eps = (z - g_t.sqrt() * y0) / (1 - g_t).sqrt()   # the eps that makes y0 exact
    mean, _ = ddim_step(z, eps, g_t, g_s, 1.0, None, 100.0)
    beta = 1 - g_t / g_s
    posterior_mean = (g_s.sqrt() * beta / (1 - g_t) * y0
                      + (g_t / g_s).sqrt() * (1 - g_s) / (1 - g_t) * z)
    torch.testing.assert_close(mean, posterior_mean)
    # and its noise: sigma^2 = (1 - g_s) / (1 - g_t) * beta
    with_noise, _ = ddim_step(z, eps, g_t, g_s, 1.0, torch.tensor(1.0), 100.0)
    torch.testing.assert_close((with_noise - mean) ** 2, (1 - g_s) / (1 - g_t) * beta)


def test_deterministic_step_keeps_the_same_noise_direction():
    g_t, g_s = torch.tensor(0.2), torch.tensor(0.6)
    y0, eps = torch.tensor(1.5), torch.tensor(-0.7)
    z = g_t.sqrt() * y0 + (1 - g_t).sqrt() * eps
    z_s, y0_hat = ddim_step(z, eps, g_t, g_s, 0.0, torch.tensor(5.0), 100.0)
    torch.testing.assert_close(y0_hat, y0)
    torch.testing.assert_close(z_s, g_s.sqrt() * y0 + (1 - g_s).sqrt() * eps)


class Oracle(CVDM):
    """A CVDM whose denoiser knows the answer: eps from z and the true y0."""

    def __init__(self, config, y0):
        super().__init__(config)
        self.y0 = y0

    def denoise(self, z, inputs, gamma):
        y0 = self.y0.repeat(z.shape[0] // self.y0.shape[0], 1, 1, 1)
        return (z - gamma.sqrt() * y0) / (1 - gamma).sqrt()


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 1.0), ("reference", 1.0)])
def test_an_exact_denoiser_makes_every_sampler_return_the_target(sampler, eta):
    config = CVDMConfig.preset("tiny")
    x = torch.rand(2, 1, 16, 16) - 0.5
    y = (x + 0.2 * torch.randn_like(x)).clamp(-1, 1)
    model = Oracle(config, (y - x) / config.residual_scale).eval()
    noise = torch.randn(3, 2, 1, 16, 16)
    with torch.no_grad():
        out = sample(model, x, noise, steps=7, eta=eta, sampler=sampler,
                     generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 2, 1, 16, 16)
    torch.testing.assert_close(out, y.expand_as(out), atol=1e-4, rtol=0)


def test_reference_sequence_is_the_cumulative_product_of_the_beta_head():
    model = randomized(CVDM(CVDMConfig.preset("tiny", timesteps=20)), scale=0.3)
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        lam = model.schedule_net.lam(x)
        gammas = list(gamma_sequence(model, lam, 0, "reference"))
        t = torch.arange(1, 21) / 20
        alphas = [(1 - model.schedule(t[j:j + 1], x)[1] / 20).clamp(1e-6, 1) for j in range(20)]
    assert len(gammas) == 21
    torch.testing.assert_close(gammas[0], torch.stack(alphas).prod(0).clamp(1e-6, GAMMA_MAX))
    torch.testing.assert_close(gammas[10], torch.stack(alphas[:10]).prod(0).clamp(1e-6, GAMMA_MAX))
    assert float(gammas[-1].min()) == pytest.approx(GAMMA_MAX)


def test_ddim_sequence_follows_the_schedule_at_evenly_spaced_times():
    model = randomized(CVDM(CVDMConfig.preset("tiny")), scale=0.3)
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        gammas = list(gamma_sequence(model, model.schedule_net.lam(x), 4, "ddim"))
        expected = [model.schedule(torch.tensor([k / 4]), x)[0] for k in (4, 3, 2, 1, 0)]
    for got, want in zip(gammas, expected):
        torch.testing.assert_close(got, want)


def test_sampling_is_reproducible_with_a_generator_and_varies_without():
    model = randomized(CVDM(CVDMConfig.preset("tiny")), scale=0.1)
    x = torch.rand(1, 1, 16, 16)
    noise = torch.randn(2, 1, 1, 16, 16)
    with torch.no_grad():
        a = sample(model, x, noise, steps=4, generator=torch.Generator().manual_seed(3))
        b = sample(model, x, noise, steps=4, generator=torch.Generator().manual_seed(3))
        c = sample(model, x, noise, steps=4, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-4
    assert not torch.allclose(a[0], a[1])  # independent samples differ


def test_sampler_counts_one_callback_per_denoiser_evaluation():
    model = randomized(CVDM(CVDMConfig.preset("tiny", timesteps=12)), scale=0.1)
    calls = []
    with torch.no_grad():
        sample(model, torch.rand(1, 1, 8, 8), torch.randn(1, 1, 1, 8, 8), steps=5,
               on_evaluation=lambda: calls.append(1))
        assert len(calls) == 5
        sample(model, torch.rand(1, 1, 8, 8), torch.randn(1, 1, 1, 8, 8), sampler="reference",
               on_evaluation=lambda: calls.append(1))
    assert len(calls) == 5 + 12


def test_bad_sampler_arguments_are_refused():
    model = CVDM(CVDMConfig.preset("tiny"))
    with pytest.raises(ValueError, match="eta"):
        sample(model, torch.rand(1, 1, 8, 8), torch.randn(1, 1, 1, 8, 8), eta=1.5)
    with pytest.raises(ValueError, match="sampler"):
        sample(model, torch.rand(1, 1, 8, 8), torch.randn(1, 1, 1, 8, 8), sampler="euler")
