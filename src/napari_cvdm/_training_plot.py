"""The live plot of the "CVDM training" widget: training loss, validation PSNR and SSIM.

A matplotlib Qt canvas fed from the worker's signals (on the main thread). It keeps the
numbers it was given, so the widget (and its tests) can read them back; without matplotlib
it keeps the numbers and shows a line saying how to get the plot.
"""

from __future__ import annotations

import time

from magicgui.widgets import Container, Label

REDRAW_SECONDS = 0.5  # at most two redraws a second, however fast the steps come


class TrainingPlot(Container):
    """Loss per step (top, log scale) and validation PSNR / SSIM (bottom)."""

    def __init__(self):
        super().__init__(labels=False)
        self.loss: list[tuple[int, float]] = []
        self.validation: list[tuple[int, dict[str, float]]] = []
        self._drawn = 0.0
        self.canvas = None
        try:
            from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
            from matplotlib.figure import Figure
        except ImportError:
            self.append(Label(value="pip install matplotlib for the live training plot"))
            return
        figure = Figure(figsize=(3.6, 3.4), layout="constrained")
        self._loss_axes, self._psnr_axes = figure.subplots(2, 1, sharex=True)
        self._ssim_axes = self._psnr_axes.twinx()
        self.canvas = FigureCanvasQTAgg(figure)
        self.canvas.setMinimumHeight(260)
        self.native.layout().addWidget(self.canvas)
        self._draw()

    def clear(self) -> None:
        self.loss.clear()
        self.validation.clear()
        self._draw()

    def add_loss(self, step: int, loss: float) -> None:
        self.loss.append((step, loss))
        if time.perf_counter() - self._drawn > REDRAW_SECONDS:
            self._draw()

    def add_validation(self, step: int, scores: dict[str, float]) -> None:
        self.validation.append((step, dict(scores)))
        self._draw()

    def flush(self) -> None:
        """Draw whatever arrived since the last redraw."""
        self._draw()

    def _draw(self) -> None:
        self._drawn = time.perf_counter()
        if self.canvas is None:
            return
        loss, psnr, ssim = self._loss_axes, self._psnr_axes, self._ssim_axes
        for axes in (loss, psnr, ssim):
            axes.clear()
        ssim.yaxis.tick_right()  # clear() moves a twin axis back to the left
        ssim.yaxis.set_label_position("right")
        if self.loss:
            steps, values = zip(*self.loss)
            loss.plot(steps, values, color="tab:gray", linewidth=0.8)
            if min(values) > 0:
                loss.set_yscale("log")
        loss.set_ylabel("training loss")
        if self.validation:
            steps = [step for step, _ in self.validation]
            psnr.plot(steps, [s.get("psnr", float("nan")) for _, s in self.validation],
                      "o-", color="tab:blue", label="PSNR")
            if all("bicubic_psnr" in s for _, s in self.validation):
                psnr.plot(steps, [s["bicubic_psnr"] for _, s in self.validation], "--",
                          color="tab:blue", alpha=0.5, label="bicubic PSNR")
            ssim.plot(steps, [s.get("ssim", float("nan")) for _, s in self.validation],
                      "s-", color="tab:orange", label="SSIM")
            psnr.legend(loc="lower right", fontsize="x-small")
        psnr.set_ylabel("val. PSNR (dB)", color="tab:blue")
        ssim.set_ylabel("val. SSIM", color="tab:orange")
        psnr.set_xlabel("step")
        self.canvas.draw_idle()


def clock(seconds: float) -> str:
    """Seconds as minutes:seconds, for the elapsed and remaining time."""
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}:{seconds:02d}"
