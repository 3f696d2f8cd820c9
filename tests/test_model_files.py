"""Untrusted model files (issue 8): pickles refused, tampered or truncated files refused,
the conversion tool never runs code. docs/reliability.md lists what each test covers.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import napari_cvdm as nc
from napari_cvdm import convert as convert_module
from napari_cvdm.io import MAX_PARAMETERS, PICKLE_HINT, load_model
from napari_cvdm.model.config import UNetConfig

FAST = dict(samples=2, steps=2, seed=0, device="cpu")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _image(shape=(16, 16), seed=0, dtype=np.float64):
    return np.random.default_rng(seed).random(shape).astype(dtype)


# -- model files -----------------------------------------------------------------------
def test_pickle_files_are_refused_and_the_hint_names_the_conversion(tmp_path, tiny_model):
    for suffix in (".pt", ".pth", ".ckpt", ".bin"):
        path = tmp_path / f"model{suffix}"
        torch.save(tiny_model.state_dict(), path)
        with pytest.raises(ValueError, match=r"pickle.*python -m napari_cvdm\.convert"):
            load_model(path)


def test_a_pickle_renamed_to_a_model_file_is_recognised(tmp_path, tiny_model):
    for kwargs in ({}, {"_use_new_zipfile_serialization": False}):
        path = tmp_path / "disguised.cvdm.safetensors"
        torch.save(tiny_model.state_dict(), path, **kwargs)
        with pytest.raises(ValueError, match="pickle"):
            load_model(path)


def test_a_model_file_whose_header_length_looks_like_a_pickle_still_loads(tmp_path,
                                                                         tiny_model):
    """A header of 0x10280 bytes starts with the bytes 80 02, like a pickle; it is no pickle."""
    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    target = 0x10280
    assert n < target
    header = raw[8:8 + n] + b" " * (target - n)
    path.write_bytes(target.to_bytes(8, "little") + header + raw[8 + n:])
    assert path.read_bytes()[:2] == b"\x80\x02"
    assert load_model(path).config == tiny_model.config


def test_the_hint_and_the_converter_agree():
    command = PICKLE_HINT.format(path="IN.pt", suffix=".pt").split("convert it once with:")[1]
    words = command.split()
    assert words[:3] == ["python", "-m", "napari_cvdm.convert"]
    args = words[3:]
    args[args.index("PRESET")] = "tiny"
    args[args.index("S")] = "3"
    parsed = convert_module._parser().parse_args(args)
    assert parsed.preset == "tiny" and parsed.scale == 3


def test_conversion_of_a_trusted_checkpoint_gives_the_same_model(tmp_path, tiny_model):
    pt = tmp_path / "trusted.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in
                                           tiny_model.state_dict().items()}}, pt)
    out = tmp_path / "trusted.cvdm.safetensors"
    result = subprocess.run([sys.executable, "-m", "napari_cvdm.convert", str(pt), str(out),
                             "--preset", "tiny", "--scale", "2"],
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr
    loaded = load_model(out)
    assert loaded.metadata["converted_from"]["sha256"] == hashlib.sha256(
        pt.read_bytes()).hexdigest()
    image = _image((12, 12))
    np.testing.assert_array_equal(nc.predict(image, loaded, **FAST).mean,
                                  nc.predict(image, tiny_model, **FAST).mean)
    assert not list(tmp_path.glob("*.part"))


def test_conversion_replaces_an_existing_output_only_when_told(tmp_path, tiny_model, capsys):
    """Found by an audit: an existing OUT was replaced without a word."""
    pt = tmp_path / "tiny.pt"
    torch.save(tiny_model.state_dict(), pt)
    out = tmp_path / "x.cvdm.safetensors"
    args = [str(pt), str(out), "--preset", "tiny", "--scale", "2"]
    assert convert_module.main(args) == 0
    first = out.read_bytes()
    assert convert_module.main(args + ["--half"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err and out.read_bytes() == first
    assert convert_module.main(args + ["--half", "--overwrite"]) == 0
    assert out.read_bytes() != first
    image = tmp_path / "image.cvdm.safetensors"
    image.write_bytes(b"not a model")
    assert convert_module.main([str(pt), str(image), "--preset", "tiny", "--scale", "2",
                                "--overwrite"]) == 2
    assert image.read_bytes() == b"not a model"


def test_conversion_refuses_weights_of_another_preset_in_a_short_message(tmp_path, tiny_model,
                                                                         capsys):
    pt = tmp_path / "tiny.pt"
    torch.save(tiny_model.state_dict(), pt)
    out = tmp_path / "x.cvdm.safetensors"
    assert convert_module.main([str(pt), str(out), "--preset", "small", "--scale", "2"]) == 2
    err = capsys.readouterr().err
    assert "do not fit the 'small' preset" in err and "of another shape" in err
    assert len(err) < 1000  # torch's message listed every key (11 kB on one line)
    assert not out.exists()
    assert convert_module.main([str(pt), str(tmp_path / "x.safetensors"),
                                "--preset", "tiny", "--scale", "2"]) == 2
    assert ".cvdm.safetensors" in capsys.readouterr().err


def test_conversion_needs_the_scale_which_the_weights_cannot_tell(tmp_path, tiny_model,
                                                                   capsys):
    """The weights are the same at every scale: with a default of 2, a x4 checkpoint became
    a x2 model without a word."""
    pt = tmp_path / "tiny.pt"
    torch.save(tiny_model.state_dict(), pt)
    out = tmp_path / "x.cvdm.safetensors"
    with pytest.raises(SystemExit) as exit_:
        convert_module.main([str(pt), str(out), "--preset", "tiny"])
    assert exit_.value.code == 2 and "--scale" in capsys.readouterr().err
    assert convert_module.main([str(pt), str(out), "--preset", "tiny", "--scale", "4"]) == 0
    assert load_model(out).config.scale == 4


def test_an_averaged_model_checkpoint_converts(tmp_path, tiny_model):
    averaged = torch.optim.swa_utils.AveragedModel(tiny_model)
    pt = tmp_path / "swa.pt"
    torch.save(averaged.state_dict(), pt)
    out = convert_module.convert(pt, tmp_path / "swa.cvdm.safetensors", "tiny", 2)
    for name, value in tiny_model.state_dict().items():
        assert torch.equal(load_model(out).state_dict()[name], value), name


class _Payload:
    """Unpickling this would create a file: the converter must never do that."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_conversion_never_runs_code_from_the_checkpoint(tmp_path, tiny_model, capsys):
    marker = tmp_path / "pwned"
    pt = tmp_path / "evil.pt"
    torch.save({"state_dict": tiny_model.state_dict(), "x": _Payload(str(marker))}, pt)
    code = convert_module.main([str(pt), str(tmp_path / "e.cvdm.safetensors"),
                                "--preset", "tiny", "--scale", "2"])
    assert code == 2 and "weights_only" in capsys.readouterr().err
    assert not marker.exists()
    with pytest.raises(ValueError, match="pickle"):
        load_model(pt)
    assert not marker.exists()


