"""`cvdm predict` robustness (issue 8): no partial outputs, inputs untouched, clear exits."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_cvdm.cli import main
from napari_cvdm.errors import OutOfMemory
from napari_cvdm.io import read_tiff


# -- the command line: no partial outputs, inputs untouched, clear exits --------------------
@pytest.fixture
def two_tiffs(tmp_path, nuclei_widefield):
    paths = []
    for name, (y, x) in {"first": (0, 0), "second": (40, 40)}.items():
        path = tmp_path / f"{name}.tif"
        tifffile.imwrite(path, nuclei_widefield[y:y + 24, x:x + 20])
        paths.append(path)
    return paths


def _cli(inputs, out, model_file, *extra):
    return main(["predict", *map(str, inputs), "-o", str(out), "--model", str(model_file),
                 "--samples", "2", "--steps", "2", "--seed", "0", *extra])


def test_a_failure_while_writing_the_second_file_leaves_neither(two_tiffs, tiny_model_file,
                                                                 tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    writes = []
    real_imwrite = tifffile.imwrite

    def failing_imwrite(path, data, **kwargs):
        writes.append(Path(path))
        if len(writes) == 2:
            Path(path).write_bytes(b"II*\x00half a file")  # a partly written temp file
            raise OSError(28, "No space left on device")
        return real_imwrite(path, data, **kwargs)

    monkeypatch.setattr(tifffile, "imwrite", failing_imwrite)
    code = _cli(two_tiffs[:1], out, tiny_model_file, "--quiet")
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # no outputs, no .part files, not even the folder it made
    assert all(w.name.endswith(".part") for w in writes)


def test_a_failed_rerun_keeps_the_previous_complete_outputs(two_tiffs, tiny_model_file,
                                                           tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert _cli(two_tiffs[:1], out, tiny_model_file, "--quiet") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []

    def failing_imwrite(path, data, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        Path(path).write_bytes(b"new")

    monkeypatch.setattr(tifffile, "imwrite", failing_imwrite)
    assert _cli(two_tiffs[:1], out, tiny_model_file, "--quiet", "--seed", "9",
                "--overwrite") == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("failure", [OSError(1, "Operation not permitted"), KeyboardInterrupt()])
def test_a_failure_while_putting_the_outputs_in_place_keeps_the_previous_set(
        two_tiffs, tiny_model_file, tmp_path, monkeypatch, failure, capsys):
    """The renames are a unit too: a refused rename (an immutable or foreign file) or an
    interrupt between them gives back the earlier outputs, never half new, half old."""
    import os

    out = tmp_path / "out"
    assert _cli(two_tiffs[:1], out, tiny_model_file, "--quiet", "--seed", "1") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_replace = os.replace
    renamed = []

    def replace(src, dst, *args, **kwargs):
        if str(src).endswith(".part"):
            renamed.append(Path(dst).name)
            if len(renamed) == 2:
                if isinstance(failure, OSError):
                    raise OSError(failure.errno, failure.strerror, str(src), None, str(dst))
                raise failure
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    code = _cli(two_tiffs[:1], out, tiny_model_file, "--quiet", "--seed", "2", "--overwrite")
    err = capsys.readouterr().err
    assert code == (1 if isinstance(failure, OSError) else 130)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no .part, no .bak
    if isinstance(failure, OSError):
        assert renamed[1] in err and ".part" not in err  # names the output that failed


def test_existing_outputs_are_refused_before_any_work_unless_overwrite(two_tiffs, tiny_model_file,
                                                                      tmp_path, capsys):
    out = tmp_path / "out"
    assert _cli(two_tiffs[:1], out, tiny_model_file, "--quiet", "--seed", "1") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _cli(two_tiffs[:1], out, tiny_model_file, "--quiet", "--seed", "2") == 2
    assert "exists" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _cli(two_tiffs[:1], out, tiny_model_file, "--quiet", "--seed", "2", "--overwrite") == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} != before


@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
def test_a_users_file_with_an_outputs_name_is_never_replaced(two_tiffs, tiny_model_file,
                                                             tmp_path, capsys, flag):
    """Found by a review: --overwrite replaced any TIFF named like an output (a user's own
    image copied there), where OME-Zarr outputs replace only napari-cvdm results."""
    import shutil

    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(two_tiffs[0], out / "first_cvdm_mean.tif")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _cli(two_tiffs[:1], out, tiny_model_file, "--quiet", "--seed", "1", flag) == 2
    assert "is not a napari-cvdm output" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "first_cvdm_mean.tif").unlink()
    assert _cli(two_tiffs[:1], out, tiny_model_file, "--quiet", "--seed", "1") == 0
    assert _cli(two_tiffs[:1], out, tiny_model_file, "--quiet", "--seed", "2", flag) == 0


def test_an_interruption_during_predict_leaves_no_files_for_that_input(
        two_tiffs, tiny_model_file, tmp_path, monkeypatch, capsys):
    """Ctrl-C in the middle of the second image: the first image's outputs are complete."""
    import napari_cvdm.cli.predict as cli

    out = tmp_path / "out"
    real_bar = cli.ProgressBar

    class InterruptingBar(real_bar):
        def __call__(self, done, total, extra=""):
            if self.label == "second.tif" and done == total // 2:
                raise KeyboardInterrupt
            super().__call__(done, total, extra)

    monkeypatch.setattr(cli, "ProgressBar", InterruptingBar)
    code = _cli(two_tiffs, out, tiny_model_file)
    assert code == 130 and "no partial output was written" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["first_cvdm_mean.tif", "first_cvdm_std.tif",
                                                   "first_cvdm_var.tif"]
    assert read_tiff(out / "first_cvdm_var.tif").data.shape == (48, 40)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_clean_up_as_ctrl_c_does(two_tiffs, tiny_model_file, tmp_path,
                                                     monkeypatch, capsys, name):
    """kill, timeout and batch schedulers send SIGTERM, a closed terminal SIGHUP: their
    default ends the process where it stands, leaving temporary files."""
    import os
    import signal

    import napari_cvdm.cli.predict as cli

    sig = getattr(signal, name)
    out = tmp_path / "out"
    real_bar = cli.ProgressBar

    class SignalledBar(real_bar):
        def __call__(self, done, total, extra=""):
            if self.label == "second.tif" and done == total // 2:
                os.kill(os.getpid(), sig)
            super().__call__(done, total, extra)

    monkeypatch.setattr(cli, "ProgressBar", SignalledBar)
    inherited = signal.signal(sig, signal.SIG_DFL)  # as a terminal leaves it (not nohup's)
    try:
        before = signal.getsignal(sig)
        code = _cli(two_tiffs, out, tiny_model_file)
        after = signal.getsignal(sig)
    finally:
        signal.signal(sig, inherited)
    assert code == 128 + sig and "no partial output was written" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["first_cvdm_mean.tif", "first_cvdm_std.tif",
                                                   "first_cvdm_var.tif"]
    assert after is before  # handed back after the command


