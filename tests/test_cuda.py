"""GPU behaviour of predict(): autocast against CPU float32, and the out-of-memory retries.

The CUDA tests run only where CUDA is available; the retry logic itself is also covered on
the CPU by making the tile computation raise torch.cuda.OutOfMemoryError.
"""

import numpy as np
import pytest
import torch

import napari_cvdm as nc
from napari_cvdm import planning, tile_sampling
from napari_cvdm.errors import OutOfMemory

from conftest import randomized

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# -- the retry logic, on any machine -------------------------------------------------------
def _fail(monkeypatch, times: int | None):
    """Make the tile computation raise torch.cuda.OutOfMemoryError ``times`` times (None:
    always); returns the (tile height, tile width, tiles per call) of every attempt."""
    original = tile_sampling.tile_statistics
    seen = []

    def flaky(net, x_plane, tiles, *args, **kwargs):
        seen.append((tiles[0].height, tiles[0].width, len(tiles)))
        if times is None or len(seen) <= times:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(net, x_plane, tiles, *args, **kwargs)

    monkeypatch.setattr(tile_sampling, "tile_statistics", flaky)
    return seen


def test_out_of_memory_once_retries_with_smaller_tiles(tiny_model, monkeypatch):
    seen = _fail(monkeypatch, times=1)
    calls = []
    image = np.random.default_rng(0).random((160, 160)).astype(np.float32)
    result = nc.predict(image, tiny_model, samples=2, steps=2, seed=0,
                        progress=lambda d, t: calls.append((d, t)))
    assert result.info["retries"] == 1
    assert seen[0][:2] == (320, 320)          # the first plan: one 320 x 320 tile
    assert max(seen[1][:2]) < 320             # then smaller tiles
    assert result.tile_size < 320 and result.info["tiles"] > 1
    assert result.mean.shape == (320, 320) and np.isfinite(result.mean).all()
    assert (result.variance >= 0).all()
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == calls[-1][1]  # never backwards, ends at total


def test_out_of_memory_with_small_tiles_reduces_the_sample_batch(tiny_model, monkeypatch):
    # Out of memory whenever more than one sample runs per call.
    original = tile_sampling.tile_statistics
    batches = []

    def needs_batch_one(run, x_plane, tiles, *args, **kwargs):
        batches.append(run.plan.batch)
        if run.plan.batch > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(run, x_plane, tiles, *args, **kwargs)

    monkeypatch.setattr(tile_sampling, "tile_statistics", needs_batch_one)
    result = nc.predict(np.random.rand(24, 24), tiny_model, samples=4, steps=2, seed=0)
    assert result.info["batch"] == 1 and result.info["retries"] >= 2
    assert batches[0] == 4 and batches[-1] == 1
    assert np.isfinite(result.mean).all()


def test_out_of_memory_everywhere_gives_the_typed_error(tiny_model, monkeypatch):
    _fail(monkeypatch, times=None)
    with pytest.raises(OutOfMemory, match=r"out of memory on cpu even with \d+-pixel tiles "
                                          r"and 1 sample") as err:
        nc.predict(np.random.rand(200, 200), tiny_model, samples=4, steps=2, seed=0,
                   device="cpu")  # the simulated failure, on the CPU even where CUDA is
    assert (err.value.device, err.value.batch) == ("cpu", 1) and err.value.tile <= 128
    assert "--" not in str(err.value)  # the core names no command-line flag
    assert not isinstance(err.value, (ValueError, torch.OutOfMemoryError))


