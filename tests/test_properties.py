"""Property-based tests (hypothesis): tiling, normalisation, predict on any finite input,
and fuzzing of the command line and of the TIFF reader. Each runs in a few seconds."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import napari_cvdm as nc
from napari_cvdm.cli import main
from napari_cvdm.io import ImageFile, read_tiff
from napari_cvdm.normalization import Normalization
from napari_cvdm.padding import padding_mask
from napari_cvdm.tiling import StatisticsBlender, tile_grid

from conftest import randomized

FAST = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


# -- tiling ------------------------------------------------------------------------------
@st.composite
def grids(draw):
    height = draw(st.integers(1, 70))
    width = draw(st.integers(1, 70))
    tile = draw(st.integers(1, 48))
    assume(-(-height // tile) * -(-width // tile) <= 400)  # the blender is O(tiles^2)
    overlap = draw(st.integers(0, max(tile - 1, 0)))  # predict() keeps it <= tile // 2
    return height, width, tile, overlap


@contextlib.contextmanager
def time_limit(seconds: int):
    """Turn a hang (e.g. a tiling loop that never advances) into a quick failure."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def expired(signum, frame):
        raise TimeoutError(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@FAST
@given(grids(), st.integers(0, 2**32 - 1))
@example(grid=(39, 34, 21, 20), seed=251)
def test_tiles_cover_the_image_and_blending_an_identity_model_gives_it_back(grid, seed):
    """A "model" that returns its input: mean = the tile's region, variance = 0 or a map."""
    height, width, tile, overlap = grid
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(height, width)) * 10 ** rng.uniform(-3, 6)
    variance = rng.random((height, width))
    with time_limit(5):
        tiles = tile_grid(height, width, tile, overlap)
    covered = np.zeros((height, width), int)
    for t in tiles:
        assert 0 <= t.y and t.y + t.height <= height and 0 <= t.x and t.x + t.width <= width
        assert t.height <= tile and t.width <= tile
        covered[t.slices] += 1
    assert covered.min() >= 1
    for var_map in (np.zeros_like(variance), variance):
        blender = StatisticsBlender(height, width, overlap)
        for t in tiles:
            blender.add(t, image[t.slices], var_map[t.slices])
        mean, var = blender.result()
        # Exact up to the rounding of the blender's accumulators (float32 or float64).
        eps = 4 * float(np.finfo(np.result_type(mean.dtype, np.float32)).eps)
        top = float(np.abs(image).max())
        np.testing.assert_allclose(mean, image, rtol=eps, atol=eps * top)
        # Tiles that agree leave the variance unchanged (no seam in the uncertainty map), up
        # to a few ulp per tile blended into a pixel (found by hypothesis: 9e-7 where all 266
        # tiles of 21 px with overlap 20 cover a 39 x 34 image).
        tol = eps * max(1, int(covered.max()))
        np.testing.assert_allclose(var, var_map, rtol=tol, atol=tol + (eps * top) ** 2)


@FAST
@given(grids())
def test_neighbouring_tiles_share_at_least_the_overlap(grid):
    height, width, tile, overlap = grid
    with time_limit(5):
        tiles = tile_grid(height, width, tile, overlap)
    for starts, size, length in (({t.y for t in tiles}, height, min(tile, height)),
                                 ({t.x for t in tiles}, width, min(tile, width))):
        starts = sorted(starts)
        for a, b in zip(starts, starts[1:]):
            assert a + length - b >= min(overlap, length - 1)
        assert starts[0] == 0 and starts[-1] + length == size


# -- normalisation -----------------------------------------------------------------------
finite_images = hnp.arrays(
    np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
    elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))


@FAST
@given(finite_images)
def test_normalisation_round_trips_within_float32_tolerance(image):
    norm = Normalization.fit(image, padding=True)  # as a prediction's input
    normalised = norm.apply(image)
    assert normalised.dtype == np.float32 and np.isfinite(normalised).all()
    back = norm.invert_mean(normalised)
    center = (norm.high + norm.low) / 2
    tol = 2e-7 * (np.abs(image - center) + norm.half_range + np.abs(image)) + 1e-30
    data = np.ones(image.shape, bool) if norm.padding is None else \
        ~padding_mask(image, norm.padding)  # padding is shown at the others' median
    assert np.all(np.abs(back.astype(np.float64) - image)[data] <= tol[data])
    if norm.padding is not None:
        assert norm.low <= norm.shown_as <= norm.high
        assert np.all(np.abs(normalised[~data]) <= 1 + 1e-6)
    inside = (image >= norm.low) & (image <= norm.high)
    assert np.all(np.abs(normalised[inside]) <= 1 + 1e-6)


