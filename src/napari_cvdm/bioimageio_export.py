"""Export a model as a bioimage.io model package (zip), and find our model inside one.

The package holds the weights as a PyTorch state dict of
:class:`napari_cvdm.bioimageio_model.CVDMSampler` (architecture imported from this
library), a test input and output, a cover image, a model card (README.md) and the original
``.cvdm.safetensors`` file as an attachment, which :func:`model_file_in_package` finds so
that napari-cvdm loads a package without unpickling anything. Needs the ``export`` extra.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .model_card import CARD_FIELDS, card_of
from .model_header import MODEL_SUFFIX

TEST_SIZE = 64
SAMPLING = {"samples": 8, "steps": 10, "eta": 0.0, "seed": 0}


def _png(path: Path, image: np.ndarray) -> None:
    """A grayscale 8-bit PNG (no imaging library needed)."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    pixels = np.clip((image - lo) / max(hi - lo, 1e-12) * 255, 0, 255).astype(np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", pixels.shape[1], pixels.shape[0], 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def _test_image(size: int) -> np.ndarray:
    from .sample_data import path as sample_path
    from .image_files import read_tiff

    data = read_tiff(sample_path()).data.astype(np.float32)
    return np.ascontiguousarray(data[..., :size, :size])


def std_description(metadata: dict[str, Any] | None) -> str:
    """What the package's channel 1 is, for its description and README."""
    if (metadata or {}).get("calibration") is not None:
        return ("the calibrated standard deviation: the samples' spread mapped to the "
                "expected error of the mean, fitted on held-out images")
    return "the samples' standard deviation (this model has no calibration)"


def _readme(name: str, card: dict[str, str], config, sampling: dict[str, Any],
            metadata: dict[str, Any] | None, version: str) -> str:
    lines = [f"# {name}", "", card["description"], "",
             "## What one forward pass computes", "",
             f"The network runs the whole CVDM reverse diffusion: {sampling['samples']} "
             f"samples, each with {sampling['steps']} DDIM steps (eta {sampling['eta']}, "
             f"seed {sampling['seed']}), from the input resampled onto a grid "
             f"{config.scale} times finer; it returns their per-pixel mean (channel 0) and "
             f"{std_description(metadata)} (channel 1), in the input's intensity units, as "
             "napari-cvdm gives them with these settings. Normalisation (percentiles) is "
             "done inside. For other sample counts or steps, use "
             f"napari-cvdm itself (`pip install 'napari-cvdm>={version}'`; `cvdm predict "
             "--model this.zip`). The network is imported from napari-cvdm: this package "
             f"needs napari-cvdm {version} or newer (environment.yaml).", ""]
    for key in CARD_FIELDS:
        lines += [f"## {key.replace('_', ' ').capitalize()}", "", card[key], ""]
    lines += ["## Validation", "", "Measured quality of napari-cvdm models (PSNR, SSIM and "
              "the calibration of the uncertainty against held-out ground truth) is in the "
              "training history of the attached .cvdm.safetensors file (`cvdm info "
              "MODEL`) and in napari-cvdm's docs/benchmarks.md.", ""]
    return "\n".join(lines)


def environment(version: str) -> str:
    """The package's conda environment (its ``dependencies``): the architecture and its
    sampling are imported from napari-cvdm, so the package needs napari-cvdm, at least the
    version that wrote it (older versions may not know the sampler's arguments)."""
    return "\n".join([
        "name: napari-cvdm", "channels:", "  - conda-forge", "  - nodefaults",
        "dependencies:", "  - python>=3.11", "  - pytorch>=2.1", "  - pip", "  - pip:",
        f"      - napari-cvdm>={version}", ""])


