"""Padding (registration, stitching, a rotated canvas) is left out of the normalisation and
shown to the model at the image's median level: the real pixels are reconstructed as
without it (to the few percent a flat region costs)."""

from __future__ import annotations

import numpy as np
import pytest

import napari_cvdm as nc
from napari_cvdm.normalization import Normalization
from napari_cvdm.domain import flat_value
from napari_cvdm.padding import find, padding_mask

OPTIONS = dict(samples=2, steps=2, seed=5, tile_size=64, precision="fp32", check_input=False)


def _canvas(real: np.ndarray, fill, offset=(12, 20), side=None) -> np.ndarray:
    h, w = real.shape
    side = side or (h + offset[0] + 6, w + offset[1] + 4)
    canvas = np.full(side, fill, real.dtype)
    canvas[offset[0]:offset[0] + h, offset[1]:offset[1] + w] = real
    return canvas


@pytest.fixture
def real(nuclei_widefield):
    return (nuclei_widefield[:100, :96].astype(np.uint16) + 300)  # a camera offset: no zeros


@pytest.mark.parametrize("fill", [0, 65535])
def test_padding_is_left_out_of_the_percentiles(real, fill):
    canvas = _canvas(real, fill)
    norm = Normalization.fit(canvas, padding=True)
    alone = Normalization.fit(real[1:-1, 1:-1])  # the pixels next to padding are left out too
    assert (norm.low, norm.high, norm.padding) == (alone.low, alone.high, float(fill))
    # before: zeros set the low percentile, the maximum the high one
    counted = np.percentile(canvas.astype(np.float64), (0.1, 99.9))
    assert counted[0 if fill == 0 else 1] == fill
    assert canvas[12, 20] == real[0, 0] and canvas[0, 0] == fill  # the input is untouched


def test_padding_is_shown_at_the_median(real):
    canvas = _canvas(real, 0)
    norm = Normalization.fit(canvas, padding=True)
    mask = padding_mask(canvas, 0)
    assert norm.padding == 0 and norm.shown_as == np.median(canvas[~mask])
    x = norm.apply(canvas)
    level = Normalization(norm.low, norm.high).apply(np.array([[norm.shown_as]]))[0, 0]
    assert np.all(x[:12] == level) and np.all(x[:, :20] == level)
    np.testing.assert_array_equal(x[13:111, 21:115],
                                  Normalization(norm.low, norm.high).apply(real[1:-1, 1:-1]))


def test_a_fill_inside_the_images_range_is_data(real, nuclei_widefield):
    """A fill at the image's median, or a background clipped at zero around a cell (found by
    a review: it was taken for padding, and the background came back grey), continue the
    image's own values: they stay in the normalisation, as they are."""
    median = _canvas(real, int(np.median(real)))
    assert Normalization.fit(median, padding=True).padding is None
    assert flat_value(median)[0] == "padding kept"  # still named: crop it away
    yy, xx = np.mgrid[:128, :128]
    blob = 1000 * np.exp(-((yy - 64) ** 2 + (xx - 64) ** 2) / (2 * 20**2))
    cell = np.clip(np.random.default_rng(1).poisson(blob + 50) - 80, 0, None).astype(np.uint16)
    assert Normalization.fit(cell, padding=True).padding is None
    assert Normalization.fit(cell, padding=True) == Normalization.fit(cell)


def test_what_the_padding_holds_does_not_change_the_result(real, tiny_model):
    """Zeros or the detector's maximum around the same image: the same reconstruction of
    the real pixels (before, the maximum squeezed the real pixels into the lowest 1 %),
    and the padding shown at the real pixels' median level."""
    zeros = nc.predict(_canvas(real, 0), tiny_model, **OPTIONS)
    bright = nc.predict(_canvas(real, 65535), tiny_model, **OPTIONS)
    np.testing.assert_allclose(zeros.mean[24:224, 40:232], bright.mean[24:224, 40:232],
                               rtol=1e-5, atol=1e-3)
    assert float(np.ptp(zeros.mean[24:224, 40:232])) > 10  # a real reconstruction


def test_no_padding_in_photon_counts_a_clipped_background_or_a_sparse_image(nuclei_widefield):
    rng = np.random.default_rng(3)
    for photons in (0.3, 0.76):  # zeros, but scattered everywhere
        counts = rng.poisson(photons, (128, 128)).astype(np.uint16)
        assert find(counts) is None
        assert Normalization.fit(counts, padding=True).padding is None
    spot = np.zeros((64, 64), np.float32)
    spot[30:33, 30:33] = 5.0  # one bright spot on a flat background: the background is data
    assert Normalization.fit(spot, padding=True) == Normalization(0.0, 5.0)
    assert find(nuclei_widefield) is None


