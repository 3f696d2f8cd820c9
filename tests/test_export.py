"""bioimage.io export: a package that bioimage.io validates offline and that runs."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

import napari_cvdm as nc

spec = pytest.importorskip("bioimageio.spec")

from napari_cvdm.bioimageio_export import export_bioimageio  # noqa: E402

FAST = {"samples": 2, "steps": 2}


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    # a calibration and a normalisation of its own: the package must use them
    model = nc.CVDM(nc.CVDMConfig.preset("tiny"), metadata={
        "name": "tiny-test", "normalization": {"percentiles": [2.0, 98.0]},
        "calibration": {"method": "isotonic", "scale": 4.0, "log_std": [-6.0, 0.0],
                        "std": [0.05, 3.0]}})
    return model, export_bioimageio(model, tmp_path_factory.mktemp("x") / "tiny.zip", FAST)


def test_the_package_passes_bioimageio_validation_offline(package):
    _, path = package
    descr = spec.load_description(path, perform_io_checks=True)
    assert isinstance(descr, spec.ModelDescr), descr.validation_summary.format()
    assert descr.validation_summary.status in ("valid-format", "passed")
    assert descr.name == "CVDM tiny-test"
    assert "2312.02246" in str(descr.cite[0].doi)
    assert descr.outputs[0].axes[1].channel_names == ["mean", "std"]


def test_the_package_holds_card_cover_and_test_tensors(package):
    _, path = package
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        readme = archive.read("README.md").decode()
    assert {"rdf.yaml", "weights.pt", "test_input.npy", "test_output.npy", "cover.png",
            "README.md", "tiny-test.cvdm.safetensors"} <= names
    for heading in ("What one forward pass computes", "License", "Citation",
                    "Training data", "Intended use", "Limitations"):
        assert f"## {heading}" in readme


def test_the_package_names_the_napari_cvdm_it_needs(package):
    # the architecture is imported from napari-cvdm, and older versions may not know the
    # sampler's arguments: the weights' environment and the README say which version
    import yaml

    _, path = package
    descr = spec.load_description(path)
    with zipfile.ZipFile(path) as archive:
        source = descr.weights.pytorch_state_dict.dependencies.source
        environment = yaml.safe_load(archive.read(str(source.path)))
        readme = archive.read("README.md").decode()
    pip = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert pip == [f"napari-cvdm>={nc.__version__}"]
    assert any(str(d).startswith("pytorch") for d in environment["dependencies"])
    assert f"napari-cvdm {nc.__version__} or newer" in readme


def test_the_described_network_reproduces_the_test_output(package, tmp_path):
    from napari_cvdm.bioimageio_model import CVDMSampler

    _, path = package
    descr = spec.load_description(path)
    weights = descr.weights.pytorch_state_dict
    with zipfile.ZipFile(path) as archive:
        archive.extractall(tmp_path)
    network = CVDMSampler(**weights.architecture.kwargs)
    network.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    test_input = np.load(tmp_path / "test_input.npy")
    expected = np.load(tmp_path / "test_output.npy")
    out = network(torch.from_numpy(test_input)).numpy()
    assert out.shape == (1, 2, 128, 128) == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert (out[:, 1] >= 0).all()


def test_the_package_gives_what_predict_gives_with_the_same_settings(package, tmp_path):
    """The package's std is the calibrated one and its normalisation the model's (both were
    lost: a consumer builds the sampler from its kwargs, without the model file)."""
    model, path = package
    with zipfile.ZipFile(path) as archive:
        test_input = np.load(archive.open("test_input.npy"))
        expected = np.load(archive.open("test_output.npy"))
    result = nc.predict(test_input[0, 0], model, **FAST, eta=0.0, seed=0, sampler="ddim",
                        device="cpu", precision="fp32", tile_size=256)
    np.testing.assert_allclose(expected[0, 0], result.mean, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(expected[0, 1], result.std, rtol=1e-5, atol=1e-4)
    assert not np.allclose(result.std, result.sample_std)  # the calibration does something
    with zipfile.ZipFile(path) as archive:
        assert "calibrated standard deviation" in archive.read("README.md").decode()
        assert "calibrated standard deviation" in archive.read("rdf.yaml").decode()
    uncalibrated = export_bioimageio(nc.CVDM(nc.CVDMConfig.preset("tiny")),
                                     tmp_path / "raw.zip", FAST)
    with zipfile.ZipFile(uncalibrated) as archive:
        assert "no calibration" in archive.read("README.md").decode()
        assert "calibrated" not in archive.read("rdf.yaml").decode()


@pytest.mark.parametrize("machine_bf16", ["1", "0"])
def test_the_package_gives_its_test_output_whatever_the_machine_prefers(package, tmp_path,
                                                                        monkeypatch,
                                                                        machine_bf16):
    """Found by a review: the sampler ran at predict()'s "auto" precision, bfloat16 on a CPU
    fast at it (as where the package was written), so a consumer computing in float32
    missed the test output (half the pixels off by more than bioimage.io's 1e-3). The
    precision, tile size and augmentation are fixed and written into the description."""
    from napari_cvdm import precision
    from napari_cvdm.bioimageio_model import REPRODUCIBLE, CVDMSampler

    monkeypatch.setenv(precision.BF16_ENV, machine_bf16)
    _, path = package
    weights = spec.load_description(path).weights.pytorch_state_dict
    assert {k: weights.architecture.kwargs[k] for k in REPRODUCIBLE} == REPRODUCIBLE
    with zipfile.ZipFile(path) as archive:
        archive.extractall(tmp_path)
    network = CVDMSampler(**weights.architecture.kwargs)
    network.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    out = network(torch.from_numpy(np.load(tmp_path / "test_input.npy"))).numpy()
    np.testing.assert_allclose(out, np.load(tmp_path / "test_output.npy"), rtol=1e-5,
                               atol=1e-5)


def test_a_model_trained_in_memory_exports(tmp_path, nuclei_truth):
    """train() returns a model whose PSF widths are a tuple (a list once in a file): its
    package was refused as damaged."""
    from napari_cvdm.degradation import Degradation
    from napari_cvdm.training import TrainingSettings, train

    settings = TrainingSettings(preset="tiny", steps=2, batch_size=2, patch_size=32,
                                validation_every=2, precision="fp32", psf_conditioned=True)
    model = train(output=tmp_path / "t.cvdm.safetensors",
                  hq=[nuclei_truth[:128, :128], nuclei_truth[128:256, :128]],
                  settings=settings, device="cpu", degradation=Degradation(psf_sigma=(1.0, 3.0)))
    assert isinstance(model.metadata["training"]["data"]["degradation"]["psf_sigma"], tuple)
    assert export_bioimageio(model, tmp_path / "trained.zip", FAST).is_file()


def test_load_model_reads_a_package_without_unpickling(package):
    model, path = package
    loaded = nc.load_model(path)
    assert loaded.config == model.config
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_a_damaged_or_doubled_attachment_names_the_package(package, tmp_path):
    """Found by a review: a damaged attachment's error named its temporary copy, and a zip
    of two model files was said to hold none."""
    import zipfile

    from napari_cvdm.cli import main

    _, path = package
    damaged, doubled = tmp_path / "damaged.zip", tmp_path / "doubled.zip"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(damaged, "w") as a, \
            zipfile.ZipFile(doubled, "w") as b:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith(".cvdm.safetensors"):
                a.writestr(item.filename, data[: len(data) // 2])
                b.writestr("second.cvdm.safetensors", data)
            else:
                a.writestr(item, data)
            b.writestr(item, data)
    with pytest.raises(ValueError) as caught:
        nc.load_model(damaged)
    assert f"{damaged} (its model attachment)" in str(caught.value)
    assert "cvdm-package-" not in str(caught.value)
    assert main(["info", str(damaged)]) == 2
    with pytest.raises(ValueError, match="holds 2 .cvdm.safetensors attachments"):
        nc.load_model(doubled)


def test_export_refuses_an_existing_file_and_a_wrong_name(package, tmp_path):
    model, path = package
    with pytest.raises(ValueError, match="exists"):
        export_bioimageio(model, path, FAST)
    with pytest.raises(ValueError, match=".zip"):
        export_bioimageio(model, tmp_path / "model.tar", FAST)


def test_cvdm_export_writes_a_valid_package(tmp_path, capsys):
    from napari_cvdm.cli import main

    model = nc.CVDM(nc.CVDMConfig.preset("tiny"))
    source = nc.save_model(model, tmp_path / "mine.cvdm.safetensors")
    out = tmp_path / "mine.zip"
    assert main(["export", str(source), "--bioimageio", str(out), "--samples", "2",
                 "--steps", "2"]) == 0
    assert isinstance(spec.load_description(out), spec.ModelDescr)
    assert main(["export", str(source), "--bioimageio", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


def test_a_model_name_never_leads_the_export_outside_its_folder(tmp_path):
    """Found by an audit: the name in a model file's header became a path, so a name like
    '../../victim' overwrote another model and the export then failed with StopIteration."""
    victim = nc.save_model(nc.CVDM(nc.CVDMConfig.preset("tiny")),
                           tmp_path / "victim.cvdm.safetensors")
    before = victim.read_bytes()
    for name in ("../" * 12 + str(tmp_path / "victim").lstrip("/"), "sub/dir", "..", ""):
        model = nc.CVDM(nc.CVDMConfig.preset("tiny"), metadata={"name": name})
        out = export_bioimageio(model, tmp_path / "p.zip", FAST, overwrite=True)
        with zipfile.ZipFile(out) as archive:
            attached = [n for n in archive.namelist() if n.endswith(".cvdm.safetensors")]
        assert len(attached) == 1 and "/" not in attached[0] and ".." not in attached[0]
    assert victim.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.zip", "victim.cvdm.safetensors"]


def test_export_checks_its_output_before_any_work(tmp_path):
    model = nc.CVDM(nc.CVDMConfig.preset("tiny"))
    (tmp_path / "dir.zip").mkdir()
    (tmp_path / "file").write_text("x")
    for output, message in ((tmp_path / "dir.zip", "folder"),
                            (tmp_path / "file" / "x.zip", "file")):
        with pytest.raises(ValueError, match=message):
            export_bioimageio(model, output, FAST, overwrite=True)


@pytest.mark.parametrize(("sampling", "message"), [
    ({"sample": 2}, "unknown sampling setting.*'sample'"),  # a typo: was a bare TypeError
    ({"seed": None}, "fixed seed"),  # drew a new seed on every call of the package
    ({"samples": 1}, "at least 2 samples"),  # no spread: the std channel says nothing
    ({"samples": 0}, "samples"),
])
def test_export_refuses_unusable_sampling_settings_before_any_work(tmp_path, monkeypatch,
                                                                   sampling, message):
    import napari_cvdm.model_files as model_files

    monkeypatch.setattr(model_files, "resolve_model", None)  # never reached
    with pytest.raises(ValueError, match=message):
        export_bioimageio("demo", tmp_path / "p.zip", sampling)
    assert list(tmp_path.iterdir()) == []


def test_a_licence_that_is_no_spdx_id_is_one_line_before_any_work(tmp_path, monkeypatch,
                                                                  capsys):
    """bioimage.io's own message (20 kB on one line, every licence it knows) came after
    the sampling; now one line before it."""
    from napari_cvdm.cli import main

    model = nc.CVDM(nc.CVDMConfig.preset("tiny"), metadata={"card": {"license": "CC BY 4.0"}})
    source = nc.save_model(model, tmp_path / "lic.cvdm.safetensors")
    import napari_cvdm.bioimageio_model as sampler_module

    monkeypatch.setattr(sampler_module, "CVDMSampler", None)  # the work: never reached
    assert main(["export", str(source), "--bioimageio", str(tmp_path / "p.zip")]) == 2
    err = capsys.readouterr().err
    assert "'CC BY 4.0' is not an SPDX" in err and len(err) < 400
    assert not (tmp_path / "p.zip").exists()


def test_overwrite_replaces_a_package_only(package, tmp_path):
    """--overwrite replaced any .zip (a user's archive of images, say)."""
    model, _ = package
    archive = tmp_path / "my_images.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cell.tif", b"data")
    before = archive.read_bytes()
    with pytest.raises(ValueError, match="not a bioimage.io package"):
        export_bioimageio(model, archive, FAST, overwrite=True)
    assert archive.read_bytes() == before
    out = export_bioimageio(model, tmp_path / "p.zip", FAST)
    assert export_bioimageio(model, out, FAST, overwrite=True) == out  # a package: replaced


def test_an_upper_case_zip_suffix_is_a_package_name(tmp_path):
    model = nc.CVDM(nc.CVDMConfig.preset("tiny"))
    assert export_bioimageio(model, tmp_path / "MODEL.ZIP", FAST).is_file()


def test_cvdm_info_shows_the_card_of_a_package(package, capsys):
    """Found by an audit: cvdm info called a package that load_model reads a pickle file."""
    from napari_cvdm.cli import main

    _, path = package
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tiny-test: x2 super-resolution") and f"package: {path}" in out
    assert "file: " not in out and "sha256: " in out


def test_a_package_whose_attachment_was_swapped_is_refused(package, tmp_path):
    """Found by a review: another model file put in a package under the attachment's name
    loaded without a word (bioimage.io's own check calls the package invalid)."""
    model, path = package
    other = nc.save_model(nc.CVDM(nc.CVDMConfig.preset("tiny")),
                          tmp_path / "other.cvdm.safetensors")
    swapped = tmp_path / "swapped.zip"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(swapped, "w") as dst:
        for name in src.namelist():
            data = other.read_bytes() if name.endswith(".cvdm.safetensors") else src.read(name)
            dst.writestr(name, data)
    with pytest.raises(ValueError, match="not the file the package's rdf.yaml describes"):
        nc.load_model(swapped)
    assert nc.load_model(path).config == model.config  # the package as written loads


def _rewritten(path, target, changes):
    """A copy of the package ``path`` as ``target`` with the members in ``changes``
    (name -> bytes, or a function writing the member itself) replaced."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            change = changes.get(name)
            if callable(change):
                change(dst, name)
            else:
                dst.writestr(name, src.read(name) if change is None else change)
    return target


def test_a_package_whose_network_weights_were_replaced_is_refused_unread(package, tmp_path):
    """Found by a review: only the napari-cvdm attachment was checked against rdf.yaml, so
    a package whose weights.pt (what bioimage.io consumers run) was replaced, by a pickle
    that runs code when loaded, got a clean `cvdm info`."""
    _, path = package
    ran = tmp_path / "ran"
    evil = _rewritten(path, tmp_path / "evil.zip",
                      {"weights.pt": f"import os; os.system('touch {ran}')".encode()})
    with pytest.raises(ValueError, match="its weights.pt is not the file the package's rdf"):
        nc.load_model(evil)
    assert not ran.exists()


def test_a_huge_description_in_a_small_package_is_refused_without_reading_it(package,
                                                                             tmp_path):
    """Found by a review: rdf.yaml was read whole; a 6 MB package declaring a 1 GiB
    description took 2.3 GB of memory to open."""
    import resource

    _, path = package

    def huge(dst, name):
        with dst.open(name, "w", force_zip64=True) as out:
            for _ in range(64):
                out.write(b" " * (1 << 24))

    bomb = _rewritten(path, tmp_path / "bomb.zip", {"rdf.yaml": huge})
    assert bomb.stat().st_size < 20 * 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match="its rdf.yaml is larger than 1 MiB"):
        nc.load_model(bomb)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 200 * 1024, grown_kib


def test_a_package_renamed_without_zip_is_named_as_a_package(package, tmp_path):
    """Found by a review: it was called a pickle-based PyTorch file to convert (which then
    failed in torch's words)."""
    _, path = package
    renamed = tmp_path / "downloaded_model"
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match="is a bioimage.io model package without its .zip"):
        nc.load_model(renamed)


def test_the_widget_reads_a_packages_scale_and_summary(package):
    """A package is a model the command line and predict() take: the widget's file dialog
    offers it, and the widget reads its scale and card line from the attachment."""
    from napari_cvdm.layers import model_scale, model_summary

    model, path = package
    assert model_scale(path) == model.config.scale
    assert "tiny-test" in model_summary(path)


def test_exact_cuda_turns_tf32_off_for_the_call_and_restores_it():
    from napari_cvdm.bioimageio_model import _exact_cuda

    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = True  # as a host process may have asked
    try:
        with _exact_cuda("cuda:0"):
            assert torch.backends.cudnn.allow_tf32 is False
            assert torch.backends.cuda.matmul.allow_tf32 is False
            assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.backends.cuda.matmul.allow_tf32 is True
        assert torch.backends.cudnn.allow_tf32 == before[0]
        with _exact_cuda("cpu"):  # nothing changes off CUDA
            assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before[1]


def test_a_package_starts_a_fine_tune_with_its_recorded_optics(package, tmp_path):
    """Found by a review: --init with a package took the default optics, silently (its
    header was read as a file of its own), and the training widget called it a pickle."""
    from napari_cvdm import checkpoints, training_layers
    from napari_cvdm.model_files import bundled_model_path, header_of

    model, _ = package
    training = header_of(bundled_model_path("widefield-x2"))["metadata"]["training"]
    recorded = nc.CVDM(model.config, metadata={**model.metadata, "training": training})
    recorded.load_state_dict(model.state_dict())
    zipped = export_bioimageio(recorded, tmp_path / "recorded.zip", FAST)
    plain = nc.save_model(recorded, tmp_path / "recorded.cvdm.safetensors")
    assert checkpoints.recorded_optics(init=str(zipped)) == \
        checkpoints.recorded_optics(init=str(plain))
    assert checkpoints.recorded_optics(init=str(zipped)) is not None
    config, text = training_layers.start_model(str(zipped), None)
    assert config == model.config and "fine-tune" in text
