"""Procedural structures: the API contract, determinism, physical sizes and anti-aliasing."""

import re
import time

import numpy as np
import pytest

from napari_cvdm.structures import STRUCTURES, generate, generate_batch
from napari_cvdm.structures.curves import add_line, worm_like_chain
from napari_cvdm.structures.networks import honeycomb
from napari_cvdm.structures.organelles import ring_points, tube_surface_points
from napari_cvdm.structures.render import Canvas


def _horizontal_line(shape, pixel_nm, fwhm_nm, y_nm=None):
    """A straight, evenly labelled line across a canvas; returns the rendered image."""
    canvas = Canvas(shape, pixel_nm)
    height, width = canvas.extent_nm
    y = height / 2 if y_nm is None else y_nm
    line = np.array([[y, -100.0], [y, width + 100.0]])
    add_line(canvas, np.random.default_rng(0), line, fwhm_nm, brightness=1.0,
             density_per_nm=1e6, modulation=0.0)
    return canvas.render()


def _fwhm(profile, pixel_nm):
    """Full width at half maximum of a single-peaked profile, linearly interpolated."""
    half = profile.max() / 2
    above = np.flatnonzero(profile >= half)
    lo, hi = above[0], above[-1]
    left = lo - (profile[lo] - half) / (profile[lo] - profile[lo - 1])
    right = hi + (profile[hi] - half) / (profile[hi] - profile[hi + 1])
    return (right - left) * pixel_nm


def test_structure_names():
    assert STRUCTURES == ("microtubules", "actin", "er", "ccp", "mitochondria")


@pytest.mark.parametrize("kind", STRUCTURES)
def test_every_kind_is_a_float32_image_in_unit_range_with_dark_background(kind):
    image = generate(kind, (48, 80), 31.0, rng=3)
    assert image.shape == (48, 80) and image.dtype == np.float32
    assert np.isfinite(image).all()
    assert image.min() >= 0.0 and image.max() == pytest.approx(1.0)
    assert np.median(image) < 0.5  # structures on a darker background, not a flat field


@pytest.mark.parametrize("kind", STRUCTURES)
def test_same_seed_same_image_other_seed_other_image(kind):
    a = generate(kind, (64, 64), rng=11)
    np.testing.assert_array_equal(a, generate(kind, (64, 64), rng=np.random.default_rng(11)))
    assert not np.array_equal(a, generate(kind, (64, 64), rng=12))


def test_a_generator_is_advanced_so_consecutive_images_differ():
    rng = np.random.default_rng(5)
    assert not np.array_equal(generate("ccp", (32, 32), rng=rng), generate("ccp", (32, 32), rng=rng))


def test_batch_names_kinds_and_determinism():
    batch = generate_batch(["er", "ccp"], 12, shape=(32, 40), rng=7)
    assert len(batch) == 12
    for index, (image, name) in enumerate(batch):
        match = re.fullmatch(r"synthetic-(er|ccp)-(\d{4})", name)
        assert match and int(match.group(2)) == index
        assert image.shape == (32, 40) and image.dtype == np.float32
    assert {name.split("-")[1] for _, name in batch} == {"er", "ccp"}
    again = generate_batch(["er", "ccp"], 12, shape=(32, 40), rng=7)
    assert [n for _, n in again] == [n for _, n in batch]
    np.testing.assert_array_equal(again[5][0], batch[5][0])


@pytest.mark.parametrize("fwhm_nm, pixel_nm", [(25.0, 2.0), (25.0, 4.0), (80.0, 5.0)])
def test_line_cross_section_has_the_requested_physical_width(fwhm_nm, pixel_nm):
    image = _horizontal_line((64, 64), pixel_nm, fwhm_nm)
    profile = image[:, 8:-8].mean(axis=1)
    # the pixel box (variance pixel^2 / 12) and the fine splat (fine^2 / 6) add a little
    expected = np.sqrt(fwhm_nm**2 + 8 * np.log(2) * pixel_nm**2 * (1 / 12 + 1 / 96))
    assert _fwhm(profile, pixel_nm) == pytest.approx(expected, rel=0.06)


def test_microscope_resolution_widens_a_line_as_two_gaussians_combine():
    canvas = Canvas((96, 96), 10.0)
    line = np.array([[480.0, -100.0], [480.0, 1060.0]])
    add_line(canvas, np.random.default_rng(0), line, 25.0, 1.0, 1e6, modulation=0.0)
    sharp, blurred = canvas.render(), canvas.render(resolution_nm=110.0)
    middle = slice(20, 76)  # away from the ends, where the blur carries light out of view
    assert blurred[:, middle].sum() == pytest.approx(sharp[:, middle].sum(), rel=1e-3)
    width = _fwhm(blurred[:, middle].mean(axis=1), 10.0)
    assert width == pytest.approx(np.hypot(25.0, 110.0), rel=0.06)


