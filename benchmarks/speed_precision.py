"""float32 against bfloat16, and the worker-thread path, measured as ratios (issue 11).

Every part ALTERNATES its configurations inside one process (A, B, A, B, ...) and reports
the best time of each and their ratio: on a CPU shared with another job, absolute times
drift by 2x from one minute to the next, but ratios of interleaved runs stay comparable.
Re-measure absolute numbers on an idle machine.

    python benchmarks/speed_precision.py network      # denoiser alone + conv peak, FLOP/s
    python benchmarks/speed_precision.py predict --sizes 256 512 1024
    python benchmarks/speed_precision.py train        # one `small` training step
    python benchmarks/speed_precision.py thread       # main thread / new thread / compute thread
    python benchmarks/speed_precision.py reference    # paper preset against casus/cvdm
    python benchmarks/speed_precision.py all --json docs/benchmarks/speed_precision.json

Use `nice -n 5 env OMP_NUM_THREADS=2 ...` on the shared development machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import napari_cvdm as nc
from napari_cvdm.devices import compute_thread_call
from napari_cvdm.precision import Precision, low_precision_denoise

FP32, BF16 = Precision("fp32", "cpu"), Precision("bf16", "cpu")
# casus/cvdm (TensorFlow 2.15.1, BioSR configuration) on this machine type, issue 11.
REFERENCE = {"denoiser_s": 2.44, "step_s": 3.105, "steps": 200, "samples": 20}


def alternate(fns: dict, reps: int) -> dict[str, float]:
    """Best wall time of each function, the functions run in turn ``reps`` times."""
    for fn in fns.values():  # warm-up: oneDNN primitives, the bfloat16 copy
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def _net(preset: str):
    torch.manual_seed(0)
    net = nc.load_model("demo") if preset == "demo" else nc.CVDM(nc.CVDMConfig.preset(preset))
    return net.eval().to(memory_format=torch.channels_last)


def _denoiser_call(net, side: int, batch: int):
    """fp32 / autocast / bf16-copy callables for one denoiser call, and its FLOPs."""
    z = torch.randn(batch, 1, side, side).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        prep = net.prepare(z)
    gamma = torch.full_like(z, 0.5)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        net.denoise(z, prep["inputs"], gamma)
    fast = low_precision_denoise(net, BF16)

    def fp32():
        with torch.inference_mode():
            net.denoise(z, prep["inputs"], gamma)

    def autocast():
        with torch.inference_mode(), BF16.autocast():
            net.denoise(z, prep["inputs"], gamma)

    def bf16():
        with torch.inference_mode():
            fast(z, prep["inputs"], gamma)

    return {"fp32": fp32, "autocast": autocast, "bf16": bf16}, fc.get_total_flops()


def conv_peak(reps: int) -> dict[str, float]:
    """GFLOP/s of a 3x3 conv 64 -> 64, 256^2, batch 4, channels-last (issue 11's probe)."""
    out = {}
    x = torch.randn(4, 64, 256, 256).contiguous(memory_format=torch.channels_last)
    fns = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(dtype).to(memory_format=torch.channels_last)
        xi = x.to(dtype)

        def call(conv=conv, xi=xi):
            with torch.inference_mode():
                conv(xi)
        fns[name] = call
    flops = 2 * 4 * 64 * 64 * 9 * 256 * 256
    for k, s in alternate(fns, reps).items():
        out[k] = flops / s / 1e9
    return out


def part_network(args) -> dict:
    net = _net(args.preset)
    rows = []
    for side, batch in ((256, 1), (512, 1)):
        fns, flops = _denoiser_call(net, side, batch)
        best = alternate(fns, args.reps)
        rows.append({"side": side, "batch": batch, "gflop": flops / 1e9, "seconds": best,
                     "gflops": {k: flops / s / 1e9 for k, s in best.items()},
                     "bf16/fp32": best["bf16"] / best["fp32"],
                     "autocast/fp32": best["autocast"] / best["fp32"]})
    peak = conv_peak(args.reps)
    for r in rows:
        r["of_bf16_peak"] = r["gflops"]["bf16"] / peak["bf16"]
    return {"part": "network", "preset": args.preset, "conv_peak_gflops": peak, "rows": rows}


def part_predict(args) -> dict:
    net = nc.load_model("demo")
    rows = []
    for size in args.sizes:
        img = np.random.default_rng(0).random((size, size)).astype(np.float32)
        samples, steps = (1, 1) if size > 256 else (args.samples, args.steps)
        fns = {p: (lambda p=p, img=img, samples=samples, steps=steps: nc.predict(
            img, net, samples=samples, steps=steps, seed=0, precision=p))
            for p in ("fp32", "bf16")}
        best = alternate(fns, 1 if size >= 1024 else args.reps)
        rows.append({"input": size, "samples": samples, "steps": steps, "seconds": best,
                     "bf16/fp32": best["bf16"] / best["fp32"]})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"part": "predict", "model": "demo", "rows": rows}


