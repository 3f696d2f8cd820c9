"""Throughput of a batch of files on dask.distributed, and a worker killed mid-batch (issue 16).

Files are 128 x 128 crops of the bundled sample (nuclei_widefield.tif), predicted with the
bundled model on the CPU, each worker one file at a time with one torch thread:

1. 1 worker x 1 thread, then 2 workers x 1 thread: files per second and the ratio (target:
   >= 1.7x on a 2-core machine). The clusters are started and the model loaded on every
   worker before the clock starts: what is timed is the batch itself.
2. 2 workers, one of them killed (SIGKILL) as soon as the first file is done (a worker
   with a file in hand): every output must still exist exactly once (dask runs the lost
   file again on the other worker, or on the one the nanny restarts).

Needs an otherwise idle machine: anything else running (training) shares the cores and the
ratio measures that instead.

    python benchmarks/cluster_throughput.py                        # 8 files, default settings
    python benchmarks/cluster_throughput.py --files 2 --samples 2 --steps 2   # a quick check
    python benchmarks/cluster_throughput.py --json docs/benchmarks/cluster_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path

import tifffile

from napari_cvdm.distributed import connect, run_batch, run_file
from napari_cvdm.file_prediction import FileTask, RunSpec
from napari_cvdm.model_cache import ModelRef, load_cached
from napari_cvdm.model_files import resolve_model
from napari_cvdm.settings import DEFAULT_MODEL, PredictSettings

KINDS = ("mean", "std", "var")


def make_inputs(folder: Path, count: int, size: int = 128) -> list[Path]:
    """``count`` crops of the bundled sample (256 x 256), on a grid with a half-crop step."""
    with resources.as_file(resources.files("napari_cvdm") / "sample_data"
                           / "nuclei_widefield.tif") as path:
        image = tifffile.imread(path)
    step = size // 2
    corners = [(y, x) for y in range(0, image.shape[0] - size + 1, step)
               for x in range(0, image.shape[1] - size + 1, step)]
    paths = []
    for i in range(count):
        y, x = corners[i % len(corners)]
        path = folder / f"crop{i:02d}.tif"
        tifffile.imwrite(path, image[y:y + size, x:x + size])
        paths.append(path)
    return paths


def tasks_for(inputs: list[Path], out: Path) -> list[FileTask]:
    return [FileTask(p, tuple(out / f"{p.stem}_cvdm_{k}.tif" for k in KINDS), seed=i)
            for i, p in enumerate(inputs)]


def run(workers: int, inputs: list[Path], out: Path, spec: RunSpec, kill: bool = False) -> dict:
    """One batch on a new LocalCluster of ``workers`` x 1 thread; seconds of the batch."""
    tasks = tasks_for(inputs, out)
    ref = spec.settings.model
    with connect(workers, 1) as client:
        client.wait_for_workers(workers)
        client.run(load_cached, ref)  # every worker loads the model before the clock starts
        pids = client.run(os.getpid)
        killed: list[int] = []

        def kill_one(outcome) -> None:  # a worker that is working on a file, if any
            if kill and not killed:
                busy = [w for w, keys in client.processing().items() if keys and w in pids]
                pid = pids[busy[0]] if busy else next(iter(pids.values()))
                killed.append(pid)
                threading.Thread(target=os.kill, args=(pid, signal.SIGKILL)).start()

        start = time.perf_counter()
        outcomes = run_batch(client, tasks, spec, progress=False, on_outcome=kill_one,
                             function=run_file)
        seconds = time.perf_counter() - start
    errors = [f"{o.task.input.name}: {o.error!r}" for o in outcomes if o.error is not None]
    names = sorted(p.name for p in out.iterdir())
    expected = sorted(p.name for t in tasks for p in t.outputs)
    return {"workers": workers, "threads_per_worker": 1, "files": len(tasks),
            "seconds": round(seconds, 2), "files_per_second": round(len(tasks) / seconds, 4),
            "errors": errors, "killed_pid": killed[0] if killed else None,
            "outcomes": len(outcomes),
            "every_output_once": names == expected and len(set(names)) == len(names)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="crop side in input pixels")
    parser.add_argument("--samples", type=int, default=None, help="default: the settings'")
    parser.add_argument("--steps", type=int, default=None, help="default: the settings'")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    options = {k: v for k, v in (("samples", args.samples), ("steps", args.steps)) if v}
    settings = PredictSettings(model=args.model, device="cpu", **options)
    _, summary = resolve_model(settings.model)
    spec = RunSpec(settings.replace(model=ModelRef.of(settings.model)), summary,
                   settings.steps, threads=1)
    results = {"cpus": os.cpu_count(), "load_average": os.getloadavg(),
               "settings": {"samples": settings.samples, "steps": settings.steps,
                            "size": args.size, "model": str(args.model)}}
    with tempfile.TemporaryDirectory(prefix="cvdm-cluster-") as folder:
        folder = Path(folder)
        (folder / "in").mkdir()
        inputs = make_inputs(folder / "in", args.files, args.size)
        for name, workers, kill in (("one_worker", 1, False), ("two_workers", 2, False),
                                    ("two_workers_one_killed", 2, True)):
            result = run(workers, inputs, folder / name, spec, kill)
            results[name] = result
            print(f"{name:24s} {result['seconds']:8.2f} s  {result['files_per_second']:.3f} "
                  f"files/s  every output once: {result['every_output_once']}  "
                  f"errors: {len(result['errors'])}", flush=True)
    ratio = results["two_workers"]["files_per_second"] / results["one_worker"]["files_per_second"]
    results["ratio_two_to_one"] = round(ratio, 3)
    print(f"2 workers / 1 worker: {ratio:.2f}x (target >= 1.7x on an idle 2-core machine); "
          f"load average before: {results['load_average'][0]:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    killed = results["two_workers_one_killed"]
    ok = killed["every_output_once"] and not killed["errors"] and killed["killed_pid"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
