"""Screenshots of napari with the "CVDM training" widget: the simulated optics, then a short run.

Opens a viewer (needs a display: run under ``xvfb-run -a`` on a headless machine), opens a
high-quality image, shows its simulated low-quality version, fine-tunes the bundled model
for a few steps and saves the window before and after:

    xvfb-run -a python scripts/training_screenshot.py HQ.tif --steps 20 \\
        --output docs/images/training_widget.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path, help="a high-quality image (TIFF)")
    parser.add_argument("--output", type=Path, default=Path("docs/images/training_widget.png"),
                        help="the screenshot after the run; the one before gets _optics")
    parser.add_argument("--model", type=Path, default=None,
                        help="where to save the fine-tuned model (default: a temporary file)")
    parser.add_argument("--init", default="demo", help="model to fine-tune")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--psf-sigma", type=float, default=3.5)
    parser.add_argument("--size", default="2300x1100", help="window size, WIDTHxHEIGHT")
    args = parser.parse_args(argv)

    import napari
    import tifffile
    from qtpy.QtWidgets import QApplication

    def settle(seconds: float = 1.0) -> None:
        for _ in range(int(seconds / 0.05)):
            QApplication.processEvents()
            time.sleep(0.05)

    viewer = napari.Viewer(title="napari-cvdm")
    width, height = (int(v) for v in args.size.lower().split("x"))
    viewer.window.resize(width, height)
    layer = viewer.add_image(tifffile.imread(args.image), name="high-quality")
    _, widget = viewer.window.add_plugin_dock_widget("napari-cvdm", "CVDM training")
    widget.set_data(hq=[layer])
    widget.set_start(args.init)
    widget.set_options(psf_sigma=args.psf_sigma, psf_sigma_max=args.psf_sigma,  # one width
                       steps=args.steps, batch_size=4,
                       validation_every=max(1, args.steps // 4),
                       checkpoint_every=max(1, args.steps // 2))
    widget._show_simulation.value = True
    output = args.model or Path(tempfile.mkdtemp()) / "fine-tuned.cvdm.safetensors"
    widget._output.value = output
    grid = viewer.canvas.grid  # napari >= 0.9; viewer.grid before
    grid.enabled = True
    viewer.reset_view()
    settle()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    before = args.output.with_name(args.output.stem + "_optics" + args.output.suffix)
    viewer.screenshot(path=str(before), canvas_only=False, flash=False)
    print(f"wrote {before}")

    started = time.perf_counter()
    if widget.start() is None:
        print(f"error: {widget._status.value}", file=sys.stderr)
        return 1
    while widget.running:
        QApplication.processEvents()
        time.sleep(0.05)
    if not output.is_file():
        print(f"error: no model was written ({widget._status.value})", file=sys.stderr)
        return 1
    grid.shape = (1, len(viewer.layers))  # input, simulation and preview side by side
    viewer.reset_view()
    settle()
    viewer.screenshot(path=str(args.output), canvas_only=False, flash=False)
    print(f"wrote {args.output} ({args.steps} steps in {time.perf_counter() - started:.0f} s, "
          f"model {output})")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
