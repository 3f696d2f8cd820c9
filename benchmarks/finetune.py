"""Fine-tuning on one real image (docs/napari.md walk-through, issue 14's target).

    python benchmarks/finetune.py ../shared/data/real-pairs --steps 300

Fine-tunes the bundled model for ``--steps`` steps on the SIM image of one real pair
(``jin2020_microtubules/hr.tif``, simulated widefield of PSF sigma 3.5 px, as the widget does
it) and reconstructs the real widefield image of the other (``biosr_microtubules/lr.tif``)
with the bundled and the fine-tuned model: PSNR of the mean against that pair's SIM image,
and the fine-tuning time. ``train()`` with arrays is the code path of ``train_on_layers``
and the training widget.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

import napari_cvdm as nc
from napari_cvdm.degradation import Degradation
from napari_cvdm.metrics import psnr
from napari_cvdm.normalization import Normalization
from napari_cvdm.resampling import upsample
from napari_cvdm.settings import DEFAULT_MODEL
from napari_cvdm.training import TrainSettings, train


def score(model, lr: np.ndarray, target: np.ndarray, seed: int) -> float:
    res = nc.predict(lr, model, samples=8, seed=seed)
    return psnr(Normalization.fit(lr).apply(res.mean), target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", type=Path)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train_hq = tifffile.imread(args.pairs / "jin2020_microtubules" / "hr.tif").astype(np.float32)
    lr = tifffile.imread(args.pairs / "biosr_microtubules" / "lr.tif").astype(np.float32)
    hr = tifffile.imread(args.pairs / "biosr_microtubules" / "hr.tif").astype(np.float32)
    target = Normalization.fit(hr).apply(hr)
    bicubic = upsample(torch.from_numpy(Normalization.fit(lr).apply(lr))[None, None], 2)[0, 0]
    results = {"bicubic": psnr(bicubic.numpy(), target),
               "bundled": score(DEFAULT_MODEL, lr, target, args.seed)}
    settings = TrainSettings(init=DEFAULT_MODEL, steps=args.steps, batch_size=8, patch_size=64,
                             validation_every=args.steps, checkpoint_every=args.steps,
                             seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        tuned = train(output=Path(tmp) / "tuned.cvdm.safetensors", hq=[train_hq],
                      degradation=Degradation(psf_sigma=3.5), settings=settings, device="cpu")
        results["fine-tune seconds"] = time.perf_counter() - started
        results["precision"] = tuned.metadata["training"]["precision"]
        results["fine-tuned"] = score(tuned, lr, target, args.seed)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
