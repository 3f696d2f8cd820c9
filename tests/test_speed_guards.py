"""Behavioural guards for speed and memory (issue 7): no timings, only what makes it fast.

x-only work once per tile, the tile plan, bounded batches, cheap accumulators, the model
left as it was found. The timings themselves are in benchmarks/speed.py.
"""

import tracemalloc

import numpy as np
import pytest
import torch

import napari_cvdm as nc
from napari_cvdm.planning import plan
from napari_cvdm.resampling import upsample
from napari_cvdm.tile_sampling import conditioning as _conditioning
from napari_cvdm.tiling import StatisticsBlender, Tile, blend_weight, tile_grid

CPU = torch.device("cpu")


def _count_calls(monkeypatch, obj, name):
    calls = []
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        calls.append(args[0].shape if args else None)
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapper)
    return calls


def test_lambda_and_mean_network_run_once_per_tile_not_per_step(monkeypatch):
    torch.manual_seed(0)
    model = nc.CVDM(nc.CVDMConfig.preset("small")).eval()
    lam = _count_calls(monkeypatch, model.schedule_net, "lam")
    mean = _count_calls(monkeypatch, model.mean_net, "forward")
    denoise = _count_calls(monkeypatch, model, "denoise")
    # One tile, 3 samples in 3 batches of 1, 5 steps: 15 denoiser calls, one x-only pass.
    result = nc.predict(np.random.rand(16, 16), model, samples=3, steps=5, batch_size=1, seed=0,
                        augment=False)
    assert result.info["tiles"] == 1
    assert len(denoise) == 15
    assert len(lam) == 1 and len(mean) == 1
    # With samples on turned inputs: one x-only pass per group of turned copies, never per
    # step (8 samples, batch 8: the 4 upright copies together, then the 4 transposed ones).
    for calls in (lam, mean, denoise):
        calls.clear()
    nc.predict(np.random.rand(16, 16), model, samples=8, steps=5, batch_size=8, seed=0)
    assert len(lam) == 2 and len(mean) == 2
    assert len(denoise) == 2 * 5 and denoise[0][0] == 4


def test_x_only_work_runs_once_per_tile_with_several_tiles(tiny_model, monkeypatch):
    lam = _count_calls(monkeypatch, tiny_model.schedule_net, "lam")
    result = nc.predict(np.random.rand(40, 40), tiny_model, samples=4, steps=6, batch_size=2,
                        tile_size=48, overlap=16, seed=0, augment=False)
    assert result.info["tiles"] == 4
    assert len(lam) == 4  # not 4 tiles x 2 batches, not x 6 steps


def test_tiles_are_run_together_when_samples_are_few(tiny_model, monkeypatch):
    denoise = _count_calls(monkeypatch, tiny_model, "denoise")
    lam = _count_calls(monkeypatch, tiny_model.schedule_net, "lam")
    calls = []
    result = nc.predict(np.random.rand(40, 40), tiny_model, samples=1, steps=3, tile_size=48,
                        overlap=16, seed=0, progress=lambda d, t: calls.append((d, t)))
    tiles = result.info["tiles"]
    assert tiles == 4 and result.info["group"] == 4
    assert len(denoise) == 3 and denoise[0][0] == 4  # one call per step, all tiles at once
    assert len(lam) == 1
    # Progress still counts one evaluation per tile and step, one at a time.
    assert [d for d, _ in calls] == list(range(1, tiles * 3 + 1))
    assert {t for _, t in calls} == {tiles * 3}


