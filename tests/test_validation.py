"""Prediction inputs (issue 8): every input either works or raises one clear ValueError.

Each error names the problem and the fix; inputs are never modified. docs/reliability.md
lists what each test covers.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from conftest import randomized

import napari_cvdm as nc
from napari_cvdm.model.config import UNetConfig

FAST = dict(samples=2, steps=2, seed=0, device="cpu")


def _image(shape=(16, 16), seed=0, dtype=np.float64):
    return np.random.default_rng(seed).random(shape).astype(dtype)


def _finite(result) -> bool:
    return bool(np.isfinite(result.mean).all() and np.isfinite(result.variance).all()
                and (result.variance >= 0).all())


# -- inputs that cannot work: one clear ValueError each, naming the fix ------------------
@pytest.mark.parametrize("image,match", [
    (np.zeros(10), "at least 2 dimensions.*1D"),
    (np.float64(3.0), "at least 2 dimensions.*single value"),
    (None, "no image"),
    (np.zeros((0, 10)), "empty"),
    (np.zeros((3, 0, 10)), "empty"),
    (np.zeros((8, 8), bool), "boolean.*astype"),
    (np.zeros((8, 8), complex), "complex.*np.abs"),
    (np.zeros((8, 8), np.complex64), "complex"),
    (np.zeros((32, 32, 3), np.uint8), "RGB.*Split RGB"),
    (np.zeros((2, 32, 32, 4), np.uint8), "RGB.*split the colour channels"),
    (np.zeros((32, 32, 1)), r"trailing axis.*image\[\.\.\., 0\]"),
    (np.zeros((32, 32, 2)), r"two channels.*image\[\.\.\., 1\]"),
    (np.array([[1.0, np.nan], [2.0, 3.0]]), "1 NaN or infinite.*crop them away.*Remove NaNs"),
    (np.array([[1.0, -np.inf], [2.0, 3.0]], np.float32), "NaN or infinite"),
    (np.array([[1, 2], [3, 4]], dtype=object), "unsupported pixel type"),
    (np.array([["a", "b"], ["c", "d"]]), "unsupported pixel type"),
    (np.zeros((4, 4), "datetime64[s]"), "unsupported pixel type"),
    (np.zeros((4, 4), "timedelta64[s]"), "unsupported pixel type"),  # numpy: an integer
    ([[1.0, 2.0], [3.0]], "could not be turned into an array"),
])
def test_inputs_that_cannot_work_raise_a_clear_value_error(tiny_model, image, match):
    with pytest.raises(ValueError, match=match):
        nc.predict(image, tiny_model, **FAST)


def test_nan_in_a_later_plane_names_the_plane(tiny_model):
    stack = _image((3, 8, 8))
    stack[2, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"in plane \(2,\)"):
        nc.predict(stack, tiny_model, **FAST)


def test_dask_array_with_unknown_chunk_sizes_is_refused_with_the_fix(tiny_model):
    da = pytest.importorskip("dask.array")
    x = da.from_array(_image((16, 16)), chunks=8)
    unknown = x[x[:, 0] > 0.5]  # boolean indexing: the number of rows is unknown
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        nc.predict(unknown, tiny_model, **FAST)


def test_a_model_whose_channels_do_not_fit_the_image_is_refused_before_work():
    model = nc.CVDM(nc.CVDMConfig.preset("tiny", channels=3))
    calls = []
    with pytest.raises(ValueError, match="3-channel"):
        nc.predict(_image(), model, progress=lambda d, t: calls.append(d), **FAST)
    assert calls == []


# -- inputs that must work --------------------------------------------------------------
def test_all_constant_images_of_any_type_give_the_constant_with_zero_variance(tiny_model):
    for value, dtype in [(7, np.uint8), (0, np.int16), (-3.5, np.float32), (1e12, np.float64),
                         (2**40, np.int64), (3e38, np.float32)]:
        result = nc.predict(np.full((2, 6, 5), value, dtype), tiny_model, **FAST)
        assert result.mean.shape == (2, 12, 10)
        np.testing.assert_array_equal(result.mean, np.float32(value))
        np.testing.assert_array_equal(result.variance, 0.0)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.uint32,
                                   np.int32, np.uint64, np.int64, np.float16, np.float32,
                                   np.float64])
def test_every_real_pixel_type_works(tiny_model, dtype):
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    high = min(info.max, 60_000) if info else 1.0
    low = max(info.min, -1000) if info else -1.0
    image = (low + _image((12, 14)) * (high - low)).astype(dtype)
    result = nc.predict(image, tiny_model, **FAST)
    assert result.mean.dtype == result.variance.dtype == np.float32
    assert result.mean.shape == (24, 28) and _finite(result)


def test_huge_integer_ranges_normalise_without_overflow_or_precision_loss(tiny_model):
    """uint32/int64 near 2**40: the result is the same affine image of a small-range run."""
    base = _image((16, 16), seed=3)
    small = nc.predict(base, tiny_model, **FAST)
    for dtype, scale, offset in [(np.int64, 2.0**40, 0), (np.uint64, 2.0**40, 2**40),
                                 (np.uint32, 2.0**32 - 1, 0), (np.int64, 2.0**50, -2**50)]:
        image = (base * scale + offset).round().astype(dtype)
        exact = (image.astype(np.float64) - offset) / scale  # the rounded input, rescaled
        ref = nc.predict(exact, tiny_model, **FAST)
        big = nc.predict(image, tiny_model, **FAST)
        assert _finite(big)
        np.testing.assert_allclose(big.mean, ref.mean * scale + offset,
                                   rtol=1e-5, atol=1e-5 * scale)
        np.testing.assert_allclose(big.variance, ref.variance * scale**2,
                                   rtol=1e-4, atol=1e-6 * scale**2)
    assert _finite(small)


def test_float64_ranges_of_1e30_are_refused_with_the_fix_and_the_fix_works(tiny_model):
    image = _image((16, 16)) * 1e30
    with pytest.raises(ValueError, match=r"too large.*overflow float32.*image / 1e"):
        nc.predict(image, tiny_model, **FAST)
    ref = nc.predict(image / 1e30, tiny_model, **FAST)
    fixed = nc.predict(image / 1e24, tiny_model, **FAST)
    np.testing.assert_allclose(fixed.mean, ref.mean * 1e6, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(fixed.variance, ref.variance * 1e12, rtol=1e-4, atol=1e3)


def test_values_beyond_float32_are_refused(tiny_model):
    with pytest.raises(ValueError, match="beyond what the float32 outputs can hold"):
        nc.predict(np.full((4, 4), 1e300), tiny_model, **FAST)
    with pytest.raises(ValueError, match="beyond what the float32 outputs can hold"):
        nc.predict(np.array([[-1.7e308, 1.7e308], [0.0, 1.0]]), tiny_model, **FAST)


def test_a_large_offset_that_float32_cannot_resolve_is_refused_with_the_fix(tiny_model):
    image = 2**40 + (np.arange(64).reshape(8, 8) * 10).astype(np.int64)
    with pytest.raises(ValueError, match=r"Subtract the offset.*image - image.min\(\)"):
        nc.predict(image, tiny_model, **FAST)
    offset = image.min()
    fixed = nc.predict(image - offset, tiny_model, **FAST)
    assert _finite(fixed) and fixed.mean.max() > 100  # the structure is still there


def test_float32_inputs_with_a_large_offset_are_not_refused(tiny_model):
    """float32 in, float32 out: the output keeps whatever precision the input had."""
    image = (1e9 + _image((8, 8)) * 1e4).astype(np.float32)
    assert _finite(nc.predict(image, tiny_model, **FAST))


def test_a_numerically_vanishing_range_is_refused_with_the_fix(tiny_model):
    with pytest.raises(ValueError, match=r"underflow float32.*Multiply the image"):
        nc.predict(_image((8, 8)) * 1e-20, tiny_model, **FAST)
    # below float32's smallest number: was told to subtract an offset, which cannot help
    with pytest.raises(ValueError, match=r"underflow float32.*Multiply the image"):
        nc.predict(np.array([[0.0, 5e-324], [5e-324, 0.0]] * 4).reshape(8, 2).repeat(4, 1),
                   tiny_model, **FAST)
    assert _finite(nc.predict(_image((8, 8)) * 1e-9, tiny_model, **FAST))


@pytest.fixture
def stride8_model():
    """A model whose network needs sides that are multiples of 8."""
    torch.manual_seed(1)
    config = nc.CVDMConfig.preset("tiny", denoiser=UNetConfig(8, (1, 1, 1, 1), 1, False))
    model = randomized(nc.CVDM(config))
    assert model.config.stride == 8
    return model


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (2, 3), (3, 5), (1, 1, 1)])
def test_images_smaller_than_the_network_stride_work(stride8_model, shape):
    image = _image(shape) + 1
    result = nc.predict(image, stride8_model, **FAST)
    assert result.mean.shape == shape[:-2] + (shape[-2] * 2, shape[-1] * 2)
    assert _finite(result)
    if image.size == 1:
        np.testing.assert_array_equal(result.mean, np.float32(image.flat[0]))


def test_images_smaller_than_the_tile_and_a_tiny_tile_size_work(stride8_model):
    result = nc.predict(_image((5, 40)), stride8_model, tile_size=8, **FAST)
    assert result.mean.shape == (10, 80) and _finite(result) and result.info["tiles"] > 1


def test_singleton_axes_give_the_same_result_as_the_plane(tiny_model):
    image = _image((10, 12))
    plane = nc.predict(image, tiny_model, **FAST)
    for shape in [(1, 10, 12), (1, 1, 10, 12), (1, 1, 1, 10, 12)]:
        result = nc.predict(image.reshape(shape), tiny_model, **FAST)
        assert result.mean.shape == shape[:-2] + (20, 24)
        np.testing.assert_array_equal(result.mean.reshape(20, 24), plane.mean)
        np.testing.assert_array_equal(result.variance.reshape(20, 24), plane.variance)


class PlaneRecorder:
    """A lazy array (like zarr): records every read and refuses to be loaded whole."""

    def __init__(self, data: np.ndarray):
        self._data = data
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.reads: list[tuple[int, ...]] = []

    def __getitem__(self, key):
        out = self._data[key]
        self.reads.append(tuple(np.shape(out)))
        return out

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("the whole stack was loaded at once")


def test_lazy_arrays_are_read_one_plane_at_a_time(tiny_model):
    data = _image((3, 2, 10, 12))
    lazy = PlaneRecorder(data)
    result = nc.predict(lazy, tiny_model, check_input=False, **FAST)
    assert lazy.reads == [(10, 12)] * 6
    np.testing.assert_array_equal(result.mean, nc.predict(data, tiny_model, **FAST).mean)
    checked = PlaneRecorder(data)
    nc.predict(checked, tiny_model, **FAST)  # the input checks read planes (crops) too
    assert 6 < len(checked.reads) <= 6 + 8 and set(checked.reads) == {(10, 12)}


def test_dask_arrays_are_read_plane_by_plane_and_match_numpy(tiny_model):
    da = pytest.importorskip("dask.array")
    data = _image((3, 10, 12)).astype(np.float32)
    recorder = PlaneRecorder(data)
    lazy = da.from_array(recorder, chunks=(1, 10, 12), asarray=False)
    result = nc.predict(lazy, tiny_model, **FAST)
    assert recorder.reads and all(np.prod(r) <= 10 * 12 for r in recorder.reads)
    np.testing.assert_array_equal(result.mean, nc.predict(data, tiny_model, **FAST).mean)


def test_zarr_arrays_are_read_plane_by_plane(tiny_model, tmp_path):
    zarr = pytest.importorskip("zarr", reason="zarr is not installed in this environment")
    data = _image((2, 10, 12)).astype(np.float32)
    z = zarr.open(str(tmp_path / "a.zarr"), mode="w", shape=data.shape, chunks=(1, 10, 12),
                  dtype="f4")
    z[:] = data
    result = nc.predict(z, tiny_model, **FAST)
    np.testing.assert_array_equal(result.mean, nc.predict(data, tiny_model, **FAST).mean)


def test_cpu_torch_tensors_are_accepted(tiny_model):
    data = _image((10, 12)).astype(np.float32)
    result = nc.predict(torch.from_numpy(data.copy()), tiny_model, **FAST)
    np.testing.assert_array_equal(result.mean, nc.predict(data, tiny_model, **FAST).mean)


def test_a_tensor_on_the_meta_device_is_a_clear_error(tiny_model):
    """Found by a review: a shape without data raised torch's NotImplementedError."""
    with pytest.raises(ValueError, match="'meta' device, which holds a shape but no pixels"):
        nc.predict(torch.empty((16, 16), device="meta"), tiny_model, **FAST)


