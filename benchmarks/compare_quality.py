"""Side by side: several runs of benchmarks/quality.py (e.g. a blind and a PSF-conditioned model).

    python benchmarks/compare_quality.py blind=docs/benchmarks/quality_blind.json \
        told=docs/benchmarks/quality_told.json default=docs/benchmarks/quality_default.json

Prints Markdown tables of the CVDM mean's PSNR gain over bicubic (dB) by PSF width and by
structure class, the worst single input, Spearman(std, |error|) and the 1- / 2-sigma
coverage, and the real pairs one by one.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def cvdm_key(row: dict) -> str:
    return next(k for k in row if k.startswith("CVDM mean"))


def load(spec: str) -> tuple[str, dict]:
    label, _, path = spec.partition("=")
    return label, json.loads(Path(path).read_text())["per_image"]


def gains(per_image: dict) -> dict[str, float]:
    return {n: r[cvdm_key(r)]["psnr"] - r["bicubic"]["psnr"] for n, r in per_image.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=JSON")
    args = parser.parse_args()
    runs = dict(load(s) for s in args.runs)
    labels = list(runs)
    simulated = [n for n in next(iter(runs.values())) if " sigma " in n]

    def table(title: str, groups: dict[str, list[str]]) -> None:
        print(f"\n{title}\n\n| | " + " | ".join(labels) + " |\n" + "|---" * (len(labels) + 1)
              + "|")
        for group, names in groups.items():
            cells = []
            for label in labels:
                g = gains(runs[label])
                values = [g[n] for n in names if n in g]
                cells.append(f"{np.mean(values):+.2f} (worst {min(values):+.2f})" if values
                             else "-")
            print(f"| {group} | " + " | ".join(cells) + " |")

    by_sigma: dict[str, list[str]] = defaultdict(list)
    by_class: dict[str, list[str]] = defaultdict(list)
    for name in simulated:
        by_sigma["sigma " + name.rsplit(" sigma ", 1)[1]].append(name)
        base = name.removeprefix("generated ").split(" ")[0].split("_")[0]
        by_class[base].append(name)
    table("CVDM mean minus bicubic (dB), simulated held-out inputs, by PSF width", by_sigma)
    table("... by structure class (all widths)", by_class)
    table("... every simulated input", {"all": simulated})
    print("\nUncertainty (simulated inputs): Spearman / 1-sigma / 2-sigma coverage\n")
    for label in labels:
        rows = [runs[label][n][cvdm_key(runs[label][n])] for n in simulated
                if n in runs[label]]
        if not rows:
            continue
        print(f"- {label}: Spearman {np.mean([r['spearman'] for r in rows]):.2f} "
              f"(min {min(r['spearman'] for r in rows):.2f}), coverage "
              f"{np.mean([r['coverage_1sigma'] for r in rows]):.0%} / "
              f"{np.mean([r['coverage_2sigma'] for r in rows]):.0%}")
    print("\nReal pairs: bicubic, then CVDM mean / Spearman / 1- and 2-sigma coverage per run\n")
    real = list(dict.fromkeys(n for r in runs.values() for n in r if " sigma " not in n))
    for name in real:
        first = next(r[name] for r in runs.values() if name in r)
        cells = []
        for label in labels:
            r = runs[label].get(name)
            if r is None:
                cells.append("-")
                continue
            c = r[cvdm_key(r)]
            cells.append(f"{label} {c['psnr']:.2f} / {c['spearman']:.2f} / "
                         f"{c['coverage_1sigma']:.0%} / {c['coverage_2sigma']:.0%}")
        print(f"- {name}: bicubic {first['bicubic']['psnr']:.2f}; " + "; ".join(cells))


if __name__ == "__main__":
    main()