def _header(path: Path):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return raw, n, json.loads(raw[8:8 + n])


def _rewrite(path: Path, change_meta=None, change_header=None, extra: bytes = b""):
    raw, n, header = _header(path)
    if change_meta is not None:
        meta = json.loads(header["__metadata__"]["napari_cvdm"])
        change_meta(meta)
        header["__metadata__"]["napari_cvdm"] = json.dumps(meta)
    if change_header is not None:
        change_header(header)
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    path.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + n:] + extra)


def test_a_config_asking_for_too_many_parameters_is_refused_before_allocating(
        tiny_model, tmp_path, monkeypatch):
    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    huge = {"base_channels": 512, "channel_mults": [1, 2, 4, 8, 16, 16, 16],
            "blocks_per_level": 8, "attention_at_lowest": True, "dropout": 0.0}
    _rewrite(path, lambda m: m["config"].update(denoiser=huge))
    devices = []
    original = nc.CVDM.__init__

    def recording_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        devices.append(next(self.parameters()).device.type)

    monkeypatch.setattr(nc.CVDM, "__init__", recording_init)
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"parameters, more than the 400,000,000"):
        load_model(path)
    assert time.perf_counter() - started < 30
    assert devices == ["meta"]  # only ever built without memory


def test_a_config_just_over_the_limit_is_refused_and_presets_are_within_it():
    from napari_cvdm.io import estimate_parameters
    from napari_cvdm.model.config import PRESETS

    assert all(estimate_parameters(c) < MAX_PARAMETERS for c in PRESETS.values())
    big = nc.CVDMConfig.preset("paper", denoiser=UNetConfig(128, (1, 2, 4, 8, 8), 3, True))
    assert estimate_parameters(big) > MAX_PARAMETERS


