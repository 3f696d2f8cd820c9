"""The learned schedule: monotone time networks, end points by construction, derivatives."""

import dataclasses

import pytest
import torch

from napari_cvdm import CVDM, CVDMConfig
from napari_cvdm.model.schedule import GAMMA_MAX, GAMMA_MIN, MonotoneTimeNet

from conftest import randomized


@pytest.mark.parametrize("seed", range(5))
def test_time_network_is_monotone_and_zero_at_zero_for_random_weights(seed):
    torch.manual_seed(seed)
    net = MonotoneTimeNet(32)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(2.0 * torch.randn_like(p))
    t = torch.linspace(0, 1, 2001)
    tau = net(t)
    assert tau[0].item() == 0.0
    assert (tau.diff() >= -1e-6).all()


@pytest.mark.parametrize("seed", range(3))
def test_tau_1_and_tau_2_are_monotone_zero_at_zero_and_tau_2_ends_at_one(seed):
    model = randomized(CVDM(CVDMConfig.preset("tiny")), seed=seed, scale=1.0)
    t = torch.linspace(0, 1, 1001)
    tau_1, tau_2 = model.schedule_net.taus(t)
    for tau in (tau_1, tau_2):
        assert abs(tau[0].item()) < 1e-6
        assert (tau.diff() >= -1e-6).all()
    assert tau_2[-1].item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_gamma_reaches_data_at_zero_and_noise_at_one_for_any_weights(seed):
    model = randomized(CVDM(CVDMConfig.preset("tiny")), seed=seed, scale=1.0)
    x = torch.randn(3, 1, 16, 16)
    gamma_0, beta_0 = model.schedule(torch.zeros(3), x)
    gamma_1, _ = model.schedule(torch.ones(3), x)
    assert gamma_0.shape == beta_0.shape == x.shape
    assert (gamma_0 >= 0.9999).all()
    assert (gamma_1 <= torch.exp(torch.tensor(-model.config.lambda_min)) + 1e-7).all()
    gamma_mid, beta_mid = model.schedule(torch.rand(3), x)
    assert (gamma_mid >= GAMMA_MIN).all() and (gamma_mid <= GAMMA_MAX).all()
    assert (beta_mid >= 0).all()


def test_schedule_depends_on_the_pixel_through_lambda():
    model = randomized(CVDM(CVDMConfig.preset("tiny")), scale=0.5)
    x = torch.randn(1, 1, 16, 16)
    gamma, _ = model.schedule(torch.full((1,), 0.5), x)
    assert gamma.std() > 1e-4  # a per-pixel schedule, not one number per image


def test_new_model_starts_at_the_linear_log_snr_schedule():
    model = CVDM(CVDMConfig.preset("tiny"))
    x = torch.randn(1, 1, 8, 8)
    for t in (0.1, 0.3, 0.5, 0.7, 0.9):
        gamma, _ = model.schedule(torch.full((1,), t), x)
        expected = torch.sigmoid(torch.tensor(10.0 - 20.0 * t))
        assert gamma.mean().item() == pytest.approx(expected.item(), rel=0.15, abs=2e-4)


def _double_model(seed=0):
    return randomized(CVDM(CVDMConfig.preset("tiny")), seed=seed, scale=0.3).double()


def test_dgamma_dt_from_autograd_equals_finite_difference():
    model = _double_model()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([0.2, 0.45, 0.6, 0.8], dtype=torch.float64)
    lam = model.schedule_net.lam(x)
    _, tau_2, d1, d2 = model.schedule_net.time_derivatives(t)
    gamma = torch.exp(-lam * tau_2.reshape(-1, 1, 1, 1))
    dgamma = -lam * d1.reshape(-1, 1, 1, 1) * gamma
    d2gamma = gamma * (lam**2 * d1.reshape(-1, 1, 1, 1) ** 2 - lam * d2.reshape(-1, 1, 1, 1))
    h = 1e-4
    g_plus, _ = model.schedule(t + h, x)
    g_minus, _ = model.schedule(t - h, x)
    g_mid, _ = model.schedule(t, x)
    torch.testing.assert_close(dgamma, (g_plus - g_minus) / (2 * h), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(d2gamma, (g_plus - 2 * g_mid + g_minus) / h**2, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_fixed_schedules_have_consistent_beta_and_gamma(kind):
    config = CVDMConfig.preset("tiny", schedule=kind)
    model = CVDM(config).double()
    x = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([0.3, 0.6], dtype=torch.float64)
    gamma, beta = model.schedule(t, x)
    h = 1e-5
    dgamma = (model.schedule(t + h, x)[0] - model.schedule(t - h, x)[0]) / (2 * h)
    torch.testing.assert_close(dgamma, -beta * gamma, rtol=1e-4, atol=1e-8)
    assert float(gamma[0].std()) == 0.0  # the same schedule for every pixel
    assert list(model.schedule_net.parameters()) == []


def test_config_rejects_unknown_schedule():
    with pytest.raises(ValueError, match="schedule"):
        dataclasses.replace(CVDMConfig.preset("tiny"), schedule="quadratic")