def test_padding_around_a_constant_region_keeps_the_full_range():
    canvas = np.zeros((64, 64), np.float32)
    canvas[10:50, 10:50] = 7.0
    norm = Normalization.fit(canvas, padding=True)
    assert (norm.low, norm.high, norm.padding) == (0.0, 7.0, None) and not norm.is_constant


def test_every_pixel_at_the_fill_and_a_rotations_interpolated_rim_are_left_out(real):
    """Found by a review: pixels at the fill outside wide regions (a one-pixel frame, the
    tips of a rotated canvas's wedges) kept their raw value (65535 shown to the network),
    and a rotation's interpolated rim set the percentiles."""
    frame = real.copy()
    frame[0] = frame[-1] = frame[:, 0] = frame[:, -1] = 65535
    norm = Normalization.fit(frame, padding=True)
    assert norm.padding == 65535 and np.abs(norm.apply(frame)).max() <= 1.5
    ndimage = pytest.importorskip("scipy.ndimage")
    flat = real.astype(np.float64)
    for fill in (0, 65535):
        turned = ndimage.rotate(flat, 20, reshape=True, order=1, cval=fill)
        turned = np.clip(np.round(turned), 0, 65535).astype(np.uint16)
        norm = Normalization.fit(turned, padding=True)
        alone = Normalization.fit(real)
        assert norm.padding == fill
        assert abs(norm.low - alone.low) < 0.1 * (alone.high - alone.low)
        assert abs(norm.high - alone.high) < 0.1 * (alone.high - alone.low)
        assert np.abs(norm.apply(turned)).max() <= 1.5


def test_the_padding_mask_is_the_value_and_its_neighbours():
    image = np.random.default_rng(0).poisson(5, (16, 16)) + 1
    image[:4] = 0
    mask = padding_mask(image, 0)
    assert mask[:5].all() and not mask[5:].any()
    # a part of the plane with a rim of a pixel gives the plane's answer inside the rim
    part = padding_mask(image[2:12, 3:14], 0)
    np.testing.assert_array_equal(part[1:-1, 1:-1], mask[3:11, 4:13])


@pytest.mark.parametrize("zeros, padded", [(44, False), (40, True)])
def test_lazy_chunks_count_across_their_seams_as_the_whole_plane(real, tiny_model, zeros,
                                                                 padded):
    """Found by reviews: chunks judged their pixels' neighbours within the chunk alone, so
    an image near the flatness threshold was padding in chunks and not in memory (counting
    too many) or the other way round (too few): one image just under it, one just over."""
    from napari_cvdm.padding import FLAT, _candidate

    da = pytest.importorskip("dask.array")
    x = np.full((128, 120), 0, np.uint16)
    x[3:, :] = np.tile(real, (2, 2))[:125, :120]
    rng = np.random.default_rng(0)
    ys, xs = rng.integers(8, 28, zeros), rng.integers(0, 120, zeros)
    x[ys, xs] = 0  # isolated zeros off-centre: the share with a neighbour at 0 near 0.9
    counts = _candidate(x)[2]
    assert (counts[4] / counts[5] > FLAT) == padded and abs(counts[4] / counts[5] - FLAT) < 0.01
    assert (Normalization.fit(x, padding=True).padding is not None) == padded
    eager = nc.predict(x, tiny_model, **OPTIONS)
    for chunks in ((16, 16), (13, 29)):
        lazy = nc.predict(da.from_array(x, chunks=chunks), tiny_model, **OPTIONS)
        np.testing.assert_allclose(lazy.mean.compute(), eager.mean, rtol=1e-5, atol=1e-3)


