"""The `cvdm` command line: predict round trip on a real TIFF, errors, info, train."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_cvdm.cli import main
from napari_cvdm.io import read_tiff


@pytest.fixture
def real_tiff(tmp_path, nuclei_widefield):
    path = tmp_path / "cell.ome.tif"
    tifffile.imwrite(path, nuclei_widefield[:40, :48], resolution=(1 / 0.13, 1 / 0.13),
                     imagej=True, metadata={"unit": "micron"})
    return path


def test_predict_round_trip_on_a_real_tiff(real_tiff, tiny_model_file, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["predict", str(real_tiff), "-o", str(out), "--model", str(tiny_model_file),
                 "--samples", "2", "--steps", "3", "--seed", "1", "--quiet"])
    assert code == 0
    mean, var = read_tiff(out / "cell_cvdm_mean.tif"), read_tiff(out / "cell_cvdm_var.tif")
    assert mean.data.shape == var.data.shape == (80, 96)
    assert mean.data.dtype == np.float32 and (var.data >= 0).all()
    assert mean.pixel_size == pytest.approx((0.065, 0.065))
    assert mean.unit == "µm"
    assert "cell_cvdm_mean.tif" in capsys.readouterr().out
    assert not list(out.glob("*.part"))


def test_bad_input_exits_non_zero_with_one_line_reason(tmp_path, tiny_model_file, capsys):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00 this is not a tiff")
    out = tmp_path / "out"
    code = main(["predict", str(bad), "-o", str(out), "--model", str(tiny_model_file), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "could not be read as a TIFF" in err
    assert list(out.glob("*")) == []


def test_an_output_that_looks_like_a_file_name_is_refused(real_tiff, tmp_path, capsys):
    out = tmp_path / "result.tif"
    code = main(["predict", str(real_tiff), "-o", str(out)])
    assert code == 2 and "looks like a file name; give a folder" in capsys.readouterr().err
    assert not out.exists()


def test_missing_model_file_is_a_clear_error(real_tiff, tmp_path, capsys):
    code = main(["predict", str(real_tiff), "-o", str(tmp_path), "--model",
                 str(tmp_path / "nope.cvdm.safetensors")])
    assert code == 2 and "model file not found" in capsys.readouterr().err


def test_nan_image_is_refused_and_nothing_is_written(tmp_path, tiny_model_file, capsys):
    path = tmp_path / "nan.tif"
    data = np.ones((16, 16), np.float32)
    data[3, 3] = np.nan
    tifffile.imwrite(path, data)
    code = main(["predict", str(path), "-o", str(tmp_path / "o"), "--model",
                 str(tiny_model_file), "--quiet"])
    assert code == 2 and "NaN" in capsys.readouterr().err
    assert not (tmp_path / "o" / "nan_cvdm_mean.tif").exists()


def test_info_lists_presets_with_parameter_counts():
    result = subprocess.run([sys.executable, "-m", "napari_cvdm.cli", "info"],
                            capture_output=True, text=True, check=True)
    assert "napari-cvdm" in result.stdout and "devices: cpu" in result.stdout
    for preset in ("tiny", "small", "paper"):
        assert preset in result.stdout


def _tiny_training(tmp_path, nuclei_truth, *options) -> tuple[int, Path]:
    """`cvdm train` of a tiny model on one high-quality image; (exit code, model file)."""
    hq = tmp_path / "hq"
    hq.mkdir(exist_ok=True)
    tifffile.imwrite(hq / "a.tif", nuclei_truth[:120, :120])
    out = tmp_path / f"m{len(list(tmp_path.glob('*.cvdm.safetensors')))}.cvdm.safetensors"
    return main(["train", "--hq", str(hq), "--preset", "tiny", "-o", str(out),
                 "--patch-size", "32", "--batch-size", "2", *options]), out


def test_train_command_writes_a_model(tmp_path, nuclei_truth):
    code, out = _tiny_training(tmp_path, nuclei_truth, "--steps", "2", "--photons", "50", "100")
    assert code == 0 and out.is_file()


def test_train_command_simulates_out_of_focus_light_and_records_it(tmp_path, nuclei_truth):
    from napari_cvdm.io import load_model
    from napari_cvdm.model_card import card_of

    code, out = _tiny_training(tmp_path, nuclei_truth, "--steps", "1", "--haze", "0.1", "0.5",
                               "--haze-sigma", "6", "12")
    assert code == 0
    degradation = load_model(out).metadata["training"]["data"]["degradation"]
    assert list(degradation["haze"]) == [0.1, 0.5]
    assert list(degradation["haze_sigma"]) == [6.0, 12.0]
    assert "out-of-focus light up to 50%" in card_of(load_model(out).metadata)["training_data"]
    code, refused = _tiny_training(tmp_path, nuclei_truth, "--steps", "1", "--haze", "0.2", "1.5")
    assert code == 2 and not refused.exists()


def test_train_never_overwrites_an_image_and_replaces_a_model_only_when_told(tmp_path,
                                                                          nuclei_truth):
    """Found by an audit: -o an input image replaced the image with the model (exit 0), and a
    second run to the same -o replaced a trained model without a word."""
    hq = tmp_path / "hq"
    hq.mkdir()
    tifffile.imwrite(hq / "a.tif", nuclei_truth[:120, :120])
    image = (hq / "a.tif").read_bytes()
    common = ["--hq", str(hq), "--preset", "tiny", "--patch-size", "32", "--batch-size", "2",
              "--steps", "1"]
    assert main(["train", *common, "-o", str(hq / "a.tif")]) == 2
    assert main(["train", *common, "-o", str(hq / "a.tif"), "--overwrite"]) == 2
    assert (hq / "a.tif").read_bytes() == image
    assert sorted(p.name for p in hq.iterdir()) == ["a.tif"]
    out = tmp_path / "m.cvdm.safetensors"
    assert main(["train", *common, "-o", str(out)]) == 0
    first = out.read_bytes()
    assert main(["train", *common, "-o", str(out), "--seed", "5"]) == 2
    assert out.read_bytes() == first
    assert main(["train", *common, "-o", str(out), "--seed", "5", "--overwrite"]) == 0
    assert out.read_bytes() != first
    tuned = out.read_bytes()  # the model fine-tuned is kept, even with --overwrite
    fine_tune = [a for a in common if a not in ("--preset", "tiny")]
    assert main(["train", *fine_tune, "--init", str(out), "-o", str(out), "--overwrite"]) == 2
    assert out.read_bytes() == tuned


def test_train_refuses_camera_levels_beyond_the_limits(tmp_path, nuclei_truth):
    """Photons of 1e20 overflowed PyTorch's Poisson sampler: inputs of -9.2e18, exit 0."""
    from napari_cvdm.degradation import LEVEL_LIMITS, Degradation

    for option, values in (("--photons", ("10", "1e20")), ("--background", ("0", "1e30")),
                           ("--read-noise", ("0", "1e30"))):
        code, out = _tiny_training(tmp_path, nuclei_truth, "--steps", "1", option, *values)
        assert code == 2 and not out.exists()
    for name, limit in LEVEL_LIMITS.items():
        with pytest.raises(ValueError, match=f"{name} must be at most"):
            Degradation(**{name: (1.0, limit * 10)})
        Degradation(**{name: (1.0, limit)})


