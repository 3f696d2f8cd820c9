"""Precision choices, bfloat16 sampling quality and fallback, and the compute thread."""

import threading
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import napari_cvdm as nc
from napari_cvdm import devices, precision
from napari_cvdm.normalization import Normalization
from napari_cvdm.precision import (
    Precision,
    low_precision_denoise,
    resolve_precision,
    supported_precisions,
)
from napari_cvdm.resampling import upsample
from napari_cvdm.sampling import sample

CPU = torch.device("cpu")
needs_bf16 = pytest.mark.skipif(not precision.cpu_bf16_supported(),
                                reason="oneDNN reports no bfloat16 on this CPU")


# -- resolving a precision name ------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [("fp32", "fp32"), ("float32", "fp32"),
                                            ("FP32 ", "fp32"), (None, None)])
def test_names_are_normalised(name, expected, monkeypatch):
    monkeypatch.setenv(precision.BF16_ENV, "0")
    assert resolve_precision(name, CPU).name == (expected or "fp32")


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="auto, fp32, bf16, fp16"):
        resolve_precision("int8", CPU)


def test_fp16_on_a_cpu_is_refused():
    with pytest.raises(ValueError, match="fp16.*GPU"):
        resolve_precision("fp16", CPU)


def test_bf16_where_unsupported_names_what_is(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)
    with pytest.raises(ValueError, match="not supported.*supported here: auto, fp32$"):
        resolve_precision("bf16", CPU)
    assert supported_precisions(CPU) == ["auto", "fp32"]


# -- "auto" on a CPU: the env override and the measured choice --------------------------
@pytest.fixture
def probe(monkeypatch):
    """A fresh probe cache, a supported CPU, no env override; ``probe.speedup`` is measured."""
    class Probe:
        speedup = 2.0
        calls: list = []

        def __call__(self, training):
            self.calls.append(training)
            if isinstance(self.speedup, Exception):
                raise self.speedup
            return self.speedup

    fake = Probe()
    fake.calls = []
    monkeypatch.setattr(precision, "_probed", {})
    monkeypatch.setattr(precision, "_probe_speedup", fake)
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    monkeypatch.delenv(precision.BF16_ENV, raising=False)
    return fake


def _auto(training=False):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "auto" falls back silently
        return resolve_precision("auto", CPU, training=training)


@pytest.mark.parametrize("speedup, expected", [(2.0, "bf16"), (1.25, "bf16"), (1.1, "fp32"),
                                               (0.64, "fp32")])
def test_auto_follows_the_measured_speedup(probe, speedup, expected):
    probe.speedup = speedup
    got = _auto()
    assert got == Precision(expected, "cpu")
    assert got.low is (expected == "bf16")
    choice = precision.cpu_bf16_choice()
    assert choice.source == "measured" and choice.speedup == speedup
    assert choice.as_info() == {"cpu_bf16": expected == "bf16", "source": "measured",
                                "speedup": speedup, "threshold": precision.BF16_MIN_SPEEDUP}


@pytest.mark.parametrize("error", [RuntimeError("oneDNN failed"), ZeroDivisionError()])
def test_a_failing_probe_means_float32_silently(probe, error):
    probe.speedup = error
    assert _auto() == Precision("fp32", "cpu")
    choice = precision.cpu_bf16_choice()
    assert choice.source == "failed" and not choice.bf16 and type(error).__name__ in choice.detail


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0])
def test_a_meaningless_measurement_means_float32(probe, bad):
    probe.speedup = bad
    assert _auto() == Precision("fp32", "cpu")
    assert precision.cpu_bf16_choice().source == "failed"


def test_the_probe_runs_once_per_process_and_purpose(probe):
    for _ in range(3):
        assert _auto().name == "bf16"
    assert _auto(training=True).name == "bf16"
    assert _auto(training=True).name == "bf16"
    assert probe.calls == [False, True]


