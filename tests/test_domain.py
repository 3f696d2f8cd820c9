"""Warnings for inputs unlike the training data: noise, transmitted light, far-off pixel sizes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_cvdm.domain import (RELIEF_CORRELATION, RELIEF_MEDIAN, RELIEF_SKEW, _box_mean,
                                _unit_image, input_warnings, looks_like_labels,
                                looks_like_noise, looks_like_relief, looks_transmitted,
                                neighbour_correlation, pixel_size_nm, relief_skew,
                                flat_value, repeated_pixels, saturated_share)


class _Model:
    metadata = {"intended": {"input_pixel_size_nm": [50, 80]}}


def test_fluorescence_passes_and_an_inverted_image_is_flagged(nuclei_widefield):
    assert input_warnings(nuclei_widefield, _Model()) == []
    inverted = nuclei_widefield.max() - nuclei_widefield
    assert looks_transmitted(inverted)
    (message,) = input_warnings(inverted, _Model())
    assert "transmitted light" in message and "fluorescence" in message


def test_a_brightfield_like_image_is_flagged():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128]
    cells = 0.35 * np.exp(-((yy - 64) ** 2 + (xx - 50) ** 2) / 300.0)
    image = (1000 * (0.8 - cells) + rng.normal(0, 10, (128, 128))).astype(np.float32)
    assert looks_transmitted(image)


@pytest.mark.parametrize("size,unit,warned", [(0.065, "µm", False), (65, "nm", False),
                                              (0.065, "um", False), (0.2, "µm", True),
                                              (10, "nm", True), (None, None, False),
                                              (0.2, "pixel", False)])
def test_pixel_size_far_from_the_model_is_flagged(nuclei_widefield, size, unit, warned):
    out = input_warnings(nuclei_widefield, _Model(), size, unit)
    assert bool(out) == warned
    if warned:
        assert "pixel size" in out[0] and "50-80 nm" in out[0]


def test_pixel_size_units():
    assert pixel_size_nm(0.1, "µm") == pytest.approx(100)
    assert pixel_size_nm(2, "s") is None
    assert pixel_size_nm(None, "µm") is None


def test_a_model_without_declared_pixel_size_only_checks_the_image(nuclei_widefield):
    class Bare:
        metadata = {}

    assert input_warnings(nuclei_widefield, Bare(), 5.0, "µm") == []


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_non_finite_input_gets_no_numpy_warnings(bad):
    # The input checks reject such an image with their own message; the domain check must
    # not print NumPy's "invalid value" warnings before it.
    image = np.ones((64, 64), np.float32)
    image[:, :40] = bad
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert looks_transmitted(image) is False
        input_warnings(image, _Model())


@pytest.mark.parametrize("kind", ["uniform", "gaussian", "poisson"])
def test_pure_noise_is_named_as_noise_not_as_transmitted_light(kind):
    rng = np.random.default_rng(3)
    image = {"uniform": lambda: rng.random((200, 300)),
             "gaussian": lambda: rng.normal(100, 5, (200, 300)),
             "poisson": lambda: rng.poisson(3.0, (200, 300))}[kind]()
    assert looks_like_noise(image)
    (message,) = input_warnings(image, _Model())
    assert "noise without structure" in message and "transmitted" not in message


def test_a_dim_but_real_widefield_image_is_not_noise(nuclei_widefield):
    # Shot noise at about 20 photons at the brightest structure, the model's lowest
    # training signal, on top of a background of 10: still well correlated.
    rng = np.random.default_rng(0)
    clean = nuclei_widefield.astype(np.float64)
    dim = rng.poisson(10 + 20 * (clean - clean.min()) / np.ptp(clean)).astype(np.float32)
    assert not looks_like_noise(dim) and neighbour_correlation(dim) > 0.1
    assert input_warnings(dim, _Model()) == []
    assert neighbour_correlation(np.ones((50, 50))) is None  # a constant image says nothing
    assert neighbour_correlation(np.ones((1, 50))) is None


def test_padding_inside_the_images_range_is_not_taken_for_relief(nuclei_widefield):
    """Found reading session 25's change: padding kept as data (a fill inside the image's
    range) fell through to the transmitted-light and relief checks, which the padding's
    flat grey skews; a bright fill along two edges was named DIC or phase contrast."""
    padded = nuclei_widefield.copy()
    padded[:64] = padded[:, :64] = np.percentile(nuclei_widefield, 99).astype(padded.dtype)
    assert flat_value(padded)[0] == "padding kept"
    assert looks_like_relief(padded, neighbour_correlation(padded))  # what the skip is for
    messages = [str(w) for w in input_warnings(padded, _Model())]
    assert len(messages) == 1 and "padding" in messages[0], messages


def test_tiny_and_subnormal_values_are_constant_not_an_overflow():
    """Found by the property test in CI: a plane of zeros with one subnormal value (5e-324)
    raised OverflowError in the noise check (its inverse squared); values of at most 1e-6
    vary by under 1e-12 in the plane's units, which the check calls constant."""
    for tiny in (5e-324, 1e-200, 1e-7):
        plane = np.zeros((64, 64))
        plane[::3, ::5] = tiny
        assert neighbour_correlation(plane) is None, tiny
        assert not looks_like_noise(plane)
    scaled = np.random.default_rng(0).random((64, 64)) * 1e-3  # variance 8e-8: not constant
    assert neighbour_correlation(scaled) is not None