def test_torch_tensors_that_require_grad_are_predicted_and_left_untouched(tiny_model):
    """Found by an audit: a tensor with requires_grad raised torch's "Can't call numpy() on
    Tensor that requires grad" (from the PSF-width estimate, or the first plane)."""
    data = _image((2, 10, 12)).astype(np.float32)
    expected = nc.predict(data, tiny_model, **FAST)
    tensor = torch.from_numpy(data.copy()).requires_grad_()
    result = nc.predict(tensor, tiny_model, **FAST)
    np.testing.assert_array_equal(result.mean, expected.mean)
    np.testing.assert_array_equal(result.variance, expected.variance)
    assert tensor.requires_grad and tensor.grad is None
    np.testing.assert_array_equal(tensor.detach().numpy(), data)
    torch.manual_seed(0)  # a PSF-conditioned model estimates the width from the tensor
    conditioned = randomized(nc.CVDM(nc.CVDMConfig.preset("tiny", psf_conditioned=True)))
    np.testing.assert_array_equal(
        nc.predict(torch.from_numpy(data[0].copy()).requires_grad_(), conditioned,
                   **FAST).mean, nc.predict(data[0], conditioned, **FAST).mean)
    with pytest.raises(ValueError, match="unsupported pixel type"):
        nc.predict(tensor.detach().to(torch.bfloat16), tiny_model, **FAST)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_tensors_are_predicted_as_their_values():
    from napari_cvdm.validation import as_array

    data = _image((10, 12)).astype(np.float32)
    image = as_array(torch.from_numpy(data).cuda().requires_grad_())
    assert isinstance(image, np.ndarray)
    np.testing.assert_array_equal(image, data)