@pytest.mark.parametrize("shift_px", [0.13, 0.25, 0.5, 0.77])
def test_sub_pixel_shift_keeps_total_intensity(shift_px):
    pixel = 31.0
    reference = _horizontal_line((32, 32), pixel, 25.0, y_nm=16 * pixel).sum()
    shifted = _horizontal_line((32, 32), pixel, 25.0, y_nm=(16 + shift_px) * pixel).sum()
    assert shifted == pytest.approx(reference, rel=0.01)


def test_total_intensity_is_independent_of_pixel_size():
    totals = []
    for pixel in (15.5, 31.0, 62.0):
        canvas = Canvas((int(1984 / pixel), int(1984 / pixel)), pixel)
        chain = worm_like_chain(np.random.default_rng(1), (900.0, 300.0), 0.3, 1200.0, 5e3)
        add_line(canvas, np.random.default_rng(2), chain, 25.0, 1.0, 1e6, modulation=0.0)
        totals.append(canvas.render().sum() * pixel**2)  # density x pixel area = fluorophores
    assert totals == pytest.approx([1200.0] * 3, rel=0.02)


def test_clathrin_ring_has_a_dimmer_centre_than_its_rim():
    canvas = Canvas((64, 64), 5.0)
    y, x = ring_points(np.random.default_rng(0), (160.0, 160.0), 150.0, canvas.point_spacing_nm)
    canvas.add_points(y, x, 1.0, 25.0)
    image = canvas.render()
    assert image[31:33, 31:33].mean() < 0.3 * image.max()
    rim_row = image[32, :]
    peaks = np.flatnonzero(rim_row > 0.8 * rim_row.max())
    assert (peaks.max() - peaks.min()) * 5.0 == pytest.approx(150.0, abs=25.0)


def test_mitochondrion_is_hollow_with_a_bright_outer_membrane():
    canvas = Canvas((96, 96), 10.0)
    centreline = np.array([[480.0, -500.0], [480.0, 1500.0]])
    points = tube_surface_points(np.random.default_rng(0), centreline, 200.0, 5.0)
    canvas.add_points(points[:, 0], points[:, 1], 1.0, 40.0)
    profile = canvas.render()[:, 20:76].mean(axis=1)
    rim = profile.max()
    assert profile[47:49].mean() < 0.6 * rim  # dim lumen
    edges = np.flatnonzero(profile > 0.8 * rim)
    assert (edges.max() - edges.min()) * 10.0 == pytest.approx(400.0, abs=60.0)  # 2 x radius


def test_er_network_joins_tubules_in_three_way_junctions():
    vertices, edges = honeycomb(np.random.default_rng(0), (8000.0, 8000.0), 500.0, 0.0)
    degree = np.bincount(edges.ravel(), minlength=len(vertices))
    centre = np.all(np.abs(vertices - 4000.0) < 2500.0, axis=1)
    assert np.all(degree[centre] == 3)
    lengths = np.linalg.norm(vertices[edges[:, 0]] - vertices[edges[:, 1]], axis=1)
    assert np.median(lengths) == pytest.approx(500.0, rel=0.2)


def test_microtubules_are_long_and_gently_curved():
    chain = worm_like_chain(np.random.default_rng(0), (0.0, 0.0), 0.0, 20e3, 20e3, 50.0)
    tangents = np.diff(chain, axis=0)
    turn = np.abs(np.diff(np.unwrap(np.arctan2(tangents[:, 0], tangents[:, 1]))))
    assert np.degrees(turn).max() < 15  # no kinks between 50 nm steps
    end_to_end = np.linalg.norm(chain[-1] - chain[0])
    assert 0.5 * 20e3 < end_to_end <= 20e3  # stiff: most of its length spans the field


@pytest.mark.parametrize("kind", STRUCTURES)
def test_a_training_sized_image_renders_quickly(kind):
    start = time.perf_counter()
    generate(kind, (256, 256), rng=0)
    assert time.perf_counter() - start < 2.0  # about 0.1 s on one core; generous for CI


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "nuclei"}, "microtubules, actin, er, ccp, mitochondria"),
    ({"pixel_size_nm": 0.0}, "pixel_size_nm"),
    ({"pixel_size_nm": -31.0}, "pixel_size_nm"),
    ({"pixel_size_nm": float("nan")}, "pixel_size_nm"),
    ({"shape": (15, 64)}, "at least 16"),
    ({"resolution_nm": -1.0}, "resolution_nm"),
    ({"shape": (64,)}, "shape"),
])
def test_bad_arguments_raise_value_error(kwargs, message):
    arguments = {"kind": "microtubules", "shape": (32, 32), "pixel_size_nm": 31.0, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        generate(**arguments)


def test_bad_batch_arguments_raise_value_error():
    with pytest.raises(ValueError, match="unknown structure 'golgi'"):
        generate_batch(["er", "golgi"], 2)
    with pytest.raises(ValueError, match="at least one"):
        generate_batch([], 2)
    with pytest.raises(ValueError, match="non-negative"):
        generate_batch(["er"], -1)
