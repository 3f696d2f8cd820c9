"""Model files: safetensors + JSON round trip, and refusal of anything else."""

import hashlib
import json
import logging
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import napari_cvdm as nc
from napari_cvdm.io import read_tiff, write_tiff


def test_round_trip_gives_identical_outputs(tiny_model, tmp_path):
    tiny_model.metadata["note"] = "hello"
    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    loaded = nc.load_model(path)
    assert loaded.config == tiny_model.config
    assert loaded.metadata["note"] == "hello"
    x = torch.rand(2, 1, 16, 16)
    a = tiny_model.loss(x, x * 0.9, generator=torch.Generator().manual_seed(0))
    b = loaded.loss(x, x * 0.9, generator=torch.Generator().manual_seed(0))
    for key in ("total", "noise", "beta", "prior", "smooth"):
        assert torch.equal(a[key], b[key]), key
    image = np.random.default_rng(0).random((20, 20)).astype(np.float32)
    r1 = nc.predict(image, tiny_model, samples=2, steps=3, seed=1)
    r2 = nc.predict(image, loaded, samples=2, steps=3, seed=1)
    np.testing.assert_array_equal(r1.mean, r2.mean)


def test_model_file_contains_no_pickle(tiny_model, tmp_path):
    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    meta = json.loads(header["__metadata__"]["napari_cvdm"])
    assert meta["format"] == "napari-cvdm/1" and meta["config"]["preset"] == "tiny"
    assert b"\x80\x04" not in raw[:16]  # not a pickle protocol header


def test_half_precision_file_loads_as_float32(tiny_model, tmp_path):
    small = nc.save_model(tiny_model, tmp_path / "h.cvdm.safetensors", half=True)
    full = nc.save_model(tiny_model, tmp_path / "f.cvdm.safetensors")
    assert small.stat().st_size < 0.6 * full.stat().st_size
    loaded = nc.load_model(small)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


def test_pickle_checkpoints_are_refused_with_an_explanation(tmp_path, tiny_model):
    path = tmp_path / "model.pt"
    torch.save(tiny_model.state_dict(), path)
    with pytest.raises(ValueError, match="pickle"):
        nc.load_model(path)


@pytest.mark.parametrize("content", [b"", b"not a model at all", b"\x00" * 64])
def test_files_that_are_not_models_are_refused(tmp_path, content):
    path = tmp_path / "bad.cvdm.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="napari-cvdm model|safetensors"):
        nc.load_model(path)


def test_plain_safetensors_without_our_header_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(ValueError, match="no napari_cvdm header"):
        nc.load_model(path)


def test_truncated_file_is_refused(tiny_model, tmp_path):
    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(ValueError):
        nc.load_model(path)


def _tamper(path, change):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = json.loads(header["__metadata__"]["napari_cvdm"])
    change(meta)
    header["__metadata__"]["napari_cvdm"] = json.dumps(meta)
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    path.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + n:])


def test_absurd_config_is_refused_before_allocating(tiny_model, tmp_path):
    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    _tamper(path, lambda m: m["config"]["denoiser"].update(base_channels=10**6))
    with pytest.raises(ValueError, match="configuration is invalid"):
        nc.load_model(path)


def test_weights_that_do_not_fit_the_config_are_refused(tiny_model, tmp_path):
    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    _tamper(path, lambda m: m["config"]["denoiser"].update(base_channels=8))
    with pytest.raises(ValueError, match="shape|do not match"):
        nc.load_model(path)


def test_tiff_round_trip_keeps_pixel_size(tmp_path):
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = write_tiff(tmp_path / "a.tif", data, pixel_size=(0.1, 0.2), unit="µm")
    image = read_tiff(path)
    np.testing.assert_array_equal(image.data, data)
    assert image.pixel_size == pytest.approx((0.1, 0.2))
    assert not list(tmp_path.glob("*.part"))


def test_unreadable_tiff_gives_a_clear_error(tmp_path):
    path = tmp_path / "broken.tif"
    path.write_bytes(b"II*\x00garbage")
    with pytest.raises(ValueError, match="could not be read as a TIFF"):
        read_tiff(path)


def test_a_refused_tiff_gets_our_error_without_tifffile_log_lines(tmp_path, caplog):
    path = tmp_path / "broken.tif"
    path.write_bytes(b"II*\x00garbage" * 10)  # first-page offset past the end: tifffile logs it
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="no image data"):
        read_tiff(path)
    assert not [r for r in caplog.records if r.name == "tifffile"]


