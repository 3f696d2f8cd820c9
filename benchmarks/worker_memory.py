"""What one local dask worker holds before and after its first image (distributed.WORKER_BYTES).

Starts a local cluster of one worker through ``napari_cvdm.distributed.connect`` (as
``cvdm predict --workers`` does) and reads the worker process's resident memory: idle, then
after it loaded the bundled model and predicted a 128 x 128 crop of the bundled sample
(8 samples, 4 steps, the CPU). Also the resident memory of this process with the model
loaded, as the one-process command line holds it.

    python benchmarks/worker_memory.py [--json docs/benchmarks/worker_memory.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _after_one_image() -> float:
    import napari_cvdm as nc
    from napari_cvdm._sample_data import nuclei

    image = nuclei()[0][0][:128, :128]
    nc.predict(image, nc.load_model("widefield-x2"), samples=8, steps=4, seed=0, device="cpu")
    return _rss_mib()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    import napari_cvdm as nc
    from napari_cvdm.distributed import WORKER_BYTES, connect

    with connect(workers=1) as client:
        (idle,) = client.run(_rss_mib).values()
        (loaded,) = client.run(_after_one_image).values()
    nc.load_model("widefield-x2")
    here = _rss_mib()
    result = {"worker_idle_mib": round(idle), "worker_after_one_image_mib": round(loaded),
              "one_process_with_model_mib": round(here),
              "WORKER_BYTES_mib": WORKER_BYTES // 2**20}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