@pytest.mark.parametrize("before", ["default", "ignored", "handled"])
def test_only_signals_left_at_their_default_are_taken_over(two_tiffs, tiny_model_file,
                                                          tmp_path, monkeypatch, before):
    """Under nohup SIGHUP is ignored, and a program calling main() may handle SIGTERM
    itself: the command must not start reacting to those."""
    import signal

    current = {"default": signal.SIG_DFL, "ignored": signal.SIG_IGN,
               "handled": lambda *a: None}[before]
    monkeypatch.setattr(signal, "getsignal", lambda sig: current)
    installed = []
    monkeypatch.setattr(signal, "signal", lambda sig, handler: installed.append(sig) or current)
    assert _cli(two_tiffs[:1], tmp_path / "out", tiny_model_file, "--quiet") == 0
    if before == "default":  # installed, then given back
        assert installed == [signal.SIGTERM, signal.SIGHUP] * 2
    else:
        assert installed == []


def test_an_exception_inside_predict_leaves_no_files_for_that_input(
        two_tiffs, tiny_model_file, tmp_path, monkeypatch):
    import napari_cvdm

    out = tmp_path / "out"
    real_predict = napari_cvdm.predict
    calls = []

    def failing_on_the_second_image(image, *args, **kwargs):
        calls.append(image.shape)
        if len(calls) == 2:
            def progress(done, total):
                raise RuntimeError("simulated failure half way")
            kwargs["progress"] = progress
        return real_predict(image, *args, **kwargs)

    monkeypatch.setattr(napari_cvdm, "predict", failing_on_the_second_image)
    with pytest.raises(RuntimeError, match="simulated failure"):
        _cli(two_tiffs, out, tiny_model_file, "--quiet")
    assert len(calls) == 2
    assert sorted(p.name for p in out.iterdir()) == ["first_cvdm_mean.tif", "first_cvdm_std.tif",
                                                   "first_cvdm_var.tif"]


