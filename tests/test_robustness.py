"""Robustness (issue 8): bad inputs, untrusted model files, interruptions, nothing lost.

Every input either works correctly or raises a ValueError that names the problem and the
fix; model files never run code; outputs and checkpoints are all-or-nothing; inputs are
never modified. docs/reliability.md lists what each test covers.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from safetensors.torch import save_file

import napari_cvdm as nc
from napari_cvdm import convert as convert_module
from napari_cvdm.cli import main
from napari_cvdm.io import MAX_PARAMETERS, PICKLE_HINT, load_model, read_tiff
from napari_cvdm.model.config import UNetConfig

from conftest import randomized

FAST = dict(samples=2, steps=2, seed=0, device="cpu")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


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
    (np.array([[1.0, np.nan], [2.0, 3.0]]), "1 NaN or infinite.*nan_to_num"),
    (np.array([[1.0, -np.inf], [2.0, 3.0]], np.float32), "NaN or infinite"),
    (np.array([[1, 2], [3, 4]], dtype=object), "unsupported pixel type"),
    (np.array([["a", "b"], ["c", "d"]]), "unsupported pixel type"),
    (np.zeros((4, 4), "datetime64[s]"), "unsupported pixel type"),
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
    result = nc.predict(lazy, tiny_model, **FAST)
    assert lazy.reads == [(10, 12)] * 6
    np.testing.assert_array_equal(result.mean, nc.predict(data, tiny_model, **FAST).mean)


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


# -- model files -----------------------------------------------------------------------
def test_pickle_files_are_refused_and_the_hint_names_the_conversion(tmp_path, tiny_model):
    for suffix in (".pt", ".pth", ".ckpt", ".bin"):
        path = tmp_path / f"model{suffix}"
        torch.save(tiny_model.state_dict(), path)
        with pytest.raises(ValueError, match=r"pickle.*python -m napari_cvdm\.convert"):
            load_model(path)


def test_a_pickle_renamed_to_a_model_file_is_recognised(tmp_path, tiny_model):
    for kwargs in ({}, {"_use_new_zipfile_serialization": False}):
        path = tmp_path / "disguised.cvdm.safetensors"
        torch.save(tiny_model.state_dict(), path, **kwargs)
        with pytest.raises(ValueError, match="pickle"):
            load_model(path)


def test_a_model_file_whose_header_length_looks_like_a_pickle_still_loads(tmp_path,
                                                                         tiny_model):
    """A header of 0x10280 bytes starts with the bytes 80 02, like a pickle; it is no pickle."""
    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    target = 0x10280
    assert n < target
    header = raw[8:8 + n] + b" " * (target - n)
    path.write_bytes(target.to_bytes(8, "little") + header + raw[8 + n:])
    assert path.read_bytes()[:2] == b"\x80\x02"
    assert load_model(path).config == tiny_model.config


def test_the_hint_and_the_converter_agree():
    command = PICKLE_HINT.format(path="IN.pt", suffix=".pt").split("convert it once with:")[1]
    words = command.split()
    assert words[:3] == ["python", "-m", "napari_cvdm.convert"]
    args = [w for w in words[3:] if w not in ("[--scale", "S]")]
    args[args.index("PRESET")] = "tiny"
    parsed = convert_module._parser().parse_args(args + ["--scale", "2"])
    assert parsed.preset == "tiny" and parsed.scale == 2


def test_conversion_of_a_trusted_checkpoint_gives_the_same_model(tmp_path, tiny_model):
    pt = tmp_path / "trusted.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in
                                           tiny_model.state_dict().items()}}, pt)
    out = tmp_path / "trusted.cvdm.safetensors"
    result = subprocess.run([sys.executable, "-m", "napari_cvdm.convert", str(pt), str(out),
                             "--preset", "tiny", "--scale", "2"],
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr
    loaded = load_model(out)
    assert loaded.metadata["converted_from"]["sha256"] == hashlib.sha256(
        pt.read_bytes()).hexdigest()
    image = _image((12, 12))
    np.testing.assert_array_equal(nc.predict(image, loaded, **FAST).mean,
                                  nc.predict(image, tiny_model, **FAST).mean)
    assert not list(tmp_path.glob("*.part"))


def test_conversion_refuses_weights_of_another_preset_or_scale(tmp_path, tiny_model, capsys):
    pt = tmp_path / "tiny.pt"
    torch.save(tiny_model.state_dict(), pt)
    out = tmp_path / "x.cvdm.safetensors"
    assert convert_module.main([str(pt), str(out), "--preset", "small"]) == 2
    assert "do not fit the 'small' preset" in capsys.readouterr().err
    assert not out.exists()
    assert convert_module.main([str(pt), str(tmp_path / "x.safetensors"),
                                "--preset", "tiny"]) == 2
    assert ".cvdm.safetensors" in capsys.readouterr().err


class _Payload:
    """Unpickling this would create a file: the converter must never do that."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_conversion_never_runs_code_from_the_checkpoint(tmp_path, tiny_model, capsys):
    marker = tmp_path / "pwned"
    pt = tmp_path / "evil.pt"
    torch.save({"state_dict": tiny_model.state_dict(), "x": _Payload(str(marker))}, pt)
    code = convert_module.main([str(pt), str(tmp_path / "e.cvdm.safetensors"),
                                "--preset", "tiny"])
    assert code == 2 and "weights_only" in capsys.readouterr().err
    assert not marker.exists()
    with pytest.raises(ValueError, match="pickle"):
        load_model(pt)
    assert not marker.exists()


