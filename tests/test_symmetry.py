"""Samples drawn on the flips and rotations of the input (symmetry.py, ``augment``)."""

import numpy as np
import pytest
import torch

import napari_cvdm as nc
from napari_cvdm import symmetry
from napari_cvdm.model.cvdm import CVDM
from napari_cvdm.settings import PredictSettings


def test_the_eight_transforms_are_distinct_and_undone():
    t = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(1, 2, 3, 5)
    turned = [symmetry.forward(t, k) for k in range(symmetry.TRANSFORMS)]
    for k, u in enumerate(turned):
        assert u.shape[-2:] == ((5, 3) if symmetry.transposes(k) else (3, 5))
        assert torch.equal(symmetry.inverse(u, k), t)
    flat = {tuple(u.flatten().tolist()) + (u.shape[-2],) for u in turned}
    assert len(flat) == symmetry.TRANSFORMS
    assert torch.equal(turned[0], t)


@pytest.mark.parametrize("samples", [1, 2, 3, 5, 8, 9, 12, 16, 21])
@pytest.mark.parametrize("batch", [1, 2, 3, 8, 32])
def test_passes_draw_every_sample_once_within_the_batch(samples, batch):
    passes = symmetry.passes(samples, batch, augment=True)
    ids = sorted(i for p in passes for row in p.ids for i in row)
    assert ids == list(range(samples))
    n = min(samples, symmetry.TRANSFORMS)
    for p in passes:
        assert len({symmetry.transposes(k) for k in p.transforms}) == 1  # one orientation
        for row in p.ids:
            assert [i % n for i in row] == list(p.transforms)  # sample i on transform i mod n
        for rows in p.calls():
            assert len(rows) * len(p.transforms) <= batch  # no more images than unaugmented
    used = {k for p in passes for k in p.transforms}
    assert used == set(range(n))
    assert symmetry.network_calls(samples, batch, True) == sum(len(p.calls()) for p in passes)


def test_without_augment_one_pass_in_batches():
    (p,) = symmetry.passes(10, 4, augment=False)
    assert p.transforms == (0,)
    assert [[row[0] for row in rows] for rows in p.calls()] == [[0, 1, 2, 3], [4, 5, 6, 7],
                                                                 [8, 9]]


def test_predict_runs_the_network_on_every_turned_input(tiny_model, monkeypatch):
    seen = []
    original = CVDM.prepare

    def recording(self, x, *args, **kwargs):
        seen.append(x.detach().clone())
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(CVDM, "prepare", recording)
    image = np.random.default_rng(1).random((16, 24)).astype(np.float32)  # not square
    result = nc.predict(image, tiny_model, samples=8, steps=2, seed=3, device="cpu")
    assert result.info["augment"] is True
    assert len(seen) == 2  # the 4 flips side by side, then the 4 transposed ones
    upright, transposed = seen
    assert upright.shape[0] == 4 and transposed.shape[0] == 4
    assert upright.shape[-2:] == transposed.shape[-2:][::-1]
    x = upright[:1]
    for i, k in enumerate(range(4)):
        assert torch.equal(upright[i:i + 1], symmetry.forward(x, k))
    for i, k in enumerate(range(4, 8)):
        assert torch.equal(transposed[i:i + 1], symmetry.forward(x, k))

    seen.clear()
    off = nc.predict(image, tiny_model, samples=8, steps=2, seed=3, device="cpu",
                     augment=False)
    assert off.info["augment"] is False
    assert len(seen) == 1 and seen[0].shape[0] == 1
    assert torch.equal(seen[0], x)
    assert off.mean.shape == result.mean.shape
    assert not np.allclose(off.mean, result.mean)  # the turned samples differ


def test_augment_changes_nothing_for_one_sample(tiny_model):
    image = np.random.default_rng(2).random((20, 20)).astype(np.float32)
    on = nc.predict(image, tiny_model, samples=1, steps=3, seed=5)
    off = nc.predict(image, tiny_model, samples=1, steps=3, seed=5, augment=False)
    np.testing.assert_array_equal(on.mean, off.mean)


def test_augmented_sampling_is_seamless_and_repeatable(tiny_model):
    image = np.random.default_rng(3).random((40, 56)).astype(np.float32)
    kw = dict(samples=8, steps=2, eta=0.0, seed=7)
    a = nc.predict(image, tiny_model, **kw)
    b = nc.predict(image, tiny_model, **kw)
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.variance, b.variance)
    tiled = nc.predict(image, tiny_model, tile_size=48, overlap=16, **kw)
    assert tiled.info["tiles"] > 1
    span = np.ptp(a.mean)
    assert np.abs(tiled.mean - a.mean).mean() < 0.01 * span


def test_augment_must_be_true_or_false():
    with pytest.raises(ValueError, match="augment must be True or False"):
        PredictSettings(augment="yes")