def test_the_input_file_is_never_modified(two_tiffs, tiny_model_file, tmp_path):
    path = two_tiffs[0]
    digest, mtime = hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns
    assert _cli([path], tmp_path / "out", tiny_model_file, "--quiet") == 0
    assert _cli([path], tmp_path, tiny_model_file, "--quiet") == 0  # outputs beside it
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert path.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("extra,match", [
    (["--eta", "nan"], "--eta"),
    (["--tile-size", "4"], "--tile-size"),
    (["--device", "tpu"], "device"),
    (["--samples", "0"], "--samples"),
])
def test_bad_predict_options_fail_before_loading_anything(two_tiffs, tmp_path, capsys,
                                                          extra, match):
    code = main(["predict", str(two_tiffs[0]), "-o", str(tmp_path / "o"), "--model",
                 str(tmp_path / "missing.cvdm.safetensors"), *extra])
    assert code == 2 and match in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_two_inputs_that_would_overwrite_each_other_are_refused(tmp_path, two_tiffs,
                                                                tiny_model_file, capsys):
    other = tmp_path / "sub"
    other.mkdir()
    twin = other / "first.ome.tif"
    twin.write_bytes(two_tiffs[0].read_bytes())
    code = _cli([two_tiffs[0], twin], tmp_path / "o", tiny_model_file)
    assert code == 2 and "would both be written as first_cvdm" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_one_sample_is_warned_about_and_still_written(two_tiffs, tiny_model_file, tmp_path,
                                                     capsys):
    out = tmp_path / "out"
    code = main(["predict", str(two_tiffs[0]), "-o", str(out), "--model", str(tiny_model_file),
                 "--samples", "1", "--steps", "2", "--seed", "0"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "first.tif: one sample was drawn" in err
    assert (out / "first_cvdm_std.tif").is_file()
    code = _cli([two_tiffs[1]], out, tiny_model_file)  # two samples: nothing to say
    assert code == 0 and "one sample" not in capsys.readouterr().err


def test_names_with_dots_keep_all_but_the_image_extension(tmp_path, two_tiffs,
                                                          tiny_model_file, capsys):
    # dates and sizes in names are common: 2024.01.05_cell_0.5um.ome.tif
    named = [tmp_path / "2024.01.05_cell_0.5um.ome.tif", tmp_path / "2024.01.05_cell_1.5um.TIF"]
    for source, path in zip(two_tiffs, named):
        path.write_bytes(source.read_bytes())
    code = _cli(named, tmp_path / "o", tiny_model_file)
    assert code == 0, capsys.readouterr().err
    written = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert written == [f"2024.01.05_cell_{size}um_cvdm_{kind}.tif" for size in ("0.5", "1.5")
                       for kind in ("mean", "std", "var")]
    assert read_tiff(tmp_path / "o" / written[0]).data.shape == (48, 40)


def test_one_file_named_twice_is_predicted_once(tmp_path, two_tiffs, tiny_model_file,
                                                 monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    relative = two_tiffs[0].relative_to(tmp_path)
    code = _cli([relative, two_tiffs[0], tmp_path], tmp_path / "o", tiny_model_file)
    assert code == 0, capsys.readouterr().err
    written = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert written == [f"{stem}_cvdm_{kind}.tif" for stem in ("first", "second")
                       for kind in ("mean", "std", "var")]


def test_missing_inputs_and_a_file_as_output_folder_are_clear_errors(tmp_path, two_tiffs,
                                                                     tiny_model_file, capsys):
    assert _cli([tmp_path / "nope.tif"], tmp_path / "o", tiny_model_file) == 2
    assert "input file not found" in capsys.readouterr().err
    assert _cli(two_tiffs[:1], two_tiffs[1], tiny_model_file) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("output", ["loopy", "loopy/sub"])
def test_an_output_folder_that_is_a_symbolic_link_loop_is_a_one_line_error(
        tmp_path, two_tiffs, tiny_model_file, capsys, output):
    """Found by an audit: ``-o loopy`` (``ln -s loopy loopy``) raised RuntimeError "Symlink
    loop" from Path.resolve(), a traceback, before the check that says so."""
    (tmp_path / "loopy").symlink_to("loopy")
    assert _cli(two_tiffs[:1], tmp_path / output, tiny_model_file, "--quiet") == 2
    err = capsys.readouterr().err
    assert err.startswith("cvdm predict: error: ") and len(err.splitlines()) == 1
    assert f"{tmp_path / output} is a symbolic link loop" in err
    assert (tmp_path / "loopy").is_symlink()  # left as it was


@pytest.mark.parametrize("data,kwargs,match", [
    (np.zeros((16, 16, 3), np.uint8), {"photometric": "rgb"}, "looks like RGB/RGBA"),
    (np.zeros((16, 16, 1), np.float32), {"metadata": {"axes": "YXC"}}, "last axis has size 1"),
    (~np.eye(16, dtype=bool), {}, "the image is boolean"),
    ((1 - np.eye(16)).astype(np.complex64), {}, "the image has complex values"),
    # an RGB file stored plane by plane was predicted as three channels, silently
    (np.zeros((3, 16, 16), np.uint8), {"photometric": "rgb", "planarconfig": "separate"},
     "looks like RGB/RGBA"),
    # axes no output can be written with: found after the files before it were done
    (np.zeros((1, 2, 1, 1, 16, 16), np.float32), {}, "it needs at most T, Z, C"),
])
def test_files_predict_cannot_use_get_its_message_alone(tmp_path, tiny_model_file, capsys,
                                                        two_tiffs, data, kwargs, match):
    """Such files got a warning about their contents first, or the OME writer's message
    about their axes instead of predict()'s; in a batch, only when their turn came (after
    the work on the files before them), and without naming the file."""
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, data, **kwargs)
    assert _cli([two_tiffs[0], path], tmp_path / "o", tiny_model_file, "--quiet") == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and match in err and "warning" not in err
    assert f"{path}: " in err
    assert not (tmp_path / "o").exists()  # nothing written, not even the folder


def test_a_problem_found_in_the_pixels_names_the_file_and_what_the_batch_kept(
        tmp_path, tiny_model_file, capsys, two_tiffs):
    """NaN pixels are only seen once a file is read: the message named no file, and did not
    say that the inputs before it were complete."""
    bad = tmp_path / "third.tif"
    data = np.ones((24, 20), np.float32)
    data[3, 4] = np.nan
    tifffile.imwrite(bad, data)
    assert _cli([*two_tiffs, bad], tmp_path / "o", tiny_model_file, "--quiet") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"cvdm predict: error: {bad}: the image contains 1 NaN")
    assert "the 2 input(s) before it are done" in err and "--resume" in err
    assert len(list((tmp_path / "o").glob("*_cvdm_mean.tif"))) == 2
    assert not list((tmp_path / "o").glob("third*"))


def test_a_file_whose_outputs_cannot_fit_in_memory_is_refused_before_any_work(
        tmp_path, tiny_model_file, capsys, two_tiffs, monkeypatch):
    """The file's header says so: it was decoded whole after the files before it, then
    refused without its name."""
    import napari_cvdm.image_files as image_files

    big = tmp_path / "big.tif"
    tifffile.imwrite(big, np.zeros((400, 400), np.uint8))
    # the input (160 kB) fits, with its outputs (3 x 4 x 800 x 800 = 7.7 MB) it does not
    monkeypatch.setattr(image_files, "max_image_bytes", lambda: 2 * 10**6)
    assert _cli([two_tiffs[0], big], tmp_path / "o", tiny_model_file, "--quiet") == 2
    err = capsys.readouterr().err
    assert f"{big} declares an image of shape (400, 400)" in err and "with its outputs" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    MemoryError(),
    OutOfMemory("cuda:0", 128, 1),
])
def test_out_of_memory_is_reported_with_what_to_change(two_tiffs, tiny_model_file, tmp_path,
                                                       monkeypatch, capsys, error):
    import napari_cvdm

    def no_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(napari_cvdm, "predict", no_memory)
    assert _cli(two_tiffs[:1], tmp_path / "o", tiny_model_file, "--quiet") == 1
    err = capsys.readouterr().err
    assert "out of memory" in err and "--tile-size" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()  # nothing written, not even the folder


