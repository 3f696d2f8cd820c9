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


# -- CUDA decisions, on any machine (torch.cuda's answers monkeypatched) --------------------
@pytest.fixture
def two_gpus(monkeypatch):
    """An Ampere GPU 0 (bf16 in hardware) and a Turing GPU 1 (bf16 only emulated), GPU 1
    current; torch.cuda.is_bf16_supported() says True, as it does for emulation."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda index=None: (8, 0) if index == 0 else (7, 5))
    asked = []  # the GPU made current while torch is asked about emulated bf16

    class Current:
        def __init__(self, index):
            self.index = index

        def __enter__(self):
            asked.append(self.index)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "device", Current)
    return asked


def test_plain_cuda_names_the_current_gpu(two_gpus):
    from napari_cvdm.devices import resolve_device

    # a model already on the GPU has tensors on "cuda:1", never on "cuda": the device
    # predict() compares them with must have the index, or the model is copied again
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cuda")) == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


def test_auto_precision_asks_the_chosen_gpu_for_bf16_in_hardware(two_gpus):
    from napari_cvdm.precision import resolve_precision, supported_precisions

    assert resolve_precision("auto", torch.device("cuda", 0)).name == "bf16"
    # emulated bf16 (torch says "supported") runs far slower than fp16 on such a GPU
    assert resolve_precision("auto", torch.device("cuda", 1)).name == "fp16"
    assert resolve_precision("auto", torch.device("cuda")).name == "fp16"  # current: GPU 1
    # asked for by name, emulated bf16 is allowed, and torch is asked about that GPU
    assert resolve_precision("bf16", torch.device("cuda", 1)).name == "bf16"
    assert two_gpus == [1]
    assert "bf16" in supported_precisions(torch.device("cuda", 1))


def test_the_gpu_tile_budget_doubles_only_for_low_precision(tiny_model, monkeypatch):
    monkeypatch.setattr(planning, "free_memory_bytes", lambda device: 8 * 2**30)
    gpu = torch.device("cuda", 0)
    full, _ = planning.pixel_budget(tiny_model, gpu, low_precision=False)
    low, _ = planning.pixel_budget(tiny_model, gpu, low_precision=True)
    assert abs(low - 2 * full) <= 2


def test_free_gpu_memory_counts_what_torchs_cache_holds_unused(monkeypatch):
    from napari_cvdm.devices import free_memory_bytes

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (100 * 2**20, 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 300 * 2**20)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 200 * 2**20)
    assert free_memory_bytes(torch.device("cuda", 0)) == 200 * 2**20


def test_out_of_memory_is_recognised_on_older_torch_and_in_plain_messages(monkeypatch):
    from napari_cvdm.errors import Cancelled, is_out_of_memory

    monkeypatch.delattr(torch, "OutOfMemoryError", raising=False)  # torch < 2.5
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert not is_out_of_memory(Cancelled())
    for text in ("CUDA error: out of memory", "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when "
                 "calling `cublasCreate(handle)`", "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
                 # found by a review: a new thread's cuBLAS/cuDNN handle on a full GPU
                 "CUDA error: CUBLAS_STATUS_NOT_INITIALIZED when calling `cublasCreate(handle)`",
                 "cuDNN error: CUDNN_STATUS_NOT_INITIALIZED",
                 "GET was unable to find an engine to execute this computation",
                 "FIND was unable to find an engine to execute this computation",
                 "Unable to find a valid cuDNN algorithm to run convolution",
                 "cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED"):
        assert is_out_of_memory(RuntimeError(text)), text
    assert not is_out_of_memory(RuntimeError("CUDA error: device-side assert triggered"))


def test_training_has_a_loss_scaler_on_older_torch(monkeypatch):
    from napari_cvdm.precision import grad_scaler

    monkeypatch.delattr(torch.amp, "GradScaler", raising=False)  # torch < 2.3
    scaler = grad_scaler(torch.device("cpu"), enabled=False)
    loss = torch.tensor(2.0)
    assert scaler.scale(loss) is loss and not scaler.is_enabled()


# -- real CUDA -------------------------------------------------------------------------------
@pytest.fixture
def small_model():
    torch.manual_seed(0)
    return randomized(nc.CVDM(nc.CVDMConfig.preset("small")), scale=0.02)


@needs_cuda
@pytest.mark.parametrize("low", ["fp16", "bf16"])
def test_cuda_autocast_is_close_to_cpu_float32(small_model, nuclei_widefield, monkeypatch, low):
    from napari_cvdm.precision import cuda_bf16_supported

    if low == "bf16" and not cuda_bf16_supported(torch.device("cuda")):
        pytest.skip("this GPU has no bfloat16")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # true float32 reference
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    # Deterministic steps (eta = 0): both devices start from the same position-seeded noise,
    # so they differ only by arithmetic. Tolerance: low-precision autocast keeps the mean
    # within 1 % of the image's range on average (5 % at worst) of the float32 CPU result;
    # without autocast CUDA matches the CPU to 0.1 %.
    image = nuclei_widefield[:64, :64].astype(np.float32)
    kwargs = dict(samples=2, steps=5, eta=0.0, seed=0)
    cpu = nc.predict(image, small_model, device="cpu", precision="fp32", **kwargs)
    half = nc.predict(image, small_model, device="cuda", precision=low, **kwargs)
    full = nc.predict(image, small_model, device="cuda", precision="fp32", **kwargs)
    assert half.info["precision"] == low and full.info["precision"] == "fp32"
    assert half.device.startswith("cuda")
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
                            precision="fp32", seed=0)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert result.info["retries"] >= 1
    assert result.mean.shape == (2048, 2048) and np.isfinite(result.mean).all()


@needs_cuda
def test_cuda_hopeless_memory_gives_the_clear_error(small_model):
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    # in training mode predict() copies the model to run it (in eval mode: found by a review,
    # the model on the GPU in eval mode ran as it was and no copy was ever refused)
    small_model.to("cuda").train()
    used = torch.cuda.memory_allocated()
    torch.cuda.set_per_process_memory_fraction(min(1.0, (used + 2 * 2**20) / total))
    try:
        with pytest.raises(OutOfMemory, match="out of memory on cuda.*the model"):
            nc.predict(np.random.rand(512, 512), small_model, device="cuda", samples=2,
                       steps=1, seed=0)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


@needs_cuda
def test_cuda_compile_option_runs(tiny_model, recwarn):
    result = nc.predict(np.random.rand(32, 32), tiny_model, device="cuda", samples=1,
                        steps=2, seed=0, compile=True)
    assert np.isfinite(result.mean).all()
    # compiling failed if predict() fell back to the uncompiled model
    assert not [w for w in recwarn if "uncompiled" in str(w.message)]


@needs_cuda
@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_cuda_low_precision_sampling_is_finite_and_close(tiny_model, name):
    from napari_cvdm.precision import cuda_bf16_supported, resolve_precision
    from napari_cvdm.sampling import sample

    dev = torch.device("cuda")
    if name == "bf16" and not cuda_bf16_supported(dev):
        pytest.skip("this GPU has no bfloat16")
    net = tiny_model.eval().to(dev)
    x = torch.randn(2, 1, 32, 32, device=dev)
    noise = torch.randn(3, 2, 1, 32, 32, device=dev)
    with torch.inference_mode():
        exact = sample(net, x, noise, steps=4, eta=0.0)
        low = sample(net, x, noise, steps=4, eta=0.0, precision=resolve_precision(name, dev))
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert (low - exact).abs().mean() < 0.05 * exact.abs().mean() + 1e-3