def test_a_masked_array_with_masked_pixels_is_refused_saying_to_fill_it(tiny_model):
    """Found by an audit: the mask of a numpy masked array was silently ignored (the pixels
    under it were predicted as they are)."""
    data = _image((16, 16)) * 1000
    masked = np.ma.masked_greater(data, 900)
    before = masked.copy()
    with pytest.raises(ValueError, match=r"masked array with \d+ masked pixel.*filled"):
        nc.predict(masked, tiny_model, **FAST)
    np.testing.assert_array_equal(masked.mask, before.mask)  # left as it was
    # No pixel masked: the pixels are the image
    unmasked = np.ma.masked_greater(data, 2000)
    np.testing.assert_array_equal(nc.predict(unmasked, tiny_model, **FAST).mean,
                                  nc.predict(data, tiny_model, **FAST).mean)
    np.testing.assert_array_equal(
        nc.predict(masked.filled(np.ma.median(masked)), tiny_model, **FAST).mean.shape,
        (32, 32))


def test_nested_lists_give_the_result_of_the_array(tiny_model):
    """A stack as nested lists passed check_image, then failed indexing a plane (TypeError);
    a PSF-conditioned model failed estimating the width (AttributeError: no .shape)."""
    stack = _image((2, 6, 7)).astype(np.float32)
    expected = nc.predict(stack, tiny_model, **FAST)
    result = nc.predict(stack.tolist(), tiny_model, **FAST)
    assert result.mean.shape == (2, 12, 14)
    np.testing.assert_array_equal(result.mean, expected.mean)
    np.testing.assert_array_equal(result.variance, expected.variance)
    torch.manual_seed(0)
    conditioned = randomized(nc.CVDM(nc.CVDMConfig.preset("tiny", psf_conditioned=True)))
    plane = stack[0]
    np.testing.assert_array_equal(nc.predict(plane.tolist(), conditioned, **FAST).mean,
                                  nc.predict(plane, conditioned, **FAST).mean)


