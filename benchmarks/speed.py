"""Speed and memory benchmark of predict() (issue 7).

Every configuration runs in a fresh Python process, so that peak memory (VmHWM from
/proc/self/status, or ru_maxrss; plus torch.cuda.max_memory_allocated on CUDA) belongs to
that configuration alone. Models have random weights: speed does not depend on them.

What is measured, per preset:
- network: FLOPs of one denoiser call (torch.utils.flop_counter) at the tile shape predict
  uses, the time of that call, hence the achieved FLOP/s, next to the FLOP/s of a large
  3x3 convolution (64 -> 64 channels, batch 4, 256 x 256) timed in the same process;
- predict: one axis at a time around a default (input size, samples, steps): seconds,
  whole-image denoiser evaluations per second (samples x steps / s), megapixels of
  finished reconstruction per second, network megapixels per second (tile pixels the
  network processed, overlaps included), end-to-end FLOP/s, peak memory.
Nothing is extrapolated: every number in the table was measured.

    python benchmarks/speed.py --quick                     # < 1 min, a table to diff
    OMP_NUM_THREADS=1 python benchmarks/speed.py --threads 1 --json docs/benchmarks/speed_1t.json \
        --plot docs/images/speed_vs_pixels.png
    python benchmarks/speed.py --memory                    # peak memory, 512^2 and 4096^2 inputs

The `paper` preset (137 M parameters) runs only at small sizes on a CPU (see --paper-max).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DEFAULTS = {"small": dict(size=128, samples=2, steps=10),
            "paper": dict(size=64, samples=1, steps=2)}


# -- measurements inside the worker process ----------------------------------------------
def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _cpu_seconds() -> float:
    """User + system CPU time of this process: unlike wall time, not inflated by other
    processes competing for the cores (it still counts cache and memory contention)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _model(preset: str):
    import torch

    import napari_cvdm as nc

    torch.manual_seed(0)
    return nc.CVDM(nc.CVDMConfig.preset(preset)).eval()


