"""Models conditioned on the PSF width: the channel, the blind-to-conditioned start, training,
prediction, files, warnings and the optics formula."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from napari_cvdm import CVDM, CVDMConfig, predict
from napari_cvdm.domain import input_warnings
from napari_cvdm.model.cvdm import conditioned_on_psf
from napari_cvdm.psf_width import DEFAULT_PSF_SIGMA, from_optics, psf_sigma_for, trained_range
from napari_cvdm.sampling import sample
from napari_cvdm.settings import PredictSettings

from conftest import randomized


def _conditioned(seed: int = 0, trained=(1.5, 4.0)) -> CVDM:
    """A tiny conditioned model whose PSF channel matters (randomised weights)."""
    torch.manual_seed(seed)
    model = randomized(CVDM(CVDMConfig.preset("tiny", psf_conditioned=True)), seed, 0.2)
    model.metadata = {"training": {"data": {"degradation": {"psf_sigma": list(trained)}}}}
    return model


def test_blind_to_conditioned_starts_as_exactly_the_blind_model(tiny_model):
    small = randomized(CVDM(CVDMConfig.preset("small")), 1)
    for blind in (tiny_model, small):
        conditioned = conditioned_on_psf(blind).eval()
        assert conditioned.config.psf_conditioned and not blind.config.psf_conditioned
        x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
        noise = torch.randn(2, 2, 1, 16, 16, generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            a = sample(blind, x, noise, steps=3, eta=0.0)
            for sigma in (1.0, 3.5, torch.tensor([2.0, 6.0])):
                b = sample(conditioned, x, noise, steps=3, eta=0.0, psf_sigma=sigma)
                torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
            la = blind.loss(x, x.flip(-1), generator=torch.Generator().manual_seed(5))
            lb = conditioned.loss(x, x.flip(-1), generator=torch.Generator().manual_seed(5),
                                  psf_sigma=torch.tensor([2.0, 3.0]))
        torch.testing.assert_close(la["total"], lb["total"])
    with pytest.raises(ValueError, match="already conditioned"):
        conditioned_on_psf(conditioned)


def test_the_width_changes_a_conditioned_model_output():
    model = _conditioned()
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(1, 1, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = sample(model, x, noise, steps=2, eta=0.0, psf_sigma=1.5)
        b = sample(model, x, noise, steps=2, eta=0.0, psf_sigma=3.5)
        c = sample(model, x, noise, steps=2, eta=0.0, psf_sigma=1.5)
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(a, c)


@pytest.mark.parametrize("bad", [None, 0.0, -1.0, float("nan"), [1.0, 2.0, 3.0]])
def test_a_conditioned_model_needs_one_positive_width(bad):
    model = _conditioned()
    with pytest.raises(ValueError, match="psf_sigma"):
        model.prepare(torch.zeros(2, 1, 8, 8), psf_sigma=bad)


def test_a_blind_model_ignores_the_width(tiny_model):
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        a = tiny_model.prepare(x)["inputs"]
        b = tiny_model.prepare(x, psf_sigma=7.0)["inputs"]
    torch.testing.assert_close(a, b)
    assert psf_sigma_for(tiny_model, 2.0) is None


def test_predict_tells_the_model_the_width_and_records_it(nuclei_widefield):
    model = _conditioned()
    image = nuclei_widefield[:24, :24]
    run = dict(samples=2, steps=2, seed=3, device="cpu", precision="fp32")
    default = predict(image, model, **run)
    assert default.info["psf_sigma"] == DEFAULT_PSF_SIGMA
    told = predict(image, model, psf_sigma=DEFAULT_PSF_SIGMA, **run)
    np.testing.assert_array_equal(default.mean, told.mean)
    other = predict(image, model, psf_sigma=1.5, **run)
    assert other.info["psf_sigma"] == 1.5
    assert np.abs(other.mean - default.mean).max() > 0
    model.metadata["psf_sigma_default"] = 1.5  # the model file may carry its own default
    np.testing.assert_array_equal(predict(image, model, **run).mean, other.mean)
    assert image.dtype == np.uint16 and np.array_equal(image, nuclei_widefield[:24, :24])


def test_blind_results_record_no_width(tiny_model, nuclei_widefield):
    result = predict(nuclei_widefield[:16, :16], tiny_model, samples=1, steps=1, seed=0,
                     psf_sigma=2.0)
    assert result.info["psf_sigma"] is None


def test_lazy_prediction_of_a_conditioned_model_equals_in_memory(nuclei_widefield):
    da = pytest.importorskip("dask.array")
    model = _conditioned()
    image = nuclei_widefield[:40, :40].astype(np.float32)
    run = dict(samples=2, steps=2, seed=5, device="cpu", precision="fp32", psf_sigma=2.25,
               tile_size=32)
    eager = predict(image, model, **run)
    lazy = predict(da.from_array(image, chunks=20), model, **run)
    np.testing.assert_allclose(np.asarray(lazy.mean.compute()), eager.mean, rtol=0, atol=1e-5)
    assert lazy.info["psf_sigma"] == 2.25


@pytest.mark.parametrize("bad", [0.1, 25.0, float("inf"), "3"])
def test_the_width_option_is_checked(bad):
    with pytest.raises(ValueError, match="psf sigma"):
        PredictSettings(psf_sigma=bad)


def test_a_width_outside_the_trained_range_warns():
    model = _conditioned()
    image = np.random.default_rng(0).poisson(5, (32, 32)).astype(np.float32)
    image[10:14, 10:14] += 200
    assert trained_range(model) == (1.5, 4.0)
    assert input_warnings(image, model, psf_sigma=3.0) == []
    assert input_warnings(image, model) == []  # the default, 3.0
    messages = input_warnings(image, model, psf_sigma=9.0)
    assert len(messages) == 1 and "PSF width 9" in messages[0] and "1.5-4" in messages[0]
    assert input_warnings(image, model, psf_sigma=0.8)


def test_width_from_the_optics():
    # 0.21 * 520 / 1.4 = 78 nm = 2.6 pixels of 30 nm
    assert from_optics(1.4, 520, 30) == pytest.approx(2.6)
    # relative to a SIM target of 110 nm FWHM (sigma 46.7 nm)
    assert from_optics(1.4, 520, 30, 110) == pytest.approx(math.sqrt(78**2 - 46.71**2) / 30,
                                                            rel=1e-3)
    for bad in ((0, 520, 30), (1.4, -1, 30), (1.4, 520, float("nan")), (2.5, 520, 30)):
        with pytest.raises(ValueError):
            from_optics(*bad)


def test_training_a_conditioned_model(tmp_path, nuclei_truth):
    from napari_cvdm import load_model, save_model
    from napari_cvdm.degradation import Degradation
    from napari_cvdm.training import TrainingSettings, train

    images = [nuclei_truth[:128, :128], nuclei_truth[128:256, 128:256],
              nuclei_truth[256:384, :128]]
    settings = TrainingSettings(preset="tiny", steps=3, batch_size=2, patch_size=32,
                                validation_every=3, validation_patches=2, precision="fp32",
                                psf_conditioned=True)
    out = tmp_path / "c.cvdm.safetensors"
    model = train(output=out, hq=images, settings=settings, device="cpu",
                  degradation=Degradation(psf_sigma=(1.0, 3.0)))
    loaded = load_model(out)
    assert loaded.config.psf_conditioned and model.config.psf_conditioned
    assert trained_range(loaded) == (1.0, 3.0)
    assert math.isfinite(loaded.metadata["training"]["history"][-1]["psnr"])
    # measured pairs do not say their PSF width: they are learned as the model's default,
    # which the file records for predict()
    loaded.metadata["psf_sigma_default"] = 2.75
    save_model(loaded, tmp_path / "base.cvdm.safetensors")
    pairs = [(nuclei_truth[i:i + 128:2, :128:2], nuclei_truth[i:i + 128, :128])
             for i in (0, 128, 256)]
    tuned = train(output=tmp_path / "p.cvdm.safetensors", pairs=pairs, device="cpu",
                  settings=dataclasses.replace(settings, init=str(tmp_path / "base.cvdm.safetensors")))
    assert tuned.config.psf_conditioned
    assert load_model(tmp_path / "p.cvdm.safetensors").metadata["psf_sigma_default"] == 2.75


def test_fine_tuning_a_blind_model_into_a_conditioned_one(tmp_path, tiny_model_file, nuclei_truth):
    from napari_cvdm import load_model
    from napari_cvdm.training import TrainingSettings, train

    settings = TrainingSettings(steps=2, batch_size=2, patch_size=32, validation_every=2,
                                validation_patches=2, precision="fp32", init=str(tiny_model_file),
                                psf_conditioned=True)
    out = tmp_path / "ft.cvdm.safetensors"
    train(output=out, hq=[nuclei_truth[:128, :128], nuclei_truth[128:256, :128],
                          nuclei_truth[256:384, :128]], settings=settings, device="cpu")
    assert load_model(out).config.psf_conditioned


def test_the_command_line_tells_the_width_and_the_files_record_it(tmp_path, nuclei_widefield):
    import tifffile

    from napari_cvdm import save_model
    from napari_cvdm.cli import main

    model_file = save_model(_conditioned(), tmp_path / "c.cvdm.safetensors")
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, nuclei_widefield[:24, :24])
    recorded = {}
    for sigma in ("2.0", None):
        out = tmp_path / f"out-{sigma}"
        extra = ["--psf-sigma", sigma] if sigma else []
        assert main(["predict", str(source), "-o", str(out), "--model", str(model_file),
                     "--samples", "2", "--steps", "2", "--seed", "0", "--quiet", *extra]) == 0
        (mean,) = [p for p in out.iterdir() if "mean" in p.name]
        with tifffile.TiffFile(mean) as f:
            recorded[sigma] = f.ome_metadata
    assert 'K="psf_sigma">2.0<' in recorded["2.0"]
    assert f'K="psf_sigma">{DEFAULT_PSF_SIGMA}<' in recorded[None]
    assert main(["predict", str(source), "-o", str(tmp_path / "bad"), "--model",
                 str(model_file), "--psf-sigma", "0"]) == 2


def test_the_model_card_says_whether_the_width_is_told(tmp_path, tiny_model, capsys):
    from napari_cvdm import save_model
    from napari_cvdm.cli import main

    conditioned = _conditioned()
    conditioned.metadata["psf_sigma_default"] = 2.5
    files = {"blind": save_model(tiny_model, tmp_path / "b.cvdm.safetensors"),
             "told": save_model(conditioned, tmp_path / "c.cvdm.safetensors")}
    lines = {}
    for kind, path in files.items():
        assert main(["info", str(path)]) == 0
        lines[kind] = [line for line in capsys.readouterr().out.splitlines()
                       if line.startswith("PSF width:")]
    assert lines["blind"] == ["PSF width: blind (the model infers it from the image; trained "
                              "widths not recorded)"]
    assert "told" in lines["told"][0] and "default 2.5" in lines["told"][0]
    assert "trained on 1.5-4 output pixels" in lines["told"][0]


# -- the width estimated from the image where none is given (psf_width.resolve) -------------
def _widefield(sigma: float, seed: int = 0, side: int = 256, planes: int = 0) -> np.ndarray:
    """A generated microtubule image seen through Gaussian optics of ``sigma`` output px."""
    from napari_cvdm import structures
    from napari_cvdm.degradation import Degradation, add_camera_noise, blur_and_downsample

    hq = structures.generate("microtubules", (side, side), 31.0, np.random.default_rng(seed))
    clean = blur_and_downsample(torch.from_numpy(hq)[None, None], Degradation(psf_sigma=sigma),
                                torch.tensor([sigma]))
    one = torch.ones(1)
    noisy = add_camera_noise(clean, one * 500, one * 5, one * 2,
                             torch.Generator().manual_seed(seed))[0, 0].numpy()
    return noisy.astype(np.float32)


def test_a_sharp_image_is_told_its_estimated_width_a_blurred_one_the_default():
    from napari_cvdm.psf_width import DEFAULT, ESTIMATED, GIVEN, resolve

    model = _conditioned()
    sharp, blurred = _widefield(1.5), _widefield(4.0, seed=1)
    sigma, source = resolve(model, None, sharp)
    assert source == ESTIMATED and 1.5 <= sigma <= 2.0  # never below the trained 1.5
    assert resolve(model, None, blurred) == (DEFAULT_PSF_SIGMA, DEFAULT)
    assert resolve(model, 2.5, sharp) == (2.5, GIVEN)
    assert resolve(model, None, sharp[:16, :16]) == (DEFAULT_PSF_SIGMA, DEFAULT)  # too small
    assert resolve(model, None, np.full((64, 64), 7.0)) == (DEFAULT_PSF_SIGMA, DEFAULT)
    assert resolve(_conditioned(trained=(1.8, 4.0)), None, sharp)[0] == 1.8
    blind = CVDM(CVDMConfig.preset("tiny"))
    assert resolve(blind, None, sharp) == (None, None)


def test_predict_estimates_the_width_on_the_middle_plane_and_records_it():
    from napari_cvdm.psf_width import DEFAULT, ESTIMATED, resolve

    model = _conditioned()
    sharp = _widefield(1.5, side=192)
    flat = np.full_like(sharp, 3.0)
    stack = np.stack([flat, sharp, flat])  # only the middle plane has structure
    before = stack.copy()
    expected, _ = resolve(model, None, sharp)
    run = dict(samples=1, steps=1, seed=0, device="cpu", precision="fp32")
    result = predict(stack, model, **run)
    assert result.info["psf_sigma"] == expected and result.info["psf_sigma_from"] == ESTIMATED
    np.testing.assert_array_equal(stack, before)
    told = predict(stack, model, psf_sigma=expected, **run)
    np.testing.assert_array_equal(result.mean, told.mean)  # the same as telling it
    assert told.info["psf_sigma_from"] == "given"
    wide = predict(_widefield(4.0, side=192), model, **run)
    assert (wide.info["psf_sigma"], wide.info["psf_sigma_from"]) == (DEFAULT_PSF_SIGMA, DEFAULT)


def test_files_record_the_estimated_width(tmp_path):
    import tifffile

    from napari_cvdm import save_model
    from napari_cvdm.cli import main
    from napari_cvdm.psf_width import ESTIMATED, resolve

    model = _conditioned()
    model_file = save_model(model, tmp_path / "c.cvdm.safetensors")
    image = _widefield(1.5, side=128)
    tifffile.imwrite(tmp_path / "in.tif", image)
    expected, _ = resolve(model, None, image)
    assert main(["predict", str(tmp_path / "in.tif"), "-o", str(tmp_path / "out"), "--model",
                 str(model_file), "--samples", "1", "--steps", "1", "--seed", "0",
                 "--quiet"]) == 0
    (mean,) = [p for p in (tmp_path / "out").iterdir() if "mean" in p.name]
    with tifffile.TiffFile(mean) as f:
        meta = f.ome_metadata
    assert f'K="psf_sigma">{expected}<' in meta and ESTIMATED in meta


@pytest.mark.parametrize("told_error", [0.0, 0.3])
def test_training_tells_the_true_width_or_one_strayed_by_told_error(monkeypatch, nuclei_truth,
                                                                   tmp_path, told_error):
    from napari_cvdm.degradation import Degradation
    from napari_cvdm.model import CVDM
    from napari_cvdm.training import TrainingSettings, train

    told = []
    real_loss = CVDM.loss

    def recording_loss(self, x, y, psf_sigma=None, **kwargs):
        told.append(psf_sigma.clone())
        return real_loss(self, x, y, psf_sigma=psf_sigma, **kwargs)

    monkeypatch.setattr(CVDM, "loss", recording_loss)
    settings = TrainingSettings(preset="tiny", steps=3, batch_size=4, patch_size=32,
                                validation_every=3, validation_patches=2, precision="fp32",
                                psf_conditioned=True)
    train(output=tmp_path / "t.cvdm.safetensors", settings=settings, device="cpu",
          hq=[nuclei_truth[:128, :128], nuclei_truth[128:256, :128],
              nuclei_truth[256:384, :128]],
          degradation=Degradation(psf_sigma=2.0, told_error=told_error))
    widths = torch.cat(told)
    assert widths.numel() == 12
    if told_error:
        assert len(set(widths.tolist())) == 12 and 1.0 < float(widths.min())
        assert float(widths.max()) < 4.0
    else:
        assert torch.equal(widths, torch.full_like(widths, 2.0))


def test_a_width_given_far_wider_than_the_images_blur_is_warned_about(nuclei_widefield):
    """Found by a review: the BioSR pair told 3.5 (the sigma fitted against its SIM image,
    which a user may measure) came out 3.5 dB below bicubic, without a word."""
    from napari_cvdm.psf_width import estimated_width

    model = _conditioned(trained=(1.0, 9.0))  # no width here is outside the trained range
    estimate = estimated_width(model, nuclei_widefield)
    assert estimate is not None
    wide = round(max(1.35 * estimate, estimate + 0.75) + 0.2, 2)
    (message,) = input_warnings(nuclei_widefield, model, psf_sigma=wide)
    assert f"PSF width given, {wide:g} output pixels, is much wider" in message
    assert input_warnings(nuclei_widefield, model, psf_sigma=round(estimate, 2)) == []
    assert input_warnings(nuclei_widefield, model) == []  # not given: nothing to judge
