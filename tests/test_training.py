"""Training: both data paths on real images, learning, validation, resume, bad folders."""

import numpy as np
import pytest
import tifffile
import torch

import napari_cvdm as nc
from napari_cvdm.training import TrainingSettings, state_path, train


@pytest.fixture
def hq_dir(tmp_path, nuclei_truth):
    """Real 16-bit crops of odd sizes."""
    folder = tmp_path / "hq"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", nuclei_truth[:97, :131])
    tifffile.imwrite(folder / "b.tif", nuclei_truth[200:301, 150:333])
    tifffile.imwrite(folder / "c.tiff", np.stack([nuclei_truth[300:380, 300:390]] * 2))
    return folder


@pytest.fixture
def pair_dirs(tmp_path, nuclei_truth, nuclei_widefield):
    lq, hq = tmp_path / "lq", tmp_path / "hq_pairs"
    lq.mkdir()
    hq.mkdir()
    for name, (y, x) in {"one": (0, 0), "two": (64, 100)}.items():
        tifffile.imwrite(lq / f"{name}.tif", nuclei_widefield[y:y + 64, x:x + 72])
        tifffile.imwrite(hq / f"{name}.tif", nuclei_truth[2 * y:2 * y + 128, 2 * x:2 * x + 144])
    return lq, hq


def _settings(**kw):
    base = dict(preset="tiny", steps=6, batch_size=2, patch_size=32, validation_every=3,
                checkpoint_every=3, validation_patches=2, validation_steps=2)
    return TrainingSettings(**{**base, **kw})


def test_training_from_high_quality_images_writes_a_usable_model(hq_dir, tmp_path):
    out = tmp_path / "m.cvdm.safetensors"
    model = train(output=out, hq=hq_dir, settings=_settings(), device="cpu")
    loaded = nc.load_model(out)
    info = loaded.metadata["training"]
    assert info["step"] == 6 and info["data"]["mode"] == "simulated"
    assert info["data"]["degradation"]["psf"] == "gaussian"
    assert len(info["history"]) == 2 and {"psnr", "ssim", "bicubic_psnr"} <= set(info["history"][0])
    assert info["validation_images"]  # something was held out
    assert loaded.config == model.config
    result = nc.predict(np.random.rand(16, 16), loaded, samples=1, steps=2)
    assert result.mean.shape == (32, 32)


def test_training_from_pairs_detects_the_scale(pair_dirs, tmp_path):
    out = tmp_path / "p.cvdm.safetensors"
    train(output=out, pairs=pair_dirs, settings=_settings(), device="cpu")
    loaded = nc.load_model(out)
    assert loaded.config.scale == 2
    assert loaded.metadata["training"]["data"]["mode"] == "pairs"


def test_resume_continues_from_the_saved_step(hq_dir, tmp_path):
    out = tmp_path / "r.cvdm.safetensors"
    train(output=out, hq=hq_dir, settings=_settings(steps=3), device="cpu")
    assert state_path(out).is_file()
    seen = []
    train(output=out, hq=hq_dir, settings=_settings(steps=6), resume=True, device="cpu",
          progress=lambda step, total, loss: seen.append(step))
    assert seen == [4, 5, 6]
    assert nc.load_model(out).metadata["training"]["step"] == 6
    assert len(nc.load_model(out).metadata["training"]["history"]) == 2


def test_a_short_run_lowers_loss_and_validation_error(pair_dirs, tmp_path):
    torch.manual_seed(0)
    losses = []
    model = train(output=tmp_path / "l.cvdm.safetensors", pairs=pair_dirs, device="cpu",
                  settings=_settings(steps=240, batch_size=4, validation_every=40,
                                     validation_patches=4, validation_steps=5, learning_rate=2e-3,
                                     checkpoint_every=1000),
                  progress=lambda s, t, loss: losses.append(loss["total"]))
    first, last = np.mean(losses[:30]), np.mean(losses[-30:])
    assert last < 0.7 * first
    history = model.metadata["training"]["history"]
    assert history[-1]["psnr"] > history[0]["psnr"] + 1.0
    # ... and the reconstruction of held-out strips beats its own bicubic input.
    assert history[-1]["psnr"] > history[-1]["bicubic_psnr"] + 0.4
    assert history[-1]["ssim"] > history[-1]["bicubic_ssim"] + 0.02


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_fixed_schedule_switch_trains(hq_dir, tmp_path, schedule):
    out = tmp_path / f"{schedule}.cvdm.safetensors"
    train(output=out, hq=hq_dir, settings=_settings(steps=2, schedule=schedule), device="cpu")
    assert nc.load_model(out).config.schedule == schedule