def _header(path: Path):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return raw, n, json.loads(raw[8:8 + n])


def _rewrite(path: Path, change_meta=None, change_header=None, extra: bytes = b""):
    raw, n, header = _header(path)
    if change_meta is not None:
        meta = json.loads(header["__metadata__"]["napari_cvdm"])
        change_meta(meta)
        header["__metadata__"]["napari_cvdm"] = json.dumps(meta)
    if change_header is not None:
        change_header(header)
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    path.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + n:] + extra)


def test_a_config_asking_for_too_many_parameters_is_refused_before_allocating(
        tiny_model, tmp_path, monkeypatch):
    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    huge = {"base_channels": 512, "channel_mults": [1, 2, 4, 8, 16, 16, 16],
            "blocks_per_level": 8, "attention_at_lowest": True, "dropout": 0.0}
    _rewrite(path, lambda m: m["config"].update(denoiser=huge))
    devices = []
    original = nc.CVDM.__init__

    def recording_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        devices.append(next(self.parameters()).device.type)

    monkeypatch.setattr(nc.CVDM, "__init__", recording_init)
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"parameters, more than the 400,000,000"):
        load_model(path)
    assert time.perf_counter() - started < 30
    assert devices == ["meta"]  # only ever built without memory


def test_a_config_just_over_the_limit_is_refused_and_presets_are_within_it():
    from napari_cvdm.io import estimate_parameters
    from napari_cvdm.model.config import PRESETS

    assert all(estimate_parameters(c) < MAX_PARAMETERS for c in PRESETS.values())
    big = nc.CVDMConfig.preset("paper", denoiser=UNetConfig(128, (1, 2, 4, 8, 8), 3, True))
    assert estimate_parameters(big) > MAX_PARAMETERS


@pytest.mark.parametrize("change,match", [
    (lambda m: m["config"].update(residual_scale="0.2"), "residual_scale"),
    (lambda m: m["config"].update(timesteps=200.5), "invalid"),
    (lambda m: m["config"].update(output_clip=float("inf")), "output_clip"),
    (lambda m: m["config"].update(residual="yes"), "residual"),
    (lambda m: m["config"]["denoiser"].update(base_channels=16.0), "base_channels"),
    (lambda m: m["config"]["denoiser"].update(channel_mults=[1, "2"]), "invalid"),
    (lambda m: m["config"].update(mean_net=7), "invalid"),
    (lambda m: m["config"].update(evil=1), "unknown model settings"),
    (lambda m: m.update(config=[1, 2]), "invalid"),
    (lambda m: m.update(metadata=[1, 2]), "metadata"),
])
def test_tampered_configurations_are_refused(tiny_model, tmp_path, change, match):
    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    _rewrite(path, change)
    with pytest.raises(ValueError, match=match):
        load_model(path)