def test_the_probe_runs_once_when_threads_ask_at_the_same_time(probe, monkeypatch):
    import time

    def slow(training):
        probe.calls.append(training)
        time.sleep(0.05)
        return 2.0

    monkeypatch.setattr(precision, "_probe_speedup", slow)
    got = []
    threads = [threading.Thread(target=lambda: got.append(_auto().name)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == ["bf16"] * 4 and probe.calls == [False]


@pytest.mark.parametrize("value, expected", [("1", "bf16"), ("true", "bf16"), ("0", "fp32"),
                                             ("off", "fp32")])
def test_env_forces_the_choice_without_probing(probe, monkeypatch, value, expected):
    probe.speedup = 0.5 if expected == "bf16" else 3.0  # the opposite of what is forced
    monkeypatch.setenv(precision.BF16_ENV, value)
    assert _auto() == Precision(expected, "cpu")
    assert _auto(training=True) == Precision(expected, "cpu")
    assert probe.calls == []
    assert precision.cpu_bf16_choice().source == "env"


def test_an_unknown_env_value_warns_and_measures(probe, monkeypatch):
    monkeypatch.setenv(precision.BF16_ENV, "maybe")
    with pytest.warns(RuntimeWarning, match="NAPARI_CVDM_CPU_BF16.*maybe"):
        assert resolve_precision("auto", CPU).name == "bf16"
    assert probe.calls == [False]


@pytest.mark.parametrize("env", [None, "1"])
def test_auto_is_float32_where_onednn_has_no_bf16(probe, monkeypatch, env):
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)
    if env is not None:
        monkeypatch.setenv(precision.BF16_ENV, env)
    assert _auto() == Precision("fp32", "cpu") and _auto(training=True).name == "fp32"
    assert probe.calls == [] and precision.cpu_bf16_choice().source == "unsupported"


@pytest.mark.parametrize("speedup", [0.5, 3.0])
def test_explicit_names_ignore_the_probe_and_the_env(probe, monkeypatch, speedup):
    probe.speedup = speedup
    monkeypatch.setenv(precision.BF16_ENV, "0")
    assert resolve_precision("bf16", CPU) == Precision("bf16", "cpu")
    monkeypatch.setenv(precision.BF16_ENV, "1")
    assert resolve_precision("fp32", CPU) == Precision("fp32", "cpu")
    assert probe.calls == []


@needs_bf16
@pytest.mark.parametrize("training", [False, True])
def test_the_real_probe_is_quick_and_measures_something(training):
    import time

    start = time.perf_counter()
    speedup = precision._probe_speedup(training)
    assert 0 < speedup < 100 and np.isfinite(speedup)
    assert time.perf_counter() - start < 5.0  # ~0.1 s idle; generous for a shared CI CPU


def test_half_flag_maps_to_a_precision_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="half= is deprecated"):
        assert precision.from_half_flag(True, "auto") == "fp16"
    assert precision.from_half_flag(None, "bf16") == "bf16"


# -- the low-precision copy of the denoiser -------------------------------------------------
def test_low_precision_copy_leaves_the_model_alone_and_follows_its_weights(tiny_model):
    net = tiny_model.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    z = torch.randn(2, 1, 16, 16)
    prep = net.prepare(torch.randn(2, 1, 16, 16))
    gamma = torch.full_like(z, 0.6)
    bf16 = Precision("bf16", "cpu")
    with torch.inference_mode():
        fast = low_precision_denoise(net, bf16)(z, prep["inputs"], gamma)
        exact = net.denoise(z, prep["inputs"], gamma)
    assert fast.dtype == torch.float32 and fast.shape == exact.shape
    assert 0 < (fast - exact).abs().max() < 0.05 * exact.abs().max() + 1e-3
    for k, v in net.state_dict().items():  # same dtype, same values: nothing mutated
        assert v.dtype == before[k].dtype and torch.equal(v, before[k])
    with torch.no_grad():  # an in-place weight update (an optimizer step) is picked up
        net.denoiser.out_conv.bias.add_(1.0)
    with torch.inference_mode():
        moved = low_precision_denoise(net, bf16)(z, prep["inputs"], gamma)
    assert (moved - fast).abs().mean() > 0.5


