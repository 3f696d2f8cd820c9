"""predict(): shapes, units, tiling without seams, batching, progress, cancel, bad input."""

import threading
import warnings

import numpy as np
import pytest
import torch

import napari_cvdm as nc
from napari_cvdm.tiling import tile_grid

FAST = dict(samples=2, steps=3, seed=0)


@pytest.mark.parametrize("shape", [(32, 32), (37, 53), (3, 5), (2, 19, 23), (2, 1, 16, 16)])
def test_output_shape_is_the_input_times_the_scale(tiny_model, shape):
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    result = nc.predict(image, tiny_model, **FAST)
    expected = shape[:-2] + (shape[-2] * 2, shape[-1] * 2)
    assert result.mean.shape == result.variance.shape == expected
    assert result.mean.dtype == result.variance.dtype == np.float32
    assert np.isfinite(result.mean).all() and (result.variance >= 0).all()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float64])
def test_integer_and_float_inputs_are_accepted(tiny_model, nuclei_widefield, dtype):
    image = nuclei_widefield[:24, :24].astype(dtype)
    result = nc.predict(image, tiny_model, **FAST)
    assert result.mean.shape == (48, 48)


def test_mean_and_variance_are_in_input_units(tiny_model, nuclei_widefield):
    image = nuclei_widefield[:32, :32].astype(np.float32)
    a = nc.predict(image, tiny_model, **FAST)
    b = nc.predict(image * 10.0 + 500.0, tiny_model, **FAST)
    np.testing.assert_allclose(b.mean, a.mean * 10.0 + 500.0, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(b.variance, a.variance * 100.0, rtol=1e-3, atol=1e-2)
    lo, hi = np.percentile(image, (0.1, 99.9))
    assert lo - 0.5 * (hi - lo) < a.mean.mean() < hi + 0.5 * (hi - lo)


def test_constant_image_returns_the_constant_with_zero_variance(tiny_model):
    result = nc.predict(np.full((20, 20), 7, np.uint16), tiny_model, **FAST)
    assert (result.mean == 7).all() and (result.variance == 0).all()


def test_same_seed_reproduces_and_different_seeds_differ(tiny_model):
    image = np.random.default_rng(1).random((24, 24))
    a = nc.predict(image, tiny_model, samples=2, steps=3, seed=5)
    b = nc.predict(image, tiny_model, samples=2, steps=3, seed=5)
    c = nc.predict(image, tiny_model, samples=2, steps=3, seed=6)
    np.testing.assert_array_equal(a.mean, b.mean)
    assert np.abs(a.mean - c.mean).max() > 1e-4


def test_statistics_do_not_depend_on_how_samples_are_batched(tiny_model):
    image = np.random.default_rng(2).random((24, 24))
    # float32: bfloat16 kernels may round differently for another batch size; the merge of
    # the statistics is what this test is about.
    kw = dict(samples=6, steps=3, eta=0.0, seed=3, precision="fp32")
    one = nc.predict(image, tiny_model, batch_size=1, **kw)
    all_ = nc.predict(image, tiny_model, batch_size=6, **kw)
    pairs = nc.predict(image, tiny_model, batch_size=4, **kw)
    for other in (all_, pairs):
        np.testing.assert_allclose(other.mean, one.mean, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(other.variance, one.variance, rtol=1e-3, atol=1e-5)
    assert one.variance.mean() > 0


def test_tiled_equals_untiled_for_deterministic_sampling(tiny_model, nuclei_widefield):
    image = nuclei_widefield[40:104, 40:104].astype(np.float32)
    whole = nc.predict(image, tiny_model, samples=2, steps=4, eta=0.0, seed=1, tile_size=256)
    tiled = nc.predict(image, tiny_model, samples=2, steps=4, eta=0.0, seed=1, tile_size=48,
                       overlap=16)
    assert tiled.info["tiles"] > 1 and whole.info["tiles"] == 1
    span = np.ptp(whole.mean)
    diff = np.abs(tiled.mean - whole.mean)
    # Only the network's receptive field beyond the overlap differs: small and local.
    assert diff.mean() < 0.01 * span
    assert diff.max() < 0.1 * span


def test_variance_map_shows_no_seam_in_tile_overlaps(tiny_model):
    image = np.random.default_rng(4).random((48, 48)).astype(np.float32)
    result = nc.predict(image, tiny_model, samples=12, steps=3, eta=1.0, seed=2, tile_size=48,
                        overlap=16)
    tiles = tile_grid(96, 96, 48, 16)
    assert len(tiles) > 1
    covered = np.zeros((96, 96), int)
    for t in tiles:
        covered[t.slices] += 1
    in_overlap = result.variance[covered > 1].mean()
    inside = result.variance[covered == 1].mean()
    assert in_overlap > 0.8 * inside  # averaging samples across tiles would halve it


def test_progress_reaches_its_total_across_planes_and_tiles(tiny_model):
    calls = []
    nc.predict(np.random.rand(2, 40, 40), tiny_model, samples=3, steps=4, tile_size=48,
               overlap=16, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    total = calls[-1][1]
    assert [d for d, _ in calls] == list(range(1, total + 1))
    assert total == 2 * 4 * 2 * 4  # planes x tiles x sample batches x steps


@pytest.mark.parametrize("kind", ["event", "callable"])
def test_cancel_stops_within_one_step_and_returns_nothing(tiny_model, kind):
    event = threading.Event()
    calls = []

    def progress(done, total):
        calls.append(done)
        if done == 3:
            event.set()

    cancel = event if kind == "event" else event.is_set
    with pytest.raises(nc.Cancelled):
        nc.predict(np.random.rand(32, 32), tiny_model, samples=2, steps=20, progress=progress,
                   cancel=cancel)
    assert max(calls) == 3


def test_reference_sampler_runs_all_timesteps(tiny_model):
    calls = []
    result = nc.predict(np.random.rand(16, 16), tiny_model, samples=1, sampler="reference",
                        seed=0, progress=lambda d, t: calls.append(t))
    assert calls[-1] == tiny_model.config.timesteps == result.steps


@pytest.mark.parametrize("image,match", [
    (np.zeros(10), "at least 2 dimensions"),
    (np.zeros((0, 10)), "empty"),
    (np.zeros((8, 8), complex), "complex"),
    (np.zeros((8, 8), bool), "boolean"),
    (np.zeros((32, 32, 3), np.uint8), "RGB"),
    (np.array([[1.0, np.nan], [2.0, 3.0]]), "NaN or infinite"),
    (np.array([[1.0, np.inf], [2.0, 3.0]]), "NaN or infinite"),
])
def test_bad_inputs_raise_clear_value_errors(tiny_model, image, match):
    with pytest.raises(ValueError, match=match):
        nc.predict(image, tiny_model, **FAST)


@pytest.mark.parametrize("kwargs,match", [
    (dict(samples=0), "samples"), (dict(steps=0), "steps"), (dict(eta=2.0), "eta"),
    (dict(device="tpu"), "device"), (dict(device="cuda:7"), "CUDA|cuda"),
    (dict(sampler="euler"), "sampler"), (dict(tile_size=4), "tile size"),
])
def test_bad_settings_raise_clear_value_errors(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        nc.predict(np.random.rand(16, 16), tiny_model, **{**FAST, **kwargs})


@pytest.mark.parametrize("device", [5, 1.5, ["cpu"], b"cpu"])
def test_a_device_that_is_not_text_is_a_clear_error(tiny_model, device):
    """Found by an audit: device=5 raised AttributeError ('int' object has no attribute
    'strip') from deep inside predict()."""
    with pytest.raises(ValueError, match=r"device must be auto, cpu, cuda, cuda:N or mps"):
        nc.predict(np.random.rand(16, 16), tiny_model, **{**FAST, "device": device})
    from napari_cvdm.devices import resolve_device
    from napari_cvdm.settings import PredictSettings

    with pytest.raises(ValueError, match=r"device must be auto, cpu, cuda, cuda:N or mps"):
        resolve_device(device)
    with pytest.raises(ValueError, match=r"device must be auto, cpu, cuda, cuda:N or mps"):
        PredictSettings(device=device)  # refused where the settings are made


def test_a_torch_device_is_taken_as_its_name(tiny_model):
    image = np.random.default_rng(0).random((16, 16))
    result = nc.predict(image, tiny_model, **{**FAST, "device": torch.device("cpu")})
    assert result.device == "cpu"
    np.testing.assert_array_equal(result.mean, nc.predict(image, tiny_model, **FAST).mean)
    from napari_cvdm.settings import PredictSettings

    assert PredictSettings(device=torch.device("cuda", 1)).device == "cuda:1"


def test_input_array_is_not_modified(tiny_model):
    image = np.random.default_rng(0).random((20, 20)).astype(np.float32)
    copy = image.copy()
    nc.predict(image, tiny_model, **FAST)
    np.testing.assert_array_equal(image, copy)


def test_model_can_be_given_as_a_file(tiny_model_file):
    result = nc.predict(np.random.rand(16, 16), str(tiny_model_file), **FAST)
    assert result.mean.shape == (32, 32)


def test_predict_on_a_read_file_checks_the_files_pixel_size(tiny_model, nuclei_widefield,
                                                          tmp_path):
    """Found by a review: ``predict(read_tiff(path))`` dropped the file's pixel size, so a
    30 nm (already super-resolved) image was not warned about as ``cvdm predict`` warns."""
    import copy

    import tifffile

    from napari_cvdm.image_files import read_tiff

    model = copy.deepcopy(tiny_model)
    model.metadata = {**(model.metadata or {}), "intended": {"input_pixel_size_nm": [50, 80]}}
    path = tmp_path / "fine.tif"
    tifffile.imwrite(path, nuclei_widefield[:48, :48], imagej=True,
                     resolution=(1 / 0.03, 1 / 0.03), metadata={"unit": "um"})
    with pytest.warns(nc.InputWarning, match="pixel size is 30 nm"):
        result = nc.predict(read_tiff(path), model, samples=2, steps=1, seed=0)
    assert any("30 nm" in m for m in result.info["input_warnings"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", nc.InputWarning)  # the pixels alone: nothing to say
        nc.predict(read_tiff(path).data, model, samples=2, steps=1, seed=0)


def test_python_users_are_told_why_a_result_may_not_be_trusted(tiny_model, nuclei_widefield):
    # predict() itself warns (the command line and napari say it their own way)
    import dask.array as da

    inverted = nuclei_widefield.max() - nuclei_widefield
    for image in (inverted, da.from_array(inverted, chunks=128)):
        with pytest.warns(nc.InputWarning, match="transmitted light") as record:
            result = nc.predict(image, tiny_model, samples=2, steps=2, seed=0)
        assert record[0].filename == __file__  # at the caller's line
        assert len(result.info["input_warnings"]) == 1
        assert "transmitted light" in result.info["input_warnings"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", nc.InputWarning)
        quiet = nc.predict(inverted, tiny_model, samples=2, steps=2, seed=0, check_input=False)
        fine = nc.predict(nuclei_widefield, tiny_model, samples=2, steps=2, seed=0)
    assert quiet.info["input_warnings"] == [] and fine.info["input_warnings"] == []