def test_other_runtime_errors_are_not_disguised_as_out_of_memory(two_tiffs, tiny_model_file,
                                                                 tmp_path, monkeypatch):
    import napari_cvdm

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(napari_cvdm, "predict", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        _cli(two_tiffs[:1], tmp_path / "o", tiny_model_file, "--quiet")


def test_outputs_beside_the_inputs_are_not_taken_for_inputs_by_the_next_run(
        tmp_path, two_tiffs, tiny_model_file, capsys):
    folder = two_tiffs[0].parent
    (folder / "._first.tif").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # a Mac's copy
    assert _cli([folder], folder, tiny_model_file) == 0, capsys.readouterr().err
    made = sorted(p.name for p in folder.glob("*_cvdm_*.tif"))
    assert len(made) == 6
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    # The same folder again, and a pattern over it: the inputs are still the two images.
    for inputs in ([folder], [str(folder / "*.tif")]):
        assert _cli(inputs, folder, tiny_model_file, "--resume") == 0
        assert capsys.readouterr().out.lower().count("skipped") == 2
    assert _cli([folder], folder, tiny_model_file, "--overwrite") == 0
    after = sorted(p.name for p in folder.iterdir() if p.is_file())
    assert after == sorted(before)  # nothing new: no outputs of outputs
    assert not list(folder.glob("*_cvdm_mean_cvdm_*"))


def test_a_tiff_with_pixels_that_are_not_square_is_warned_about(tmp_path, tiny_model_file,
                                                                 nuclei_widefield, capsys):
    """TIFF and OME-Zarr inputs read their pixel sizes per axis in one place."""
    import tifffile

    from napari_cvdm.cli import main

    path = tmp_path / "tall.ome.tif"
    tifffile.imwrite(path, nuclei_widefield[:32, :32], ome=True,
                     metadata={"axes": "YX", "PhysicalSizeY": 0.13, "PhysicalSizeX": 65.0,
                               "PhysicalSizeYUnit": "µm", "PhysicalSizeXUnit": "nm"})
    assert main(["predict", str(path), "-o", str(tmp_path / "out"), "--model",
                 str(tiny_model_file), "--samples", "1", "--steps", "1", "--quiet"]) == 0
    assert "not square (130 nm along Y, 65 nm along X)" in capsys.readouterr().err
    # and the files keep it: a warning on the terminal scrolls away
    with tifffile.TiffFile(tmp_path / "out" / "tall_cvdm_mean.tif") as tif:
        assert "not square (130 nm along Y" in tif.ome_metadata
        assert "input_warnings" in tif.ome_metadata
        # and which file they came from: its name, size and modification time
        assert '<M K="input">tall.ome.tif</M>' in tif.ome_metadata
        assert f'<M K="input_bytes">{path.stat().st_size}</M>' in tif.ome_metadata


def test_tiff_outputs_larger_than_the_free_disk_are_refused_before_any_work(
        two_tiffs, tiny_model_file, tmp_path, monkeypatch, capsys):
    """Found by a review: OME-Zarr outputs were checked against the free disk, TIFF outputs
    not (a large stack ran for hours, then failed writing)."""
    import collections
    import shutil

    import napari_cvdm

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(2**20, 2**20 - 1000, 1000))
    monkeypatch.setattr(napari_cvdm, "predict", lambda *a, **k: pytest.fail("predicted"))
    # exit 1: a full disk is the machine's state, as when it fills during the writing
    assert _cli(two_tiffs[:1], tmp_path / "out", tiny_model_file, "--quiet") == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    # 24 x 20 pixels, x2 in each direction, three float32 outputs: 23,040 bytes
    assert "first.tif (mean, std and variance, float32) need 22.5 KiB but" in err
    assert "has only 1000 bytes free" in err
    assert not (tmp_path / "out").exists()


