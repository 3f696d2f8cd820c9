"""The CVDM loss: each named term against an independent computation, and its gradients."""

import dataclasses

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from napari_cvdm import CVDM, CVDMConfig
from napari_cvdm.model.cvdm import prior_kl

from conftest import randomized


def _setup(seed=0, **overrides):
    config = CVDMConfig.preset("tiny", **overrides)
    model = randomized(CVDM(config), seed=seed, scale=0.3).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 1, 16, 16, generator=g, dtype=torch.float64) * 0.5
    y = x + 0.1 * torch.randn(4, 1, 16, 16, generator=g, dtype=torch.float64)
    return model, x, y


def _replay(model, x, y, seed):
    """Recompute every term from public pieces with the loss's own random draws."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(x.shape[0], generator=g, dtype=x.dtype)
    eps = torch.randn(y.shape, generator=g, dtype=y.dtype)
    prep = model.prepare(x)
    y0 = (y - prep["center"]) / model.target_scale
    gamma, beta = model.schedule(t, x)
    h = 1e-4
    g_plus, g_minus = model.schedule(t + h, x)[0], model.schedule(t - h, x)[0]
    dgamma = (g_plus - g_minus) / (2 * h)
    d2gamma = (g_plus - 2 * gamma + g_minus) / h**2
    steps = model.config.timesteps
    g_start = model.schedule(torch.full_like(t, 1 / steps), x)[0]
    g_end = model.schedule(torch.full_like(t, 1 - 1 / steps), x)[0]
    z = gamma.sqrt() * y0 + (1 - gamma).sqrt() * eps
    eps_hat = model.denoise(z, prep["inputs"], gamma)
    return {
        "eps_hat": eps_hat, "eps": eps, "gamma": gamma,
        "beta": ((dgamma + beta * gamma) ** 2).mean() + ((g_start - 1) ** 2).mean()
        + (g_end**2).mean(),
        "prior": prior_kl(g_end, y0).mean(),
        "smooth": model.config.smooth_weight * (d2gamma**2).mean(),
    }


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_loss_terms_match_an_independent_computation(prediction):
    model, x, y = _setup(prediction=prediction)
    terms = model.loss(x, y, generator=torch.Generator().manual_seed(7))
    ref = _replay(model, x, y, 7)
    torch.testing.assert_close(terms["beta"], ref["beta"], rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(terms["prior"], ref["prior"], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(terms["smooth"], ref["smooth"], rtol=2e-3, atol=1e-6)
    # The noise term: plain eps-MSE for "eps"; for "v" the same error in v units,
    # (v_hat - v)^2 = (eps_hat - eps)^2 / gamma.
    err = (ref["eps_hat"] - ref["eps"]) ** 2
    expected = err.mean() if prediction == "eps" else (err / ref["gamma"]).mean()
    torch.testing.assert_close(terms["noise"], expected, rtol=1e-5, atol=1e-8)
    weight = model.config.aux_weight
    torch.testing.assert_close(
        terms["total"], terms["noise"] + weight * (terms["beta"] + terms["prior"] + terms["smooth"]))


def test_prior_term_is_the_kl_between_gaussians_on_a_hand_made_gamma():
    g = torch.tensor([1e-5, 0.01, 0.3, 0.7], dtype=torch.float64)
    y0 = torch.tensor([0.5, -1.0, 2.0, 0.1], dtype=torch.float64)
    closed = kl_divergence(Normal(torch.zeros_like(g), torch.ones_like(g)),
                           Normal(g.sqrt() * y0, (1 - g).sqrt()))
    torch.testing.assert_close(prior_kl(g, y0), closed)
    assert prior_kl(torch.tensor(1e-9, dtype=torch.float64), torch.tensor(3.0)) < 1e-7


def test_mean_network_adds_its_regression_term():
    config = dataclasses.replace(CVDMConfig.preset("tiny"),
                                 mean_net=CVDMConfig.preset("tiny").denoiser)
    model = randomized(CVDM(config), scale=0.3)
    x = torch.randn(2, 1, 16, 16)
    y = x + 0.1 * torch.randn_like(x)
    terms = model.loss(x, y, generator=torch.Generator().manual_seed(1))
    mu = model.prepare(x)["mu"]
    torch.testing.assert_close(terms["mean"], ((y - mu) ** 2).mean())
    w = config.aux_weight
    torch.testing.assert_close(terms["total"], terms["noise"] + w * (
        terms["beta"] + terms["prior"] + terms["smooth"] + terms["mean"]))


@pytest.mark.parametrize("with_mean", [False, True])
def test_gradients_reach_denoiser_schedule_and_mean_network(with_mean):
    config = CVDMConfig.preset("tiny")
    if with_mean:
        config = dataclasses.replace(config, mean_net=config.denoiser)
    model = randomized(CVDM(config), scale=0.1).train()
    x = torch.randn(2, 1, 16, 16)
    model.loss(x, x + 0.1 * torch.randn_like(x))["total"].backward()
    parts = {"denoiser": model.denoiser, "lambda": model.schedule_net.lambda_net,
             "tau_1": model.schedule_net.tau_1_net, "tau_2": model.schedule_net.tau_2_net}
    if with_mean:
        parts["mean"] = model.mean_net
    for name, module in parts.items():
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name