class _InfWhenLow(nn.Module):
    """Wraps a network; returns inf wherever it runs in low precision (copy or autocast)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, h, cond=None):
        out = self.net(h, cond)
        if h.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
            out = torch.full_like(out, float("inf"))
        return out


@pytest.mark.parametrize("compiled_like", [False, True])
def test_non_finite_low_precision_output_is_rerun_in_float32(tiny_model, compiled_like):
    net = tiny_model.eval()
    x = torch.randn(1, 1, 16, 16)
    noise = torch.randn(2, 1, 1, 16, 16)
    with torch.inference_mode():
        expected = sample(net, x, noise, steps=3, eta=0.0)
        net.denoiser = _InfWhenLow(net.denoiser)
        # a caller's denoise (e.g. torch.compile'd) runs under autocast instead of the copy
        denoise = (lambda z, i, g: net.denoise(z, i, g)) if compiled_like else None
        with pytest.warns(RuntimeWarning, match="non-finite.*bf16.*float32"):
            got = sample(net, x, noise, steps=3, eta=0.0, precision=Precision("bf16", "cpu"),
                         denoise=denoise)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected)


@needs_bf16
def test_bf16_sampling_matches_float32_quality(nuclei_widefield, nuclei_truth):
    net = nc.load_model("demo").eval()
    s = net.config.scale
    crop = nuclei_widefield[64:96, 64:96].astype(np.float32)
    truth = nuclei_truth[64 * s:96 * s, 64 * s:96 * s].astype(np.float32)
    norm = Normalization.fit(crop)
    x = upsample(torch.from_numpy(norm.apply(crop))[None, None], s)
    noise = torch.randn(6, 1, 1, *x.shape[-2:], generator=torch.Generator().manual_seed(0))

    def run(prec):
        with torch.inference_mode():
            out = sample(net, x, noise, steps=4, eta=1.0, precision=prec,
                         generator=torch.Generator().manual_seed(1))[:, 0, 0].numpy()
        return norm.invert_mean(out.mean(0)), out.std(0)

    def psnr(a):
        return 10 * np.log10(np.ptp(truth) ** 2 / np.mean((a - truth) ** 2))

    mean32, std32 = run(None)
    mean16, std16 = run(Precision("bf16", "cpu"))
    assert not np.array_equal(mean16, mean32)  # really ran in bfloat16
    assert abs(psnr(mean16) - psnr(mean32)) < 0.1
    assert abs(std16.mean() / std32.mean() - 1) < 0.05


# -- the compute thread ---------------------------------------------------------------------
def test_compute_thread_is_one_long_lived_thread_for_every_caller():
    seen = []

    def job(v):
        seen.append(threading.get_ident())
        return v * 2

    def from_a_worker(out):
        out.append(devices.compute_thread_call(job, 5))

    results = []
    workers = [threading.Thread(target=from_a_worker, args=(results,)) for _ in range(3)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert results == [10, 10, 10]
    assert devices.compute_thread_call(job, v=1) == 2
    assert len(set(seen)) == 1 and seen[0] != threading.get_ident()
    assert devices.compute_thread_ident() == seen[0]
    # a call from inside the compute thread runs inline (no deadlock)
    assert devices.compute_thread_call(lambda: devices.compute_thread_call(job, 3)) == 6


def test_compute_thread_reraises_in_the_caller():
    def boom():
        raise ValueError("bad input in the compute thread")

    with pytest.raises(ValueError, match="bad input in the compute thread"):
        devices.compute_thread_call(boom)
    assert devices.compute_thread_call(lambda: 1) == 1  # still alive afterwards


def test_compute_thread_run_does_not_wait_behind_a_busy_compute_thread():
    started, release = threading.Event(), threading.Event()

    def long_job():
        started.set()
        release.wait(10)
        return threading.get_ident()

    held = []
    holder = threading.Thread(target=lambda: held.append(devices.compute_thread_run(long_job)))
    holder.start()
    assert started.wait(10)
    # busy: runs at once in the calling thread instead of queueing behind the long job
    assert devices.compute_thread_run(threading.get_ident) == threading.get_ident()
    release.set()
    holder.join(10)
    assert held == [devices.compute_thread_ident()]
    # idle again: back to the compute thread
    assert devices.compute_thread_run(threading.get_ident) == devices.compute_thread_ident()
    assert devices.compute_thread_run(lambda: devices.compute_thread_run(lambda: 7)) == 7


def test_a_result_says_why_auto_chose_its_precision(probe, tiny_model):
    import numpy as np

    import napari_cvdm as nc

    probe.speedup = 0.7
    image = np.arange(16 * 16, dtype=np.float32).reshape(16, 16)
    auto = nc.predict(image, tiny_model, samples=1, steps=1, seed=0, device="cpu")
    assert auto.info["precision"] == "fp32"
    assert auto.info["cpu_bf16"] == {"cpu_bf16": False, "source": "measured", "speedup": 0.7,
                                     "threshold": precision.BF16_MIN_SPEEDUP}
    fixed = nc.predict(image, tiny_model, samples=1, steps=1, seed=0, device="cpu",
                       precision="fp32")
    assert "cpu_bf16" not in fixed.info


@needs_bf16
def test_a_tile_one_pixel_across_at_the_lowest_level_runs_in_float32(nuclei_widefield):
    """Found by a review: a 64 x 4 input (one 8-pixel-wide output tile: one pixel across at
    the network's lowest level) gave bf16 results up to 200 off, different on every run
    with the same seed, at times NaN."""
    from napari_cvdm.errors import InputWarning

    narrow = nuclei_widefield[100:164, 120:124]
    with pytest.warns(InputWarning, match="only 4 pixel"):
        runs = [nc.predict(narrow, samples=2, steps=2, seed=5, precision="bf16")
                for _ in range(2)]
        exact = nc.predict(narrow, samples=2, steps=2, seed=5, precision="fp32")
    assert runs[0].info["precision"] == "fp32"
    np.testing.assert_array_equal(runs[0].mean, runs[1].mean)
    np.testing.assert_array_equal(runs[0].mean, exact.mean)
    wider = nc.predict(nuclei_widefield[100:164, 120:136], samples=2, steps=2, seed=5,
                       precision="bf16")
    assert wider.info["precision"] == "bf16"


@pytest.mark.parametrize("how", ["raises", "warns"])
def test_half_precision_on_mps_needs_this_torchs_autocast(monkeypatch, how):
    """Found by a review: bf16/fp16 on MPS were accepted unchecked; torch without MPS
    autocast raises at the first network call, and one with a single type warns and runs
    float32 while the result says half precision."""
    import warnings

    def autocast(device_type, dtype=None, **kwargs):
        if how == "raises":
            raise RuntimeError("User specified an unsupported autocast device_type 'mps'")
        warnings.warn("MPS Autocast only supports dtype of torch.bfloat16 currently.")

    monkeypatch.setattr(torch, "autocast", autocast)
    mps = torch.device("mps")
    with pytest.raises(ValueError, match="does not run on MPS with this torch"):
        resolve_precision("fp16", mps)
    assert precision.supported_precisions(mps) == ["auto", "fp32"]
    assert resolve_precision("auto", mps).name == "fp32"
