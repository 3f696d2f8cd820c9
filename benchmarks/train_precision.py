"""Training at float32 against bfloat16: step time (alternating, one process) and quality.

    python benchmarks/train_precision.py [--steps 600] [--timing-steps 6]

1. Step time of the ``small`` preset (batch 8, 64 x 64 patches): float32 in channels-last
   layout (the float32 default) against bfloat16 in NCHW (the bfloat16 default) and in
   channels-last, alternating step by step in one process so that a shared CPU affects
   every configuration alike; the ratio is the figure to read.
2. Two ``tiny`` runs of ``--steps`` steps on the bundled nuclei image, same seed and data,
   float32 and bfloat16: their last validation PSNR (one 10-step sample, as train() logs it).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_cvdm.model import CVDM, CVDMConfig
from napari_cvdm.precision import Precision, cpu_bf16_supported
from napari_cvdm.sample_data import path as sample_path
from napari_cvdm.training import TrainingSettings, train


def step_times(steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    base = CVDM(CVDMConfig.preset("small"))
    configs = {"fp32 channels-last": ("fp32", True), "bf16 NCHW": ("bf16", False),
               "bf16 channels-last": ("bf16", True)}
    runs = {}
    for name, (precision, nhwc) in configs.items():
        model = copy.deepcopy(base)
        if nhwc:
            model = model.to(memory_format=torch.channels_last)
        runs[name] = (model, torch.optim.Adam(model.parameters(), 2e-4),
                      Precision(precision, "cpu"), nhwc)
    y = torch.randn(8, 1, 64, 64)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(steps + 1):
        for name, (model, opt, precision, nhwc) in runs.items():
            x = torch.randn(8, 1, 64, 64)
            if nhwc:
                x = x.contiguous(memory_format=torch.channels_last)
            started = time.perf_counter()
            loss = model.loss(x, y, precision=precision)["total"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i:  # the first step of each warms up oneDNN
                times[name].append(time.perf_counter() - started)
    return {k: float(np.median(v)) for k, v in times.items()}


def quality(steps: int) -> dict[str, float]:
    truth = tifffile.imread(sample_path("nuclei_groundtruth.tif"))
    images = [truth[:256, :256], truth[256:, :256], truth[:256, 256:], truth[256:, 256:],
              truth[128:384, 128:384]]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            settings = TrainingSettings(preset="tiny", steps=steps, batch_size=8, patch_size=64,
                                        validation_every=steps, checkpoint_every=steps,
                                        precision=precision, seed=0)
            model = train(output=Path(tmp) / f"{precision}.cvdm.safetensors", hq=images,
                          settings=settings, device="cpu")
            last = model.metadata["training"]["history"][-1]
            out[precision] = {"psnr": last["psnr"], "bicubic_psnr": last["bicubic_psnr"],
                              "seconds": last["seconds"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--timing-steps", type=int, default=6)
    args = parser.parse_args()
    if not cpu_bf16_supported():
        raise SystemExit("this CPU has no bfloat16: nothing to compare")
    times = step_times(args.timing_steps)
    print(json.dumps({"seconds per step (median)": times,
                      "fp32 / bf16 NCHW": times["fp32 channels-last"] / times["bf16 NCHW"]},
                     indent=1), flush=True)
    print(json.dumps({"600-step tiny run": quality(args.steps)}, indent=1))


if __name__ == "__main__":
    main()