def test_a_failed_run_removes_every_output_folder_it_created_and_no_other(
        two_tiffs, tiny_model_file, tmp_path, monkeypatch):
    """Found by a review: ``-o new/sub/dir`` left new/sub behind when the run failed."""
    import napari_cvdm

    def fails(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(napari_cvdm, "predict", fails)
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(RuntimeError, match="simulated failure"):
        _cli(two_tiffs[:1], kept / "new" / "sub" / "dir", tiny_model_file, "--quiet")
    assert kept.is_dir() and not list(kept.iterdir())
    def others_write_then_it_fails(*args, **kwargs):
        (kept / "new" / "theirs.txt").write_text("x")  # meanwhile, by someone else
        fails()

    # a created folder that is no longer empty is kept, and so are those above it
    monkeypatch.setattr(napari_cvdm, "predict", others_write_then_it_fails)
    with pytest.raises(RuntimeError, match="simulated failure"):
        _cli(two_tiffs[:1], kept / "new" / "sub" / "dir", tiny_model_file, "--quiet")
    assert sorted(p.name for p in (kept / "new").iterdir()) == ["theirs.txt"]


def test_a_line_break_in_a_file_name_stays_on_its_line(tmp_path, tiny_model_file,
                                                       nuclei_widefield, capsys):
    """Found by a review: the success line of a file named with a newline was split over
    several lines (error lines were already escaped)."""
    path = tmp_path / "two\nlines.tif"
    tifffile.imwrite(path, nuclei_widefield[:24, :24])
    assert _cli([path], tmp_path / "out", tiny_model_file) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "two\\nlines.tif ->" in out[0]


def test_resume_redoes_outputs_made_with_another_model_or_sampling(two_tiffs, tiny_model,
                                                                  tiny_model_file, tmp_path,
                                                                  capsys):
    """Found by a review: --resume with another --model (or samples) kept the outputs of
    the first run as complete, so a batch silently mixed two models."""
    import napari_cvdm as nc

    out = tmp_path / "out"
    assert _cli(two_tiffs, out, tiny_model_file, "--quiet") == 0
    capsys.readouterr()
    assert _cli(two_tiffs, out, tiny_model_file, "--resume") == 0
    assert capsys.readouterr().out.count("skipped, its outputs are complete") == 2
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.mul_(0.5)
    other = nc.save_model(tiny_model, tmp_path / "other.cvdm.safetensors")
    before = (out / "first_cvdm_mean.tif").read_bytes()
    assert _cli(two_tiffs, out, other, "--resume") == 0
    printed = capsys.readouterr().out
    assert "skipped" not in printed and printed.count(" -> ") == 2
    assert (out / "first_cvdm_mean.tif").read_bytes() != before
    assert _cli(two_tiffs[:1], out, other, "--resume", "--samples", "3") == 0
    assert "skipped" not in capsys.readouterr().out
    assert _cli(two_tiffs[:1], out, other, "--resume", "--samples", "3") == 0
    assert "skipped" in capsys.readouterr().out
    assert _cli(two_tiffs[:1], out, other, "--resume", "--samples", "3", "--no-augment") == 0
    assert "skipped" not in capsys.readouterr().out
    # a precision given is compared too (a review: fp32 asked for, bf16 outputs kept);
    # auto is chosen per run and not compared
    from napari_cvdm.precision import supported_precisions

    common = ("--resume", "--samples", "3", "--no-augment")
    assert _cli(two_tiffs[:1], out, other, *common[1:], "--overwrite", "--precision",
                "fp32") == 0
    capsys.readouterr()
    assert _cli(two_tiffs[:1], out, other, *common, "--precision", "fp32") == 0
    assert "skipped" in capsys.readouterr().out
    if "bf16" in supported_precisions(torch.device("cpu")):
        assert _cli(two_tiffs[:1], out, other, *common, "--precision", "bf16") == 0
        assert "skipped" not in capsys.readouterr().out
    assert _cli(two_tiffs[:1], out, other, *common) == 0
    assert "skipped" in capsys.readouterr().out


def test_two_resumes_on_one_folder_share_the_batch(two_tiffs, tiny_model_file, tmp_path,
                                                    capsys, monkeypatch):
    """Found by a review: of two `--resume` runs on one folder, the second to write an
    input's outputs stopped its whole batch with advice (--overwrite) that does not go with
    --resume. Now it says another run completed them, and goes on."""
    import napari_cvdm.file_prediction as fp

    real = fp.predict_file
    out = tmp_path / "out"

    def raced(task, spec, model, **kwargs):
        if task.input == two_tiffs[0]:  # the other run writes this input's outputs first
            real(task, spec, model)
        return real(task, spec, model, **kwargs)

    monkeypatch.setattr(fp, "predict_file", raced)
    assert _cli(two_tiffs, out, tiny_model_file, "--resume") == 0
    printed = capsys.readouterr().out
    assert "first.tif: skipped, its outputs are complete (another run completed them " \
           "meanwhile)" in printed
    assert f"{two_tiffs[1]} -> " in printed
    assert len(list(out.iterdir())) == 6


def test_steps_given_to_a_sampler_that_runs_its_own_number_are_warned_about(
        two_tiffs, tiny_model_file, tmp_path, capsys):
    """Found by a review: --sampler reference --steps 2 ran the model's own number of steps
    (81 s instead of 1 s) without a word."""
    assert _cli(two_tiffs[:1], tmp_path / "out", tiny_model_file, "--quiet",
                "--sampler", "reference") == 0
    assert "--steps 2 is for the ddim sampler" in capsys.readouterr().err


def test_a_file_name_that_is_no_utf8_is_predicted_and_written(tmp_path, tiny_model_file,
                                                               nuclei_widefield, capsys):
    """Found by a review: a name with a byte that is no UTF-8 (a Latin-1 file system's
    name) failed after the prediction, writing the OME-XML ("surrogates not allowed")."""
    import os

    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / os.fsdecode(b"b\xffd.tif")
    tifffile.imwrite(path, nuclei_widefield[:24, :24])
    assert _cli([folder], tmp_path / "out", tiny_model_file, "--quiet") == 0, \
        capsys.readouterr().err
    mean = tmp_path / "out" / os.fsdecode(b"b\xffd_cvdm_mean.tif")
    with tifffile.TiffFile(mean) as tif:
        assert 'Name="b\\udcffd_cvdm_mean"' in tif.ome_metadata


def test_a_full_disk_midway_says_what_the_batch_keeps(two_tiffs, tiny_model_file, tmp_path,
                                                       monkeypatch, capsys):
    """Found by a review: a full disk became an OSError (exit 1) without the batch's context
    that bad input gets (which inputs are done, how to finish)."""
    import errno

    import napari_cvdm.validation as validation

    real = validation.check_disk_room

    def second_full(path, needed, what):
        if "second" in what:
            raise OSError(errno.ENOSPC, f"{what} need more than the disk has")
        return real(path, needed, what)

    monkeypatch.setattr(validation, "check_disk_room", second_full)
    assert _cli(two_tiffs, tmp_path / "out", tiny_model_file, "--quiet") == 1
    err = capsys.readouterr().err
    assert "the 1 input(s) before it are done" in err and "--resume" in err
    assert len(err.strip().splitlines()) == 1


def _multifile_ome(folder: Path, planes) -> list[Path]:
    """A Micro-Manager-like dataset: each file's OME-XML declares every time point, the
    second stored in the second file (as Micro-Manager writes past 4 GB)."""
    uuids = [f"urn:uuid:{i:08d}-0000-0000-0000-000000000000" for i in range(len(planes))]
    names = [f"mm_{i}.ome.tif" for i in range(len(planes))]
    data = "".join(f'<TiffData FirstT="{i}" FirstZ="0" FirstC="0" IFD="0" PlaneCount="1">'
                   f'<UUID FileName="{names[i]}">{uuids[i]}</UUID></TiffData>'
                   for i in range(len(planes)))
    h, w = planes[0].shape
    paths = []
    for i, plane in enumerate(planes):
        xml = ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.'
               f'org/Schemas/OME/2016-06" UUID="{uuids[i]}"><Image ID="Image:0"><Pixels '
               f'ID="Pixels:0" DimensionOrder="XYZCT" Type="uint16" SizeX="{w}" SizeY="{h}" '
               f'SizeZ="1" SizeC="1" SizeT="{len(planes)}"><Channel ID="Channel:0:0" '
               f'SamplesPerPixel="1"/>{data}</Pixels></Image></OME>')
        paths.append(folder / names[i])
        tifffile.imwrite(paths[-1], plane, description=xml.encode(), metadata=None)
    return paths