@FAST
@given(finite_images, st.floats(1e-3, 1e3), st.floats(-1e6, 1e6),
       st.just(0.0) | st.floats(1e-6, 10))
def test_variance_scales_with_the_square_of_the_intensity_scale(image, a, b, v):
    """Normalising a * x + b and inverting a variance v gives a**2 times the result for x."""
    # Keep the range well above the rounding of the offset b (float64 has 16 digits).
    assume(a * np.ptp(image) > 1e-3 * (abs(b) + a * np.abs(image).max()))
    ref, scaled = Normalization.fit(image), Normalization.fit(a * image + b)
    np.testing.assert_allclose(scaled.invert_variance(np.float32(v)),
                               a**2 * ref.invert_variance(np.float32(v)), rtol=1e-5)
    np.testing.assert_allclose(scaled.apply(a * image + b), ref.apply(image), atol=1e-4)
    variance = np.full(image.shape, v, np.float32)
    # float32 outputs: a variance below its smallest number (an image spanning 1e-156:
    # 1e-312) is 0
    np.testing.assert_allclose(ref.invert_variance(variance), v * ref.half_range**2,
                               rtol=1e-6, atol=float(np.finfo(np.float32).smallest_subnormal))


# -- predict never returns NaN for finite input -------------------------------------------
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomized(nc.CVDM(nc.CVDMConfig.preset("tiny")))


DTYPES = [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64,
          np.float16, np.float32, np.float64]


@st.composite
def finite_inputs(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=10))
    if np.issubdtype(dtype, np.floating):
        info = np.finfo(dtype)
        bound = float(info.max)
        elements = st.floats(-bound, bound, allow_nan=False, allow_infinity=False,
                             width=8 * dtype.itemsize)
        # Mostly moderate values, sometimes anywhere in the type's range.
        scale = draw(st.sampled_from([1.0, 1e3, 1e-6, bound]))
        base = draw(hnp.arrays(dtype, shape, elements=st.floats(
            -1, 1, width=8 * dtype.itemsize)))
        with np.errstate(over="ignore"):
            image = (base.astype(np.float64) * scale).astype(dtype)
        if draw(st.booleans()):
            image.flat[draw(st.integers(0, image.size - 1))] = draw(elements)
    else:
        info = np.iinfo(dtype)
        image = draw(hnp.arrays(dtype, shape, elements=st.integers(int(info.min),
                                                                   int(info.max))))
    return image


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(image=finite_inputs())
def test_predict_never_returns_nan_for_finite_input(model, image):
    assume(np.isfinite(image.astype(np.float64)).all())
    before = image.copy()
    try:
        result = nc.predict(image, model, samples=2, steps=2, seed=0, device="cpu")
    except ValueError as exc:
        event(f"refused: {str(exc)[:40]}")
        # Only the documented refusals: the limits of float32 outputs, and shapes that
        # look like colour or channel axes (hypothesis draws (..., 10, 3) and (..., 10, 1)).
        assert re.search("float32|RGB|trailing axis", str(exc)), str(exc)
        return
    finally:
        np.testing.assert_array_equal(image, before)
    assert result.mean.shape == image.shape[:-2] + (image.shape[-2] * 2, image.shape[-1] * 2)
    assert np.isfinite(result.mean).all() and np.isfinite(result.variance).all()
    assert (result.variance >= 0).all()


# -- command-line fuzzing -----------------------------------------------------------------
OPTIONS = ["predict", "train", "info", "-o", "--output", "--model", "--samples", "--steps",
           "--eta", "--sampler", "--seed", "--device", "--tile-size", "--quiet", "--pairs",
           "--hq", "--preset", "--resume", "--batch-size", "--patch-size", "--lr",
           "--schedule", "--mean-network", "--validate-every", "--checkpoint-every",
           "--scale", "--psf", "--psf-sigma", "--photons", "--background", "--read-noise",
           "--help", "-h", "--", "-", "demo", "tiny", "small", "paper", "ddim", "reference",
           "cpu", "cuda", "cuda:3", "mps", "auto", "on", "off", "learned", "cosine", "airy"]