def test_extra_or_missing_tensors_and_nan_weights_are_refused(tiny_model, tmp_path):
    state = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    meta = _header(nc.save_model(tiny_model, tmp_path / "ok.cvdm.safetensors"))[2]["__metadata__"]
    cases = {
        "unexpected": {**state, "big.extra": torch.zeros(1000, 1000)},
        "missing": dict(list(state.items())[1:]),
        "NaN": {**state, next(iter(state)): torch.full_like(next(iter(state.values())),
                                                            float("nan"))},
        "type": {**state, next(iter(state)): next(iter(state.values())).to(torch.int32)},
    }
    for match, tensors in cases.items():
        path = tmp_path / f"{match}.cvdm.safetensors"
        save_file(tensors, str(path), metadata=meta)
        with pytest.raises(ValueError, match=match):
            load_model(path)


@pytest.mark.parametrize("keep", [4, 8, 100, 0.5, 0.99])
def test_files_truncated_anywhere_are_refused(tiny_model, tmp_path, keep):
    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    raw = path.read_bytes()
    path.write_bytes(raw[:int(keep * len(raw)) if isinstance(keep, float) else keep])
    with pytest.raises(ValueError, match="napari-cvdm model|safetensors|damaged|truncated"):
        load_model(path)


def test_a_header_offset_pointing_beyond_the_file_is_refused(tiny_model, tmp_path):
    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")

    def stretch(header):
        name = next(k for k in header if k != "__metadata__")
        header[name]["data_offsets"][1] += 10**9

    _rewrite(path, change_header=stretch)
    with pytest.raises(ValueError):
        load_model(path)


def test_a_tiff_declaring_an_enormous_image_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint16))
    monkeypatch.setattr("napari_cvdm.image_files.max_image_bytes", lambda: 1000)
    with pytest.raises(ValueError, match="declares an image of"):
        read_tiff(path)


def test_a_tiff_with_a_zero_pixel_size_reads_without_one(tmp_path):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, np.ones((8, 8), np.uint16), resolution=(2.0, 2.0))
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].tags["XResolution"].valueoffset
    raw = bytearray(path.read_bytes())
    raw[offset:offset + 8] = (1).to_bytes(4, "little") + (0).to_bytes(4, "little")  # 0/1 px
    path.write_bytes(bytes(raw))
    image = read_tiff(path)
    assert image.pixel_size is None and image.data.shape == (8, 8)


# -- the command line: no partial outputs, inputs untouched, clear exits --------------------
@pytest.fixture
def two_tiffs(tmp_path, nuclei_widefield):
    paths = []
    for name, (y, x) in {"first": (0, 0), "second": (40, 40)}.items():
        path = tmp_path / f"{name}.tif"
        tifffile.imwrite(path, nuclei_widefield[y:y + 24, x:x + 20])
        paths.append(path)
    return paths


def _cli(inputs, out, model_file, *extra):
    return main(["predict", *map(str, inputs), "-o", str(out), "--model", str(model_file),
                 "--samples", "2", "--steps", "2", "--seed", "0", *extra])