def test_a_multi_file_ome_dataset_is_predicted_once(tmp_path, nuclei_widefield,
                                                    tiny_model_file, capsys):
    """Found by a review: each file of a multi-file OME-TIFF reads the whole dataset, so a
    folder of them was predicted once per file (the same result under each name)."""
    folder = tmp_path / "mm"
    folder.mkdir()
    planes = [nuclei_widefield[:24, :20], nuclei_widefield[30:54, 30:50]]
    first, second = _multifile_ome(folder, planes)
    assert read_tiff(second).data.shape == (2, 24, 20)  # either file reads the whole
    out = tmp_path / "out"
    assert _cli([folder], out, tiny_model_file) == 0
    printed = capsys.readouterr().out
    assert f"{second}: skipped, part of the 2-file OME-TIFF dataset that {first.name}" \
        in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "mm_0_cvdm_mean.tif", "mm_0_cvdm_std.tif", "mm_0_cvdm_var.tif"]
    assert read_tiff(out / "mm_0_cvdm_mean.tif").data.shape == (2, 48, 40)
    capsys.readouterr()
    assert _cli([folder], out, tiny_model_file, "--resume") == 0  # the dataset stays done
    printed = capsys.readouterr().out
    assert f"{first}: skipped, its outputs are complete" in printed
    assert f"{second}: skipped, part of the 2-file" in printed
    assert not (out / "mm_1_cvdm_mean.tif").exists()
    assert _cli([second], tmp_path / "alone", tiny_model_file) == 0  # given alone: predicted
    assert (tmp_path / "alone" / "mm_1_cvdm_mean.tif").is_file()


