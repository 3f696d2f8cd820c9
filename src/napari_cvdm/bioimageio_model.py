"""The network a bioimage.io consumer builds from an exported package: CVDM sampling in one call.

A bioimage.io consumer (deepImageJ, bioimageio.core, ilastik) runs one forward pass. For
CVDM that pass is the whole reverse diffusion: :class:`CVDMSampler` draws ``samples``
reconstructions with ``steps`` DDIM steps (``eta``, fixed ``seed``) through
:func:`napari_cvdm.predict` and returns their per-pixel mean and standard deviation as two
channels, in the input's intensity units, ``scale`` times finer in Y and X (the std
calibrated where the model has a calibration, as napari-cvdm returns it). ``metadata``
holds what ``predict`` reads from a model file besides the weights (the uncertainty's
calibration, the normalisation, a conditioned model's PSF widths), so that the package gives
what napari-cvdm gives with the same settings.

Everything else that shapes the numbers is fixed here, not left to ``predict``'s defaults or
to the machine, so that a package gives its test output wherever it runs: float32 arithmetic
(``precision="auto"`` picks bfloat16 on CPUs fast at it, float16 on older GPUs, which a
consumer's machine may not; on CUDA, TF32 convolutions and cuDNN's autotuned algorithms are
turned off during the call), a fixed tile size (the automatic one follows free memory) and
the samples on the input's flips and rotations. The export writes them into the package's
description, so a later napari-cvdm whose defaults change runs an older package as written.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import numpy as np
import torch
from torch import nn

from .model.config import CVDMConfig
from .model.cvdm import CVDM


#: What the sampler fixes beyond the sampling settings (see the module's docstring).
REPRODUCIBLE = {"precision": "fp32", "tile_size": 256, "augment": True}


class CVDMSampler(nn.Module):
    """``forward(x)``: x (batch, 1, Y, X) -> (batch, 2, scale*Y, scale*X): mean, std."""

    def __init__(self, config: dict[str, Any], samples: int = 8, steps: int = 10,
                 eta: float = 0.0, seed: int = 0, metadata: dict[str, Any] | None = None,
                 precision: str = REPRODUCIBLE["precision"],
                 tile_size: int = REPRODUCIBLE["tile_size"],
                 augment: bool = REPRODUCIBLE["augment"]):
        from .model_header import check_metadata

        super().__init__()
        self.model = CVDM(CVDMConfig.from_dict(config))
        metadata = dict(metadata or {})
        check_metadata(metadata, "the package's model metadata")
        self.model.metadata = metadata
        self.samples, self.steps, self.eta, self.seed = samples, steps, eta, seed
        self.precision, self.tile_size, self.augment = precision, tile_size, augment

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .inference import predict

        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"expected (batch, 1, Y, X), not {tuple(x.shape)}")
        # where the caller's tensor is (cuda:1 stays cuda:1); devices predict() does not
        # run on (xpu, meta, ...) compute on the CPU
        device = str(x.device) if x.device.type in ("cuda", "mps") else "cpu"
        self.model.eval()
        outputs = []
        with _exact_cuda(device):
            for image in x[:, 0].detach().float().cpu().numpy():
                result = predict(image, self.model, samples=self.samples, steps=self.steps,
                                 eta=self.eta, seed=self.seed, device=device,
                                 sampler="ddim", precision=self.precision,
                                 tile_size=self.tile_size, augment=self.augment)
                outputs.append(np.stack([result.mean, result.std]))
        return torch.from_numpy(np.stack(outputs)).to(x.device)


@contextlib.contextmanager
def _exact_cuda(device: str):
    """On CUDA, for the duration of the call: no TF32 convolutions (10-bit mantissas, on by
    default in PyTorch) or matrix products (off by default, on where the host process asked
    for it), and no autotuned or nondeterministic cuDNN algorithms. Restored afterwards."""
    if not device.startswith("cuda"):
        yield
        return
    matmul = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=False,
                                        deterministic=True, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def prediction_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """What :func:`napari_cvdm.predict` reads from a model's metadata: its calibration,
    normalisation, default PSF width and trained PSF widths (JSON-ready, for the package's
    description)."""
    metadata = metadata or {}
    out = {key: metadata[key] for key in ("calibration", "normalization", "psf_sigma_default")
           if metadata.get(key) is not None}
    sigma = ((((metadata.get("training") or {}).get("data") or {}).get("degradation") or {})
             .get("psf_sigma"))
    if sigma is not None:
        out["training"] = {"data": {"degradation": {"psf_sigma": sigma}}}
    return json.loads(json.dumps(out))  # as a description holds it: tuples become lists