PATHS = [".", "junk.tif", "missing.tif", "out", "hq", "m.cvdm.safetensors", "m.pt",
         "junk.tif.cvdm.safetensors", "a b.tif", "ünï.tif", ""]
NUMBERS = st.one_of(st.integers(-10, 10**6).map(str),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["nan", "inf", "-inf", "1e400", "0x10", "1_000", "-0"]))
WORDS = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\\x00"),
                max_size=8).filter(lambda w: w not in ("..",))
TOKENS = st.one_of(st.sampled_from(OPTIONS), st.sampled_from(PATHS), NUMBERS, WORDS)
PATH_ARGS = st.one_of(st.sampled_from(PATHS), WORDS)
GARBAGE = st.one_of(st.sampled_from(["nan", "inf", "1e400", "0x10", "", "-"]), WORDS)
INTS = st.integers(-5, 10**9).map(str)
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.floats(-2, 2).map(repr))


def _choice(*names):
    return st.sampled_from(names)


OPTION_VALUES = {
    "--model": st.sampled_from(["demo", "m.pt", "m.cvdm.safetensors",
                                "junk.tif.cvdm.safetensors", "tiny"]),
    "--samples": INTS, "--steps": INTS, "--seed": INTS, "--tile-size": INTS,
    "--batch-size": INTS, "--patch-size": INTS, "--validate-every": INTS,
    "--checkpoint-every": INTS, "--scale": INTS,
    "--eta": FLOATS, "--lr": FLOATS, "--psf-sigma": FLOATS,
    "--sampler": _choice("ddim", "reference"), "--device": _choice("cpu", "auto", "cuda:3", "tpu"),
    "--preset": _choice("tiny", "small", "paper"), "--psf": _choice("gaussian", "airy"),
    "--schedule": _choice("learned", "linear", "cosine"), "--mean-network": _choice("on", "off"),
}
PREDICT_OPTIONS = ["--model", "--samples", "--steps", "--eta", "--sampler", "--seed",
                   "--device", "--tile-size"]
TRAIN_OPTIONS = ["--preset", "--batch-size", "--patch-size", "--lr", "--schedule",
                 "--mean-network", "--validate-every", "--checkpoint-every", "--seed",
                 "--device", "--scale", "--psf", "--psf-sigma"]
PAIR_OPTIONS = ["--photons", "--background", "--read-noise"]


def _value(draw, name):
    """Mostly a value of the option's type (odd ones included), sometimes garbage."""
    return draw(GARBAGE) if draw(st.integers(0, 9)) == 0 else draw(OPTION_VALUES[name])


@st.composite
def command_lines(draw):
    """Mostly well-formed commands with odd values; sometimes any tokens at all."""
    kind = draw(st.sampled_from(["predict", "train", "info", "tokens"]))
    if kind == "tokens":
        return draw(st.lists(TOKENS, max_size=12))
    if kind == "info":
        return ["info"] + draw(st.lists(TOKENS, max_size=1))
    if kind == "predict":
        argv = ["predict"] + draw(st.lists(PATH_ARGS, min_size=1, max_size=3))
        argv += ["-o", draw(PATH_ARGS)]
        names = PREDICT_OPTIONS
    else:
        argv = ["train"]
        if draw(st.booleans()):
            argv += ["--hq", draw(PATH_ARGS)]
        else:
            argv += ["--pairs", draw(PATH_ARGS), draw(PATH_ARGS)]
        argv += ["--steps", _value(draw, "--steps"), "-o", draw(PATH_ARGS)]
        names = TRAIN_OPTIONS
        for name in draw(st.lists(st.sampled_from(PAIR_OPTIONS), max_size=2, unique=True)):
            argv += [name, draw(FLOATS), draw(FLOATS)]
    for name in draw(st.lists(st.sampled_from(names), max_size=4, unique=True)):
        argv += [name, _value(draw, name)]
    if draw(st.booleans()):
        argv.append("--quiet" if kind == "predict" else "--resume")
    if draw(st.integers(0, 9)) == 0:
        argv.insert(draw(st.integers(1, len(argv))), draw(TOKENS))
    return argv


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_fuzz")
    (folder / "junk.tif").write_bytes(b"II*\x00 not really a TIFF")
    (folder / "junk.tif.cvdm.safetensors").write_bytes(b"\x00" * 40)
    (folder / "m.pt").write_bytes(b"PK\x03\x04 pretend zip")
    (folder / "hq").mkdir()
    return folder


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(command_lines())
def test_the_command_line_never_fails_with_anything_but_an_exit_code(fuzz_dir, monkeypatch,
                                                                     capsys, argv):
    monkeypatch.chdir(fuzz_dir)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: usage errors (2) and --help (0)
        assert exc.code in (0, 2)
        event(f"argparse exit {exc.code}")
    else:
        event(f"{argv[0] if argv else ''} returned {code}")
        assert isinstance(code, int) and code in (0, 1, 2, 130)
        if code == 2:
            err = capsys.readouterr().err.strip()
            assert err.startswith("cvdm ") and len(err.splitlines()) == 1, err
    capsys.readouterr()
    assert not list(fuzz_dir.rglob("*_cvdm_*.tif"))  # nothing ran far enough to write


