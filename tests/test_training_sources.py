"""Training from arrays and generated structures, fine-tuning (init), callbacks, cancelling."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import napari_cvdm as nc
from napari_cvdm import training_data
from napari_cvdm.degradation import Degradation
from napari_cvdm.errors import Cancelled
from napari_cvdm.precision import cpu_bf16_supported
from napari_cvdm.training import TrainingSettings, state_path, train


def _settings(**kw):
    base = dict(preset="tiny", steps=4, batch_size=2, patch_size=32, validation_every=2,
                checkpoint_every=100, first_checkpoint=100, validation_patches=2,
                validation_steps=2, precision="fp32")
    return TrainingSettings(**{**base, **kw})


@pytest.fixture
def hq_arrays(nuclei_truth):
    return [nuclei_truth[:96, :128], nuclei_truth[200:300, 150:280].astype(np.float32)]


def test_high_quality_arrays_train_a_model_and_are_not_modified(hq_arrays, tmp_path):
    before = [a.copy() for a in hq_arrays]
    out = tmp_path / "a.cvdm.safetensors"
    model = train(output=out, hq=hq_arrays, settings=_settings(), device="cpu")
    assert all(np.array_equal(a, b) for a, b in zip(hq_arrays, before))
    info = nc.load_model(out).metadata["training"]
    assert info["data"]["mode"] == "simulated" and info["data"]["hq"] == "arrays"
    assert info["precision"] == "fp32" and model.config.scale == 2


def test_pairs_of_arrays_give_the_scale_from_their_shapes(nuclei_truth, nuclei_widefield, tmp_path):
    pairs = [(nuclei_widefield[:64, :64], nuclei_truth[:128, :128]),
             (nuclei_widefield[64:128, 80:144], nuclei_truth[128:256, 160:288])]
    model = train(output=tmp_path / "p.cvdm.safetensors", pairs=pairs, settings=_settings(),
                  device="cpu")
    assert model.config.scale == 2
    with pytest.raises(ValueError, match="integer"):
        train(output=tmp_path / "q.cvdm.safetensors",
              pairs=[(nuclei_widefield[:64, :64], nuclei_truth[:100, :100])],
              settings=_settings(), device="cpu")


def test_generated_structures_alone_are_training_data(tmp_path, monkeypatch):
    monkeypatch.setattr(training_data, "SYNTHETIC_IMAGES", 3)
    monkeypatch.setattr(training_data, "SYNTHETIC_VALIDATION", 1)
    monkeypatch.setattr(training_data, "SYNTHETIC_SIZE", 64)
    out = tmp_path / "s.cvdm.safetensors"
    train(output=out, synthetic=("microtubules", "ccp"), settings=_settings(),
          degradation=Degradation(psf_sigma=(2.0, 3.5)), device="cpu")
    info = nc.load_model(out).metadata["training"]
    assert info["data"]["synthetic"] == ["microtubules", "ccp"]
    assert info["data"]["degradation"]["psf_sigma"] == [2.0, 3.5]
    assert all(name.startswith("synthetic-") for name in info["validation_images"])
    with pytest.raises(ValueError, match="unknown structure"):
        train(output=tmp_path / "g.cvdm.safetensors", synthetic=("golgi",), settings=_settings(),
              device="cpu")


def test_init_fine_tunes_a_model_keeping_its_configuration(hq_arrays, tmp_path):
    first = tmp_path / "first.cvdm.safetensors"
    base = train(output=first, hq=hq_arrays, settings=_settings(steps=2), device="cpu")
    tuned_file = tmp_path / "tuned.cvdm.safetensors"
    # The preset asked for is ignored: the configuration comes from the model.
    tuned = train(output=tuned_file, hq=hq_arrays, device="cpu",
                  settings=_settings(steps=2, init=str(first), preset="small"))
    assert tuned.config == base.config
    info = nc.load_model(tuned_file).metadata["training"]
    assert info["init"] == first.name and str(tmp_path) not in str(info)
    assert len(info["history"]) == 2  # the base model's history, then this run's
    with pytest.raises(ValueError, match="scale"):
        train(output=tmp_path / "x.cvdm.safetensors", hq=hq_arrays, device="cpu",
              degradation=Degradation(scale=3), settings=_settings(init=str(first)))
    with pytest.raises(ValueError, match="resume"):
        train(output=tuned_file, hq=hq_arrays, resume=True, device="cpu",
              settings=_settings(init=str(first)))


def test_validation_callback_gets_scores_and_the_averaged_model(hq_arrays, tmp_path):
    seen = []
    train(output=tmp_path / "v.cvdm.safetensors", hq=hq_arrays, settings=_settings(), device="cpu",
          on_validation=lambda step, scores, model: seen.append((step, scores, model)))
    assert [s for s, _, _ in seen] == [2, 4]
    assert {"psnr", "ssim", "bicubic_psnr"} <= set(seen[0][1])
    assert all(isinstance(m, nc.CVDM) for _, _, m in seen)


def test_cancel_keeps_the_early_first_checkpoint_and_says_where(hq_arrays, tmp_path):
    out = tmp_path / "c.cvdm.safetensors"
    steps = []
    with pytest.raises(Cancelled, match="no checkpoint was written yet"):
        train(output=out, hq=hq_arrays, settings=_settings(steps=10, first_checkpoint=5),
              device="cpu", progress=lambda s, t, loss: steps.append(s),
              cancel=lambda: len(steps) >= 2)
    assert not out.exists()
    steps.clear()
    with pytest.raises(Cancelled, match=f"kept: {out}.*step 3"):
        train(output=out, hq=hq_arrays, settings=_settings(steps=10, first_checkpoint=3),
              device="cpu", progress=lambda s, t, loss: steps.append(s),
              cancel=lambda: len(steps) >= 4)
    assert nc.load_model(out).metadata["training"]["step"] == 3


def test_resume_refuses_another_preset_and_a_damaged_state_before_training(hq_arrays, tmp_path):
    out = tmp_path / "r.cvdm.safetensors"
    train(output=out, hq=hq_arrays, settings=_settings(steps=2), device="cpu")
    ran = []
    with pytest.raises(ValueError, match="another model configuration"):
        train(output=out, hq=hq_arrays, resume=True, device="cpu",
              settings=_settings(steps=4, preset="small"),
              progress=lambda *a: ran.append(a))
    state = state_path(out)
    state.write_bytes(state.read_bytes()[:200])
    with pytest.raises(ValueError, match="damaged"):
        train(output=out, hq=hq_arrays, resume=True, device="cpu", settings=_settings(steps=4),
              progress=lambda *a: ran.append(a))
    assert ran == []


def test_precision_choices_for_training(hq_arrays, tmp_path):
    with pytest.raises(ValueError, match="fp16"):
        train(output=tmp_path / "h.cvdm.safetensors", hq=hq_arrays, device="cpu",
              settings=_settings(precision="fp16"))
    if not cpu_bf16_supported():
        pytest.skip("this CPU has no bfloat16")
    out = tmp_path / "b.cvdm.safetensors"
    model = train(output=out, hq=hq_arrays, device="cpu", settings=_settings(precision="bf16"))
    assert nc.load_model(out).metadata["training"]["precision"] == "bf16"
    # Master weights stay float32.
    assert all(p.dtype.is_floating_point and p.dtype.itemsize == 4 for p in model.parameters())


def test_hidden_files_in_a_training_folder_are_left_out(tmp_path, nuclei_truth):
    import tifffile

    from napari_cvdm.data import load_hq

    tifffile.imwrite(tmp_path / "cells.tif", nuclei_truth[:64, :64])
    (tmp_path / "._cells.tif").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # a Mac's copy
    (name,) = [n for _, n in load_hq(tmp_path)]
    assert name == "cells[0]"


def test_resume_with_another_scale_names_the_scale(hq_arrays, tmp_path):
    """The message named the preset, the same on both sides, not the setting that differed."""
    from napari_cvdm.degradation import Degradation

    out = tmp_path / "s.cvdm.safetensors"
    train(output=out, hq=hq_arrays, settings=_settings(steps=1), device="cpu",
          degradation=Degradation(scale=2))
    with pytest.raises(ValueError, match="scale: 2 there, 4 in this run"):
        train(output=out, hq=hq_arrays, resume=True, device="cpu",
              settings=_settings(steps=2), degradation=Degradation(scale=4))


def test_blank_planes_leave_out_the_pair_not_shift_the_stack(nuclei_truth, nuclei_widefield,
                                                              tmp_path):
    """Blank planes of the input and target stacks at different indices used to be dropped from
    each stack separately, pairing input plane 2 with target plane 1 (arrays and folders)."""
    import tifffile

    from napari_cvdm.data import load_pairs, pairs_from_arrays

    lq = np.stack([nuclei_widefield[:64, :64], nuclei_widefield[64:128, :64],
                   nuclei_widefield[128:192, :64]]).astype(np.float32)
    hq = np.stack([nuclei_truth[:128, :128], nuclei_truth[128:256, :128],
                   nuclei_truth[256:384, :128]]).astype(np.float32)
    lq[1] = 0  # blank input plane 1, blank target plane 2: only plane 0 is a usable pair
    hq[2] = 7
    lq_before, hq_before = lq.copy(), hq.copy()
    pairs_a, scale = pairs_from_arrays([(lq, hq)])
    (tmp_path / "LQ").mkdir()
    (tmp_path / "HQ").mkdir()
    tifffile.imwrite(tmp_path / "LQ" / "cell.tif", lq, photometric="minisblack")
    tifffile.imwrite(tmp_path / "HQ" / "cell.tif", hq, photometric="minisblack")
    pairs_f, _ = load_pairs(tmp_path / "LQ", tmp_path / "HQ")
    np.testing.assert_array_equal(lq, lq_before)
    np.testing.assert_array_equal(hq, hq_before)
    assert scale == 2
    for pairs, name in ((pairs_a, "pair0[0]"), (pairs_f, "cell[0]")):
        assert [p.name for p in pairs] == [name]
        # the pair's input is the target's own plane: it correlates with the target binned x2
        binned = pairs[0].hq.reshape(64, 2, 64, 2).mean(axis=(1, 3))
        assert np.corrcoef(binned.ravel(), pairs[0].lq.ravel())[0, 1] > 0.8
    lq[0] = 0
    with pytest.raises(ValueError, match="no plane has structure in both"):
        pairs_from_arrays([(lq, hq)])
    with pytest.raises(ValueError, match=r"pair 0 must be \(low-quality image, high-quality "
                                         r"image\), not tuple of 3"):
        pairs_from_arrays([(lq, hq, hq)])


def test_napari_cvdm_outputs_beside_the_images_are_not_training_targets(tmp_path,
                                                                         nuclei_truth):
    """Found by a review: `cvdm train --hq` on a folder where `cvdm predict` had written
    its outputs trained on the reconstructions and their std and variance maps too."""
    from napari_cvdm.data import load_hq

    folder = tmp_path / "hq"
    folder.mkdir()
    tifffile.imwrite(folder / "cell.tif", nuclei_truth[:96, :96])
    for kind in ("mean", "std", "var"):
        tifffile.imwrite(folder / f"cell_cvdm_{kind}.tif", nuclei_truth[:96, :96] * 1.0)
    assert [name for _, name in load_hq(folder)] == ["cell[0]"]


def test_images_a_folder_holds_but_training_leaves_out_are_said(tmp_path, nuclei_truth,
                                                                nuclei_widefield):
    """Found by a review: a file with a NaN pixel, blank planes and files without a
    partner of the same name were left out without a word."""
    from napari_cvdm.data import load_hq, load_pairs

    hq = tmp_path / "hq"
    hq.mkdir()
    tifffile.imwrite(hq / "good.tif", nuclei_truth[:96, :96])
    bad = nuclei_truth[:96, :96].astype(np.float32)
    bad[5, 5] = np.nan
    tifffile.imwrite(hq / "nan.tif", bad)
    tifffile.imwrite(hq / "stack.tif", np.stack([nuclei_truth[:96, :96],
                                                 np.zeros((96, 96), np.uint16)]))
    with pytest.warns(UserWarning) as caught:
        assert [n for _, n in load_hq(hq)] == ["good[0]", "stack[0]"]
    said = " | ".join(str(w.message) for w in caught)
    assert "nan.tif" in said and "NaN or infinite" in said
    assert "stack.tif: 1 of its 2 plane(s)" in said
    lq = tmp_path / "lq"
    lq.mkdir()
    tifffile.imwrite(lq / "good.tif", nuclei_widefield[:48, :48])
    tifffile.imwrite(lq / "x.tif", nuclei_widefield[:48, :48])
    with pytest.warns(UserWarning, match="no partner of the same name.*nan, stack, x"):
        pairs, scale = load_pairs(lq, hq)
    assert [p.name for p in pairs] == ["good[0]"] and scale == 2


def test_masks_complex_images_and_one_folder_as_both_pair_folders_are_refused(tmp_path,
                                                                              nuclei_truth):
    """Found by a review: a boolean mask and a complex image were trained on (predict and
    napari refuse them), and `--pairs hq hq` trained each image to itself."""
    from napari_cvdm.data import load_hq, load_pairs

    for name, data in (("mask", nuclei_truth[:64, :64] > 100),
                       ("complex", nuclei_truth[:64, :64].astype(np.complex64))):
        folder = tmp_path / name
        folder.mkdir()
        tifffile.imwrite(folder / "a.tif", data)
        with pytest.raises(ValueError, match="not intensities"):
            load_hq(folder)
    same = tmp_path / "same"
    same.mkdir()
    tifffile.imwrite(same / "a.tif", nuclei_truth[:64, :64])
    with pytest.raises(ValueError, match="are one folder"):
        load_pairs(same, f"{same}/")
    # a review: a copy of the folder trained an x1 model of each image to itself
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "a.tif").write_bytes((same / "a.tif").read_bytes())
    with pytest.raises(ValueError, match="is the same as its partner .* its own target"):
        load_pairs(same, copy)


def test_pairs_whose_pixel_sizes_contradict_their_scale_are_warned_about(tmp_path,
                                                                         nuclei_truth):
    """Found by a review: low-quality images cropped from their targets (both files 100 nm
    per pixel) trained as x2 without a word; --hq warns about mixed sizes."""
    import warnings

    from napari_cvdm.data import load_pairs

    hq = nuclei_truth[:64, :64].astype(np.float32)
    binned = hq.reshape(32, 2, 32, 2).mean((1, 3))
    for name, lq, lq_nm in (("right", binned, 200.0), ("cropped", hq[:32, :32], 100.0)):
        for folder, image, nm in (("LQ", lq, lq_nm), ("HQ", hq, 100.0)):
            (tmp_path / name / folder).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(tmp_path / name / folder / "a.tif", image, imagej=True,
                             resolution=(1000 / nm, 1000 / nm), metadata={"unit": "um"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_pairs(tmp_path / "right" / "LQ", tmp_path / "right" / "HQ")[1] == 2
    assert not [w for w in caught if "pixel sizes" in str(w.message)]
    with pytest.warns(UserWarning, match=r"pixel sizes of 1 pair\(s\) do not differ by the x2"
                                         r".*a \(100 / 100 nm\)"):
        load_pairs(tmp_path / "cropped" / "LQ", tmp_path / "cropped" / "HQ")


def test_a_folder_whose_images_are_in_subfolders_says_they_are_not_searched(tmp_path,
                                                                             nuclei_truth):
    from napari_cvdm.data import load_hq

    (tmp_path / "cell1").mkdir()
    tifffile.imwrite(tmp_path / "cell1" / "a.tif", nuclei_truth[:64, :64])
    with pytest.raises(ValueError, match="subfolders are not searched, and cell1 hold"):
        load_hq(tmp_path)


def test_wide_integers_far_from_zero_keep_their_structure(tmp_path, nuclei_truth):
    """Found by a review: an int64 image with a large offset became float32 and was called
    constant ("4.6e18 everywhere")."""
    from napari_cvdm.data import load_hq

    folder = tmp_path / "hq"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", nuclei_truth[:64, :64].astype(np.int64) + 2**62)
    ((image, _),) = load_hq(folder)
    assert np.ptp(image) > 0.5


def test_a_folder_of_images_at_different_pixel_sizes_is_noted(tmp_path, nuclei_truth):
    """Found by a review: 30 nm and 200 nm images were mixed without a word (napari notes
    it for layers)."""
    from napari_cvdm.data import load_hq

    folder = tmp_path / "hq"
    folder.mkdir()
    for name, size in (("fine", 0.03), ("coarse", 0.2)):
        tifffile.imwrite(folder / f"{name}.ome.tif", nuclei_truth[:64, :64], metadata={
            "axes": "YX", "PhysicalSizeX": size, "PhysicalSizeY": size})
    with pytest.warns(UserWarning, match=r"different pixel sizes \(fine.ome.tif: 30 nm, "
                                         r"coarse.ome.tif: 200 nm\)"):
        load_hq(folder)


def test_the_channels_of_a_multichannel_stack_are_said_to_be_separate_images(tmp_path,
                                                                             nuclei_truth):
    from napari_cvdm.data import load_hq

    folder = tmp_path / "hq"
    folder.mkdir()
    tifffile.imwrite(folder / "two.ome.tif", np.stack([nuclei_truth[:64, :64]] * 2),
                     metadata={"axes": "CYX"})
    with pytest.warns(UserWarning, match="two.ome.tif: its 2 channels are trained on as "
                                         "separate images"):
        assert len(load_hq(folder)) == 2