def test_tifffile_log_lines_about_a_file_that_is_read_are_passed_on(tmp_path, caplog):
    path = write_tiff(tmp_path / "a.tif", np.ones((4, 4), np.float32))
    import tifffile

    def logs_then_reads(*args, **kwargs):
        logging.getLogger("tifffile").warning("odd tag ignored")
        return real(*args, **kwargs)

    real = tifffile.TiffFile
    with caplog.at_level(logging.WARNING), pytest.MonkeyPatch.context() as mp:
        mp.setattr(tifffile, "TiffFile", logs_then_reads)
        read_tiff(path)
    assert [r.getMessage() for r in caplog.records if r.name == "tifffile"] == ["odd tag ignored"]


# -- header checks, model cards, resolve_model, file modes ---------------------------------
@pytest.mark.parametrize("change,match", [
    (lambda m: m["config"].update(residual_scale=0), "residual_scale"),
    (lambda m: m["config"].update(residual_scale=-0.2), "residual_scale"),
    (lambda m: m["config"].update(output_clip=0.0), "output_clip"),
    (lambda m: m["config"].update(logsnr_min=20.0), "logsnr"),
    (lambda m: m["config"].update(time_hidden=0), "time_hidden"),
    (lambda m: m["config"]["denoiser"].update(dropout=1.5), "dropout"),
    (lambda m: m["metadata"].update(training={"step": -3}), "training.step"),
    (lambda m: m["metadata"].update(card=[1]), "card"),
    (lambda m: m["metadata"].update(normalization={"percentiles": [99, 1]}), "percentiles"),
    # found by an audit: AttributeError, IndexError and TypeError tracebacks (exit 1) from
    # cvdm info and cvdm predict
    (lambda m: m["metadata"].update(training={"data": "x"}), "training.data"),
    (lambda m: m["metadata"].update(training={"data": {"degradation": []}}),
     "training.data.degradation"),
    (lambda m: m["metadata"].update(training={"settings": "x"}), "training.settings"),
    (lambda m: m["metadata"].update(training={"data": {"degradation": {"psf_sigma": []}}}),
     "psf_sigma"),
    (lambda m: m["metadata"].update(intended={"input_pixel_size_nm": [None, 1]}),
     "input_pixel_size_nm"),
    (lambda m: m["metadata"].update(intended={"input_pixel_size_nm": ["a", "b"]}),
     "input_pixel_size_nm"),
])
def test_every_header_field_is_checked_before_use(tiny_model, tmp_path, change, match,
                                                   capsys):
    from napari_cvdm.cli import main

    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    _tamper(path, change)
    with pytest.raises(ValueError, match=match):
        nc.load_model(path)
    assert main(["info", str(path)]) == 2
    assert match.split(".")[0] in capsys.readouterr().err


def test_a_deeply_nested_header_is_a_value_error_not_a_recursion_error(tiny_model, tmp_path):
    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    _tamper(path, lambda m: m["metadata"].update(deep="DEEP"))
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    deep = json.dumps("[" * 100_000 + "]" * 100_000)[1:-1]  # JSON text inside the JSON
    header = raw[8:8 + n].replace(b'\\"DEEP\\"', deep.encode())
    header += b" " * ((8 - len(header) % 8) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header + raw[8 + n:])
    with pytest.raises(ValueError, match="nested"):
        nc.load_model(path)


def test_saved_models_carry_a_card_and_no_machine_paths(tiny_model, tmp_path):
    from napari_cvdm.model_files import read_model_header

    tiny_model.metadata = {"training": {"step": 5, "data": {
        "mode": "simulated", "hq": "/home/someone/secret/train", "images": 3,
        "degradation": {"psf": "gaussian", "scale": 2}}}, "card": {"license": "CC-BY-4.0"}}
    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    header = read_model_header(path)
    assert "/home/someone" not in json.dumps(header)
    assert header["metadata"]["training"]["data"]["hq"] == "train"
    card = header["metadata"]["card"]
    assert card["license"] == "CC-BY-4.0" and "2312.02246" in card["citation"]
    assert card["training_data"].startswith("3 high-quality images")
    for key in ("description", "intended_use", "limitations"):
        assert len(card[key]) > 20


