"""PredictSettings: one set of defaults, choices and checks for every front end."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest

import napari_cvdm as nc
from napari_cvdm import layers
from napari_cvdm.cli import _parser
from napari_cvdm.settings import (
    MAX_SAMPLES,
    MAX_STEPS,
    SEED_RANGE,
    PredictSettings,
    reduce_seed,
)

FIELDS = [f.name for f in dataclasses.fields(PredictSettings)]


def _predict_args(argv):
    return _parser().parse_args(["predict", "in.tif", "-o", "out", *argv])


def test_command_line_defaults_are_the_settings_defaults():
    args = _predict_args([])
    assert {name: getattr(args, name) for name in FIELDS} == PredictSettings.defaults()


def test_library_functions_carry_no_defaults_of_their_own():
    for function in (nc.predict, layers.run_on_layer):
        parameters = inspect.signature(function).parameters
        assert parameters["model"].default is None  # None: the settings' model
        assert not set(FIELDS) & set(parameters) - {"model"}  # options come as **options
        assert parameters["settings"].default is None


def test_every_command_line_option_shows_help_and_its_default(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in FIELDS:
        flag = "--" + name.replace("_", "-")
        assert flag in text
    assert text.count("(default:") >= len(FIELDS)
    assert "(default: 8)" in text and "examples:" in text


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(["--version"])
    assert exit_.value.code == 0 and nc.__version__ in capsys.readouterr().out


@pytest.mark.parametrize("changes,match", [
    ({"samples": 0}, "samples must be at least 1"),
    ({"samples": MAX_SAMPLES + 1}, "samples must be at most"),
    ({"steps": MAX_STEPS + 1}, "steps must be at most"),
    ({"steps": 2.5}, "steps must be a whole number"),
    ({"eta": float("nan")}, "eta must be a finite number"),
    ({"eta": 1.5}, "eta must be between 0.0 and 1.0"),
    ({"sampler": "euler"}, "sampler must be one of ddim, reference"),
    ({"precision": "fp8"}, "precision must be one of auto, fp32, bf16, fp16"),
    ({"device": "tpu"}, "device must be auto, cpu"),
    ({"tile_size": 4}, "tile size must be at least 8"),
    ({"batch_size": 0}, "batch size must be at least 1"),
    ({"compile": "yes"}, "compile must be True or False"),
    ({"seed": 1.5}, "seed must be a whole number"),
    ({"model": " "}, "model must be"),
])
def test_each_bad_value_is_one_clear_value_error_naming_the_option(changes, match):
    with pytest.raises(ValueError, match=match) as err:
        PredictSettings(**changes)
    assert "--" not in str(err.value)  # plain words, not a command-line flag


def test_unknown_options_are_type_errors_listing_the_options():
    with pytest.raises(TypeError, match="unknown option.*samplez.*samples"):
        PredictSettings().replace(samplez=3)


@pytest.mark.parametrize("seed", [0, 5, -1, 2**63, 2**64 + 7, -(2**70), np.int64(-3),
                                  np.uint64(2**64 - 1)])
def test_any_integer_seed_is_reduced_deterministically_into_range(seed):
    used = reduce_seed(seed)
    assert 0 <= used < SEED_RANGE and used == int(seed) % SEED_RANGE
    assert PredictSettings(seed=seed).seed == used


def test_huge_and_numpy_seeds_run_and_are_recorded(tiny_model):
    image = np.random.default_rng(0).random((8, 8))
    big = nc.predict(image, tiny_model, samples=1, steps=1, seed=2**63 + 5)
    same = nc.predict(image, tiny_model, samples=1, steps=1, seed=np.int64(5))
    assert big.seed == same.seed == 5
    np.testing.assert_array_equal(big.mean, same.mean)


def test_keywords_override_a_settings_object(tiny_model):
    image = np.random.default_rng(0).random((8, 8))
    settings = PredictSettings(samples=3, steps=2, seed=4)
    result = nc.predict(image, tiny_model, settings=settings, samples=2)
    assert (result.samples, result.steps, result.seed) == (2, 2, 4)
    assert result.info["precision"] in ("fp32", "bf16")


def test_half_still_works_with_a_deprecation_warning(tiny_model):
    image = np.random.default_rng(0).random((8, 8))
    with pytest.warns(DeprecationWarning, match="half= is deprecated"):
        result = nc.predict(image, tiny_model, samples=1, steps=1, seed=0, half=False)
    assert result.info["precision"] == "fp32"


def test_fp16_on_the_cpu_is_refused_before_any_work(tiny_model):
    calls = []
    with pytest.raises(ValueError, match="fp16"):
        nc.predict(np.ones((8, 8)), tiny_model, samples=1, steps=1, device="cpu",
                   precision="fp16", progress=lambda d, t: calls.append(d))
    assert calls == []


def test_an_output_too_large_for_memory_is_refused_before_allocating_unless_lazy(tiny_model):
    zarr = pytest.importorskip("zarr")
    da = pytest.importorskip("dask.array")
    # A zarr array is read plane by plane into NumPy outputs: refused before any work.
    huge = zarr.zeros((30_000, 30_000), chunks=(4096, 4096), dtype=np.uint16)
    with pytest.raises(ValueError, match="GiB"):
        nc.predict(huge, tiny_model, samples=1, steps=1)
    # The same image as a dask array gives a lazy result that is never held whole.
    lazy = nc.predict(da.from_zarr(huge), tiny_model, samples=1, steps=1, tile_size=2048)
    assert isinstance(lazy.mean, da.Array) and lazy.mean.shape == (60_000, 60_000)


def test_the_model_files_normalisation_percentiles_are_used(tiny_model):
    image = np.random.default_rng(0).random((12, 12))
    image[0, 0] = 50.0  # one outlier: where it is clipped depends on the percentiles
    default = nc.predict(image, tiny_model, samples=1, steps=1, seed=0)
    tiny_model.metadata["normalization"] = {"percentiles": [0.1, 99.9], "range": [-1, 1]}
    same = nc.predict(image, tiny_model, samples=1, steps=1, seed=0)
    np.testing.assert_array_equal(default.mean, same.mean)
    tiny_model.metadata["normalization"] = {"percentiles": [5.0, 95.0], "range": [-1, 1]}
    other = nc.predict(image, tiny_model, samples=1, steps=1, seed=0)
    assert not np.array_equal(default.mean, other.mean)


def test_train_command_line_defaults_are_the_train_settings_defaults():
    from napari_cvdm.settings import TrainSettings

    args = _parser().parse_args(["train", "--hq", "x", "--steps", "5", "-o", "m"])
    skip = {"steps", "mean_network", "config_overrides"}
    for f in dataclasses.fields(TrainSettings):
        if f.name not in skip:
            assert getattr(args, f.name) == f.default, f.name


def test_numpy_numbers_are_kept_as_python_numbers(tiny_model):
    settings = PredictSettings(samples=np.int64(2), steps=np.int32(1), eta=np.float32(0.5))
    assert [type(v) for v in (settings.samples, settings.steps, settings.eta)] \
        == [int, int, float]
    image = np.random.default_rng(0).random((8, 8))
    result = nc.predict(image, tiny_model, samples=np.int64(2), steps=np.int16(1))
    assert type(result.samples) is int and type(result.steps) is int
    assert result.samples == 2 and result.steps == 1


def test_one_step_up_from_auto_in_the_widget_is_a_valid_setting():
    """Found by an audit: the PSF width box went 0 (auto) -> 0.25, which the settings
    refused (minimum 0.3) only when Run was pressed."""
    from dataclasses import fields

    from napari_cvdm._reconstruction_options import AUTO
    from napari_cvdm.settings import PredictSettings, check_field

    stepped = [f for f in fields(PredictSettings) if f.name in AUTO and "step" in f.metadata]
    assert stepped
    for f in stepped:
        check_field(f, AUTO[f.name] + f.metadata["step"])