def test_every_unreadable_file_of_a_batch_is_named_at_once(tmp_path, tiny_model_file, capsys,
                                                           two_tiffs):
    """Found by a review: a batch stopped at its first bad file, so four bad files took four
    round trips."""
    bad = []
    for name in ("a.tif", "b.tif"):
        bad.append(tmp_path / name)
        bad[-1].write_bytes(b"not a tiff at all")
    assert _cli([two_tiffs[0], *bad], tmp_path / "o", tiny_model_file, "--quiet") == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert "2 of the 3 inputs cannot be predicted (nothing was done)" in err
    assert str(bad[0]) in err and str(bad[1]) in err
    assert not (tmp_path / "o").exists()


def test_a_file_name_stdout_cannot_encode_is_escaped_and_the_batch_goes_on(
        two_tiffs, tiny_model_file, tmp_path, monkeypatch):
    """Found by a review: under a Latin-1 (or Windows code page) standard output, an emoji in
    a file name raised UnicodeEncodeError while the finished file's line was printed, a
    ValueError, so the batch stopped as bad input (exit 2) after that file."""
    import io

    emoji = two_tiffs[0].with_name("é ü \U0001f600.tif")
    two_tiffs[0].rename(emoji)
    raw = io.BytesIO()
    stdout = io.TextIOWrapper(raw, encoding="latin-1", write_through=True)
    monkeypatch.setattr("sys.stdout", stdout)
    code = _cli([emoji, two_tiffs[1]], tmp_path / "out", tiny_model_file, "--quiet")
    printed = raw.getvalue().decode("latin-1")
    assert code == 0, printed
    assert "é ü \\U0001f600.tif -> " in printed and f"{two_tiffs[1]} -> " in printed
    assert stdout.errors == "strict"  # the caller's stream is given back as it was
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{stem}_cvdm_{kind}.tif" for stem in ("é ü \U0001f600", "second")
        for kind in ("mean", "std", "var"))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
