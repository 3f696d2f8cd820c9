"""``cvdm export MODEL --bioimageio out.zip``: a model as a bioimage.io model package."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    from ..bioimageio_export import SAMPLING

    p = sub.add_parser(
        "export", help="write a model as a bioimage.io model package (.zip)",
        epilog="example: cvdm export widefield-x2 --bioimageio widefield-x2.zip. The package "
               "runs the whole sampling in one forward pass; its settings are fixed at export.")
    p.add_argument("model", metavar="MODEL",
                   help="a bundled model name ('widefield-x2') or a .cvdm.safetensors file")
    p.add_argument("--bioimageio", required=True, type=Path, metavar="OUT.zip",
                   help="the package to write (needs pip install 'napari-cvdm[export]')")
    p.add_argument("--samples", type=int, default=SAMPLING["samples"],
                   help="samples the package draws per image (default: %(default)s)")
    p.add_argument("--steps", type=int, default=SAMPLING["steps"],
                   help="DDIM steps per sample (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT.zip if it exists (default: refuse)")


def run(args) -> int:
    from ..bioimageio_export import export_bioimageio

    if not 2 <= args.samples <= 256 or not 1 <= args.steps <= 1000:
        raise ValueError("--samples must be 2 to 256 and --steps 1 to 1000")
    out = export_bioimageio(args.model, args.bioimageio,
                            {"samples": args.samples, "steps": args.steps},
                            overwrite=args.overwrite)
    print(f"bioimage.io package written to {out}")
    return 0