def test_grouping_tiles_does_not_change_the_result(tiny_model):
    image = np.random.default_rng(3).random((40, 40))
    grouped = nc.predict(image, tiny_model, samples=2, steps=3, eta=0.0, tile_size=48,
                         overlap=16, seed=4)
    single = nc.predict(image, tiny_model, samples=2, steps=3, eta=0.0, tile_size=48,
                        overlap=16, seed=4, batch_size=2)
    assert grouped.info["group"] > 1 and single.info["group"] == 1
    np.testing.assert_allclose(grouped.mean, single.mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grouped.variance, single.variance, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_auto_tile_for_a_512_output_on_the_cpu_is_one_tile(preset):
    model = nc.CVDM(nc.CVDMConfig.preset(preset))
    p = plan(model, 512, 512, 8, CPU)
    assert p.tile == (512, 512)
    assert len(tile_grid(512, 512, p.tile, p.overlap, model.config.stride)) == 1


def test_predict_uses_one_tile_for_a_256_input(tiny_model):
    result = nc.predict(np.random.rand(256, 256), tiny_model, samples=1, steps=1, seed=0)
    assert result.mean.shape == (512, 512) and result.info["tiles"] == 1


def test_auto_tiles_fit_the_image_instead_of_a_fixed_size():
    model = nc.CVDM(nc.CVDMConfig.preset("small"))
    for size in (600, 1000, 2048, 4096):
        p = plan(model, size, size, 1, CPU)
        tiles = tile_grid(size, size, p.tile, p.overlap, model.config.stride)
        covered = sum(t.height * t.width for t in tiles)
        assert covered < 1.6 * size * size, (size, p, len(tiles))
        assert p.tile[0] * p.tile[1] * p.batch <= p.budget


@pytest.mark.parametrize("samples", [1, 8, 64, 1000])
def test_network_batch_is_bounded_whatever_the_number_of_samples(samples):
    model = nc.CVDM(nc.CVDMConfig.preset("small"))
    for size in (64, 256, 512, 8192):
        p = plan(model, size, size, samples, CPU)
        assert 1 <= p.batch <= samples
        assert p.tile[0] * p.tile[1] * p.batch * p.group <= max(p.budget, p.tile[0] * p.tile[1])
    big = plan(model, 8192, 8192, samples, CPU)
    assert big.batch == 1 and big.tile[0] * big.tile[1] <= 2**18


def test_tile_starts_follow_the_network_stride():
    stride = 8
    for tile in tile_grid(1000, 777, 200, 25, align=stride):
        assert tile.y % stride == 0 or tile.y + tile.height == 1000
        assert tile.x % stride == 0 or tile.x + tile.width == 777


def test_tile_grid_keeps_the_overlap_and_covers_the_image():
    for height, width, size, overlap in [(1000, 777, 200, 25), (96, 96, 48, 16), (512, 40, 64, 8)]:
        tiles = tile_grid(height, width, size, overlap, align=8)
        covered = np.zeros((height, width), int)
        for t in tiles:
            covered[t.slices] += 1
        assert covered.min() >= 1
        ys = sorted({t.y for t in tiles})
        assert all(b - a <= min(size, height) - overlap for a, b in zip(ys, ys[1:]))


def test_tile_conditioning_equals_the_whole_upsampled_plane():
    plane = torch.rand(50, 61)
    for scale in (2, 3):
        full = upsample(plane[None, None], scale)[0, 0]
        for tile in [Tile(0, 0, 40, 40), Tile(37, 55, 48, 40), Tile(150 - 48, 183 - 21, 48, 21)]:
            if tile.y + tile.height > 50 * scale or tile.x + tile.width > 61 * scale:
                continue
            torch.testing.assert_close(_conditioning(plane, tile, scale), full[tile.slices],
                                       atol=1e-5, rtol=0)


def test_blender_equals_the_mixture_formula_in_float32_maps():
    rng = np.random.default_rng(0)
    height, width, overlap = 90, 70, 12
    tiles = tile_grid(height, width, 40, overlap)
    blender = StatisticsBlender(height, width, overlap)
    assert blender.mean.dtype == blender.variance.dtype == np.float32
    assert not any(isinstance(v, np.ndarray) and v.dtype == np.float64
                   for v in vars(blender).values())
    weight = np.zeros((height, width))
    first = np.zeros((height, width))
    second = np.zeros((height, width))
    for t in tiles:
        m = rng.normal(0.3, 0.5, (t.height, t.width))
        v = rng.uniform(1e-4, 1e-2, (t.height, t.width))
        blender.add(t, m, v)
        w = blend_weight(t, height, width, overlap)
        weight[t.slices] += w
        first[t.slices] += w * m
        second[t.slices] += w * (v + m**2)
    mean, var = blender.result()
    want_mean = first / weight
    want_var = second / weight - want_mean**2
    np.testing.assert_allclose(mean, want_mean, atol=1e-6)
    np.testing.assert_allclose(var, want_var, atol=1e-6, rtol=1e-4)


def test_blender_gives_back_agreeing_tiles_unchanged():
    tiles = tile_grid(64, 64, 40, 16)
    blender = StatisticsBlender(64, 64, 16)
    for t in tiles:
        blender.add(t, np.full((t.height, t.width), 0.25), np.full((t.height, t.width), 0.01))
    mean, var = blender.result()
    np.testing.assert_allclose(mean, 0.25, rtol=1e-6)
    np.testing.assert_allclose(var, 0.01, rtol=1e-5)


def test_no_whole_image_float64_buffers(tiny_model):
    """Host memory beyond the outputs stays small (NumPy allocations are traced)."""
    image = np.random.default_rng(0).random((256, 256)).astype(np.float32)
    tracemalloc.start()
    try:
        result = nc.predict(image, tiny_model, samples=2, steps=1, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    outputs = result.mean.nbytes + result.variance.nbytes  # 2 MiB on a 512 x 512 grid
    # Before issue 7 the peak was 8.2 x the outputs (three float64 accumulators, a float32
    # upsampled plane, float64 results). Now about 2.1 x: the outputs, plus a float64 copy
    # of the input plane while it is checked and normalised, plus tile-sized temporaries.
    assert peak < 3 * outputs, peak / outputs


def test_predict_leaves_the_model_as_it_found_it(tiny_model):
    tiny_model.train()
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    nc.predict(np.random.rand(16, 16), tiny_model, samples=1, steps=2, seed=0)
    assert tiny_model.training
    for name, value in tiny_model.state_dict().items():
        assert value.is_contiguous(), name  # channels-last was only for the call
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)


def test_reference_sampler_memory_does_not_grow_with_timesteps(monkeypatch):
    """The reference sequence recomputes its log-alphas instead of keeping T maps."""
    from napari_cvdm import sampling

    model = nc.CVDM(nc.CVDMConfig.preset("tiny", timesteps=50))
    lam = torch.full((1, 1, 8, 8), 10.0)
    seq = sampling.gamma_sequence(model, lam, 0, "reference")
    first = next(seq)
    frame = seq.gi_frame
    maps = [v for v in frame.f_locals.values()
            if isinstance(v, (list, tuple)) and len(v) >= 50
            and all(isinstance(t, torch.Tensor) and t.shape == lam.shape for t in v)]
    assert not maps
    assert first.shape == lam.shape


def test_compile_falls_back_to_eager_with_a_warning(tiny_model, monkeypatch):
    def broken_compile(fn, *args, **kwargs):
        def run(*a, **k):
            raise RuntimeError("no C++ compiler (simulated)")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    image = np.random.rand(16, 16)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        result = nc.predict(image, tiny_model, samples=1, steps=2, seed=0, compile=True,
                            precision="fp32")
    eager = nc.predict(image, tiny_model, samples=1, steps=2, seed=0, precision="fp32")
    assert not result.info["compiled"]
    np.testing.assert_array_equal(result.mean, eager.mean)


class _CountCasts:
    """Counts the dtype conversions (aten::_to_copy, autocast's included) inside the block."""

    def __enter__(self):
        from torch.profiler import ProfilerActivity, profile

        self.prof = profile(activities=[ProfilerActivity.CPU])
        self.prof.__enter__()
        return self

    def __exit__(self, *exc):
        self.prof.__exit__(*exc)
        self.casts = sum(e.count for e in self.prof.key_averages() if e.key == "aten::_to_copy")


@pytest.mark.parametrize("autocast_path", [False, True])
def test_bf16_sampling_converts_no_weights_per_step(tiny_model, autocast_path):
    """The bfloat16 denoiser copy is made once; each step only casts its inputs and output
    (autocast, by contrast, re-casts every convolution's weights at every step)."""
    from napari_cvdm.precision import Precision
    from napari_cvdm.sampling import sample

    net = tiny_model.eval()
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in net.denoiser.modules())
    x = torch.randn(1, 1, 16, 16)
    noise = torch.randn(1, 1, 1, 16, 16)
    denoise = (lambda z, i, g: net.denoise(z, i, g)) if autocast_path else None
    def per_step(precision):
        run = lambda k: sample(net, x, noise, steps=k, eta=0.0, denoise=denoise,
                               precision=precision)
        with torch.inference_mode():
            run(1)  # builds the cached copy
            with _CountCasts() as one:
                run(1)
            with _CountCasts() as four:
                run(4)
        return (four.casts - one.casts) / 3

    extra = per_step(Precision("bf16", "cpu")) - per_step(None)  # casts the float32 run lacks
    if autocast_path:
        assert extra >= convs
    else:  # the network's two inputs, its output, and a few scalars
        assert 0 < extra <= 6 < convs
