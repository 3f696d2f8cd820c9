"""The paper's central claim on our data: a learned noise schedule against hand-tuned ones.

Trains the same preset from scratch once per schedule (same data, optics, seed, steps and
learning rate: every argument after ``--`` goes to ``cvdm train`` unchanged), then scores
each model with benchmarks/quality.py on the same inputs (held-out images with simulated
widefield optics, and real pairs). Only PSNR/SSIM compare fairly: the models are not
calibrated, so their coverage is not the shipped model's.

    python benchmarks/schedules.py --steps 3000 --schedules learned cosine \
        --hq HELD_OUT_DIR --pairs ../shared/data/real-pairs/biosr_microtubules \
        ../shared/data/real-pairs/jin2020_microtubules --work runs/schedules \
        -- --hq TRAINING_DIR --synthetic microtubules actin er ccp mitochondria \
        --psf-conditioned --psf-sigma 1.5 4 --photons 20 10000 --haze 0 0.6 --haze-sigma 8 32

Writes OUT/NAME_<schedule>.json (quality.py's format) and OUT/NAME.json (the summary;
``--name``, default "schedules"), and prints a Markdown table. A model already trained in
``--work`` is reused, so an interrupted comparison continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import quality  # noqa: E402


def train(schedule: str, args, extra: list[str]) -> tuple[Path, float]:
    """The model of ``schedule`` in ``args.work`` (trained now unless there) and the seconds."""
    model = args.work / f"schedule_{schedule}.cvdm.safetensors"
    if model.is_file():
        return model, float("nan")
    partial = args.work / f"schedule_{schedule}.partial.cvdm.safetensors"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "napari_cvdm.cli", "train", "--preset", args.preset,
                    "--schedule", schedule, "--steps", str(args.steps), "--lr", str(args.lr),
                    "--seed", str(args.seed), "-o", str(partial), *extra], check=True)
    partial.replace(model)  # only a finished run counts as trained
    return model, time.perf_counter() - started


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedules", nargs="+", default=["learned", "linear", "cosine"],
                        choices=("learned", "linear", "cosine"))
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hq", type=Path, help="held-out high-quality TIFFs to score on")
    parser.add_argument("--pairs", type=Path, nargs="*", default=[])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--sample-steps", type=int, default=4)
    parser.add_argument("--work", type=Path, required=True,
                        help="folder for the trained models (kept, so a rerun scores only)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--name", default="schedules",
                        help="OUT/NAME.json and OUT/NAME_<schedule>.json")
    args = parser.parse_args(argv)
    if not (args.hq or args.pairs):
        parser.error("give --hq and/or --pairs to score on")
    args.work.mkdir(parents=True, exist_ok=True)
    rows = {}
    for schedule in args.schedules:
        model, seconds = train(schedule, args, extra)
        name = f"{args.name}_{schedule}.json"
        quality.main(["--model", str(model), "--steps", str(args.sample_steps),
                      "--samples", str(args.samples), "--psf", "auto", "--pair-sigma", "3.0",
                      "--no-synthetic", "--out", str(args.out), "--name", name,
                      *(["--hq", str(args.hq)] if args.hq else []),
                      *(["--pairs", *map(str, args.pairs)] if args.pairs else [])])
        result = json.loads((args.out / name).read_text())
        cvdm = next(k for k in next(iter(result["per_image"].values()))
                    if k.startswith("CVDM mean"))
        one = cvdm.replace(f"mean of {args.samples}", "1 sample")
        rows[schedule] = {"train_seconds": seconds, "per_image_psnr": {
            n: {"cvdm": r[cvdm]["psnr"], "one sample": r[one]["psnr"],
                "bicubic": r["bicubic"]["psnr"]} for n, r in result["per_image"].items()}}
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "train_args": extra,
               "results": rows}
    (args.out / f"{args.name}.json").write_text(json.dumps(summary, indent=1))
    first = next(iter(rows.values()))["per_image_psnr"]  # every model scored the same inputs
    names = list(first)
    groups = [("simulated held-out", [n for n in names if "/" not in n])] + \
        [(n, [n]) for n in names if "/" in n]
    print("\n| input | bicubic | " + " | ".join(f"{s} mean (1 sample)" for s in rows) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in rows) + " |")
    for label, members in groups:
        if not members:
            continue
        cells = [f"{np.mean([first[n]['bicubic'] for n in members]):.2f}"]
        for r in rows.values():
            p = r["per_image_psnr"]
            one = [p[n]["one sample"] for n in members]
            cells.append(f"{np.mean([p[n]['cvdm'] for n in members]):.2f} ({np.mean(one):.2f})")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
