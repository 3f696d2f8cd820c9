"""The options of the "CVDM training" widget as small typed dataclasses.

Each knows its defaults, how it shows itself in magicgui and how it becomes plain keyword
arguments for the library (a :class:`~napari_cvdm.degradation.Degradation`, or the fields of
:class:`~napari_cvdm.training.TrainingSettings`). No Qt here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from .degradation import LEVEL_LIMITS, Degradation
from .devices import available_devices
from .precision import PRECISIONS
from .simulation_defaults import SIMULATION_DEFAULTS as _D


@dataclass
class OpticsOptions:
    """The simulated microscope that turns high-quality images into training inputs."""

    psf: str = _D["psf"]
    psf_sigma: float = _D["psf_sigma"]  # real pairs fit 2.75-3.75 high-quality pixels
    psf_sigma_max: float = _D["psf_sigma"]  # above psf_sigma: a range; else one width
    scale: int = 2
    photons_min: float = _D["photons"][0]
    photons_max: float = _D["photons"][1]
    background_max: float = _D["background"][1]
    read_noise_max: float = _D["read_noise"][1]
    haze_max: float = _D["haze"][1]  # share out of focus; real widefield pairs fit 0.35-0.65

    def degradation(self, base: Degradation | None = None) -> Degradation:
        """These optics; what the widget does not show (the out-of-focus light's width, the
        spread of the told width, the lower ends of background and read noise) from
        ``base`` (a fine-tune's recorded optics), else the defaults."""
        sigma = self.psf_sigma if self.psf_sigma_max <= self.psf_sigma else \
            (self.psf_sigma, self.psf_sigma_max)
        base = base or Degradation()
        return replace(base, psf=self.psf, psf_sigma=sigma,
                       scale=self.scale, photons=(self.photons_min, self.photons_max),
                       background=(min(base.background[0], self.background_max),
                                   self.background_max),
                       read_noise=(min(base.read_noise[0], self.read_noise_max),
                                   self.read_noise_max),
                       haze=(min(base.haze[0], self.haze_max), self.haze_max))

    @classmethod
    def of(cls, optics: Degradation) -> OpticsOptions:
        """The widget's values for ``optics`` (a model's recorded training optics)."""
        sigma = optics.psf_sigma if isinstance(optics.psf_sigma, tuple) else \
            (optics.psf_sigma, optics.psf_sigma)
        values = cls(psf=optics.psf, psf_sigma=float(sigma[0]),
                     psf_sigma_max=float(sigma[1]), scale=int(optics.scale),
                     photons_min=float(optics.photons[0]),
                     photons_max=float(optics.photons[1]),
                     background_max=float(optics.background[1]),
                     read_noise_max=float(optics.read_noise[1]),
                     haze_max=float(optics.haze[1]))
        # within the widgets' ranges (a model trained from Python may have gone beyond
        # them, and a spin box refuses a value outside its range)
        for name, limits in cls.widget_options().items():
            value = getattr(values, name)
            if isinstance(value, float):
                low, high = limits.get("min", value), limits.get("max", value)
                setattr(values, name, min(max(value, low), high))
        return values

    @staticmethod
    def widget_options() -> dict[str, dict[str, Any]]:
        return {
            "psf": {"label": "PSF", "widget_type": "ComboBox", "choices": ["gaussian", "airy"]},
            "psf_sigma": {"label": "PSF sigma from (HQ px)", "min": 0.1, "max": 20.0,
                          "step": 0.25},
            "psf_sigma_max": {"label": "PSF sigma to", "min": 0.1, "max": 20.0, "step": 0.25,
                              "tooltip": "widths drawn log-uniformly from the range; at or "
                              "below 'from': that one width"},
            "scale": {"label": "scale (from scratch)", "min": 1, "max": 4},
            "photons_min": {"label": "photons from", "min": 1.0, "max": LEVEL_LIMITS["photons"]},
            "photons_max": {"label": "photons to", "min": 1.0, "max": LEVEL_LIMITS["photons"]},
            "background_max": {"label": "background up to", "min": 0.0,
                               "max": LEVEL_LIMITS["background"]},
            "read_noise_max": {"label": "read noise up to", "min": 0.0,
                               "max": LEVEL_LIMITS["read_noise"]},
            "haze_max": {"label": "out-of-focus light up to", "min": 0.0, "max": 0.9,
                         "step": 0.05},
        }


@dataclass
class TrainingOptions:
    """How long and how to train. Small defaults: a fine-tune that runs on a laptop CPU."""

    steps: int = 300
    patch_size: int = 64
    batch_size: int = 4
    learning_rate: float = 0.0  # 0: the preset's default
    validation_fraction: float = 0.15
    validation_every: int = 50
    checkpoint_every: int = 50
    seed: int = 0
    precision: str = "auto"
    device: str = "auto"

    def settings(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["learning_rate"] = self.learning_rate or None
        values.pop("device")
        return values

    @staticmethod
    def widget_options() -> dict[str, dict[str, Any]]:
        return {
            "steps": {"min": 1, "max": 1_000_000},
            "patch_size": {"min": 8, "max": 1024, "step": 8,
                           "tooltip": "high-quality pixels per side of a training patch; "
                                      "lowered automatically to fit small images"},
            "batch_size": {"min": 1, "max": 256},
            "learning_rate": {"label": "learning rate (0 = default)", "min": 0.0, "max": 1.0,
                              "step": 1e-5},
            "validation_fraction": {"label": "validation split", "min": 0.01, "max": 0.5,
                                    "step": 0.05},
            "validation_every": {"min": 1, "max": 100_000},
            "checkpoint_every": {"min": 1, "max": 100_000},
            "seed": {"min": 0, "max": 2**31 - 1},
            "precision": {"widget_type": "ComboBox", "choices": list(PRECISIONS)},
            "device": {"widget_type": "ComboBox", "choices": ["auto", *available_devices()]},
        }


def make_widgets(options_class) -> dict[str, Any]:
    """One magicgui widget per field of an options dataclass, by field name."""
    from magicgui.widgets import create_widget

    widget_options = options_class.widget_options()
    out = {}
    for f in fields(options_class):
        opts = dict(widget_options[f.name])
        widget_type = opts.pop("widget_type", None)
        label = opts.pop("label", f.name.replace("_", " "))
        out[f.name] = create_widget(value=f.default, annotation=type(f.default), name=f.name,
                                    label=label, widget_type=widget_type, options=opts)
    return out
