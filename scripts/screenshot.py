"""Screenshot of napari with the "CVDM reconstruction" widget after a run on the nuclei sample.

Opens a viewer (needs a display: run under ``xvfb-run -a`` on a headless machine), loads
the sample, runs the dock widget with the given model and saves the whole window:

    xvfb-run -a python scripts/screenshot.py --output docs/images/widget.png

Samples and steps are the widget's defaults unless given, so the picture shows what a user
sees.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="widefield-x2",
                        help="a bundled name or a .cvdm.safetensors file")
    parser.add_argument("--output", type=Path, default=Path("docs/images/widget.png"))
    parser.add_argument("--samples", type=int, default=None, help="default: the widget's")
    parser.add_argument("--steps", type=int, default=None, help="default: the widget's")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--size", default="1600x760", help="window size, WIDTHxHEIGHT")
    args = parser.parse_args(argv)

    from napari_cvdm.layers import model_summary

    try:
        print(model_summary(args.model))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-cvdm")
    width, height = (int(v) for v in args.size.lower().split("x"))
    viewer.window.resize(width, height)
    (layer,) = viewer.open_sample("napari-cvdm", "nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-cvdm", "CVDM reconstruction")
    widget.use_model(args.model)
    given = {"samples": args.samples, "steps": args.steps}
    widget.set_options(seed=args.seed, **{k: v for k, v in given.items() if v is not None})
    if widget.start() is None:
        return 1
    while widget.running:
        QApplication.processEvents()
        time.sleep(0.05)
    mean_name = f"{layer.name} CVDM mean"
    if mean_name not in viewer.layers:
        print("error: the run added no layers (see the messages above)", file=sys.stderr)
        return 1

    # Input, mean and uncertainty side by side, on the same world grid.
    grid = viewer.canvas.grid  # napari >= 0.9; viewer.grid before
    grid.enabled = True
    grid.shape = (1, len(viewer.layers))
    viewer.layers.selection.active = viewer.layers[mean_name]
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(path=str(args.output), canvas_only=False, flash=False)
    seconds = viewer.layers[mean_name].metadata["cvdm"]["seconds"]
    print(f"wrote {args.output} (prediction took {seconds:.1f} s)")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