def part_train(args) -> dict:
    torch.manual_seed(0)
    net = nc.CVDM(nc.CVDMConfig.preset("small")).train()
    net = net.to(memory_format=torch.channels_last)
    x = torch.rand(8, 1, 128, 128).contiguous(memory_format=torch.channels_last)
    y = torch.rand(8, 1, 128, 128).contiguous(memory_format=torch.channels_last)

    def step(prec):
        net.zero_grad(set_to_none=True)
        terms = net.loss(x, y, generator=torch.Generator().manual_seed(0), precision=prec)
        terms["total"].backward()

    best = alternate({"fp32": lambda: step(FP32), "bf16": lambda: step(BF16)}, args.reps)
    return {"part": "train", "preset": "small", "batch": 8, "patch": 128, "seconds": best,
            "bf16/fp32": best["bf16"] / best["fp32"],
            "steps_per_s_gain": best["fp32"] / best["bf16"]}


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def thread_worker(args) -> dict:
    """One process, one way of calling predict() (``--thread-mode``): best of 3 after a warm-up.

    main: on the main thread. compute: in the compute thread only (model loaded there too;
    the main thread runs no PyTorch: the widget's case). fresh-after-main: the main thread
    predicts once, then each call runs in a new threading.Thread (issue 11's measurement).
    """
    img = np.random.default_rng(0).random((args.thread_size,) * 2).astype(np.float32)
    state = {}

    def job():
        net = state.setdefault("net", nc.load_model("demo"))
        c, t = _cpu(), time.perf_counter()
        nc.predict(img, net, samples=args.samples, steps=args.steps, eta=0.0, seed=0,
                   precision=args.precision)
        return time.perf_counter() - t, _cpu() - c

    def fresh():
        out = []
        t = threading.Thread(target=lambda: out.append(job()))
        t.start()
        t.join()
        return out[0]

    mode = args.thread_mode
    call = {"main": job, "compute": lambda: compute_thread_call(job), "fresh-after-main": fresh}[mode]
    (job if mode == "fresh-after-main" else call)()  # warm-up
    runs = [call() for _ in range(3)]
    return {"mode": mode, "seconds": min(r[0] for r in runs), "cpu_seconds": min(r[1] for r in runs)}


def part_thread(args) -> dict:
    """The three ways of calling predict(), each in its own process, the processes alternated."""
    import subprocess

    modes = ("main", "compute", "fresh-after-main")
    best = {m: {"seconds": float("inf"), "cpu_seconds": float("inf")} for m in modes}
    for _ in range(args.reps):
        for mode in modes:
            cmd = [sys.executable, __file__, "thread-worker", "--thread-mode", mode,
                   "--thread-size", str(args.thread_size), "--samples", str(args.samples),
                   "--steps", str(args.steps), "--precision", args.precision]
            line = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            r = json.loads(line.strip().splitlines()[-1])
            for k in ("seconds", "cpu_seconds"):
                best[mode][k] = min(best[mode][k], r[k])
    return {"part": "thread", "input": args.thread_size, "samples": args.samples,
            "steps": args.steps, "precision": args.precision, "best": best,
            "compute/main": best["compute"]["seconds"] / best["main"]["seconds"],
            "fresh-after-main/main": best["fresh-after-main"]["seconds"] / best["main"]["seconds"]}


def part_reference(args) -> dict:
    """Paper preset: one sampling step at 256^2 (a denoiser call, batch 1), fp32 and bf16."""
    net = _net("paper")
    fns, flops = _denoiser_call(net, 256, 1)
    best = alternate({k: fns[k] for k in ("fp32", "bf16")}, args.reps)
    ref_total = REFERENCE["step_s"] * REFERENCE["steps"] * REFERENCE["samples"]
    rows = {}
    for k in (10, 25):
        evals = k * 8  # 8 samples: what the few-step curve calls equal quality (see docs)
        for p in ("fp32", "bf16"):
            total = evals * best[p]
            rows[f"K={k} {p}"] = {"seconds": total, "x_faster": ref_total / total}
    return {"part": "reference", "step_s": best, "gflop_per_step": flops / 1e9,
            "reference_step_s": REFERENCE["step_s"], "reference_total_s": ref_total,
            "finished_mean_std": rows, "bf16/fp32": best["bf16"] / best["fp32"]}


PARTS = {"network": part_network, "predict": part_predict, "train": part_train,
         "thread": part_thread, "reference": part_reference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="+", choices=[*PARTS, "all", "thread-worker"])
    parser.add_argument("--thread-mode", default="main", help=argparse.SUPPRESS)
    parser.add_argument("--preset", default="demo", help="network part: demo, small, paper")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--thread-size", type=int, default=128)
    parser.add_argument("--precision", default="fp32", help="thread part's precision")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.parts == ["thread-worker"]:
        print(json.dumps(thread_worker(args)))
        return
    parts = list(PARTS) if "all" in args.parts else args.parts
    out = []
    for name in parts:
        result = PARTS[name](args)
        result["torch_threads"] = torch.get_num_threads()
        out.append(result)
        print(json.dumps(result, indent=1), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())