def _objects(nuclei_widefield) -> np.ndarray:
    """The sample's nuclei as optical path (0-1.5), smoothed a little."""
    x = nuclei_widefield.astype(np.float64)
    low, high = np.percentile(x, (1, 99.9))
    return _box_mean(np.clip((x - low) / (high - low), 0, 1.5), 2)


def test_dic_on_a_mid_grey_background_is_flagged(nuclei_widefield):
    # DIC shows an object's path difference along the shear, about as much darker as brighter
    # than a mid-grey background (the bias adds a little of its square: both edges brighten,
    # the median falls below 0.5). The dark-on-bright rule misses it; the relief rule does not.
    rng = np.random.default_rng(1)
    path = _objects(nuclei_widefield)
    shear = np.roll(path, 1, 1) - np.roll(path, -1, 1)
    shear /= np.abs(shear).max()
    dic = rng.poisson(3000 * (0.5 + 0.4 * shear + 0.1 * shear**2)).astype(np.float32)
    before = dic.copy()
    assert not looks_transmitted(dic)
    assert relief_skew(dic) < RELIEF_SKEW and looks_like_relief(dic)
    (message,) = input_warnings(dic, _Model())
    assert "DIC or phase contrast" in message and "fluorescence" in message
    np.testing.assert_array_equal(dic, before)  # the checks never modify the input


def test_hazy_fluorescence_with_a_mid_grey_median_is_not_taken_for_dic(nuclei_widefield):
    # Out-of-focus light lifts the median of fluorescence to mid-grey and its neighbours are
    # well correlated, but its structure is still brighter than its surroundings.
    rng = np.random.default_rng(2)
    path = _objects(nuclei_widefield)
    haze = _box_mean(_box_mean(path, 80), 80)
    hazy = rng.poisson(20 + 2000 * (path + 16 * haze / haze.max())).astype(np.float32)
    assert RELIEF_MEDIAN[0] <= float(np.median(_unit_image(hazy))) <= RELIEF_MEDIAN[1]
    assert neighbour_correlation(hazy) >= RELIEF_CORRELATION
    assert relief_skew(hazy) > 2 * RELIEF_SKEW and not looks_like_relief(hazy)
    assert input_warnings(hazy, _Model()) == []