@pytest.mark.parametrize("change,match", [
    (lambda m: m["config"].update(residual_scale="0.2"), "residual_scale"),
    (lambda m: m["config"].update(timesteps=200.5), "invalid"),
    (lambda m: m["config"].update(output_clip=float("inf")), "output_clip"),
    (lambda m: m["config"].update(residual="yes"), "residual"),
    (lambda m: m["config"]["denoiser"].update(base_channels=16.0), "base_channels"),
    (lambda m: m["config"]["denoiser"].update(channel_mults=[1, "2"]), "invalid"),
    (lambda m: m["config"].update(mean_net=7), "invalid"),
    (lambda m: m["config"].update(evil=1), "unknown model settings"),
    (lambda m: m.update(config=[1, 2]), "invalid"),
    (lambda m: m.update(metadata=[1, 2]), "metadata"),
])
def test_tampered_configurations_are_refused(tiny_model, tmp_path, change, match):
    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    _rewrite(path, change)
    with pytest.raises(ValueError, match=match):
        load_model(path)


def test_extra_or_missing_tensors_and_nan_weights_are_refused(tiny_model, tmp_path):
    state = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    meta = _header(nc.save_model(tiny_model, tmp_path / "ok.cvdm.safetensors"))[2]["__metadata__"]
    cases = {
        "unexpected": {**state, "big.extra": torch.zeros(1000, 1000)},
        "missing": dict(list(state.items())[1:]),
        "NaN": {**state, next(iter(state)): torch.full_like(next(iter(state.values())),
                                                            float("nan"))},
        "type": {**state, next(iter(state)): next(iter(state.values())).to(torch.int32)},
    }
    for match, tensors in cases.items():
        path = tmp_path / f"{match}.cvdm.safetensors"
        save_file(tensors, str(path), metadata=meta)
        with pytest.raises(ValueError, match=match):
            load_model(path)


@pytest.mark.parametrize("keep", [4, 8, 100, 0.5, 0.99])
def test_files_truncated_anywhere_are_refused(tiny_model, tmp_path, keep):
    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    raw = path.read_bytes()
    path.write_bytes(raw[:int(keep * len(raw)) if isinstance(keep, float) else keep])
    with pytest.raises(ValueError, match="napari-cvdm model|safetensors|damaged|truncated"):
        load_model(path)


def test_a_header_offset_pointing_beyond_the_file_is_refused(tiny_model, tmp_path):
    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")

    def stretch(header):
        name = next(k for k in header if k != "__metadata__")
        header[name]["data_offsets"][1] += 10**9

    _rewrite(path, change_header=stretch)
    with pytest.raises(ValueError):
        load_model(path)


def test_a_misspelled_bundled_name_lists_the_bundled_models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="no bundled model or model file is called "
                                         "'widefield-x3'.*demo, widefield-x2"):
        nc.load_model("widefield-x3")
    with pytest.raises(ValueError, match="is a folder, not a model file"):
        nc.load_model(tmp_path)
    (tmp_path / "mine").write_bytes(b"")  # a file without a suffix is still a path
    with pytest.raises(ValueError, match="not a napari-cvdm model file|empty"):
        nc.load_model("mine")


def test_a_model_built_from_a_direct_config_saves_and_loads(tmp_path):
    """CVDMConfig(...) used to get the `preset` classmethod as its preset field's default,
    and save_model failed with a JSON TypeError."""
    from napari_cvdm.model.config import CVDMConfig
    from napari_cvdm.model.cvdm import CVDM

    config = CVDMConfig(denoiser=UNetConfig(8, (1, 2), 1, False),
                        schedule_net=UNetConfig(8, (1, 2), 1, False), time_hidden=16)
    assert config.preset == "custom"
    assert CVDMConfig.preset("tiny").preset == "tiny"
    path = nc.save_model(CVDM(config), tmp_path / "direct.cvdm.safetensors")
    assert load_model(path).config == config


def test_the_model_a_run_starts_from_is_recognised_by_name_link_or_path(tmp_path):
    """Found by an audit: with --init widefield-x2, -o the bundled file was an ordinary
    model, replaced with --overwrite."""
    from napari_cvdm.model_files import bundled_model_path, existing_output

    assert existing_output(bundled_model_path("demo"), "demo") == "init"
    assert existing_output(bundled_model_path("demo"), "widefield-x2") == "model"
    start = bundled_model_path("demo")
    (tmp_path / "link.cvdm.safetensors").symlink_to(start)
    assert existing_output(tmp_path / "link.cvdm.safetensors", "demo") == "init"
    copy = tmp_path / "copy.cvdm.safetensors"
    copy.write_bytes(start.read_bytes())
    (tmp_path / "hard.cvdm.safetensors").hardlink_to(copy)
    assert existing_output(tmp_path / "hard.cvdm.safetensors", str(copy)) == "init"
    assert existing_output(copy, None) == "model"
    assert existing_output(tmp_path / "none.cvdm.safetensors", "demo") is None