def test_bad_folders_give_clear_errors(tmp_path, pair_dirs):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="not found"):
        train(output=tmp_path / "x", hq=tmp_path / "missing", settings=_settings())
    with pytest.raises(ValueError, match="no .tif"):
        train(output=tmp_path / "x", hq=empty, settings=_settings())
    with pytest.raises(ValueError, match="is a file; give the folder"):
        train(output=tmp_path / "x", hq=pair_dirs[0] / "one.tif", settings=_settings())
    other = tmp_path / "other"
    other.mkdir()
    tifffile.imwrite(other / "zzz.tif", np.zeros((8, 8), np.uint16))
    with pytest.raises(ValueError, match="no file names in common"):
        train(output=tmp_path / "x", pairs=(pair_dirs[0], other), settings=_settings())
    bad_hq = tmp_path / "bad_hq"
    bad_hq.mkdir()
    tifffile.imwrite(bad_hq / "one.tif", np.random.randint(0, 100, (100, 90), np.uint16))
    with pytest.raises(ValueError, match="integer"):
        train(output=tmp_path / "x", pairs=(pair_dirs[0], bad_hq), settings=_settings())
    assert not (tmp_path / "x").exists()


def test_cosine_lr_decay_falls_to_zero_and_a_resumed_run_keeps_the_curve(hq_dir, tmp_path,
                                                                         monkeypatch):
    used = []
    adam_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return adam_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    out = tmp_path / "c.cvdm.safetensors"
    settings = _settings(steps=4, learning_rate=1e-3, lr_decay="cosine", checkpoint_every=2)
    train(output=out, hq=hq_dir, settings=settings, device="cpu")
    expected = [1e-3 * 0.5 * (1 + np.cos(np.pi * k / 4)) for k in range(4)]
    assert used == pytest.approx(expected)
    assert used[0] == 1e-3 and used[-1] < 0.15e-3
    assert nc.load_model(out).metadata["training"]["settings"]["lr_decay"] == "cosine"

    used.clear()
    out2 = tmp_path / "r.cvdm.safetensors"
    train(output=out2, hq=hq_dir, settings=_settings(steps=2, learning_rate=1e-3,
                                                     lr_decay="cosine"), device="cpu")
    used.clear()
    train(output=out2, hq=hq_dir, settings=settings, resume=True, device="cpu")
    assert used == pytest.approx(expected[2:])  # steps 3 and 4 of the same 4-step curve


def test_constant_lr_is_the_default(hq_dir, tmp_path, monkeypatch):
    used = []
    adam_step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step",
                        lambda self, *a, **k: (used.append(self.param_groups[0]["lr"]),
                                               adam_step(self, *a, **k))[1])
    train(output=tmp_path / "k.cvdm.safetensors", hq=hq_dir,
          settings=_settings(steps=3, learning_rate=1e-3), device="cpu")
    assert used == [1e-3] * 3


def test_grad_clip_zero_turns_clipping_off_instead_of_freezing_the_weights(hq_dir, tmp_path):
    """A clip norm of 0 zeroed every gradient: the weights never moved, exit 0 (audit)."""
    states = []
    for steps in (2, 3):
        out = tmp_path / f"clip{steps}.cvdm.safetensors"
        train(output=out, hq=hq_dir, device="cpu",
              settings=_settings(steps=steps, grad_clip=0.0, ema_decay=0.0, validation_every=10,
                                 checkpoint_every=10, learning_rate=1e-3))
        states.append(nc.load_model(out).state_dict())
    changed = sum(not torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert changed > len(states[0]) // 2


def test_told_error_without_a_conditioned_model_is_refused_not_ignored(hq_dir, tmp_path):
    from napari_cvdm.degradation import Degradation

    out = tmp_path / "t.cvdm.safetensors"
    with pytest.raises(ValueError, match="told_error .*psf_conditioned"):
        train(output=out, hq=hq_dir, settings=_settings(steps=1), device="cpu",
              degradation=Degradation(told_error=0.1))
    assert not out.exists()
    train(output=out, hq=hq_dir, settings=_settings(steps=1, psf_conditioned=True), device="cpu",
          degradation=Degradation(told_error=0.1))
    assert nc.load_model(out).config.psf_conditioned
