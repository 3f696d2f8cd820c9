"""The bioimage.io description (rdf.yaml) of an exported CVDM package, via bioimageio.spec."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .model_card import CITATION, CITATION_URL

ARXIV_DOI = "10.48550/arXiv.2312.02246"


def describe(folder: Path, name: str, card: dict[str, str], config, sampling: dict[str, Any],
             version: str, torch_version: str, metadata: dict[str, Any] | None = None):
    """A validated ``ModelDescr`` for the files prepared in ``folder``; ``metadata``: what
    the sampler needs of the model's metadata (``bioimageio_model.prediction_metadata``)."""
    from .bioimageio_model import REPRODUCIBLE

    from bioimageio.spec.model.v0_5 import (ArchitectureFromLibraryDescr, Author, AxisId,
                                            BatchAxis, ChannelAxis, CiteEntry, Doi,
                                            FileDescr, Identifier, InputTensorDescr,
                                            IntervalOrRatioDataDescr, LicenseId, ModelDescr,
                                            OutputTensorDescr, ParameterizedSize,
                                            PytorchStateDictWeightsDescr, SizeReference,
                                            SpaceInputAxis, SpaceOutputAxis, TensorId,
                                            Version, WeightsDescr)

    stride = config.stride
    inputs = [InputTensorDescr(
        id=TensorId("raw"),
        description="a single-channel fluorescence image (any intensity range)",
        axes=[BatchAxis(), ChannelAxis(channel_names=[Identifier("raw")]),
              SpaceInputAxis(id=AxisId("y"), size=ParameterizedSize(min=stride, step=stride)),
              SpaceInputAxis(id=AxisId("x"), size=ParameterizedSize(min=stride, step=stride))],
        test_tensor=FileDescr(source=folder / "test_input.npy"),
        sample_tensor=FileDescr(source=folder / "sample_input.tif"),
        data=IntervalOrRatioDataDescr(type="float32"))]
    outputs = [OutputTensorDescr(
        id=TensorId("mean_std"),
        # (at most 128 characters; the README says more)
        description=f"mean of {sampling['samples']} CVDM samples (channel 0) and their "
                    f"{'calibrated ' if (metadata or {}).get('calibration') else ''}standard "
                    f"deviation (1), input units, {config.scale}x finer",
        axes=[BatchAxis(), ChannelAxis(channel_names=[Identifier("mean"), Identifier("std")]),
              SpaceOutputAxis(id=AxisId("y"), scale=1.0 / config.scale,
                              size=SizeReference(tensor_id=TensorId("raw"), axis_id=AxisId("y"))),
              SpaceOutputAxis(id=AxisId("x"), scale=1.0 / config.scale,
                              size=SizeReference(tensor_id=TensorId("raw"), axis_id=AxisId("x")))],
        test_tensor=FileDescr(source=folder / "test_output.npy"),
        sample_tensor=FileDescr(source=folder / "sample_output.tif"),
        data=IntervalOrRatioDataDescr(type="float32"))]
    architecture = ArchitectureFromLibraryDescr(
        callable=Identifier("CVDMSampler"), import_from="napari_cvdm.bioimageio_model",
        # the sampling and what the sampler fixes (bioimageio_model.REPRODUCIBLE, which
        # needs napari-cvdm 0.2 or newer: environment.yaml says so); metadata only where
        # there is some
        kwargs={"config": config.to_dict(), **sampling, **REPRODUCIBLE,
                **({"metadata": metadata} if metadata else {})})
    weights = WeightsDescr(pytorch_state_dict=PytorchStateDictWeightsDescr(
        source=folder / "weights.pt", architecture=architecture,
        pytorch_version=Version(torch_version.split("+")[0]),
        dependencies=FileDescr(source=folder / "environment.yaml")))
    attachment = next(folder.glob("*.cvdm.safetensors"))
    title = "CVDM " + re.sub(r"[^A-Za-z0-9_\- ()]", "-", name)[:100]
    return ModelDescr(
        name=title, description=card["description"][:1024],
        authors=[Author(name="napari-cvdm developers")],
        cite=[CiteEntry(text=CITATION, doi=Doi(ARXIV_DOI))],
        license=LicenseId(card["license"]) if card["license"] else LicenseId("BSD-3-Clause"),
        documentation=FileDescr(source=folder / "README.md"),
        covers=[FileDescr(source=folder / "cover.png")],
        inputs=inputs, outputs=outputs, weights=weights,
        attachments=[FileDescr(source=attachment)],
        tags=["super-resolution", "diffusion", "uncertainty", "fluorescence-light-microscopy",
              "2d", "pytorch", "napari-cvdm"],
        version=Version(version),
        config={"napari_cvdm": {"version": version, "sampling": sampling,
                                "citation_url": CITATION_URL}})


def check_license(license: str) -> None:
    """ValueError, in one line, for a model card's licence that is not an SPDX identifier
    (bioimage.io's own message lists every identifier it knows)."""
    from bioimageio.spec.model.v0_5 import LicenseId
    from pydantic import ValidationError

    if not license:
        return  # the description says BSD-3-Clause
    try:
        LicenseId(license)
    except (ValidationError, ValueError):
        raise ValueError(f"the model card's license {license!r} is not an SPDX licence "
                         "identifier (e.g. CC-BY-4.0, MIT, BSD-3-Clause; "
                         "https://spdx.org/licenses/)") from None


def save(descr, path: Path) -> None:
    """Write the package zip; refuse a description that does not validate."""
    from bioimageio.spec import save_bioimageio_package

    save_bioimageio_package(descr, output_path=path)