def test_a_pipe_or_device_as_model_and_a_huge_number_in_the_header_are_clear(tmp_path,
                                                                            tiny_model):
    """Found by an audit: a FIFO was "not found", and a 5000-digit number in the header gave
    Python's int-limit message without the file."""
    import os

    from napari_cvdm.model_header import parse_json

    fifo = tmp_path / "pipe.cvdm.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        load_model(fifo)
    with pytest.raises(ValueError, match="the header of m is damaged"):
        parse_json('{"step": ' + "9" * 5000 + "}", "the header of m")


@pytest.mark.parametrize(("field", "value"), [
    ("calibration", {"method": "scale", "scale": 0.0}),  # what a fit of zero errors gave
    ("name", 5),
    ("normalization", {"percentiles": [99.9, 0.1]}),
    ("psf_sigma_default", 1e300),
])
def test_save_model_refuses_what_load_model_would_refuse(tmp_path, tiny_model, field, value):
    """save_model wrote such files over working ones (overwrite=True by default), and no
    front end could open them again."""
    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    before, metadata = path.read_bytes(), tiny_model.metadata
    tiny_model.metadata = {**metadata, field: value}
    try:
        with pytest.raises(ValueError, match=field):
            nc.save_model(tiny_model, path)
    finally:
        tiny_model.metadata = metadata
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.cvdm.safetensors"]