def test_a_dim_out_of_focus_plane_is_not_taken_for_dic(nuclei_widefield):
    # The end planes of a confocal stack: a little out-of-focus light under shot noise. Its
    # relief is symmetric noise about a mid-grey median, as DIC's is, but its neighbours are
    # barely correlated: below RELIEF_CORRELATION the relief rule says nothing.
    rng = np.random.default_rng(4)
    haze = _box_mean(_box_mean(_objects(nuclei_widefield), 30), 30)
    dim = rng.poisson(10 + 10 * haze / haze.max()).astype(np.float32)
    assert RELIEF_MEDIAN[0] <= float(np.median(_unit_image(dim))) <= RELIEF_MEDIAN[1]
    assert relief_skew(dim) < RELIEF_SKEW and not looks_like_noise(dim)
    assert neighbour_correlation(dim) < RELIEF_CORRELATION
    assert not looks_like_relief(dim) and input_warnings(dim, _Model()) == []


@pytest.mark.parametrize("kind", ["haze", "blob", "ramp"])
def test_smooth_light_at_a_useful_signal_is_not_taken_for_dic(nuclei_widefield, kind):
    # Out-of-focus haze at 100-1000 photons, a wide bright blob, a noisy ramp: a symmetric
    # relief about a mid-grey median with correlated neighbours, as DIC has, but a small one
    # beside the image's own variation (RELIEF_SHARE)
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:256, :256]
    haze = _box_mean(_box_mean(_objects(nuclei_widefield), 30), 30)
    image = {"haze": lambda: rng.poisson(100 + 100 * haze / haze.max()),
             "blob": lambda: rng.poisson(100 + 5000 * np.exp(-((yy - 128) ** 2 + (xx - 128) ** 2)
                                                             / (2 * 150.0**2))),
             "ramp": lambda: rng.poisson(100 + 5 * (xx + yy))}[kind]().astype(np.float32)
    assert relief_skew(image) < RELIEF_SKEW and neighbour_correlation(image) >= RELIEF_CORRELATION
    assert not looks_like_relief(image)
    assert not any("DIC or phase contrast" in m for m in input_warnings(image, _Model()))


def test_relief_skew_has_the_sign_of_the_structure_and_says_nothing_on_tiny_or_flat_planes():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:96, :96]
    spots = sum(np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4.0)
                for y, x in rng.integers(8, 88, (12, 2)))
    assert relief_skew(100 + 50 * spots) > 0.3
    assert relief_skew(100 - 50 * spots) < -0.3
    assert relief_skew(np.ones((96, 96))) is None
    assert relief_skew(rng.random((40, 96))) is None  # too small for a 12-pixel local mean
    assert looks_like_relief(np.full((96, 96), np.nan)) is False


@pytest.mark.parametrize("sizes,units,far,square", [
    ((0.065, 0.065), "µm", False, True),
    ((0.2, 0.065), "µm", True, False),     # Y far off and not square: X alone was checked
    ((66, 60), ("nm", "nm"), False, True),  # within 10 %: square enough
    ((0.1, 0.065), ("µm", "µm"), False, False),
    ((0.2, 0.065), ("pixel", "µm"), False, True),  # Y has no length: X alone
    ((None, 0.065), "µm", False, True)])
def test_each_axis_pixel_size_is_checked_and_pixels_that_are_not_square_are_flagged(
        nuclei_widefield, sizes, units, far, square):
    out = input_warnings(nuclei_widefield, _Model(), sizes, units)
    assert any("pixel size" in m and "along Y" in m for m in out) == far
    assert any("not square" in m for m in out) == (not square)
    assert len(out) == far + (not square)


def test_one_sample_is_said_to_measure_no_uncertainty(nuclei_widefield):
    (message,) = input_warnings(nuclei_widefield, _Model(), samples=1)
    assert "one sample" in message and "at least 2 samples" in message
    assert input_warnings(nuclei_widefield, _Model(), samples=2) == []


