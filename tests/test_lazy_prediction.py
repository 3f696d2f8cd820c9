"""predict() on dask arrays: lazy results equal to the in-memory ones, chunk by chunk."""

from __future__ import annotations

import threading

import numpy as np
import pytest

da = pytest.importorskip("dask.array")

import napari_cvdm as nc  # noqa: E402
from napari_cvdm.lazy_prediction import histogram_percentiles  # noqa: E402

OPTIONS = dict(samples=3, steps=2, seed=5, tile_size=64, precision="fp32")


def _image(shape, dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 1000).astype(dtype)


def test_dask_input_gives_lazy_outputs_equal_to_the_in_memory_result(tiny_model):
    image = _image((2, 100, 90))
    eager = nc.predict(image, tiny_model, **OPTIONS)
    assert eager.info["tiles"] > 4  # several tiles and tile groups, blended across chunks
    lazy = nc.predict(da.from_array(image, chunks=(1, 40, 50)), tiny_model, **OPTIONS)
    assert isinstance(lazy.mean, da.Array) and isinstance(lazy.variance, da.Array)
    assert lazy.mean.shape == eager.mean.shape == (2, 200, 180)
    assert lazy.info["lazy"] and lazy.seed == eager.seed
    mean, variance = da.compute(lazy.mean, lazy.variance)
    np.testing.assert_allclose(mean, eager.mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(variance, eager.variance, rtol=1e-5, atol=1e-6)
    assert mean.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_zero_length_chunks_are_no_values(tiny_model, dtype):
    """A zero-length chunk (dask allows them) failed in min() for 16-bit images and counted
    as a block of value 0 in the plane's range for float ones."""
    image = _image((3, 70, 66), dtype) + dtype(500)
    eager = nc.predict(image, tiny_model, **OPTIONS)
    lazy = nc.predict(da.from_array(image, chunks=((3,), (35, 35, 0), (66,))), tiny_model,
                      **OPTIONS)
    np.testing.assert_allclose(lazy.mean.compute(), eager.mean, rtol=1e-6, atol=1e-4)


def test_one_chunk_alone_equals_that_region(tiny_model):
    image = _image((120, 120), seed=1)
    eager = nc.predict(image, tiny_model, **OPTIONS)
    lazy = nc.predict(da.from_array(image, chunks=(50, 50)), tiny_model, **OPTIONS)
    block = lazy.mean.blocks[1, 1].compute()
    y0, x0 = lazy.mean.chunks[0][0], lazy.mean.chunks[1][0]
    np.testing.assert_allclose(block, eager.mean[y0:y0 + block.shape[0], x0:x0 + block.shape[1]],
                               rtol=1e-6, atol=1e-6)


def test_float_images_and_the_bundled_models_calibrated_std():
    image = _image((64, 72), np.float32, seed=2) / 7
    eager = nc.predict(image, samples=2, steps=2, seed=1, precision="fp32")
    lazy = nc.predict(da.from_array(image, chunks=(32, 40)), samples=2, steps=2, seed=1,
                      precision="fp32")
    assert lazy.info["calibrated"] and eager.info["calibrated"]
    mean, std = da.compute(lazy.mean, lazy.std)
    np.testing.assert_allclose(mean, eager.mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(std, eager.std, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
@pytest.mark.parametrize("percentiles", [(1.0, 99.8), (0.0, 100.0), (3.3, 50.0)])
def test_histogram_percentiles_equal_numpys(dtype, percentiles):
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    values = rng.integers(info.min, info.max, size=5003, endpoint=True).astype(dtype)
    offset = 0 if info.min == 0 else -int(info.min)
    hist = np.bincount(values.astype(np.int64) + offset, minlength=2 ** (8 * values.itemsize))
    expected = np.percentile(values.astype(np.float64), percentiles)
    assert histogram_percentiles(hist, offset, percentiles) == list(expected)


def test_chunks_narrower_than_the_overlap_are_rechunked_with_a_warning(tiny_model):
    image = _image((60, 60), seed=4)
    eager = nc.predict(image, tiny_model, **OPTIONS)
    with pytest.warns(UserWarning, match="rechunked"):
        lazy = nc.predict(da.from_array(image, chunks=(3, 60)), tiny_model, **OPTIONS)
    np.testing.assert_allclose(lazy.mean.compute(), eager.mean, rtol=1e-6, atol=1e-6)


def test_bad_values_are_refused_when_computed_and_constant_planes_are_certain(tiny_model):
    image = _image((40, 40), np.float32)
    image[3, 4] = np.nan
    lazy = nc.predict(da.from_array(image, chunks=20), tiny_model, **OPTIONS)
    with pytest.raises(ValueError, match="NaN"):
        lazy.mean.compute()
    flat = da.full((40, 40), 7, dtype=np.uint16, chunks=20)
    result = nc.predict(flat, tiny_model, **OPTIONS)
    mean, variance = da.compute(result.mean, result.variance)
    assert (mean == 7).all() and (variance == 0).all()


def test_progress_counts_every_evaluation_of_a_lazy_run(tiny_model):
    image = _image((80, 80), seed=5)
    seen = []
    lazy = nc.predict(da.from_array(image, chunks=40), tiny_model, progress=lambda d, t:
                      seen.append((d, t)), **OPTIONS)
    assert not seen  # nothing runs before the result is asked for
    lazy.mean.compute()
    assert seen[-1][0] == seen[-1][1] == lazy.info["evaluations"]


def test_the_input_is_not_modified_and_huge_lazy_outputs_are_allowed(tiny_model):
    image = _image((50, 50))
    before = image.copy()
    nc.predict(da.from_array(image, chunks=25), tiny_model, **OPTIONS).mean.compute()
    np.testing.assert_array_equal(image, before)
    # 24k x 24k output: refused in memory on this machine's budget, fine lazily.
    big = da.zeros((12_000, 12_000), dtype=np.uint16, chunks=4000)
    lazy = nc.predict(big, tiny_model, samples=1, steps=1, tile_size=1024, precision="fp32")
    assert lazy.mean.shape == (24_000, 24_000)
    with pytest.raises(ValueError, match="more than this computer can spare"):
        from napari_cvdm.validation import check_output_size

        check_output_size((12_000, 12_000), 2, limit=2**30)


def test_lazy_result_streams_to_ome_zarr(tiny_model, tmp_path):
    pytest.importorskip("zarr")
    import zarr

    from napari_cvdm.zarr_files import write_ome_zarr

    image = _image((2, 48, 40), seed=6)
    eager = nc.predict(image, tiny_model, **OPTIONS)
    lazy = nc.predict(da.from_array(image, chunks=(1, 24, 40)), tiny_model, **OPTIONS)
    out = write_ome_zarr(tmp_path / "r.ome.zarr", lazy.mean, lazy.std, {"axes": "ZYX"}, scale=2)
    group = zarr.open_group(str(out), mode="r")
    np.testing.assert_allclose(group["mean/0"][:], eager.mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(group["std/0"][:], eager.std, rtol=1e-5, atol=1e-6)


def test_a_float_plane_too_large_to_read_whole_is_refused_before_any_work(tiny_model,
                                                                          monkeypatch):
    """Found by an audit: a 60000 x 60000 float32 store ran for 80 s, then failed with an
    out-of-memory advice (smaller tiles, batch, samples) that could not help."""
    from napari_cvdm import validation

    monkeypatch.setattr(validation, "memory_bytes", lambda: 2**31)  # 2 GiB: 1 GiB to spare
    big = da.zeros((2, 12_000, 12_000), dtype=np.float32, chunks=(1, 4000, 4000))
    with pytest.raises(ValueError, match=r"read whole once.*1\.6 GiB.*16-bit integers"):
        nc.predict(big, tiny_model, samples=1, steps=1, tile_size=1024, precision="fp32")
    lazy = nc.predict(big.astype(np.uint16), tiny_model, samples=1, steps=1, tile_size=1024,
                      precision="fp32")  # integers: histograms, chunk by chunk
    assert lazy.mean.shape == (2, 24_000, 24_000)


def test_the_windows_each_tile_group_feeds_are_those_it_overlaps():
    """The groups feeding each output window are found from the tiles' own spans (was a
    scan of every group for every window: minutes of graph building on large images)."""
    import itertools

    from napari_cvdm.lazy_prediction import _chunk_starts, _groups_by_window
    from napari_cvdm.tiling import Tile, intersection

    for height, width, tile, step, cy, cx, per_group in [(300, 200, 64, 48, 40, 56, 3),
                                                         (96, 96, 96, 96, 96, 96, 1),
                                                         (130, 70, 32, 20, 16, 128, 4)]:
        tiles = [Tile(y, x, min(tile, height - y), min(tile, width - x))
                 for y, x in itertools.product(range(0, height, step), range(0, width, step))]
        groups = [(i, tiles[i:i + per_group]) for i in range(0, len(tiles), per_group)]
        windows = [[Tile(y, x, h, w) for x, w in _chunk_starts(width, cx)]
                   for y, h in _chunk_starts(height, cy)]
        found = _groups_by_window(groups, windows, cy, cx)
        for r, row in enumerate(windows):
            for c, window in enumerate(row):
                expected = [g for g, (_, group) in enumerate(groups)
                            if any(intersection(t, window) is not None for t in group)]
                assert found[r, c] == expected  # in order: the blending sums in that order


def test_a_cancel_while_the_graph_of_a_large_image_is_built_stops_it(tiny_model, monkeypatch):
    """Found by a review: building the graph of a 16000 x 16000 image took minutes in
    which Cancel (and closing the viewer) did nothing."""
    import napari_cvdm.lazy_prediction as lazy
    from napari_cvdm.errors import Cancelled

    cancel = threading.Event()
    real = lazy._groups_by_window

    def then_cancel(*args):
        found = real(*args)
        cancel.set()  # pressed once the building has begun
        return found

    monkeypatch.setattr(lazy, "_groups_by_window", then_cancel)
    before = set(lazy._callbacks)
    image = da.from_array(np.random.default_rng(0).random((96, 96)), chunks=48)
    with pytest.raises(Cancelled):
        nc.predict(image, tiny_model, samples=2, steps=2, seed=0, cancel=cancel,
                   tile_size=32, check_input=False)
    assert set(lazy._callbacks) == before  # nothing of the run is kept


from napari_cvdm import precision as _precision  # noqa: E402


@pytest.mark.skipif(not _precision.cpu_bf16_supported(), reason="no bfloat16 in oneDNN here")
def test_a_lazy_run_of_a_narrow_image_runs_in_float32_as_in_memory(nuclei_widefield):
    """The float32 a tile one pixel across at the network's lowest level needs (oneDNN's
    bf16 gave unrepeatable values there) reaches the lazy tasks, which re-read the run's
    settings."""
    import warnings

    import dask.array as da

    narrow = nuclei_widefield[100:164, 120:124]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lazy = nc.predict(da.from_array(narrow, chunks=(32, 4)), samples=2, steps=2, seed=5,
                          precision="bf16")
        exact = nc.predict(narrow, samples=2, steps=2, seed=5, precision="fp32")
    np.testing.assert_array_equal(np.asarray(lazy.mean), exact.mean)


def test_a_lazy_tile_group_out_of_memory_is_retried_with_fewer_samples_per_call(
        tiny_model, monkeypatch):
    """Found by a review: the lazy path had no retry; a tile group that ran out of GPU memory
    raised torch's error out of napari's dask layer or the cluster."""
    import torch

    from napari_cvdm import tile_sampling
    from napari_cvdm.errors import OutOfMemory

    real, plans = tile_sampling.tile_statistics, []

    def short_of_memory(run, *args, **kwargs):
        plans.append(run.plan)
        if run.plan.batch > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(run, *args, **kwargs)

    monkeypatch.setattr(tile_sampling, "tile_statistics", short_of_memory)
    image = da.from_array(np.random.default_rng(0).random((16, 16)).astype(np.float32))
    result = nc.predict(image, tiny_model, samples=4, steps=1, seed=0, batch_size=4)
    mean = np.asarray(result.mean)
    assert mean.shape == (32, 32) and np.isfinite(mean).all()
    assert [p.batch for p in plans[:3]] == [4, 2, 1]

    def never(run, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(tile_sampling, "tile_statistics", never)
    late = nc.predict(image, tiny_model, samples=4, steps=1, seed=0, batch_size=4)
    with pytest.raises(OutOfMemory, match="even with .* 1 sample"):
        np.asarray(late.mean)