def test_train_with_pairs_refuses_simulation_options_it_would_ignore(tmp_path, nuclei_truth,
                                                                    nuclei_widefield):
    lq, hq = tmp_path / "lq", tmp_path / "hq"
    lq.mkdir()
    hq.mkdir()
    tifffile.imwrite(lq / "one.tif", nuclei_widefield[:64, :64])
    tifffile.imwrite(hq / "one.tif", nuclei_truth[:128, :128])
    common = ["train", "--pairs", str(lq), str(hq), "--preset", "tiny", "--patch-size", "32",
              "--batch-size", "2", "--steps", "1"]
    for option in (["--psf-sigma", "3"], ["--photons", "5", "10"], ["--haze", "0", "0.4"],
                   ["--told-error", "0.1"], ["--psf", "airy"], ["--scale", "4"]):
        out = tmp_path / "refused.cvdm.safetensors"
        assert main([*common, *option, "-o", str(out)]) == 2, option
        assert not out.exists()
    # every simulation option given is refused, even at its default value (it would be
    # ignored all the same); none given trains
    assert main([*common, "--psf-sigma", "3", "-o", str(tmp_path / "no.cvdm.safetensors")]) == 2
    assert main([*common, "-o", str(tmp_path / "ok.cvdm.safetensors")]) == 0