def test_resume_redoes_an_output_that_is_a_named_pipe_instead_of_waiting_on_it(
        two_tiffs, tiny_model_file, tmp_path, capsys):
    """Found by a review: --resume opened a FIFO named like an output to read its header
    and waited for ever for a writer."""
    import threading

    out = tmp_path / "out"
    assert _cli(two_tiffs[:1], out, tiny_model_file, "--quiet") == 0
    fifo = out / "first_cvdm_var.tif"
    fifo.unlink()
    os.mkfifo(fifo)
    capsys.readouterr()
    codes = []
    run = threading.Thread(target=lambda: codes.append(
        _cli(two_tiffs[:1], out, tiny_model_file, "--resume", "--quiet")), daemon=True)
    run.start()
    run.join(60)
    if run.is_alive():  # let the waiting open return, so the thread can end
        with open(fifo, "wb"):
            pass
        run.join(10)
        pytest.fail("--resume waited on the named pipe")
    assert codes == [0]
    assert "skipped" not in capsys.readouterr().out
    assert fifo.is_file() and read_tiff(fifo).data.shape == (48, 40)


def test_the_line_of_a_finished_input_says_the_psf_width_the_model_was_told():
    """Found by a review: the width told to the model (the README's "tell it the blur") was
    only in the output files' metadata."""
    from napari_cvdm.file_prediction import describe

    done = {"input": "a.tif", "outputs": ["o/a_cvdm_mean.tif"], "seed": 3, "precision": "bf16",
            "seconds": 1.25, "device": "cpu", "psf_sigma": 2.06,
            "psf_sigma_from": "estimated from the image"}
    line = describe(done)
    assert "PSF width 2.06 px (estimated from the image)" in line and "1.2 s on cpu" in line
    assert "PSF width" not in describe({**done, "psf_sigma": None})  # a blind model