def _flops(preset: str, batch: int, height: int, width: int) -> tuple[int, int]:
    """FLOPs of one denoiser call and of one prepare() (mean net + lambda) on meta tensors."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import napari_cvdm as nc

    with torch.device("meta"):
        net = nc.CVDM(nc.CVDMConfig.preset(preset)).eval()
        x = torch.zeros(batch, 1, height, width)
        with torch.inference_mode():
            with FlopCounterMode(display=False) as fc:
                prep = net.prepare(x)
            prepare = fc.get_total_flops()
            with FlopCounterMode(display=False) as fc:
                net.denoise(x, prep["inputs"], x)
            denoise = fc.get_total_flops()
    return int(denoise), int(prepare)


def _timed(fn, reps: int, device) -> float:
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def worker_network(cfg: dict) -> dict:
    """One denoiser call at predict's tile shape against a big 3x3 convolution."""
    import torch

    from napari_cvdm import inference
    from napari_cvdm.devices import resolve_device

    device = resolve_device(cfg["device"])
    if device.type == "cpu":
        try:  # as predict() does on the CPU
            from napari_cvdm.devices import tune_cpu_allocator
        except ImportError:  # before issue 7
            pass
        else:
            tune_cpu_allocator()
    net = _model(cfg["preset"])
    size = cfg["size"] * net.config.scale
    stride = net.config.stride
    if hasattr(inference, "plan"):
        p = inference.plan(net, size, size, cfg["samples"], device)
        tile, batch = p.tile, p.batch * p.group
    else:  # before issue 7: square tiles, samples only
        side, batch = inference.plan_tiles(net, size, size, cfg["samples"], device, None)
        tile = (min(side, size),) * 2
    th, tw = (-(-v // stride) * stride for v in tile)
    denoise_flops, _ = _flops(cfg["preset"], batch, th, tw)
    half = device.type == "cuda"
    cl = device.type == "cpu" and cfg.get("model_channels_last", True)
    net.to(device)
    if cl:
        net.to(memory_format=torch.channels_last)
    fmt = torch.channels_last if cl else torch.contiguous_format
    gen = torch.Generator(device=device).manual_seed(0)
    z = torch.randn(batch, 1, th, tw, generator=gen, device=device)
    with torch.inference_mode():
        prep = net.prepare(z.contiguous(memory_format=fmt))
        inputs = prep["inputs"]
        gamma = torch.full_like(z, 0.5)

        def call():
            with torch.autocast(device.type, dtype=torch.float16, enabled=half):
                net.denoise(z, inputs, gamma)

        seconds = _timed(call, cfg["reps"], device)
        conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(device)
        xc = torch.randn(4, 64, 256, 256, device=device)
        if cl:
            conv = conv.to(memory_format=torch.channels_last)
            xc = xc.contiguous(memory_format=torch.channels_last)
        conv_flops = 2 * 4 * 64 * 64 * 9 * 256 * 256

        def conv_call():
            with torch.autocast(device.type, dtype=torch.float16, enabled=half):
                conv(xc)

        conv_seconds = _timed(conv_call, cfg["reps"], device)
    return {"kind": "network", "tile": [th, tw], "batch": batch, "flops": denoise_flops,
            "seconds": seconds, "gflops": denoise_flops / seconds / 1e9,
            "conv_gflops": conv_flops / conv_seconds / 1e9,
            "ratio": (denoise_flops / seconds) / (conv_flops / conv_seconds),
            "flops_per_pixel": denoise_flops / (batch * th * tw)}


def worker_predict(cfg: dict) -> dict:
    import numpy as np
    import torch

    import napari_cvdm as nc

    net = _model(cfg["preset"])
    size = cfg["size"]
    image = np.random.default_rng(0).random((size, size)).astype(np.float32)
    base_rss = _current_rss_mb()
    device = cfg["device"]
    cuda = torch.cuda.is_available() and device in ("auto", "cuda") or device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    kwargs = {k: cfg[k] for k in ("batch_size", "tile_size") if cfg.get(k)}
    cpu0 = _cpu_seconds()
    started = time.perf_counter()
    result = nc.predict(image, net, samples=cfg["samples"], steps=cfg["steps"], eta=1.0,
                        device=device, seed=0, **kwargs)
    seconds = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu0
    info = result.info
    stride = net.config.stride
    th, tw = (-(-v // stride) * stride for v in info.get("tile_shape", (result.tile_size,) * 2))
    denoise1, prepare1 = _flops(cfg["preset"], 1, th, tw)
    tiles = info["tiles"]
    total_flops = tiles * (prepare1 + cfg["samples"] * cfg["steps"] * denoise1)
    network_px = tiles * th * tw * cfg["samples"] * cfg["steps"]
    out_px = result.mean.size
    return {"kind": "predict", "seconds": seconds, "cpu_seconds": cpu, "tiles": tiles, "tile": [th, tw],
            "batch": info["batch"], "group": info.get("group", 1),
            "output": list(result.mean.shape),
            "evals_per_s": cfg["samples"] * cfg["steps"] / seconds,
            "out_mpx_per_s": out_px / seconds / 1e6,
            "net_mpx_per_s": network_px / seconds / 1e6,
            "gflops": total_flops / seconds / 1e9,
            "base_rss_mb": base_rss, "peak_rss_mb": _peak_rss_mb(),
            "cuda_peak_mb": (torch.cuda.max_memory_allocated() / 2**20) if cuda else None}


def worker(cfg: dict) -> dict:
    import torch

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    out = worker_network(cfg) if cfg["kind"] == "network" else worker_predict(cfg)
    out["threads"] = torch.get_num_threads()
    return out


# -- the driver ---------------------------------------------------------------------------
def run(cfg: dict, timeout: float | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(cfg)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**cfg, "error": f"timed out after {timeout} s"}
    if proc.returncode != 0:
        return {**cfg, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return {**cfg, **json.loads(proc.stdout.strip().splitlines()[-1])}


def configs(preset: str, args) -> list[dict]:
    d = dict(DEFAULTS[preset])
    common = {"preset": preset, "device": args.device, "threads": args.threads}
    out = [{**common, "kind": "network", "axis": "network", "reps": 3, **d}]
    if preset == "paper":
        sizes = [s for s in (32, 64, 128) if s <= args.paper_max]
        out += [{**common, "kind": "predict", "axis": "size", **d, "size": s} for s in sizes]
    else:
        out += [{**common, "kind": "predict", "axis": "size", "size": s, "samples": 1,
                 "steps": 2} for s in args.sizes]
        out += [{**common, "kind": "predict", "axis": "samples", **d, "samples": s}
                for s in (1, 4, 16)]
        out += [{**common, "kind": "predict", "axis": "steps", **d, "samples": 1, "steps": k}
                for k in (10, 50, 200)]
    return [c for c in out if c["axis"] in args.axes]


def quick_configs(args) -> list[dict]:
    common = {"preset": "small", "device": args.device, "threads": args.threads}
    return [{**common, "kind": "network", "reps": 2, "size": 128, "samples": 1},
            {**common, "kind": "predict", "axis": "quick", "size": 128, "samples": 2, "steps": 4},
            {**common, "kind": "predict", "axis": "quick", "size": 256, "samples": 1, "steps": 2}]


def memory_configs(args) -> list[dict]:
    common = {"preset": "small", "device": args.device, "threads": args.threads,
              "kind": "predict", "axis": "memory", "steps": 1}
    return ([{**common, "size": 512, "samples": s} for s in args.memory_samples]
            + [{**common, "size": size, "samples": 1} for size in args.memory_sizes])


def table(rows: list[dict]) -> str:
    head = (f"{'preset':6} {'kind':8} {'axis':7} {'input':>6} {'output':>6} {'S':>3} {'K':>4} "
            f"{'tiles':>5} {'tile':>9} {'b':>3} {'sec':>8} {'cpu s':>8} {'eval/s':>7} {'outMpx/s':>9} "
            f"{'netMpx/s':>9} {'GFLOP/s':>8} {'conv':>6} {'ratio':>6} {'peakMB':>7} {'thr':>3}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['preset']:6} {r['kind']:8} {r.get('axis', ''):7} "
                         f"{r.get('size', ''):>6} ERROR {r['error']}")
            continue
        tile = "x".join(str(v) for v in r.get("tile", []))
        if r["kind"] == "network":
            lines.append(f"{r['preset']:6} {'network':8} {'':7} {'':>6} {'':>6} {'':>3} {'':>4} "
                         f"{'':>5} {tile:>9} {r['batch']:>3} {r['seconds']:8.3f} {'':>8} {'':>7} {'':>9} "
                         f"{r['batch'] * r['tile'][0] * r['tile'][1] / r['seconds'] / 1e6:9.3f} "
                         f"{r['gflops']:8.1f} {r['conv_gflops']:6.1f} {r['ratio']:6.2f} {'':>7} "
                         f"{r['threads']:>3}")
            continue
        out = r["output"][-1]
        lines.append(f"{r['preset']:6} {'predict':8} {r.get('axis', ''):7} {r['size']:>6} {out:>6} "
                     f"{r['samples']:>3} {r['steps']:>4} {r['tiles']:>5} {tile:>9} {r['batch']:>3} "
                     f"{r['seconds']:8.2f} {r['cpu_seconds']:8.2f} {r['evals_per_s']:7.3f} {r['out_mpx_per_s']:9.4f} "
                     f"{r['net_mpx_per_s']:9.3f} {r['gflops']:8.1f} {'':>6} {'':>6} "
                     f"{r['peak_rss_mb']:7.0f} {r['threads']:>3}")
    return "\n".join(lines)


def plot(series: dict[str, list[dict]], path: Path) -> None:
    """Seconds per sample-step against output pixels, one line per (label, preset)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    styles = iter(["-", "--", "-.", ":"])
    for label, rows in series.items():
        style = next(styles)
        for preset, marker in (("small", "o"), ("paper", "s")):
            pts = sorted((r["output"][-1] ** 2, r["seconds"] / (r["samples"] * r["steps"]),
                          r.get("cpu_seconds", float("nan")) / (r["samples"] * r["steps"]))
                         for r in rows if r.get("kind") == "predict"
                         and r.get("preset") == preset and r.get("axis") == "size"
                         and "error" not in r)
            if not pts:
                continue
            xs, ys, cs = zip(*pts)
            line, = ax.loglog(xs, ys, style, marker=marker, label=f"{preset}, {label}: wall")
            ax.loglog(xs, cs, style, marker=marker, mfc="none", color=line.get_color(),
                      alpha=0.6, label=f"{preset}, {label}: CPU time")
            ax.loglog(xs, [ys[0] * x / xs[0] for x in xs], ":", color="grey", lw=0.8)
    ax.set_xlabel("output pixels (input x2 per side)")
    ax.set_ylabel("seconds per sample-step (x-only work included)")
    ax.set_title("predict() time against pixel count (grey dotted: linear)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small preset, under a minute")
    parser.add_argument("--memory", action="store_true", help="peak memory runs only")
    parser.add_argument("--presets", nargs="+", default=["small", "paper"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048],
                        help="input sides for the size axis (small preset)")
    parser.add_argument("--paper-max", type=int, default=128,
                        help="largest input side for the paper preset")
    parser.add_argument("--axes", nargs="+", default=["network", "size", "samples", "steps"])
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[4096],
                        help="input sides of the --memory runs (1 sample, 1 step)")
    parser.add_argument("--memory-samples", type=int, nargs="*", default=[1, 4, 16],
                        help="samples of the --memory runs at a 512 x 512 input")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in the workers (default: torch's own)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--plot", type=Path, help="time against pixel count (PNG)")
    parser.add_argument("--plot-from", nargs="+", metavar="LABEL=JSON",
                        help="only plot rows saved earlier with --json (e.g. after=a.json "
                             "before=b.json)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.plot_from:
        series = {}
        for item in args.plot_from:
            label, _, file = item.rpartition("=")
            series[label or Path(file).stem] = json.loads(Path(file).read_text())
        plot(series, args.plot or Path("speed_vs_pixels.png"))
        return
    if args.quick:
        todo = quick_configs(args)
    elif args.memory:
        todo = memory_configs(args)
    else:
        todo = [c for p in args.presets for c in configs(p, args)]
    rows = []
    for cfg in todo:
        rows.append(run(cfg, args.timeout))
        if not args.quick:
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    print(f"python {sys.version.split()[0]}, torch threads "
          f"{sorted({r.get('threads') for r in rows if 'threads' in r})}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    if args.plot:
        plot({"this run": rows}, args.plot)


if __name__ == "__main__":
    main()