def test_a_window_of_the_output_gets_the_padding_of_the_whole_plane():
    """The lazy path writes padding back per output chunk, whose start need not be a
    multiple of the scale (a scale of 3 and chunks of 1024 output pixels)."""
    from napari_cvdm.padding import write_back

    rng = np.random.default_rng(4)
    at = rng.random((23, 19)) < 0.3
    for scale in (1, 2, 3, 4):
        whole = np.ones((23 * scale, 19 * scale), np.float32)
        write_back(at, 5.0, scale, (0, 0), [whole])
        for _ in range(50):
            y, x = int(rng.integers(0, 23 * scale)), int(rng.integers(0, 19 * scale))
            h = int(rng.integers(1, 23 * scale - y + 1))
            w = int(rng.integers(1, 19 * scale - x + 1))
            window = np.ones((h, w), np.float32)
            source = at[y // scale:-(-(y + h) // scale), x // scale:-(-(x + w) // scale)]
            write_back(source, 5.0, scale, (y - (y // scale) * scale, x - (x // scale) * scale),
                       [window])
            np.testing.assert_array_equal(window, whole[y:y + h, x:x + w])


def test_the_pixels_beside_the_padding_stay_data(real):
    """Found by a review: the real row and column beside a shifted border were shown at the
    median too; they are data (clipped to the range, which a rotation's interpolated rim
    needs)."""
    canvas = _canvas(real, 0)
    norm = Normalization.fit(canvas, padding=True)
    x = norm.apply(canvas)
    plain = Normalization(norm.low, norm.high).apply(real)
    ring = np.ones(real.shape, bool)
    ring[1:-1, 1:-1] = False
    expected = plain.copy()
    expected[ring] = np.clip(plain[ring], -1, 1)
    np.testing.assert_array_equal(x[12:112, 20:116], expected)


def test_lazy_planes_leave_the_padding_out_as_the_in_memory_run(real, tiny_model):
    da = pytest.importorskip("dask.array")
    canvas = _canvas(real, 0)
    eager = nc.predict(canvas, tiny_model, **OPTIONS)
    lazy = nc.predict(da.from_array(canvas, chunks=(40, 50)), tiny_model, **OPTIONS)
    np.testing.assert_allclose(lazy.mean.compute(), eager.mean, rtol=1e-5, atol=1e-4)
    bright = nc.predict(da.from_array(_canvas(real, 65535), chunks=(40, 50)), tiny_model,
                        **OPTIONS)  # decided from the chunks' counts: the same for 16 bits
    np.testing.assert_allclose(bright.mean[24:224, 40:232].compute(),
                               eager.mean[24:224, 40:232], rtol=1e-5, atol=1e-3)


def test_training_targets_keep_every_value():
    """A super-resolution target whose floor value lines its edges (a SIM reconstruction)
    is data there: only a prediction's input leaves padding out."""
    target = np.zeros((64, 64), np.float32)
    target[8:, 8:] = np.random.default_rng(1).random((56, 56)) + 1
    assert Normalization.fit(target, padding=True).padding == 0.0
    norm = Normalization.fit(target)
    assert norm.padding is None and norm.low == 0.0
    assert np.all(norm.apply(target)[:8] == -1.0)


def test_the_result_over_padding_is_the_padding_with_no_uncertainty(real, tiny_model):
    """Found by a review: the network's flat invention came back over the padding (a grey
    border where the input was black); the result keeps the padding, certain."""
    da = pytest.importorskip("dask.array")
    canvas = _canvas(real, 0)
    for image in (canvas, da.from_array(canvas, chunks=(40, 50))):
        result = nc.predict(image, tiny_model, **OPTIONS)
        mean, variance = np.asarray(result.mean), np.asarray(result.variance)
        assert np.all(mean[:24] == 0) and np.all(mean[:, :40] == 0)
        assert np.all(variance[:24] == 0) and np.all(variance[-12:] == 0)
        assert np.all(mean[26:222, 42:230] > 0)  # the real pixels: reconstructed
        assert float(variance[26:222, 42:230].mean()) > 0


def test_the_warning_says_whether_the_padding_was_left_out(real, tiny_model):
    from napari_cvdm.domain import input_warnings

    (outside,) = input_warnings(_canvas(real, 0), tiny_model)
    assert "padding" in outside and "left out of the contrast" in outside
    (inside,) = input_warnings(_canvas(real, int(np.median(real))), tiny_model)
    assert "padding" in inside and "the result there is invented" in inside


def test_each_plane_of_a_stack_says_what_was_done_with_its_padding(real, tiny_model):
    """Found by a review: one message per kind, so a stack whose first plane's padding was
    left out said so of a plane whose padding was kept."""
    from napari_cvdm.domain import input_warnings

    stack = np.stack([_canvas(real, 0), _canvas(real, int(np.median(real)))])
    messages = input_warnings(stack, tiny_model)
    assert len(messages) == 2
    assert any("left out of the contrast" in m and "plane" in m for m in messages)
    assert any("the result there is invented" in m for m in messages)
