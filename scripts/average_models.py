"""Average the weights of two models of the same configuration (a "model soup").

    python scripts/average_models.py A.cvdm.safetensors B.cvdm.safetensors OUT.cvdm.safetensors \
        [--weight 0.5]

OUT has ``(1 - weight) * A + weight * B`` for every floating-point tensor, A's metadata and
its training record, plus ``training["averaged_with"]``: B's name, file hash and weight. A
continued run often trades one kind of image for another; averaging it with the weights it
started from keeps much of the gain and less of the loss (docs/benchmarks.md, session 13).
The calibration is dropped: fit it again (``scripts/calibrate_model.py``).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path


def average(a, b, weight: float):
    """A copy of model ``a`` with ``(1 - weight) * a + weight * b``; ValueError when the two
    differ in configuration or ``weight`` is outside [0, 1]."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the weight must lie in [0, 1], not {weight}")
    if a.config != b.config:
        raise ValueError("the two models differ in configuration; only models of one "
                         "architecture can be averaged")
    out = copy.deepcopy(a)
    sa, sb = a.state_dict(), b.state_dict()
    out.load_state_dict({k: ((1 - weight) * sa[k].double() + weight * sb[k].double()).to(
        sa[k].dtype) if sa[k].is_floating_point() else sa[k] for k in sa})
    out.metadata = copy.deepcopy(a.metadata)
    out.metadata.pop("calibration", None)
    return out


def main(argv=None) -> int:
    import napari_cvdm as nc
    from napari_cvdm.model_files import resolve_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="a model file or bundled name (its metadata is kept)")
    p.add_argument("b", help="a model file or bundled name")
    p.add_argument("output", type=Path)
    p.add_argument("--weight", type=float, default=0.5, help="B's share (default 0.5)")
    args = p.parse_args(argv)
    a, _ = resolve_model(args.a)
    b, about_b = resolve_model(args.b)
    out = average(a, b, args.weight)
    out.metadata.setdefault("training", {})["averaged_with"] = {
        "model": about_b.get("name"), "sha256": about_b.get("sha256"), "weight": args.weight}
    nc.save_model(out, args.output, overwrite=False)
    print(f"{args.output}: {1 - args.weight:g} x {args.a} + {args.weight:g} x {args.b}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