def test_a_hot_pixel_does_not_make_a_real_image_noise(nuclei_widefield):
    # hot pixels and cosmic rays are routine on sCMOS/EMCCD cameras
    image = nuclei_widefield.astype(np.float32)
    for y, x in ((10, 10), (100, 200), (240, 30)):
        image[y, x] = 50 * image.max()
    assert neighbour_correlation(image) > 0.5
    assert input_warnings(image, _Model()) == []


def test_label_images_and_masks_are_flagged_and_integer_fluorescence_is_not(nuclei_widefield,
                                                                           nuclei_truth):
    labels = (nuclei_truth > np.percentile(nuclei_truth, 70)).astype(np.uint16)
    labels[:, 256:] *= 2  # two "objects" of other labels
    mask = (labels > 0).astype(np.uint8) * 255
    for image in (labels, mask):
        assert looks_like_labels(image)
        (message,) = input_warnings(image, _Model())
        assert "label image or a mask" in message
    rng = np.random.default_rng(0)
    clean = nuclei_widefield.astype(np.float64)
    dim = rng.poisson(2 + 30 * (clean - clean.min()) / np.ptp(clean)).astype(np.uint16)
    assert not looks_like_labels(dim) and not looks_like_labels(nuclei_widefield)
    assert input_warnings(dim, _Model()) == []


def test_a_saturated_image_is_flagged(nuclei_widefield):
    image = nuclei_widefield.astype(np.float64)
    clipped = np.minimum(image, np.percentile(image, 95)).astype(np.uint16)
    (message,) = input_warnings(clipped, _Model())
    assert "5% of the pixels" in message and "saturated" in message
    assert saturated_share(nuclei_widefield) < 0.01
    assert saturated_share(np.ones((8, 8))) == 0.0


@pytest.mark.parametrize("nm,warned", [(35, True), (43, False), (120, False), (135, True)])
def test_a_super_resolved_pixel_size_is_far_from_a_widefield_model(nuclei_widefield, nm,
                                                                   warned):
    # 35 nm: a SIM/STED/Airyscan image given as input; 43 nm: widefield at 150x
    assert bool(input_warnings(nuclei_widefield, _Model(), nm, "nm")) == warned


def test_every_part_of_a_stack_is_checked_and_the_planes_are_named(nuclei_widefield):
    inverted = nuclei_widefield.max() - nuclei_widefield
    stack = np.stack([inverted, nuclei_widefield, nuclei_widefield])  # a brightfield channel
    (message,) = input_warnings(stack, _Model())
    assert message.startswith("plane 0 (of 3, 3 checked): the image looks like transmitted")
    (message,) = input_warnings(np.stack([inverted] * 3), _Model())
    assert message.startswith("the image looks like transmitted")
    long = np.stack([nuclei_widefield] * 20)
    long[-1] = inverted  # the last frame is always among the checked ones
    (message,) = input_warnings(long, _Model())
    assert message.startswith("plane 19 (of 20, 8 checked)")
    assert input_warnings(np.stack([nuclei_widefield] * 2)[None], _Model()) == []


def test_a_few_beads_are_not_noise():
    # structure rarer than the clipped share (beads for a PSF check) must not be clipped away
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:1024, :1024]
    beads = np.zeros((1024, 1024))
    for y, x in rng.integers(50, 974, (10, 2)):
        beads += 2000 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5 ** 2))
    image = rng.poisson(100 + beads).astype(np.float32)
    assert neighbour_correlation(image) > 0.3
    assert input_warnings(image, _Model()) == []
    # too rare to move the relief's bulk, which is noise about a mid-grey median: the
    # extremes say they are bright structures, not a DIC relief
    assert relief_skew(image) < RELIEF_SKEW and not looks_like_relief(image)


def test_every_channel_of_a_hyperstack_is_checked(nuclei_widefield):
    # (T, C, Y, X) with a brightfield channel: an even spread over the flattened planes can
    # fall in step with the channel period and miss it
    inverted = nuclei_widefield.max() - nuclei_widefield
    for t, c in ((7, 3), (4, 2), (9, 5)):
        stack = np.stack([np.stack([inverted if ch == 1 else nuclei_widefield
                                    for ch in range(c)])] * t)
        (message,) = input_warnings(stack[..., :64, :64], _Model())
        assert "transmitted light" in message, (t, c)