def test_folders_and_patterns_as_inputs_and_the_seed_printed(tmp_path, nuclei_widefield,
                                                            tiny_model_file, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.tif", "b.tiff"):
        tifffile.imwrite(data / name, nuclei_widefield[:16, :16])
    (data / "notes.txt").write_text("not an image")
    common = ["--model", str(tiny_model_file), "--samples", "1", "--steps", "1", "--quiet"]
    assert main(["predict", str(data), "-o", str(tmp_path / "o1"), *common]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "o1").iterdir()) == [
        "a_cvdm_mean.tif", "a_cvdm_std.tif", "a_cvdm_var.tif", "b_cvdm_mean.tif",
        "b_cvdm_std.tif", "b_cvdm_var.tif"]
    assert out.count("(seed ") == 2  # no --seed: the seed drawn is printed, to repeat the run
    assert main(["predict", str(data / "*.tif"), "-o", str(tmp_path / "o2"), *common,
                 "--seed", "3"]) == 0
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == [
        "a_cvdm_mean.tif", "a_cvdm_std.tif", "a_cvdm_var.tif"]
    assert "(seed 3," in capsys.readouterr().out
    assert main(["predict", str(tmp_path / "none*.tif"), "-o", str(tmp_path / "o3"),
                 *common]) == 2
    assert "no .tif, .tiff, .lsm or OME-Zarr images match" in capsys.readouterr().err
    # a pattern takes images only, as a folder does (it took notes.txt and failed midway)
    assert main(["predict", str(data / "*"), "-o", str(tmp_path / "o4"), *common]) == 0
    assert len(list((tmp_path / "o4").iterdir())) == 6
    # a named file that is no image stops the batch before any work, not after a.tif
    assert main(["predict", str(data / "a.tif"), str(data / "notes.txt"), "-o",
                 str(tmp_path / "o5"), *common]) == 2
    assert "notes.txt could not be read as a TIFF" in capsys.readouterr().err
    assert not (tmp_path / "o5").exists()


def test_links_to_missing_files_in_a_folder_or_pattern_are_said_not_silently_left_out(
        tmp_path, nuclei_widefield, tiny_model_file, capsys):
    """Found by a review: a folder's link to a moved or unmounted image was left out
    without a word."""
    data = tmp_path / "data"
    data.mkdir()
    tifffile.imwrite(data / "a.tif", nuclei_widefield[:16, :16])
    (data / "moved.tif").symlink_to(tmp_path / "elsewhere" / "moved.tif")
    (data / ".hidden.tif").symlink_to(tmp_path / "elsewhere" / "hidden.tif")
    common = ["--model", str(tiny_model_file), "--samples", "1", "--steps", "1", "--quiet"]
    for given in (data, data / "*.tif"):
        out = tmp_path / f"o{len(list(tmp_path.iterdir()))}"
        assert main(["predict", str(given), "-o", str(out), *common]) == 0
        err = capsys.readouterr().err
        assert "warning: left out 1 link(s) to missing files: moved.tif" in err, err
        assert "hidden" not in err
        assert sorted(p.name for p in out.iterdir()) == [
            "a_cvdm_mean.tif", "a_cvdm_std.tif", "a_cvdm_var.tif"]


def test_version_is_printed(capsys):
    from napari_cvdm import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"napari-cvdm {__version__}"


def test_ctrl_c_while_starting_is_a_clean_exit_130(monkeypatch, capsys):
    from napari_cvdm import cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_parser", interrupted)
    assert main(["predict", "x.tif", "-o", "out"]) == 130
    assert "cancelled" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32", reason="closed pipes are detected with poll()")