def test_other_errors_are_not_retried(tiny_model, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("not a memory problem")

    monkeypatch.setattr(tile_sampling, "tile_statistics", broken)
    with pytest.raises(KeyError):
        nc.predict(np.random.rand(16, 16), tiny_model, samples=1, steps=1, seed=0)


def test_retry_plans_shrink_tiles_then_batch():
    p = planning.TilePlan((1024, 1024), 128, 8, 4, 2**22)
    seen = [p]
    while (p := planning.smaller_plan(p, 8)) is not None:
        seen.append(p)
    assert seen[1].group == 1 and seen[1].tile == (1024, 1024)
    tiles = [max(s.tile) for s in seen]
    assert tiles == sorted(tiles, reverse=True) and tiles[-1] == planning.MIN_RETRY_TILE
    assert [s.batch for s in seen][-4:] == [8, 4, 2, 1]
    assert all(s.overlap <= min(s.tile) // 2 for s in seen)


# -- real CUDA -------------------------------------------------------------------------------
@pytest.fixture
def small_model():
    torch.manual_seed(0)
    return randomized(nc.CVDM(nc.CVDMConfig.preset("small")), scale=0.02)


@needs_cuda
def test_cuda_autocast_is_close_to_cpu_float32(small_model, nuclei_widefield, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # true float32 reference
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    # Deterministic steps (eta = 0): both devices start from the same position-seeded noise,
    # so they differ only by arithmetic. Tolerance: float16 autocast keeps the mean within
    # 1 % of the image's range on average (5 % at worst) of the float32 CPU result;
    # without autocast CUDA matches the CPU to 0.1 %.
    image = nuclei_widefield[:64, :64].astype(np.float32)
    kwargs = dict(samples=2, steps=5, eta=0.0, seed=0)
    cpu = nc.predict(image, small_model, device="cpu", **kwargs)
    half = nc.predict(image, small_model, device="cuda", **kwargs)
    full = nc.predict(image, small_model, device="cuda", half=False, **kwargs)
    assert half.info["half"] and not full.info["half"] and half.device.startswith("cuda")
    span = float(np.ptp(cpu.mean))
    diff = np.abs(half.mean - cpu.mean)
    assert diff.mean() < 0.01 * span and diff.max() < 0.05 * span
    diff32 = np.abs(full.mean - cpu.mean)
    assert diff32.mean() < 1e-3 * span
    assert np.isfinite(half.variance).all() and (half.variance >= 0).all()


@needs_cuda
def test_cuda_out_of_memory_is_retried_for_real(small_model):
    # Cap this process at ~1.5 GiB of the GPU: the plan (made from the free memory) asks
    # for 1024 x 1024 tiles of many samples, which do not fit; the retries must find a plan
    # that does, and the result must still cover the image.
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, 1.5 * 2**30 / total))
    try:
        image = np.random.default_rng(0).random((1024, 1024)).astype(np.float32)
        result = nc.predict(image, small_model, device="cuda", samples=16, steps=1,
                            half=False, seed=0)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert result.info["retries"] >= 1
    assert result.mean.shape == (2048, 2048) and np.isfinite(result.mean).all()


@needs_cuda
def test_cuda_hopeless_memory_gives_the_clear_error(small_model):
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    small_model.to("cuda")  # predict() copies the model to run it: that copy is refused
    used = torch.cuda.memory_allocated()
    torch.cuda.set_per_process_memory_fraction(min(1.0, (used + 2 * 2**20) / total))
    try:
        with pytest.raises(OutOfMemory, match="out of memory on cuda"):
            nc.predict(np.random.rand(512, 512), small_model, device="cuda", samples=2,
                       steps=1, seed=0)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


@needs_cuda
def test_cuda_compile_option_runs(tiny_model):
    result = nc.predict(np.random.rand(32, 32), tiny_model, device="cuda", samples=1,
                        steps=2, seed=0, compile=True)
    assert np.isfinite(result.mean).all()


@needs_cuda
@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_cuda_low_precision_sampling_is_finite_and_close(tiny_model, name):
    from napari_cvdm.precision import resolve_precision
    from napari_cvdm.sampling import sample

    dev = torch.device("cuda")
    if name == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    net = tiny_model.eval().to(dev)
    x = torch.randn(2, 1, 32, 32, device=dev)
    noise = torch.randn(3, 2, 1, 32, 32, device=dev)
    with torch.inference_mode():
        exact = sample(net, x, noise, steps=4, eta=0.0)
        low = sample(net, x, noise, steps=4, eta=0.0, precision=resolve_precision(name, dev))
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert (low - exact).abs().mean() < 0.05 * exact.abs().mean() + 1e-3
