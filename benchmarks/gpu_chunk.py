"""Seconds per output chunk on a GPU (or the CPU): the per-chunk cost in docs/scaling.md.

A 512 x 512 input chunk (1024 x 1024 output with the x2 model) of the bundled sample,
tiled by reflection, predicted with the default settings after one warm-up call; also the
lazy path (a dask image streamed to OME-Zarr) where dask is installed.

    python benchmarks/gpu_chunk.py [--device cuda] [--size 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import napari_cvdm as nc


def sample(size: int) -> np.ndarray:
    from importlib import resources

    import tifffile

    with resources.as_file(resources.files("napari_cvdm") / "sample_data"
                           / "nuclei_widefield.tif") as path:
        image = tifffile.imread(path)
    reps = -(-size // image.shape[0])
    return np.pad(image, ((0, image.shape[0] * (reps - 1)),) * 2, mode="reflect")[:size, :size]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="auto")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", default="auto")
    args = p.parse_args()
    image = sample(args.size)
    nc.predict(image[:128, :128], device=args.device, precision=args.precision, seed=0)
    times = []
    for i in range(args.repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        res = nc.predict(image, device=args.device, precision=args.precision, seed=i)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    row = {"device": res.device, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available()
           else None, "torch": torch.__version__, "input": args.size, "output": args.size * 2,
           "samples": res.samples, "steps": res.steps, "precision": res.info["precision"],
           "tiles": res.info["tiles"], "seconds": [round(t, 3) for t in times],
           "best_s": round(min(times), 3), "finite": bool(np.isfinite(res.mean).all()
                                                        and np.isfinite(res.std).all())}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