def test_model_files_are_readable_by_colleagues(tiny_model, tmp_path):
    old = os.umask(0o022)
    try:
        path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_resolve_model_gives_the_model_and_its_provenance(tiny_model, tmp_path):
    from napari_cvdm.model_files import resolve_model

    path = nc.save_model(tiny_model, tmp_path / "mine.cvdm.safetensors")
    model, info = resolve_model(path)
    assert isinstance(model, nc.CVDM) and model.config == tiny_model.config
    assert info["name"] == info["model"] == "mine" and info["path"] == str(path)
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["preset"] == "tiny" and info["scale"] == tiny_model.config.scale
    assert info["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert "super-resolution" in info["description"]
    same, memory = resolve_model(tiny_model)
    assert same is tiny_model and memory["path"] is None and memory["sha256"] is None
    with pytest.raises(ValueError, match="bundled model name"):
        resolve_model(3)


def test_cvdm_info_prints_the_model_card_without_paths(tiny_model, tmp_path, capsys):
    from napari_cvdm.cli import main

    tiny_model.metadata = {"training": {"step": 7, "data": {"mode": "pairs", "images": 4,
                                                            "lq": "/data/private/lq"}}}
    path = nc.save_model(tiny_model, tmp_path / "cells.cvdm.safetensors")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cells: x2 super-resolution, preset tiny, trained 7 steps")
    for field in ("description:", "license: BSD-3-Clause", "citation:", "intended use:",
                  "limitations:", "training data: 4 measured pairs"):
        assert field in out
    assert hashlib.sha256(path.read_bytes()).hexdigest() in out
    assert "/data/private" not in out
    assert main(["info", str(tmp_path / "missing.cvdm.safetensors")]) == 2
    tiny_model.metadata["training"]["settings"] = {"init": "/data/private/base.cvdm.safetensors"}
    path = nc.save_model(tiny_model, tmp_path / "tuned.cvdm.safetensors")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tuned: x2 super-resolution, preset tiny, trained 7 steps from an "
                          "earlier model's weights (cvdm train --init)")
    assert "/data/private" not in out
    # the widget's model line says so too: the steps are the last run's, not the model's
    from napari_cvdm.layers import model_summary

    tiny_model.metadata["training"]["averaged_with"] = {"model": "base", "weight": 0.5}
    path = nc.save_model(tiny_model, tmp_path / "soup.cvdm.safetensors")
    assert model_summary(path) == ("soup: x2 super-resolution, preset tiny, trained 7 steps "
                                   "from an earlier model's weights, then averaged with "
                                   "another model")


def test_held_tifffile_logs_hold_only_their_own_thread(caplog):
    import threading

    from napari_cvdm.image_files import held_tifffile_logs

    logger = logging.getLogger("tifffile")
    with caplog.at_level(logging.WARNING):
        with held_tifffile_logs(pass_on=False):
            logger.warning("held")
            other = threading.Thread(target=lambda: logger.warning("other thread"))
            other.start()
            other.join()
        logger.warning("after")
    assert [r.getMessage() for r in caplog.records if r.name == "tifffile"] == [
        "other thread", "after"]
    assert not logger.filters


def test_cvdm_info_shows_only_loadable_models_and_prints_their_text_plainly(tiny_model,
                                                                         tmp_path, capsys):
    """Found by an audit: cvdm info printed the card of files load_model refuses (a scale of
    0), and a name's terminal escapes and direction overrides went to the terminal raw."""
    from napari_cvdm.cli import main

    path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    _tamper(path, lambda m: m["metadata"].update(name="evil\x1b[31mred\u202eflip" + "x" * 5000))
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "evil\\x1b[31mred" in out
    assert max(len(line) for line in out.splitlines()) < 2100
    # a line break in a field stays in its line (it could pass for another field)
    _tamper(path, lambda m: m["metadata"].update(name="n\nlicense: MIT"))
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert not any(line.startswith("license: MIT") for line in out.splitlines())
    _tamper(path, lambda m: m["config"].update(scale=0))
    assert main(["info", str(path)]) == 2
    assert "configuration is invalid" in capsys.readouterr().err
    # a configuration its weights do not fit (found by a review: a card, then predict
    # refused the file)
    _tamper(path, lambda m: m["config"].update(scale=2, channels=2))
    assert main(["info", str(path)]) == 2
    assert "the configuration needs" in capsys.readouterr().err