def test_a_reader_that_closes_the_pipe_stops_cvdm_quietly():
    # `cvdm info demo | head -1`: the reader has gone before cvdm writes
    proc = subprocess.Popen([sys.executable, "-m", "napari_cvdm.cli", "info", "demo"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 141 and err == ""


def test_a_broken_pipe_elsewhere_is_still_an_error(monkeypatch, capsys):
    from napari_cvdm.cli import info

    def lost_connection(args):
        raise BrokenPipeError(32, "Broken pipe")  # e.g. a cluster's socket, not stdout

    monkeypatch.setattr(info, "run", lost_connection)
    assert main(["info", "demo"]) == 1
    assert "error: [Errno 32] Broken pipe" in capsys.readouterr().err


def test_an_empty_or_folder_like_output_is_refused(tmp_path, monkeypatch, capsys):
    """`-o newdir/` wrote a model file named newdir; `-o ""` wrote into the current folder."""
    monkeypatch.chdir(tmp_path)
    for argv in (["train", "--synthetic", "er", "--preset", "tiny", "--steps", "1", "-o", "nd/"],
                 ["train", "--synthetic", "er", "--preset", "tiny", "--steps", "1", "-o", ""],
                 ["predict", "x.tif", "-o", ""], ["predict", "x.tif", "-o", "  "]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert "argument -o/--output" in capsys.readouterr().err
    # a review: an empty image folder (an unset variable) was the current folder
    for given in (["--hq", ""], ["--pairs", "", "hq"], ["--pairs", "lq", " "]):
        with pytest.raises(SystemExit) as exit_:
            main(["train", *given, "--preset", "tiny", "--steps", "1", "-o", "m.cvdm.safetensors"])
        assert exit_.value.code == 2
        assert "empty; give the folder of images" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_only_the_packages_own_warnings_are_reworded_on_one_line(capsys):
    """Other libraries' warnings keep Python's form (it says where they come from); the
    package's own lose their source line and come as the command's warnings, newlines and
    all on one line."""
    import os
    import warnings

    import napari_cvdm
    from napari_cvdm.cli import _warnings_on_one_line

    inside = os.path.join(os.path.dirname(napari_cvdm.__file__), "inference.py")
    with warnings.catch_warnings(record=True) as passed_on, _warnings_on_one_line("predict"):
        warnings.simplefilter("always")
        warnings.warn_explicit("chunks rechunked\nfor the prediction", UserWarning, inside, 297)
        warnings.warn_explicit("a library's own", FutureWarning, "/elsewhere/lib.py", 3)
    err = capsys.readouterr().err.splitlines()
    assert err == ["cvdm predict: warning: chunks rechunked for the prediction"]
    assert [(w.category, str(w.message), w.filename) for w in passed_on] == \
        [(FutureWarning, "a library's own", "/elsewhere/lib.py")]  # to Python's display


def test_a_fine_tune_and_a_resume_simulate_the_optics_their_model_was_trained_with(
        tmp_path, nuclei_truth, capsys):
    """`cvdm train --init widefield-x2 --hq ...` (the README's fine-tune) simulated the command
    line's defaults (a 1.5-pixel blur, no out-of-focus light), not the bundled model's
    1.5-4 pixels with 0-60 % haze; a resume without the optics flags was refused."""
    from napari_cvdm.io import load_model
    from napari_cvdm.simulation_defaults import SIMULATION_DEFAULTS

    def optics(path):
        return load_model(path).metadata["training"]["data"]["degradation"]

    code, first = _tiny_training(tmp_path, nuclei_truth, "--steps", "1", "--psf-sigma", "2", "3.5",
                                 "--haze", "0.1", "0.4", "--photons", "40", "400")
    assert code == 0
    code, plain = _tiny_training(tmp_path, nuclei_truth, "--steps", "1")
    assert code == 0 and optics(plain)["psf_sigma"] == SIMULATION_DEFAULTS["psf_sigma"] == 3.0
    capsys.readouterr()
    code, tuned = _tiny_training(tmp_path, nuclei_truth, "--steps", "1", "--init", str(first),
                                 "--photons", "100", "200")
    assert code == 0
    recorded = optics(tuned)
    assert list(recorded["psf_sigma"]) == [2.0, 3.5] and list(recorded["haze"]) == [0.1, 0.4]
    assert list(recorded["photons"]) == [100.0, 200.0]  # given: replaces the model's
    assert f"simulating the optics {first} was trained with" in capsys.readouterr().err
    # a resume without the optics flags continues with the run's own optics
    code, resumed = _tiny_training(tmp_path, nuclei_truth, "--steps", "1", "--init", str(first))
    assert code == 0
    assert main(["train", "--hq", str(tmp_path / "hq"), "--preset", "tiny", "-o", str(resumed),
                 "--patch-size", "32", "--batch-size", "2", "--steps", "2", "--resume"]) == 0
    assert load_model(resumed).metadata["training"]["step"] == 2
    assert optics(resumed) == optics(first)


def test_the_command_line_and_the_training_widget_simulate_the_same_defaults():
    from napari_cvdm._training_options import OpticsOptions
    from napari_cvdm.degradation import Degradation

    assert OpticsOptions().degradation() == Degradation()
    parser_defaults = {a.dest: a.default for a in _train_parser()._actions}
    assert all(parser_defaults[name] is None for name in
               ("psf", "psf_sigma", "photons", "background", "read_noise", "haze"))


def _train_parser():
    import argparse

    from napari_cvdm.cli.train import add_parser

    sub = argparse.ArgumentParser().add_subparsers()
    add_parser(sub)
    return sub.choices["train"]


def test_a_resume_takes_its_optics_from_the_training_state_when_the_model_file_moved(
        tmp_path, nuclei_truth, capsys):
    """The optics of a resume were read from the model file beside the state: with that file
    moved away, a resume without the optics flags failed ("model file not found"), and
    train(resume=True) fell back to the defaults and was refused as another run."""
    import shutil

    from napari_cvdm.io import load_model

    code, out = _tiny_training(tmp_path, nuclei_truth, "--steps", "1", "--psf-sigma", "2",
                               "--haze", "0", "0.2")
    assert code == 0
    shutil.move(out, tmp_path / "elsewhere.cvdm.safetensors")
    capsys.readouterr()
    assert main(["train", "--hq", str(tmp_path / "hq"), "--preset", "tiny", "-o", str(out),
                 "--patch-size", "32", "--batch-size", "2", "--steps", "2", "--resume"]) == 0
    assert "resumed from step 1" in capsys.readouterr().err
    recorded = load_model(out).metadata["training"]["data"]["degradation"]
    assert recorded["psf_sigma"] == 2.0 and list(recorded["haze"]) == [0.0, 0.2]
    # no run there: the state's own message, not a missing model file
    code = main(["train", "--hq", str(tmp_path / "hq"), "--preset", "tiny", "--steps", "2",
                 "--patch-size", "32", "--batch-size", "2",
                 "-o", str(tmp_path / "none.cvdm.safetensors"), "--resume"])
    assert code == 2 and "training state" in capsys.readouterr().err


def test_a_fine_tune_of_a_model_without_recorded_optics_says_it_takes_the_defaults(
        tmp_path, nuclei_truth, nuclei_widefield, capsys):
    lq, hq = tmp_path / "lq", tmp_path / "hqp"
    lq.mkdir()
    hq.mkdir()
    tifffile.imwrite(lq / "one.tif", nuclei_widefield[:64, :64])
    tifffile.imwrite(hq / "one.tif", nuclei_truth[:128, :128])
    pairs_model = tmp_path / "pairs.cvdm.safetensors"
    assert main(["train", "--pairs", str(lq), str(hq), "--preset", "tiny", "--patch-size", "32",
                 "--batch-size", "2", "--steps", "1", "-o", str(pairs_model)]) == 0
    capsys.readouterr()
    code, _ = _tiny_training(tmp_path, nuclei_truth, "--steps", "1", "--init", str(pairs_model))
    assert code == 0
    assert f"none recorded in {pairs_model}; the defaults" in capsys.readouterr().err