# -- TIFF reader fuzzing -------------------------------------------------------------------
def _valid_tiffs() -> list[bytes]:
    out = []
    for kwargs in (dict(imagej=True, resolution=(1 / 0.2, 1 / 0.2),
                        metadata={"unit": "micron", "axes": "ZYX"}),
                   dict(ome=True, metadata={"PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1,
                                            "axes": "ZYX"}),
                   dict(compression="zlib")):
        buffer = io.BytesIO()
        data = np.arange(2 * 6 * 5, dtype=np.uint16).reshape(2, 6, 5)
        tifffile.imwrite(buffer, data, **kwargs)
        out.append(buffer.getvalue())
    return out


VALID_TIFFS = _valid_tiffs()


@st.composite
def mutated_tiffs(draw):
    raw = bytearray(VALID_TIFFS[draw(st.integers(0, len(VALID_TIFFS) - 1))])
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "word"]))
        if not raw:
            break
        pos = draw(st.integers(0, len(raw) - 1))
        if kind == "flip":
            raw[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            raw[pos] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del raw[pos:]
        elif kind == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del raw[pos:pos + draw(st.integers(1, 16))]
        else:  # a 16/32-bit field set to an extreme value (sizes, offsets, counts)
            value = draw(st.sampled_from([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]))
            raw[pos:pos + 4] = value.to_bytes(4, "little")
    return bytes(raw)


@pytest.fixture(scope="module")
def tiff_dir():
    folder = Path(tempfile.mkdtemp(prefix="tiff_fuzz"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@settings(max_examples=60, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(mutated_tiffs())
def test_the_tiff_reader_returns_an_image_or_a_value_error_for_any_bytes(tiff_dir,
                                                                       monkeypatch, raw):
    # A mutated header may declare a huge image; keep what it may allocate small here.
    monkeypatch.setattr("napari_cvdm.image_files.max_image_bytes", lambda: 64 * 2**20)
    path = tiff_dir / "fuzz.tif"
    path.write_bytes(raw)
    try:
        image = read_tiff(path)
    except ValueError as exc:
        assert str(path) in str(exc)
        event("ValueError")
        return
    event("read")
    assert isinstance(image, ImageFile) and isinstance(image.data, np.ndarray)
    if image.pixel_size is not None:
        assert all(np.isfinite(v) and v > 0 for v in image.pixel_size)


def test_the_unmutated_fuzz_seeds_are_read_with_their_pixel_size(tmp_path):
    for i, raw in enumerate(VALID_TIFFS):
        path = tmp_path / f"{i}.tif"
        path.write_bytes(raw)
        image = read_tiff(path)
        assert image.data.shape == (2, 6, 5)
        if i < 2:
            assert image.pixel_size == pytest.approx((0.2, 0.2) if i == 0 else (0.1, 0.1))


def test_a_range_whose_half_rounds_to_zero_is_constant_not_inf():
    image = np.array([[5e-324, 0.0]])        # the example hypothesis found (session 27)
    norm = Normalization.fit(image, padding=True)
    assert norm.is_constant and norm.half_range == 1.0
    normalised = norm.apply(image)
    assert np.isfinite(normalised).all() and np.abs(normalised).max() <= 1
