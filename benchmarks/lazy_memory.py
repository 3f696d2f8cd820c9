"""Peak memory of a lazy prediction streamed to OME-Zarr, against the image size (issue 16).

Each size runs in its own process (peak RSS is per process): a dask image of N x N (a
smooth random texture, uint16, 512-pixel chunks) is predicted lazily and written chunk by
chunk with ``write_ome_zarr``; the process's peak RSS (``ru_maxrss``) is printed, with the
peak of the same process after importing and loading the model (the baseline).

    python benchmarks/lazy_memory.py --sizes 1024 4096 --model tiny --json out.json

``--model tiny`` (default) is an untrained tiny-preset model with samples=1, steps=1: the
memory question is about the streaming, not the network, and keeps a 4096² run within
minutes on a 2-core CPU; pass a bundled name or file to measure a real model.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(size: int, model_name: str, samples: int, steps: int) -> dict:
    import dask.array as da
    import numpy as np
    import torch

    import napari_cvdm as nc
    from napari_cvdm.zarr_files import write_ome_zarr

    if model_name == "tiny":
        torch.manual_seed(0)
        model = nc.CVDM(nc.CVDMConfig.preset("tiny")).eval()
    else:
        model = model_name
    rng = da.random.default_rng(0)
    image = (rng.random((size, size), chunks=512) * 1000).astype(np.uint16)
    nc.predict(np.zeros((32, 32), np.uint16) + np.arange(32, dtype=np.uint16), model,
               samples=samples, steps=steps, seed=0)  # warm up: model, copies, allocator
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    result = nc.predict(image, model, samples=samples, steps=steps, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        write_ome_zarr(Path(folder) / "out.ome.zarr", result.mean, result.std, scale=2)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"size": size, "output": size * result.scale, "peak_rss_mib": round(peak, 1),
            "baseline_rss_mib": round(baseline, 1), "seconds": round(seconds, 1),
            "tiles": result.info["tiles"], "model": model_name, "samples": samples,
            "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.model, args.samples, args.steps)))
        return
    rows = []
    for size in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(size), "--model",
                              args.model, "--samples", str(args.samples), "--steps",
                              str(args.steps)], check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    if len(rows) > 1:
        ratio = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
        print(f"peak RSS {rows[-1]['size']}² / {rows[0]['size']}²: {ratio:.3f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