def test_a_default_psf_width_outside_what_users_may_give_is_refused_on_load(tmp_path,
                                                                           tiny_model):
    from safetensors import safe_open

    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        header = json.loads(fh.metadata()["napari_cvdm"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    for value in (1e300, True, "3"):
        header["metadata"]["psf_sigma_default"] = value
        save_file(tensors, str(path), metadata={"napari_cvdm": json.dumps(header)})
        with pytest.raises(ValueError, match="psf_sigma_default"):
            load_model(path)


def test_a_model_path_with_a_tilde_is_the_home_folder(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    assert load_model("~/m.cvdm.safetensors").config == tiny_model.config


# -- messages that say what to do (session 23 review) -----------------------------------
def test_a_model_file_renamed_to_a_pickle_suffix_loads_and_is_not_converted(tmp_path,
                                                                            tiny_model):
    """Found by a review: the pickle refusal went by the name, so a real model file saved
    as .bin was called a pickle, and the conversion it pointed to failed on it."""
    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    renamed = path.rename(tmp_path / "renamed.bin")
    assert load_model(renamed).config == tiny_model.config
    with pytest.raises(ValueError, match="is a safetensors file, not a pickle"):
        convert_module.convert(renamed, tmp_path / "o.cvdm.safetensors", "tiny", 2)
    missing = tmp_path / "absent.pt"
    with pytest.raises(ValueError, match="model file not found"):
        load_model(missing)


def test_the_pieces_of_an_unpacked_package_point_at_the_package(tmp_path, tiny_model):
    """Found by a review: an unpacked bioimage.io package's weights.pt was sent to the
    conversion, which then failed on its names; its folder and rdf.yaml gave no hint."""
    from napari_cvdm.bioimageio_model import CVDMSampler

    folder = tmp_path / "unpacked"
    folder.mkdir()
    sampler = CVDMSampler(tiny_model.config.to_dict())
    torch.save(sampler.state_dict(), folder / "weights.pt")
    (folder / "rdf.yaml").write_text("type: model\n")
    with pytest.raises(ValueError, match="unpacked bioimage.io package.*zip"):
        load_model(folder / "weights.pt")
    with pytest.raises(ValueError, match="bioimage.io package.*zip"):
        convert_module.convert(folder / "weights.pt", tmp_path / "o.cvdm.safetensors",
                               "tiny", 2)
    with pytest.raises(ValueError, match="a description, not a model file"):
        load_model(folder / "rdf.yaml")
    with pytest.raises(ValueError, match="folder.*unpacked bioimage.io package"):
        load_model(folder)
    inner = nc.save_model(tiny_model, folder / "tiny.cvdm.safetensors")
    with pytest.raises(ValueError, match=f"the model file in it is {inner}"):
        load_model(folder)


def test_a_cut_short_model_file_says_so(tiny_model, tmp_path):
    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    path.write_bytes(raw[:8 + n // 2])  # the header itself cut
    with pytest.raises(ValueError, match="cut short"):
        load_model(path)


@pytest.mark.parametrize("change,match", [
    (lambda m: m.update(format="napari-cvdm/2"), "unsupported model header"),
    (lambda m: m["config"].update(attention_heads=4), "unknown model settings"),
    (lambda m: m["config"]["denoiser"].update(norm="rms"), "unknown model setting 'norm'"),
])
def test_a_file_from_a_newer_napari_cvdm_says_to_update(tiny_model, tmp_path, change,
                                                         match, capsys):
    """Found by a review: files a newer version wrote were called invalid (one in Python's
    words: "UNetConfig.__init__() got an unexpected keyword argument"), never "update"."""
    from napari_cvdm.cli import main

    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    _rewrite(path, lambda m: (change(m), m.update(version="99.0.0")))
    with pytest.raises(ValueError, match=match) as caught:
        load_model(path)
    assert "written by napari-cvdm 99.0.0, newer than this one" in str(caught.value)
    assert "pip install -U napari-cvdm" in str(caught.value)
    assert "__init__" not in str(caught.value)
    assert main(["info", str(path)]) == 2
    assert "newer than this one" in capsys.readouterr().err
    _rewrite(path, lambda m: m.update(version=nc.__version__))  # same version: no hint
    with pytest.raises(ValueError) as caught:
        load_model(path)
    assert "newer than this one" not in str(caught.value)


def test_a_lightning_checkpoint_converts_and_text_files_say_what_they_are(tmp_path,
                                                                          tiny_model):
    """Found by a review: keys prefixed "model." (a LightningModule's) were taken for a
    bioimage.io package's network; a Git LFS pointer or a saved web page "looked cut short"."""
    checkpoint = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in tiny_model.state_dict().items()}},
               checkpoint)
    out = convert_module.convert(checkpoint, tmp_path / "l.cvdm.safetensors", "tiny", 2)
    for name, value in load_model(out).state_dict().items():
        assert torch.equal(value, tiny_model.state_dict()[name]), name
    for text in (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n",
                 b"<!DOCTYPE html><html><body>Not found</body></html>"):
        path = tmp_path / "pointer.cvdm.safetensors"
        path.write_bytes(text)
        with pytest.raises(ValueError, match="is a text file") as caught:
            load_model(path)
        assert "cut short" not in str(caught.value)


@pytest.mark.parametrize("start,kind", [(b"II*\x00\x08\x00\x00\x00", "TIFF"),
                                        (b"\x89PNG\r\n\x1a\n", "PNG"),
                                        (b"\x93NUMPY\x01\x00", "NumPy .npy")])
def test_an_image_given_as_the_model_says_it_is_an_image(tmp_path, start, kind, capsys):
    """Found by a review: `cvdm info cell.tif` (or --model cell.tif) said the file "looks
    cut short (an interrupted download or copy?)"."""
    from napari_cvdm.cli import main

    path = tmp_path / "cell.tif"
    path.write_bytes(start + bytes(range(256)) * 8)
    with pytest.raises(ValueError, match=f"is an image \\({kind}\\), not a napari-cvdm model"):
        load_model(path)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert "cvdm predict IMAGE" in err and "cut short" not in err


def test_other_binary_data_is_not_said_to_be_cut_short(tmp_path):
    path = tmp_path / "noise.cvdm.safetensors"
    path.write_bytes(bytes([0x5A, 0xF3, 0x11, 0x9C, 0x42, 0x07, 0xE8, 0x31]) * 64)
    with pytest.raises(ValueError, match="not a napari-cvdm model file") as caught:
        load_model(path)
    assert "cut short" not in str(caught.value)


def test_a_training_state_or_a_broken_link_given_as_the_model_says_what_it_is(tmp_path):
    """Found by a review: a training state was "not a napari-cvdm model (it has no
    napari_cvdm header)", a link loop "model file not found"."""
    from safetensors.torch import save_file

    state = tmp_path / "m.train-state.safetensors"
    save_file({"step": torch.zeros(1)}, str(state), metadata={"napari_cvdm_state": "{}"})
    with pytest.raises(ValueError, match="is a training state .* not a model"):
        load_model(state)
    loop = tmp_path / "a.cvdm.safetensors"
    loop.symlink_to(tmp_path / "b.cvdm.safetensors")
    (tmp_path / "b.cvdm.safetensors").symlink_to(loop)
    with pytest.raises(ValueError, match="symbolic link to a missing file"):
        load_model(loop)


def test_load_model_takes_the_devices_predict_takes():
    """Found by a review: load_model(device="auto") was torch's "Expected one of cpu, cuda"
    RuntimeError, where predict(device="auto") works."""
    from napari_cvdm.io import load_model

    model = load_model("demo", device="auto")
    assert next(model.parameters()).device.type in ("cpu", "cuda", "mps")
    assert next(load_model("demo", device="CPU").parameters()).device.type == "cpu"