def test_input_arrays_are_never_modified_and_read_only_inputs_work(tiny_model, tmp_path):
    for dtype in (np.float64, np.float32, np.uint16):
        image = (_image((2, 12, 12)) * 1000).astype(dtype)
        before = image.copy()
        image.flags.writeable = False
        nc.predict(image, tiny_model, **FAST)
        np.testing.assert_array_equal(image, before)
    mm = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.float32,
                                   shape=(12, 12))
    mm[:] = _image((12, 12))
    mm.flush()
    digest = hashlib.sha256((tmp_path / "a.npy").read_bytes()).hexdigest()
    readonly = np.load(tmp_path / "a.npy", mmap_mode="r")
    nc.predict(readonly, tiny_model, **FAST)
    assert hashlib.sha256((tmp_path / "a.npy").read_bytes()).hexdigest() == digest


def test_a_single_bright_spot_on_a_flat_background_is_not_erased(tiny_model):
    image = np.zeros((100, 100))
    image[50, 50] = 1000.0
    result = nc.predict(image, tiny_model, **FAST)
    assert result.mean.max() > 100


def test_sparse_bright_pixels_beyond_the_percentiles_are_not_clipped(tiny_model):
    image = 100 + np.random.default_rng(0).normal(0, 5, (100, 100))
    image[[10, 30, 50, 70, 90], [10, 30, 50, 70, 90]] = 5000.0
    result = nc.predict(image, tiny_model, **FAST)
    assert result.mean.max() > 2500



def test_an_output_larger_than_memory_is_refused_before_predicting():
    from napari_cvdm.validation import check_output_size

    assert check_output_size((16, 16), 2, limit=10**6) == 3 * 4 * 32 * 32  # mean, variance, std
    with pytest.raises(ValueError, match=r"GiB.*crop or fewer planes"):
        check_output_size((10_000, 4096, 4096), 2, limit=2**34)


def test_a_file_name_is_refused_with_how_to_read_it_and_an_image_file_gives_its_pixels(
        tiny_model, tmp_path):
    """Both gave 'got shape (); a single value is not an image'."""
    import tifffile

    from napari_cvdm.image_files import read_tiff

    path = tmp_path / "cell.tif"
    tifffile.imwrite(path, _image((16, 16), dtype=np.float32))
    for name in (str(path), path):
        with pytest.raises(ValueError, match=r"file name .*cell\.tif.*read_tiff"):
            nc.predict(name, tiny_model, **FAST)
    result = nc.predict(read_tiff(path), tiny_model, **FAST)
    np.testing.assert_array_equal(result.mean, nc.predict(tifffile.imread(path), tiny_model,
                                                          **FAST).mean)