def test_a_failure_while_writing_the_second_file_leaves_neither(two_tiffs, tiny_model_file,
                                                                 tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    writes = []
    real_imwrite = tifffile.imwrite

    def failing_imwrite(path, data, **kwargs):
        writes.append(Path(path))
        if len(writes) == 2:
            Path(path).write_bytes(b"II*\x00half a file")  # a partly written temp file
            raise OSError(28, "No space left on device")
        return real_imwrite(path, data, **kwargs)

    monkeypatch.setattr(tifffile, "imwrite", failing_imwrite)
    code = _cli(two_tiffs[:1], out, tiny_model_file, "--quiet")
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == []  # no outputs, no .part files
    assert all(w.name.endswith(".part") for w in writes)


def test_a_failed_rerun_keeps_the_previous_complete_outputs(two_tiffs, tiny_model_file,
                                                           tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert _cli(two_tiffs[:1], out, tiny_model_file, "--quiet") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []

    def failing_imwrite(path, data, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        Path(path).write_bytes(b"new")

    monkeypatch.setattr(tifffile, "imwrite", failing_imwrite)
    assert _cli(two_tiffs[:1], out, tiny_model_file, "--quiet", "--seed", "9") == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_an_interruption_during_predict_leaves_no_files_for_that_input(
        two_tiffs, tiny_model_file, tmp_path, monkeypatch, capsys):
    """Ctrl-C in the middle of the second image: the first image's outputs are complete."""
    import napari_cvdm.cli.predict as cli

    out = tmp_path / "out"
    real_bar = cli.ProgressBar

    class InterruptingBar(real_bar):
        def __call__(self, done, total, extra=""):
            if self.label == "second.tif" and done == total // 2:
                raise KeyboardInterrupt
            super().__call__(done, total, extra)

    monkeypatch.setattr(cli, "ProgressBar", InterruptingBar)
    code = _cli(two_tiffs, out, tiny_model_file)
    assert code == 130 and "no partial output was written" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["first_cvdm_mean.tif", "first_cvdm_var.tif"]
    assert read_tiff(out / "first_cvdm_var.tif").data.shape == (48, 40)


def test_an_exception_inside_predict_leaves_no_files_for_that_input(
        two_tiffs, tiny_model_file, tmp_path, monkeypatch):
    import napari_cvdm

    out = tmp_path / "out"
    real_predict = napari_cvdm.predict
    calls = []

    def failing_on_the_second_image(image, *args, **kwargs):
        calls.append(image.shape)
        if len(calls) == 2:
            def progress(done, total):
                raise RuntimeError("simulated failure half way")
            kwargs["progress"] = progress
        return real_predict(image, *args, **kwargs)

    monkeypatch.setattr(napari_cvdm, "predict", failing_on_the_second_image)
    with pytest.raises(RuntimeError, match="simulated failure"):
        _cli(two_tiffs, out, tiny_model_file, "--quiet")
    assert len(calls) == 2
    assert sorted(p.name for p in out.iterdir()) == ["first_cvdm_mean.tif", "first_cvdm_var.tif"]


def test_the_input_file_is_never_modified(two_tiffs, tiny_model_file, tmp_path):
    path = two_tiffs[0]
    digest, mtime = hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns
    assert _cli([path], tmp_path / "out", tiny_model_file, "--quiet") == 0
    assert _cli([path], tmp_path, tiny_model_file, "--quiet") == 0  # outputs beside it
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert path.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("extra,match", [
    (["--eta", "nan"], "--eta"),
    (["--tile-size", "4"], "--tile-size"),
    (["--device", "tpu"], "device"),
    (["--samples", "0"], "--samples"),
])
def test_bad_predict_options_fail_before_loading_anything(two_tiffs, tmp_path, capsys,
                                                          extra, match):
    code = main(["predict", str(two_tiffs[0]), "-o", str(tmp_path / "o"), "--model",
                 str(tmp_path / "missing.cvdm.safetensors"), *extra])
    assert code == 2 and match in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_two_inputs_that_would_overwrite_each_other_are_refused(tmp_path, two_tiffs,
                                                                tiny_model_file, capsys):
    other = tmp_path / "sub"
    other.mkdir()
    twin = other / "first.ome.tif"
    twin.write_bytes(two_tiffs[0].read_bytes())
    code = _cli([two_tiffs[0], twin], tmp_path / "o", tiny_model_file)
    assert code == 2 and "would both be written as first_cvdm" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_inputs_and_a_file_as_output_folder_are_clear_errors(tmp_path, two_tiffs,
                                                                     tiny_model_file, capsys):
    assert _cli([tmp_path / "nope.tif"], tmp_path / "o", tiny_model_file) == 2
    assert "input file not found" in capsys.readouterr().err
    assert _cli(two_tiffs[:1], two_tiffs[1], tiny_model_file) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    MemoryError(),
    RuntimeError("out of GPU memory even with tile 128 and batch 1; try --device cpu"),
])
def test_out_of_memory_is_reported_with_what_to_change(two_tiffs, tiny_model_file, tmp_path,
                                                       monkeypatch, capsys, error):
    import napari_cvdm

    def no_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(napari_cvdm, "predict", no_memory)
    assert _cli(two_tiffs[:1], tmp_path / "o", tiny_model_file, "--quiet") == 1
    err = capsys.readouterr().err
    assert "out of memory" in err and "--tile-size" in err and len(err.splitlines()) == 1
    assert not list((tmp_path / "o").iterdir())


def test_other_runtime_errors_are_not_disguised_as_out_of_memory(two_tiffs, tiny_model_file,
                                                                 tmp_path, monkeypatch):
    import napari_cvdm

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(napari_cvdm, "predict", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        _cli(two_tiffs[:1], tmp_path / "o", tiny_model_file, "--quiet")


def test_an_output_larger_than_memory_is_refused_before_predicting():
    from napari_cvdm.validation import check_output_size

    assert check_output_size((16, 16), 2, limit=10**6) == 2 * 4 * 32 * 32
    with pytest.raises(ValueError, match=r"GiB.*crop or fewer planes"):
        check_output_size((10_000, 4096, 4096), 2, limit=2**34)


@pytest.mark.parametrize("option,value", [("--checkpoint-every", "0"), ("--validate-every", "0"),
                                          ("--batch-size", "0"), ("--lr", "-1"),
                                          ("--scale", "7"), ("--psf-sigma", "nan")])
def test_bad_train_options_are_clear_errors(tmp_path, capsys, option, value):
    hq = tmp_path / "hq"
    hq.mkdir()
    code = main(["train", "--hq", str(hq), "--preset", "tiny", "--steps", "2", "-o",
                 str(tmp_path / "m.cvdm.safetensors"), option, value])
    assert code == 2 and option in capsys.readouterr().err


# -- training checkpoints survive SIGKILL -----------------------------------------------
def _state_step(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return int(json.loads(fh.metadata()["napari_cvdm_state"])["step"])


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_killing_training_never_corrupts_the_checkpoint_and_resume_works(tmp_path,
                                                                         nuclei_truth):
    from napari_cvdm.training import state_path

    hq = tmp_path / "hq"
    hq.mkdir()
    tifffile.imwrite(hq / "a.tif", nuclei_truth[:120, :120])
    out = tmp_path / "m.cvdm.safetensors"
    args = [sys.executable, "-m", "napari_cvdm.cli", "train", "--hq", str(hq), "--preset",
            "tiny", "-o", str(out), "--patch-size", "32", "--batch-size", "2",
            "--photons", "50", "100", "--checkpoint-every", "1", "--validate-every", "100000",
            "--device", "cpu"]
    proc = subprocess.Popen(args + ["--steps", "100000"], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not out.is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert out.is_file(), "training wrote no checkpoint"
        # Kill at an arbitrary moment, most likely in the middle of a checkpoint write.
        time.sleep(0.37)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    model = load_model(out)  # complete, whatever the moment of the kill
    step = _state_step(state_path(out))
    assert 1 <= model.metadata["training"]["step"] <= step
    # Temporary files may remain after SIGKILL; nothing reads them and resume ignores them.
    leftovers = list(tmp_path.glob(".*.part"))
    result = subprocess.run(args + ["--steps", str(step + 2), "--resume"], env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resumed from step {step}" in result.stderr
    assert load_model(out).metadata["training"]["step"] == step + 2
    assert set(tmp_path.glob(".*.part")) <= set(leftovers)  # the run itself leaves none
