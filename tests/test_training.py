"""Training: both data paths on real images, learning, validation, resume, bad folders."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import napari_cvdm as nc
from napari_cvdm import precision
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
        train(output=tmp_path / "x.cvdm.safetensors", hq=tmp_path / "missing", settings=_settings())
    with pytest.raises(ValueError, match="no .tif"):
        train(output=tmp_path / "x.cvdm.safetensors", hq=empty, settings=_settings())
    with pytest.raises(ValueError, match="is a file; give the folder"):
        train(output=tmp_path / "x.cvdm.safetensors", hq=pair_dirs[0] / "one.tif", settings=_settings())
    other = tmp_path / "other"
    other.mkdir()
    tifffile.imwrite(other / "zzz.tif", np.zeros((8, 8), np.uint16))
    with pytest.raises(ValueError, match="no file names in common"):
        train(output=tmp_path / "x.cvdm.safetensors", pairs=(pair_dirs[0], other), settings=_settings())
    bad_hq = tmp_path / "bad_hq"
    bad_hq.mkdir()
    tifffile.imwrite(bad_hq / "one.tif", np.random.randint(0, 100, (100, 90), np.uint16))
    with pytest.raises(ValueError, match="integer"):
        train(output=tmp_path / "x.cvdm.safetensors", pairs=(pair_dirs[0], bad_hq), settings=_settings())
    assert not (tmp_path / "x.cvdm.safetensors").exists()


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


def test_train_never_replaces_an_image_or_the_init_model_and_a_model_only_when_told(
        hq_dir, tmp_path):
    """Found by an audit: train() (Python) replaced any file at output, an input image and
    the init model included; the command line and napari refused."""
    image = hq_dir / "a.tif"
    before = image.read_bytes()
    with pytest.raises(ValueError, match="must end in .cvdm.safetensors"):
        train(output=image, hq=hq_dir, settings=_settings(steps=1), device="cpu")
    disguised = tmp_path / "image.cvdm.safetensors"
    disguised.write_bytes(before)
    with pytest.raises(ValueError, match="not a napari-cvdm model"):
        train(output=disguised, hq=hq_dir, settings=_settings(steps=1), device="cpu")
    assert image.read_bytes() == before == disguised.read_bytes()
    first = tmp_path / "first.cvdm.safetensors"
    train(output=first, hq=hq_dir, settings=_settings(steps=1), device="cpu")
    kept = first.read_bytes()
    with pytest.raises(ValueError, match="is the model to fine-tune"):
        train(output=first, hq=hq_dir, settings=_settings(steps=1, init=str(first)),
              device="cpu")
    with pytest.raises(ValueError, match="exists; .*overwrite=True"):
        train(output=first, hq=hq_dir, settings=_settings(steps=1), device="cpu")
    assert first.read_bytes() == kept
    train(output=first, hq=hq_dir, settings=_settings(steps=2), overwrite=True, device="cpu")
    assert nc.load_model(first).metadata["training"]["step"] == 2


def test_the_training_state_beside_the_model_follows_the_same_rules(hq_dir, tmp_path):
    """Found by a review: only the model path was checked; the state written beside it at
    every checkpoint replaced any file (an image, an earlier run's resumable state) without
    overwrite, and a folder there failed at the first checkpoint, after the work."""
    from napari_cvdm.checkpoints import state_path

    out = tmp_path / "m.cvdm.safetensors"
    image = hq_dir / "a.tif"
    state_path(out).write_bytes(image.read_bytes())
    with pytest.raises(ValueError, match="not a napari-cvdm training state"):
        train(output=out, hq=hq_dir, settings=_settings(steps=1), overwrite=True, device="cpu")
    assert state_path(out).read_bytes() == image.read_bytes()
    state_path(out).unlink()
    state_path(out).mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        train(output=out, hq=hq_dir, settings=_settings(steps=1), device="cpu")
    state_path(out).rmdir()
    train(output=out, hq=hq_dir, settings=_settings(steps=2), device="cpu")
    out.unlink()  # the model moved away: its state still resumes the run
    kept = state_path(out).read_bytes()
    with pytest.raises(ValueError, match="training state of an earlier run"):
        train(output=out, hq=hq_dir, settings=_settings(steps=1, seed=9), device="cpu")
    assert state_path(out).read_bytes() == kept
    train(output=out, hq=hq_dir, settings=_settings(steps=1, seed=9), overwrite=True,
          device="cpu")


def test_an_output_folder_that_cannot_take_the_model_is_refused_before_training(
        hq_dir, tmp_path, monkeypatch):
    """A read-only or full file system was found only at the first checkpoint."""
    import errno
    import tempfile

    from napari_cvdm import training_data

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    def never(*args, **kwargs):
        raise AssertionError("data were loaded before the output was checked")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
    monkeypatch.setattr(training_data, "load_hq", never)
    with pytest.raises(ValueError, match="cannot write to .*Read-only file system"):
        train(output=tmp_path / "m.cvdm.safetensors", hq=hq_dir, settings=_settings(),
              device="cpu")


def test_resume_refuses_other_data_or_settings_a_damaged_state_and_a_finished_run(
        hq_dir, tmp_path, nuclei_truth):
    """Found by an audit: --resume took other data and optics silently (the model card then
    described only the second run); a state with NaN tensors 'diverged' at once with advice
    to resume; resuming a finished run said 'model written'."""
    from safetensors.torch import load_file, save_file

    out = tmp_path / "r.cvdm.safetensors"
    train(output=out, hq=hq_dir, settings=_settings(steps=3), device="cpu")
    with pytest.raises(ValueError, match="other data or settings.*seed: 0 there, 5"):
        train(output=out, hq=hq_dir, settings=_settings(steps=6, seed=5), resume=True,
              device="cpu")
    other = tmp_path / "other"
    other.mkdir()
    tifffile.imwrite(other / "x.tif", nuclei_truth[:100, :100])
    with pytest.raises(ValueError, match="other data or settings.*hq: 'hq' there, 'other'"):
        train(output=out, hq=other, settings=_settings(steps=6), resume=True, device="cpu")
    # A folder of the same name with other images of the same names and number (found by a
    # review: accepted, and the validation PSNR fell by half)
    elsewhere = tmp_path / "elsewhere" / Path(hq_dir).name
    elsewhere.mkdir(parents=True)
    for path in sorted(Path(hq_dir).iterdir()):
        tifffile.imwrite(elsewhere / path.name, np.flip(tifffile.imread(path), axis=-1))
    with pytest.raises(ValueError, match="training images differ from those of the run"):
        train(output=out, hq=elsewhere, settings=_settings(steps=6), resume=True,
              device="cpu")
    with pytest.raises(ValueError, match="already at step 3"):
        train(output=out, hq=hq_dir, settings=_settings(steps=3), resume=True, device="cpu")
    # The length, how often to validate or checkpoint, and the recovery settings (a lower
    # learning rate after a divergence, as its message advises) may change; those are
    # recorded. The folder given with a trailing slash is the same folder.
    train(output=out, hq=f"{hq_dir}/", settings=_settings(
        steps=4, validation_every=1, checkpoint_every=1, learning_rate=5e-5, batch_size=1),
        resume=True, device="cpu")
    training = nc.load_model(out).metadata["training"]
    assert training["step"] == 4
    assert training["resumed_with"] == [{"step": 3, "changes": [
        "batch_size: 2 -> 1", "learning_rate: the default -> 5e-05", "steps: 3 -> 4"]}]
    state = state_path(out)
    from safetensors import safe_open

    with safe_open(str(state), framework="pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(state))
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(state), metadata=meta)
    with pytest.raises(ValueError, match="is damaged .*NaN or infinite"):
        train(output=out, hq=hq_dir, settings=_settings(steps=6), resume=True, device="cpu")


def test_images_or_training_parts_smaller_than_a_patch_say_why(tmp_path, nuclei_truth):
    """Found by an audit: a --hq image smaller than the patch, or one whose validation strip
    left less than a patch, failed deep in the blur with a torch RuntimeError."""
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    tifffile.imwrite(tiny / "t.tif", nuclei_truth[:20, :20])
    with pytest.raises(ValueError, match=r"smaller than the patch size 32: \['t\[0\] \(20 x 20\)'"):
        train(output=tmp_path / "a.cvdm.safetensors", hq=tiny, settings=_settings(),
              device="cpu")
    one = tmp_path / "one"
    one.mkdir()
    tifffile.imwrite(one / "o.tif", nuclei_truth[:48, :100])
    with pytest.raises(ValueError, match="after its validation strip.*o\\[0\\] \\(16 rows\\)"):
        train(output=tmp_path / "b.cvdm.safetensors", hq=one, settings=_settings(),
              device="cpu")
    with pytest.raises(ValueError, match="after its validation strip"):
        train(output=tmp_path / "c.cvdm.safetensors", hq=[nuclei_truth[:48, :100]],
              settings=_settings(), device="cpu")


def test_the_python_api_refuses_what_it_would_ignore_or_misread(pair_dirs, hq_dir, tmp_path):
    from napari_cvdm.degradation import Degradation

    out = tmp_path / "m.cvdm.safetensors"
    with pytest.raises(ValueError, match="with pairs the inputs are measured"):
        train(output=out, pairs=pair_dirs, degradation=Degradation(psf_sigma=3.0),
              settings=_settings(), device="cpu")
    with pytest.raises(TypeError, match=r"\['er'\]"):
        train(output=out, synthetic="er", settings=_settings(), device="cpu")
    with pytest.raises(TypeError, match="TrainingSettings"):
        train(output=out, hq=hq_dir, settings={"steps": 2}, device="cpu")
    assert not out.exists()


def test_ctrl_c_says_what_is_kept(hq_dir, tmp_path, capsys, monkeypatch):
    """The command line said 'the last checkpoint is kept' when none had been written."""
    from napari_cvdm.cli import main

    def interrupt(step, total, terms):
        raise KeyboardInterrupt

    from napari_cvdm.errors import Cancelled

    out = tmp_path / "k.cvdm.safetensors"
    with pytest.raises(Cancelled, match="no checkpoint was written yet"):
        train(output=out, hq=hq_dir, settings=_settings(), device="cpu", progress=interrupt)
    assert not out.exists()
    import napari_cvdm.training as training

    real = training.train
    monkeypatch.setattr(training, "train", lambda **kw: real(**{**kw, "progress": interrupt}))
    code = main(["train", "--hq", str(hq_dir), "-o", str(out), "--preset", "tiny", "--steps",
                 "4", "--batch-size", "2", "--patch-size", "32", "--validation-patches", "2",
                 "--validation-steps", "2"])
    err = capsys.readouterr().err
    assert code == 130 and "no checkpoint was written yet" in err and "is kept" not in err


def test_a_fine_tuned_run_resumes_and_keeps_where_it_started(hq_dir, tmp_path):
    """Found by a review: the resume check compared init (never given with resume), so a
    run started from a model could not be resumed at all."""
    first = tmp_path / "first.cvdm.safetensors"
    train(output=first, hq=hq_dir, settings=_settings(steps=2), device="cpu")
    tuned = tmp_path / "tuned.cvdm.safetensors"
    train(output=tuned, hq=hq_dir, settings=_settings(steps=2, init=str(first)), device="cpu")
    train(output=tuned, hq=hq_dir, settings=_settings(steps=3), resume=True, device="cpu")
    training = nc.load_model(tuned).metadata["training"]
    assert training["step"] == 3 and training["init"] == "first.cvdm.safetensors"


def test_a_resume_records_what_it_changes_and_says_what_the_decay_does(hq_dir, tmp_path):
    """Found by a review: a resume in another precision was recorded as if the whole run
    had used it, raising the steps of a cosine decay sent the learning rate back up without
    a word, a resumed fine-tune was described as trained from scratch, and a resume whose
    model file was gone dropped its validations silently."""
    from napari_cvdm.model_card import summary_line

    first = tmp_path / "first.cvdm.safetensors"
    train(output=first, hq=hq_dir, settings=_settings(steps=2), device="cpu")
    out = tmp_path / "tuned.cvdm.safetensors"
    train(output=out, hq=hq_dir, device="cpu", settings=_settings(
        steps=2, init=str(first), lr_decay="cosine", precision="fp32"))
    said = []
    train(output=out, hq=hq_dir, device="cpu", log=said.append, resume=True, settings=_settings(
        steps=4, lr_decay="cosine", precision="bf16" if precision.cpu_bf16_supported()
        else "fp32"))
    model = nc.load_model(out)
    metadata = model.metadata
    changes = metadata["training"]["resumed_with"][0]["changes"]
    assert "steps: 2 -> 4" in changes
    if precision.cpu_bf16_supported():
        assert "precision: 'fp32' -> 'bf16'" in changes
    assert any("cosine decay follows the total steps, 2 before and 4 now" in s for s in said)
    assert "from an earlier model's weights" in summary_line("tuned", model.config.to_dict(),
                                                             metadata)
    out.unlink()  # the model gone, its state kept: the run goes on, and says what it lost
    said.clear()
    train(output=out, hq=hq_dir, device="cpu", log=said.append, resume=True,
          settings=_settings(steps=5, lr_decay="cosine"))
    assert any("is missing: the running average starts again" in s for s in said)


def test_the_same_images_in_a_folder_of_another_name_resume(hq_dir, tmp_path):
    """Found by a review: the folder's name was part of the run's record, so the same images
    moved to another folder (another machine's layout) were refused as other data."""
    import shutil

    out = tmp_path / "r.cvdm.safetensors"
    train(output=out, hq=hq_dir, settings=_settings(steps=2), device="cpu")
    moved = tmp_path / "scratch_run7"
    shutil.copytree(hq_dir, moved)
    train(output=out, hq=moved, settings=_settings(steps=3), resume=True, device="cpu")
    assert nc.load_model(out).metadata["training"]["step"] == 3


def test_a_resume_without_the_preset_names_it(hq_dir, tmp_path):
    out = tmp_path / "r.cvdm.safetensors"
    train(output=out, hq=hq_dir, settings=_settings(steps=2), device="cpu")
    with pytest.raises(ValueError, match="the run used the preset 'tiny': give it again"):
        train(output=out, hq=hq_dir, settings=_settings(steps=3, preset="small"),
              resume=True, device="cpu")


def test_a_full_disk_at_a_checkpoint_says_what_is_kept(hq_dir, tmp_path, monkeypatch):
    import errno

    import napari_cvdm.training as training_module

    out = tmp_path / "r.cvdm.safetensors"
    real, calls = training_module.save_checkpoint, []

    def full_at_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device while writing")
        return real(*args, **kwargs)

    monkeypatch.setattr(training_module, "save_checkpoint", full_at_the_second)
    with pytest.raises(OSError, match=r"No space left.*the last checkpoint is kept: .*step 3"):
        train(output=out, hq=hq_dir, settings=_settings(steps=6), device="cpu")
    assert nc.load_model(out).metadata["training"]["step"] == 3


def test_a_run_fine_tuning_a_model_of_another_configuration_resumes(hq_dir, tmp_path):
    """Found by a review: the start's configuration (here told the PSF width, as the
    bundled model is) was compared with the settings' on resume, and the run record with
    the opposite: no command could resume it."""
    first = tmp_path / "first.cvdm.safetensors"
    train(output=first, hq=hq_dir, settings=_settings(steps=2, psf_conditioned=True),
          device="cpu")
    tuned = tmp_path / "tuned.cvdm.safetensors"
    train(output=tuned, hq=hq_dir, settings=_settings(steps=2, init=str(first)), device="cpu")
    train(output=tuned, hq=hq_dir, settings=_settings(steps=4), resume=True, device="cpu")
    model = nc.load_model(tuned)
    assert model.config.psf_conditioned and model.metadata["training"]["step"] == 4
    assert model.metadata["training"]["init"] == "first.cvdm.safetensors"


def test_resume_ignores_a_model_file_that_is_not_this_states_average(hq_dir, tmp_path):
    """Found by a review: the state and the model were two writes; an interrupt between
    them left a new run's state beside an earlier run's model, and resume took that model
    as this run's average (and its history). Now they are one unit, and resume checks."""
    out = tmp_path / "r.cvdm.safetensors"
    train(output=out, hq=hq_dir, settings=_settings(steps=3, seed=1), device="cpu")
    other = tmp_path / "other.cvdm.safetensors"
    train(output=other, hq=hq_dir, settings=_settings(steps=6, seed=1), device="cpu")
    other.replace(out)  # as if the run to resume were stopped before its model was written
    train(output=out, hq=hq_dir, settings=_settings(steps=4, seed=1), resume=True,
          device="cpu")
    history = [entry["step"] for entry in nc.load_model(out).metadata["training"]["history"]]
    assert 6 not in history and nc.load_model(out).metadata["training"]["step"] == 4


def test_one_blank_pair_of_a_folder_is_left_out_and_small_held_out_images_are_fine(
        tmp_path, nuclei_truth, nuclei_widefield):
    """Found by a review: one blank file pair stopped the whole folder (it was skipped
    before), and an image held out whole for validation had to be a patch wide."""
    from napari_cvdm.data import load_pairs
    from napari_cvdm.training_data import prepare_data

    lq, hq = tmp_path / "lq", tmp_path / "hq"
    lq.mkdir()
    hq.mkdir()
    tifffile.imwrite(lq / "cell.tif", nuclei_widefield[:64, :64])
    tifffile.imwrite(hq / "cell.tif", nuclei_truth[:128, :128])
    tifffile.imwrite(lq / "empty.tif", np.zeros((64, 64), np.uint16))
    tifffile.imwrite(hq / "empty.tif", np.zeros((128, 128), np.uint16))
    pairs, scale = load_pairs(lq, hq)
    assert [p.name for p in pairs] == ["cell[0]"] and scale == 2
    (hq / "cell.tif").unlink()
    (lq / "cell.tif").unlink()
    with pytest.raises(ValueError, match="no pair in .* has a plane with structure"):
        load_pairs(lq, hq)
    # Five images: the first is held out whole; it may be smaller than a patch.
    images = [nuclei_truth[:24, :24]] + [nuclei_truth[k * 70:k * 70 + 64, :64] for k in range(4)]
    data = prepare_data(hq=images, degradation=None, patch_size=32, validation_fraction=0.2,
                        validation_patches=2, seed=0, generator=torch.Generator().manual_seed(0))
    assert data.validation_names == ["image0[0]"]


# -- from a review of the training entry points with unusual inputs -----------------------
def test_options_a_fine_tune_would_ignore_are_refused(hq_dir, tmp_path):
    """schedule and mean_network were ignored with init, and the card recorded them."""
    first = tmp_path / "first.cvdm.safetensors"
    train(output=first, hq=hq_dir, settings=_settings(steps=1), device="cpu")
    for extra in ({"schedule": "linear"}, {"mean_network": False}):
        out = tmp_path / "tuned.cvdm.safetensors"
        with pytest.raises(ValueError, match="keeps the architecture and schedule"):
            train(output=out, hq=hq_dir, settings=_settings(steps=1, init=str(first), **extra),
                  device="cpu")
        assert not out.exists()


def test_the_largest_validation_fraction_keeps_an_image_to_train_on(tmp_path, nuclei_truth):
    """0.95 (the maximum) of 6 images held out all six: a RuntimeError from the sampler."""
    images = [nuclei_truth[i * 60:i * 60 + 60, :80] for i in range(6)]
    out = tmp_path / "v.cvdm.safetensors"
    train(output=out, hq=images, settings=_settings(steps=1, validation_fraction=0.95),
          device="cpu")
    info = nc.load_model(out).metadata["training"]
    assert len(info["validation_images"]) == 5 and info["step"] == 1


def test_small_patches_validate_and_the_held_out_patch_is_a_multiple_of_the_scale(
        tmp_path, nuclei_truth):
    """The 11 x 11 SSIM window failed on patches under 11 pixels (after the training); the
    fallback patch for small held-out images was not a multiple of the scale, and the error
    blamed the patch size the user gave."""
    from napari_cvdm.data import Pair
    from napari_cvdm.metrics import ssim
    from napari_cvdm.training_data import _validation_patches

    rng = np.random.default_rng(0)
    target = rng.random((8, 8))
    assert ssim(target, target) == pytest.approx(1.0)
    assert 0 < ssim(target + rng.random((8, 8)), target) < 1
    small = [Pair(np.zeros((14, 14), np.float32), np.zeros((42, 42), np.float32), "s")]
    x, y = _validation_patches(small, 3, 48, 2, 0)[:2]
    assert y.shape[-1] % 3 == 0 and y.shape[-1] == 24 and x.shape[-1] == y.shape[-1]
    out = tmp_path / "p.cvdm.safetensors"
    train(output=out, hq=[nuclei_truth[:64, :64]] * 2, device="cpu",
          settings=_settings(steps=1, patch_size=8, validation_every=1))
    assert nc.load_model(out).metadata["training"]["step"] == 1


def test_rgb_arrays_and_folders_named_like_images_are_clear(tmp_path, hq_dir, nuclei_truth):
    rgb = np.stack([nuclei_truth[:96, :96]] * 3, axis=-1)
    with pytest.raises(ValueError, match="looks like an RGB image"):
        train(output=tmp_path / "rgb.cvdm.safetensors", hq=[rgb], settings=_settings(steps=1),
              device="cpu")
    (hq_dir / "folder.tif").mkdir()  # a folder named like an image: not an input
    (hq_dir / "loop.tif").symlink_to(hq_dir / "loop.tif")
    out = tmp_path / "f.cvdm.safetensors"
    train(output=out, hq=hq_dir, settings=_settings(steps=1), device="cpu")
    assert "folder.tif" not in str(nc.load_model(out).metadata["training"]["training_images"])


def test_resume_keeps_a_model_one_checkpoint_behind_and_what_the_start_brought(
        hq_dir, tmp_path):
    """A review of the resume check: a model file of the same run one checkpoint behind
    its state (a kill between the two renames, a restored backup) restarted the average
    and lost the history; a resumed fine-tune lost the start's default PSF width."""
    import shutil

    first = tmp_path / "first.cvdm.safetensors"
    train(output=first, hq=hq_dir, settings=_settings(steps=1, psf_conditioned=True),
          device="cpu")
    start = nc.load_model(first)
    start.metadata["psf_sigma_default"] = 2.25  # a start told another width by default
    nc.save_model(start, first)
    out = tmp_path / "tuned.cvdm.safetensors"
    train(output=out, hq=hq_dir, settings=_settings(steps=3, init=str(first)), device="cpu")
    behind = tmp_path / "behind.cvdm.safetensors"
    shutil.copy(out, behind)
    train(output=out, hq=hq_dir, settings=_settings(steps=6), resume=True, device="cpu")
    shutil.copy(behind, out)  # the state at step 6, the model at step 3
    train(output=out, hq=hq_dir, settings=_settings(steps=7), resume=True, device="cpu")
    training = nc.load_model(out).metadata["training"]
    assert 3 in [entry["step"] for entry in training["history"]]
    assert training["init"] == "first.cvdm.safetensors" and training["init_step"] == 1
    assert nc.load_model(out).metadata["psf_sigma_default"] == 2.25


def test_a_fine_tune_state_written_before_states_said_so_resumes(hq_dir, tmp_path):
    """States written by the previous version have no 'init': the model file beside
    the state tells that the run is a fine-tune."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from napari_cvdm.checkpoints import STATE_KEY, state_path

    first = tmp_path / "first.cvdm.safetensors"
    train(output=first, hq=hq_dir, settings=_settings(steps=1, psf_conditioned=True),
          device="cpu")
    out = tmp_path / "tuned.cvdm.safetensors"
    train(output=out, hq=hq_dir, settings=_settings(steps=2, init=str(first)), device="cpu")
    state = state_path(out)
    with safe_open(str(state), framework="pt") as fh:
        header = json.loads(fh.metadata()[STATE_KEY])
    del header["init"]
    save_file(load_file(str(state)), str(state), metadata={STATE_KEY: json.dumps(header)})
    train(output=out, hq=hq_dir, settings=_settings(steps=3), resume=True, device="cpu")
    assert nc.load_model(out).config.psf_conditioned


def test_cvdm_train_resumes_a_x4_fine_tune_without_being_told_the_scale(hq_dir, tmp_path):
    from napari_cvdm.cli import main

    common = ["--hq", str(hq_dir), "--preset", "tiny", "--batch-size", "2", "--patch-size",
              "32", "--validation-patches", "2", "--validation-steps", "2", "--device", "cpu"]
    first = tmp_path / "x4.cvdm.safetensors"
    assert main(["train", *common, "--scale", "4", "--steps", "1", "-o", str(first)]) == 0
    out = tmp_path / "tuned.cvdm.safetensors"
    assert main(["train", *common, "--init", str(first), "--steps", "1", "-o", str(out)]) == 0
    assert main(["train", *common, "--steps", "2", "--resume", "-o", str(out)]) == 0
    assert nc.load_model(out).config.scale == 4


def test_cvdm_train_refuses_another_scale_for_a_fine_tune_before_saying_its_optics(
        hq_dir, tmp_path, capsys):
    """It printed 'simulating the optics ... was trained with' before the scale error."""
    from napari_cvdm.cli import main

    common = ["--hq", str(hq_dir), "--preset", "tiny", "--batch-size", "2", "--patch-size",
              "32", "--validation-patches", "2", "--validation-steps", "2", "--device", "cpu"]
    first = tmp_path / "x4.cvdm.safetensors"
    assert main(["train", *common, "--scale", "4", "--steps", "1", "-o", str(first)]) == 0
    capsys.readouterr()
    out = tmp_path / "tuned.cvdm.safetensors"
    assert main(["train", *common, "--init", str(first), "--scale", "2", "--steps", "1",
                 "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is x4, and a fine-tune keeps its model's scale" in err and "simulating" not in err
    assert not out.exists()


def test_blank_validation_patches_are_not_scored(nuclei_truth):
    # a blank target fits any prediction to about 120 dB: it must not be averaged in
    from napari_cvdm.training import evaluate

    model = nc.CVDM(nc.CVDMConfig.preset("tiny"))
    target = torch.from_numpy(np.ascontiguousarray(nuclei_truth[:32, :32], np.float32))
    target = (target - target.min()) / (target.max() - target.min())
    y = torch.stack([torch.zeros_like(target), target])[:, None]
    x = torch.nn.functional.interpolate(
        torch.nn.functional.avg_pool2d(y, 2), scale_factor=2, mode="bicubic")
    scores = evaluate(model, x, y, steps=2)
    assert np.isfinite(scores["psnr"]) and scores["bicubic_psnr"] < 60
    assert evaluate(model, x[:1], y[:1], steps=2) == {}


def test_train_with_init_simulates_the_optics_its_model_was_trained_with(hq_dir, tmp_path):
    from napari_cvdm.degradation import Degradation, trained_optics

    first = tmp_path / "first.cvdm.safetensors"
    optics = Degradation(psf_sigma=(2.0, 3.0), photons=(50.0, 500.0), haze=(0.0, 0.3))
    train(output=first, hq=hq_dir, settings=_settings(steps=1), degradation=optics,
          device="cpu")
    assert trained_optics(nc.load_model(first)) == optics
    tuned = tmp_path / "tuned.cvdm.safetensors"
    train(output=tuned, hq=hq_dir, settings=_settings(steps=1, init=str(first)), device="cpu")
    assert trained_optics(nc.load_model(tuned)) == optics
    plain = tmp_path / "plain.cvdm.safetensors"
    train(output=plain, hq=hq_dir, settings=_settings(steps=1), device="cpu")
    assert trained_optics(nc.load_model(plain)) == Degradation()
    pairs_model = nc.load_model(first)
    pairs_model.metadata["training"]["data"] = {"mode": "pairs"}
    assert trained_optics(pairs_model) is None


def test_a_non_finite_gradient_never_reaches_a_checkpoint(hq_dir, tmp_path, monkeypatch):
    """Found by a review: one gradient overflowing to inf (the loss finite) made the weights
    NaN, the checkpoint of that step replaced the last good one, and nothing could be loaded
    or resumed. Now such an update is skipped; five in a row stop the run as diverged with
    the last good checkpoint kept."""
    from napari_cvdm.training import MAX_SKIPPED_UPDATES, TrainingDiverged

    real = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0, "from": 4, "to": 4}

    def overflowing(params, max_norm, *args, **kwargs):
        params = list(params)
        calls["n"] += 1
        if calls["from"] <= calls["n"] <= calls["to"]:
            params[0].grad.view(-1)[0] = float("inf")
        return real(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", overflowing)
    out = tmp_path / "m.cvdm.safetensors"
    said = []
    train(output=out, hq=hq_dir, settings=_settings(steps=6, checkpoint_every=1,
                                                    first_checkpoint=1),
          device="cpu", log=said.append)
    assert any("step 4: a non-finite gradient; the update is skipped" in m for m in said)
    model = nc.load_model(out)  # finite, complete
    assert model.metadata["training"]["step"] == 6
    # overflowing every step from the 3rd: diverged, the checkpoint of step 2 kept
    calls.update(n=0, **{"from": 3, "to": 10**6})
    out2 = tmp_path / "m2.cvdm.safetensors"
    with pytest.raises(TrainingDiverged, match=f"{MAX_SKIPPED_UPDATES} non-finite"):
        train(output=out2, hq=hq_dir, settings=_settings(steps=20, checkpoint_every=1,
                                                         first_checkpoint=1), device="cpu")
    assert nc.load_model(out2).metadata["training"]["step"] == 2 + MAX_SKIPPED_UPDATES - 1


def test_two_trainings_never_write_one_model_file_at_once(hq_dir, tmp_path):
    """Found by a review: two runs with the same output both said "model written"; one
    run's work was gone. The second is refused while the first runs (in this process or
    another, into an existing folder or a new one); the lock ends with its process."""
    import os
    import subprocess
    import sys

    from napari_cvdm.output_lock import lock_path, output_lock

    out = tmp_path / "new" / "sub" / "m.cvdm.safetensors"
    with output_lock(out):  # a run in progress (this process), its folders just made
        with pytest.raises(ValueError, match=f"another training .process {os.getpid()}"):
            train(output=out, hq=hq_dir, settings=_settings(steps=2), device="cpu")
    assert not (tmp_path / "new").exists()  # nothing written: no folder left behind
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from napari_cvdm.output_lock import output_lock\n"
         f"with output_lock({str(out)!r}):\n"
         "    print('held', flush=True)\n"
         "    time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=f"process {holder.pid} on"):
            train(output=out, hq=hq_dir, settings=_settings(steps=2), device="cpu")
    finally:
        holder.kill()  # killed outright: its lock ends with it
        holder.wait()
    train(output=out, hq=hq_dir, settings=_settings(steps=2), device="cpu")
    assert nc.load_model(out).metadata["training"]["step"] == 2
    assert not lock_path(out).exists()

def test_a_resumed_run_draws_new_timesteps_and_noise(hq_dir, tmp_path):
    """Found by a review: a resumed run reseeded the global generator (the loss's timesteps
    and noise) with the run's seed, so every resumed part repeated the first part's draws."""
    out = tmp_path / "m.cvdm.safetensors"
    seeds = []
    train(output=out, hq=hq_dir, settings=_settings(steps=2, seed=7), device="cpu",
          progress=lambda *_: seeds.append(torch.initial_seed()))
    train(output=out, hq=hq_dir, settings=_settings(steps=4, seed=7), resume=True,
          device="cpu", progress=lambda *_: seeds.append(torch.initial_seed()))
    assert seeds == [7, 7, 9, 9]


def test_a_stop_just_after_a_checkpoint_names_the_step_on_disk(hq_dir, tmp_path,
                                                                monkeypatch):
    """Found by a review: Ctrl-C just after a checkpoint was put in place, before the run
    noted it, said the checkpoint before it was kept (step 3 for the step 5 on disk)."""
    import napari_cvdm.training as training

    real = training.save_checkpoint

    def interrupted_after(output, ema, model, optimizer, step, metadata):
        real(output, ema, model, optimizer, step, metadata)
        if step == 4:
            raise KeyboardInterrupt  # as if Ctrl-C came in the writer's last lines

    monkeypatch.setattr(training, "save_checkpoint", interrupted_after)
    out = tmp_path / "m.cvdm.safetensors"
    with pytest.raises(nc.Cancelled, match=r"kept: .* \(step 4\)"):
        train(output=out, hq=hq_dir, settings=_settings(steps=6, checkpoint_every=2,
                                                        first_checkpoint=2), device="cpu")


def test_a_loss_blowing_up_with_finite_weights_is_said():
    """Found by a review: lr 1.0 took the loss from 1.2-1.6 to 16-39 with finite weights,
    and the run ended "model written" without a word."""
    from napari_cvdm.training import _say_loss_blow_up

    said = []
    lowest = _say_loss_blow_up([1.6, 1.4, 1.5], None, 10, said.append)
    lowest = _say_loss_blow_up([2.5, 3.5], lowest, 20, said.append)  # noise: nothing said
    assert lowest == pytest.approx(1.5) and said == []
    assert _say_loss_blow_up([16.7, 39.6, 21.8], lowest, 30, said.append) == lowest
    assert len(said) == 1 and "step 30" in said[0] and "17 times its lowest" in said[0]