def attachment_stem(name: str) -> str:
    """A plain file name for the package's copy of the model, from the model's name (which
    comes from the file and may hold anything, '../' or '/' included)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:100].strip(".-")
    return stem or "model"


def export_bioimageio(model, output: str | os.PathLike, sampling: dict[str, Any] | None = None,
                      overwrite: bool = False) -> Path:
    """Write ``model`` (a name, path or CVDM) as a bioimage.io package zip at ``output``."""
    import tifffile
    import torch

    from . import __version__
    from .atomic import atomic_write
    from .bioimageio_model import CVDMSampler, prediction_metadata
    from .model_files import resolve_model, save_model
    from .tiff_writer import check_outputs

    output = Path(output)
    if output.suffix.lower() != ".zip":
        raise ValueError(f"the package name must end with .zip, not {output.name!r}")
    sampling = _checked_sampling(sampling)
    check_outputs([output], overwrite=overwrite)  # before any work: folder, name, existing
    if output.is_file() and not _is_package(output):
        raise ValueError(f"{output} exists and is not a bioimage.io package (no rdf.yaml); "
                         "--overwrite replaces only a package: give a new file name")
    net, info = resolve_model(model)
    if net.config.channels != 1:
        raise ValueError("only single-channel models can be exported")
    card = card_of(net.metadata)
    spec = _spec_module()
    spec.check_license(card["license"])  # before the sampling and packaging
    with tempfile.TemporaryDirectory(prefix="cvdm-export-") as tmp:
        folder = Path(tmp)
        wrapper = CVDMSampler(net.config.to_dict(), **sampling,
                              metadata=prediction_metadata(net.metadata))
        wrapper.model.load_state_dict(net.state_dict())
        torch.save(wrapper.state_dict(), folder / "weights.pt")
        name = str(info["name"] or "model")
        save_model(net, folder / f"{attachment_stem(name)}{MODEL_SUFFIX}")
        test_input = _test_image(TEST_SIZE)[None, None]
        test_output = wrapper(torch.from_numpy(test_input)).numpy()
        np.save(folder / "test_input.npy", test_input)
        np.save(folder / "test_output.npy", test_output)
        tifffile.imwrite(folder / "sample_input.tif", test_input[0, 0])
        tifffile.imwrite(folder / "sample_output.tif", test_output[0])
        upsampled = np.kron(test_input[0, 0], np.ones((net.config.scale,) * 2))
        _png(folder / "cover.png", np.concatenate([upsampled, test_output[0, 0]], axis=1))
        (folder / "README.md").write_text(_readme(name, card, net.config, sampling,
                                                  wrapper.model.metadata, __version__))
        (folder / "environment.yaml").write_text(environment(__version__))
        descr = spec.describe(folder, name, card, net.config, sampling, __version__,
                              torch.__version__, wrapper.model.metadata)
        with atomic_write(output) as part:
            spec.save(descr, part)
    return output


def _is_package(path: Path) -> bool:
    """Whether ``path`` is a bioimage.io package: a zip with a description at its top."""
    try:
        with zipfile.ZipFile(path) as archive:
            return bool({"rdf.yaml", "bioimageio.yaml"} & set(archive.namelist()))
    except (zipfile.BadZipFile, OSError):
        return False


def _checked_sampling(sampling: dict[str, Any] | None) -> dict[str, Any]:
    """The package's sampling settings: SAMPLING with ``sampling``'s values, each checked
    as predict() checks it; a fixed seed (the package's test output must be repeatable)."""
    from .settings import PredictSettings

    sampling = {**SAMPLING, **(sampling or {})}
    unknown = sorted(set(sampling) - set(SAMPLING))
    if unknown:
        raise ValueError(f"unknown sampling setting(s) {', '.join(map(repr, unknown))}; the "
                         f"package's settings are {', '.join(SAMPLING)}")
    if sampling["seed"] is None:
        raise ValueError("the package needs a fixed seed (its test output must be repeatable)")
    if isinstance(sampling["samples"], int) and sampling["samples"] < 2:
        raise ValueError("the package needs at least 2 samples: one has no spread, so its "
                         "std channel would say nothing")
    PredictSettings(**sampling)  # the limits and types predict() would refuse
    return sampling


def _spec_module():
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError:
        raise ValueError("exporting to bioimage.io needs bioimageio.spec: pip install "
                         "'napari-cvdm[export]'") from None
    from . import bioimageio_spec

    return bioimageio_spec


def model_file_in_package(package: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Extract the ``.cvdm.safetensors`` attachment of a package into ``folder``."""
    package = Path(package)
    try:
        with zipfile.ZipFile(package) as archive:
            members = [m for m in archive.infolist() if m.filename.endswith(MODEL_SUFFIX)
                       and "/" not in m.filename and not m.is_dir()]
            if len(members) != 1:
                held = "no" if not members else f"{len(members)}"
                raise ValueError(f"{package} is a zip file but not a napari-cvdm model "
                                 f"package (it holds {held} .cvdm.safetensors attachments, "
                                 "not one)")
            if members[0].file_size > 4 * 2**30:
                raise ValueError(f"{package}: the model attachment is too large")
            recorded = _recorded_sha256s(package, archive)
            target = Path(folder) / members[0].filename
            with archive.open(members[0]) as src, open(target, "wb") as dst:
                name = members[0].filename
                found = {name: _streamed_sha256(src, dst)}
            # the other files it describes: weights.pt is what bioimage.io consumers run
            for other in recorded.keys() - {name}:
                found[other] = _member_sha256(archive, other)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"{package} could not be read as a model package ({exc})") from None
    altered = sorted(n for n, sha in found.items()
                     if sha is not None and n in recorded and sha != recorded[n])
    if altered:
        what = (f"its model attachment {name}" if altered == [name]
                else f"its {', '.join(altered)}")
        raise ValueError(f"{package}: {what} is not the file the package's rdf.yaml "
                         "describes (another sha256): the package was altered or damaged; "
                         "export it again, or use the .cvdm.safetensors file it was made "
                         "from")
    return target


MAX_RDF_BYTES = 1 << 20  # a model description is a few kB


def _member_sha256(archive: zipfile.ZipFile, name: str) -> str | None:
    """The sha256 of the package member ``name`` (streamed), or None where it is absent
    (a description may name files elsewhere)."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        return None
    if info.file_size > 4 * 2**30:
        raise ValueError(f"{name} in the package is too large ({info.file_size} bytes)")
    with archive.open(info) as src:
        return _streamed_sha256(src)


def _streamed_sha256(src, dst=None) -> str:
    """The sha256 of what ``src`` holds, read in blocks (and written to ``dst``, if given)."""
    digest = hashlib.sha256()
    while block := src.read(1 << 20):
        digest.update(block)
        if dst is not None:
            dst.write(block)
    return digest.hexdigest()


def _recorded_sha256s(package: Path, archive: zipfile.ZipFile) -> dict[str, str]:
    """The sha256 the package's rdf.yaml records for each file it names ({} where it has
    no readable rdf.yaml: the attachment's own checks decide). Read as text, at most
    MAX_RDF_BYTES (a small zip can declare gigabytes): the description is written as
    ``source: NAME`` followed by ``sha256: HEX``."""
    try:
        with archive.open("rdf.yaml") as src:
            raw = src.read(MAX_RDF_BYTES + 1)
    except (KeyError, zipfile.BadZipFile, OSError, EOFError):
        return {}
    if len(raw) > MAX_RDF_BYTES:
        raise ValueError(f"{package}: its rdf.yaml is larger than {MAX_RDF_BYTES // 2**20} MiB,"
                         " far beyond a model description: the package is damaged or not "
                         "a napari-cvdm model package")
    text = raw.decode("utf-8", "replace")
    pattern = r"source:\s*['\"]?([^'\"\s]+)['\"]?\s*\n\s*sha256:\s*['\"]?([0-9a-fA-F]{64})"
    return {name: sha.lower() for name, sha in re.findall(pattern, text)}