def test_a_float_mask_is_a_mask_and_empty_images_say_nothing(nuclei_truth):
    mask = (nuclei_truth > np.percentile(nuclei_truth, 70)).astype(np.float32)
    (message,) = input_warnings(mask, _Model())
    assert "label image or a mask" in message
    assert input_warnings(np.zeros((0, 10, 10)), _Model()) == []


def _spots(shape, seed=0, background=10.0, photons=300.0):
    """Widefield-like: points blurred over a few pixels, with shot noise."""
    rng = np.random.default_rng(seed)
    points = np.zeros(shape)
    points[rng.integers(0, shape[0], shape[0] // 2), rng.integers(0, shape[1], shape[1] // 2)] = 1
    clean = _box_mean(_box_mean(points, 2), 2)
    clean = np.clip(clean / clean.max(), 0, None)  # the box means' rounding: no -1e-17
    return rng.poisson(clean * photons + background).astype(np.float64)


def test_a_small_far_brighter_object_that_sets_the_contrast_is_named(nuclei_widefield):
    image = _spots((128, 128))
    assert input_warnings(image, _Model()) == []
    low, high = np.percentile(image, (0.1, 99.9))
    bead = np.zeros_like(image)
    bead[40:42, 80:82] = 1.0
    bead = _box_mean(_box_mean(bead, 1), 1)
    beaded = image + bead / bead.max() * 100 * (high - low)
    (message,) = input_warnings(beaded, _Model())
    assert "brightest 1% of the pixels" in message and "crop the bright object" in message
    assert input_warnings(nuclei_widefield, _Model()) == []  # sparse nuclei: not one


def test_a_large_field_empty_in_its_centre_is_not_called_noise():
    """The checks read the central 1024 x 1024: a large field with cells away from its
    centre was called noise, 'do not trust the result'."""
    rng = np.random.default_rng(1)
    field = rng.poisson(100, (2048, 2048)).astype(np.float64)
    assert any("looks like noise" in m for m in input_warnings(field, _Model()))
    field[1600:2000, 1600:2000] += _spots((400, 400), seed=2, background=0)  # off the centre
    assert input_warnings(field, _Model()) == []


def test_sparse_puncta_all_alike_are_structure_not_a_bright_object():
    """A bead slide or vesicles: the brightest 1% of the pixels are the structure itself."""
    rng = np.random.default_rng(1)
    points = np.zeros((512, 512))
    points[rng.integers(8, 504, 40), rng.integers(8, 504, 40)] = 1.0
    clean = np.clip(_box_mean(_box_mean(points, 1), 1), 0, None)
    image = rng.poisson(clean / clean.max() * 500 + 5).astype(np.uint16)
    assert input_warnings(image, _Model()) == []


@pytest.mark.parametrize("image", [np.full((64, 64), 7, np.uint16), np.zeros((32, 32)),
                                   np.ones((1, 1), np.float32)])
def test_a_constant_image_has_no_brighter_object(image):
    """Found by a review: a constant image (no range) was said to have a small, far brighter
    object (all its brightest 1% "span 100% of the range" in zero objects)."""
    import napari_cvdm

    assert not any("brighter" in m for m in input_warnings(image, _Model()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = napari_cvdm.predict(image, "demo", samples=2, steps=1)
    assert not any("brighter" in str(w.message) for w in caught)
    np.testing.assert_array_equal(result.variance, 0)


def test_an_object_array_gets_no_crash_from_the_checks():
    from napari_cvdm.domain import _image_warnings

    assert _image_warnings(np.array([[1, 2], [3, 4]], dtype=object)) == []


def test_an_image_enlarged_without_interpolation_is_named(nuclei_widefield):
    """Found by reading: an image enlarged for display (each camera pixel repeated) was
    reconstructed without a word, as if its structures were that many times larger."""
    crop = nuclei_widefield[:96, :96]
    (message,) = input_warnings(np.kron(crop, np.ones((2, 2), crop.dtype)), _Model())
    assert "repeat in blocks of 2 x 2 (Y x X)" in message
    (message,) = input_warnings(np.repeat(crop, 3, axis=1)[:, 1:], _Model())  # any phase
    assert "runs of 3 along X" in message
    assert repeated_pixels(np.kron(crop, np.ones((4, 4), crop.dtype))) == {"Y": 4, "X": 4}
    # flat regions repeat across blocks as well: a mostly dark, dim image is not enlarged
    rng = np.random.default_rng(1)
    sparse = rng.poisson(0.05, (128, 128)).astype(np.uint16)
    assert repeated_pixels(sparse) == {} and repeated_pixels(nuclei_widefield) == {}


def test_saturation_anywhere_in_a_camera_frame_is_flagged():
    """Found by a review: saturation was judged on the central crop the checks read, so a
    clipped cell in a corner of a camera frame (larger than the crop) said nothing."""
    frame = _spots((2200, 2200), photons=2000.0, background=100.0)
    frame[:300, :300] = 2500.0  # an over-exposed cell in a corner, outside the central crop
    frame = np.minimum(frame, 2500.0)
    (message,) = input_warnings(frame, _Model())
    assert "saturated" in message and "2% of the pixels" in message
    from napari_cvdm.psf_width import central_plane

    assert saturated_share(central_plane(frame)) < 0.01  # the crop alone: below the bar


def test_padding_from_registration_or_stitching_is_named(nuclei_widefield):
    """Found by a review: a flat border (registration, stitching; NaNs filled with a value)
    sets the contrast the real pixels are reconstructed with (their result changed by 16 %,
    against 3 % between seeds) and was not warned about."""
    real = nuclei_widefield[:100, :96]
    for fill in (0, int(np.median(real)), 65535):
        canvas = np.full((128, 128), fill, real.dtype)
        canvas[10:110, 20:116] = real
        messages = [str(w) for w in input_warnings(canvas, _Model())]
        # (the 16-bit maximum is named as saturation too)
        assert len(messages) == (2 if fill == 65535 else 1), messages
        assert any(f"is exactly {fill}, in flat regions along its edges: padding" in m
                   for m in messages)
        kind, value, share = flat_value(canvas)  # (real pixels may hold the value too)
        # zeros (the nuclei's own floor) and the median are data; the maximum is left out
        assert (kind, value) == ("padding" if fill == 65535 else "padding kept", fill)
        assert share >= 1 - 100 * 96 / 128**2
    for band in (4, 8, 16):  # bands along two edges: 3-12 % of the plane
        banded = nuclei_widefield.copy()
        banded[:band] = 0
        banded[:, :band] = 0
        assert flat_value(banded)[0] == "padding kept", band  # zeros: the nuclei's own floor
    rng = np.random.default_rng(3)
    for photons in (0.3, 0.76):  # photon counts: zeros, but scattered everywhere
        assert flat_value(rng.poisson(photons, (256, 256)).astype(np.uint16)) is None
    assert flat_value(nuclei_widefield) is None


def test_a_border_outside_the_checked_crop_of_a_large_plane_is_named(nuclei_widefield):
    frame = np.tile(nuclei_widefield, (8, 8)).astype(np.float32) + 1000  # a camera offset
    frame[:200] = 0
    frame[-200:] = 0
    (message,) = input_warnings(frame, _Model())
    assert "20% of the image is exactly 0" in message and "padding" in message


def test_a_background_clipped_at_zero_is_named_as_such(nuclei_widefield):
    offset = int(np.percentile(nuclei_widefield, 85))  # an offset set too low
    clipped = np.clip(nuclei_widefield.astype(np.int32) - offset, 0, None)
    (message,) = input_warnings(clipped.astype(np.uint16), _Model())
    assert "its lowest value: the background is clipped" in message
    assert "padding" not in message


def test_counts_far_below_the_trained_signal_are_named(nuclei_truth):
    """Found by a review: a photon-counting image of 0.8 counts per pixel (most pixels 0 or
    1, 8 at most) passed without a word; the model was trained from 20 photons."""
    class Trained(_Model):
        metadata = {"training": {"data": {"mode": "simulated",
                                          "degradation": {"photons": [20.0, 10000.0]}}}}

    rng = np.random.default_rng(0)
    truth = nuclei_truth[:128, :128].astype(np.float64)
    dim = rng.poisson(3 * truth / truth.max()).astype(np.uint16)  # 0 to about 9 counts
    messages = input_warnings(dim, Trained())
    assert any("far fewer photons than the model was trained with (20 or more" in m
               for m in messages)
    brighter = rng.poisson(30 * truth / truth.max() + 5).astype(np.uint16)
    assert not any("far fewer photons" in m for m in input_warnings(brighter, Trained()))
    assert not any("far fewer photons" in m for m in input_warnings(dim.astype(np.float32),
                                                                   Trained()))


def test_a_noisy_background_cut_at_zero_is_named_though_its_zeros_are_scattered():
    """Found by a review: a real widefield image with its background subtracted and clipped
    at the median (half the pixels 0, scattered by the background's noise: not flat) passed
    without a word and lost 3 dB."""
    from conftest import structure

    rng = np.random.default_rng(4)
    raw = structure(256, 256).astype(np.float64) + rng.normal(0, 20, (256, 256))
    for share in (20, 50):
        cut = np.clip(raw - np.percentile(raw, share), 0, None).astype(np.uint16)
        kind, value, found = flat_value(cut)
        assert kind == "clipped" and value == 0 and found >= share / 100 - 0.02
    assert flat_value(raw.astype(np.uint16)) is None
    for photons in (0.1, 0.3, 1.6):  # dim photon counts: zeros, then ones, twos
        assert flat_value(rng.poisson(photons, (256, 256)).astype(np.uint16)) is None


def test_a_small_crop_is_not_judged_transmitted_light(nuclei_widefield):
    """Found by a review: 16-48 pixel crops of real widefield were called DIC or
    transmitted light (1-20 % of them); the modality is judged from 64 pixels on."""
    inverted = nuclei_widefield.max() - nuclei_widefield
    assert any("transmitted light" in m for m in input_warnings(inverted[:64, :80], _Model()))
    assert not any("transmitted light" in m or "DIC" in m
                   for m in input_warnings(inverted[:48, :80], _Model()))


def test_an_image_of_a_few_grey_levels_is_named_but_dim_counts_are_not():
    """Found by a review: a real widefield image exported to 8 bits with 4 levels lost 3 dB,
    and its only warning blamed saturation."""
    from conftest import structure

    from napari_cvdm.domain import posterised_levels

    rng = np.random.default_rng(5)
    raw = structure(128, 128).astype(np.float64) + rng.normal(0, 15, (128, 128))
    unit = (raw - raw.min()) / (raw.max() - raw.min())
    for levels in (4, 16):
        stepped = (np.round(unit * (levels - 1)) * (255 // (levels - 1))).astype(np.uint8)
        assert posterised_levels(stepped) == len(np.unique(stepped))
        assert any("grey levels, spaced apart" in m for m in input_warnings(stepped, _Model()))
    assert posterised_levels(np.round(unit * 3) / 3) == 4  # float levels too
    assert posterised_levels(raw) is None
    assert posterised_levels(raw.astype(np.uint16)) is None
    for photons in (0.3, 1.6, 5.0):  # a few counts, one apart
        assert posterised_levels(rng.poisson(photons, (128, 128)).astype(np.uint16)) is None
