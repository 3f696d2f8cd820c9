"""Every option of a prediction run: its default, choices, limits, check and help, in one place.

:class:`PredictSettings` is the single source of the defaults that ``predict()``,
``run_on_layer()``, ``cvdm predict`` and the reconstruction widget use: the command line
builds its options from the fields (``cli/options.py``), the widget its controls
(``_widget.py``). Each field's ``metadata`` holds ``help`` (one sentence), and where they
apply ``choices``, ``min``/``max``, ``auto`` (what None means) and ``advanced`` (shown
folded away in the widget). Every check raises one ValueError naming the option in plain
words, never a command-line flag.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any

from .model_header import PSF_SIGMA_RANGE
from .precision import PRECISIONS
from .sampling import SAMPLERS

DEFAULT_MODEL = "widefield-x2"  # the bundled model used when none is given
MAX_SAMPLES = 10_000    # more gives no visible change in the mean or the uncertainty
MAX_STEPS = 10_000      # the few-step sampler saturates long before this
MAX_TILE_SIZE = 16_384
SEED_RANGE = 2**63      # torch generators take seeds in [0, 2**63)
# Drawn seeds stay below 2**31, so that every front end can take one back to repeat a run
# (the widget's seed box is a 32-bit integer).
DRAWN_SEED_RANGE = 2**31
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def option(default: Any, help: str, **meta: Any):
    """A settings field: ``default`` and its ``help``, plus choices, limits and flags."""
    return field(default=default, metadata={"help": help, **meta})


def reduce_seed(seed: Any) -> int:
    """Any integer (Python or NumPy, negative, 2**63 or more) mapped into [0, 2**63).

    Deterministic (``seed % 2**63``), so a seed a user typed always gives the same run; the
    value used is what results and files record.
    """
    import numbers

    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be a whole number, not {seed!r}")  # noqa: TRY004
    return int(seed) % SEED_RANGE


def draw_seed() -> int:
    """A fresh random seed, for runs asked for without one (it is recorded, so repeatable)."""
    import numpy as np

    return int(np.random.SeedSequence().entropy % DRAWN_SEED_RANGE)


def _whole(name: str, value: Any, low: int | None, high: int | None) -> None:
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a whole number, not {value!r}")  # noqa: TRY004
    if low is not None and value < low:
        raise ValueError(f"{name} must be at least {low}, not {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be at most {high:,}, not {value:,}")


def _number(name: str, value: Any, low: float | None, high: float | None) -> None:
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be between {low} and {high}, not {value}")


def check_field(f: dataclasses.Field, value: Any) -> Any:
    """Check one value against its field's type, choices and limits; ValueError if wrong.

    Returns the value as the field keeps it: a NumPy integer or float as a Python ``int`` or
    ``float`` (a result's ``info`` and the files' metadata then hold plain numbers)."""
    meta, name = f.metadata, f.name.replace("_", " ")
    if value is None and f.default is None:
        return value
    if "choices" in meta:
        if value not in meta["choices"]:
            raise ValueError(f"{name} must be one of {', '.join(map(str, meta['choices']))}, "
                             f"not {value!r}")
    elif isinstance(f.default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, not {value!r}")
    elif f.type in ("int", "int | None"):
        _whole(name, value, meta.get("min"), meta.get("max"))
        return int(value)
    elif f.type in ("float", "float | None"):
        _number(name, value, meta.get("min"), meta.get("max"))
        return float(value)
    return value


@dataclass(frozen=True)
class PredictSettings:
    """How to run a prediction. Create with keywords; every value is checked on creation."""

    model: Any = option(DEFAULT_MODEL,  # noqa: RUF009
                        "a bundled model's name or a .cvdm.safetensors file (in Python "
                        "also a loaded model)", cli="--model", metavar="MODEL")
    samples: int = option(8, "samples drawn per pixel; the mean and the uncertainty are "
                          "taken over them (at least 2 for an uncertainty)", min=1,
                          max=MAX_SAMPLES)
    # 4 steps: the mean is within 0.04-0.12 dB of the best K on the sample and the real
    # pairs, and the std ranks the error much better than at 2 (benchmarks/few_steps.py,
    # docs/benchmarks.md); the calibration of the bundled model was fitted at 8 x 4.
    steps: int = option(4, "denoising steps per sample: more is slower and adds finer, "
                        "less certain detail", min=1, max=MAX_STEPS)
    eta: float = option(0.0, "0: deterministic steps (DDIM), 1: ancestral steps (DDPM)",
                        min=0.0, max=1.0, step=0.1)
    sampler: str = option("ddim", "ddim: the few-step sampler; reference: the authors' "
                          "ancestral sampler with the model's own number of steps",
                          choices=SAMPLERS, advanced=True)
    # Samples on the 8 flips/rotations: +0.1 to +2 dB on held-out inputs at the same cost
    # (benchmarks/augment.py, docs/benchmarks.md).
    augment: bool = option(True, "draw the samples on the input's flips and rotations "
                           "(turned back): averages the network's orientation errors out at "
                           "no extra cost", advanced=True)
    psf_sigma: float | None = option(None, "the input's blur relative to the output: the "
                                     "PSF's Gaussian sigma in output pixels (used by "
                                     "PSF-conditioned models only)",
                                     min=PSF_SIGMA_RANGE[0], max=PSF_SIGMA_RANGE[1],
                                     step=0.25, auto="estimated from the image where it is "
                                     "sharper than the model's typical widefield blur, "
                                     "else that")
    seed: int | None = option(None, "random seed; the same seed, settings and precision "
                              "give the same result on the same tiles (the automatic tile "
                              "size follows free memory: set tile size to fix it)",
                              auto="a new one each run, recorded")
    device: str = option("auto", "where to compute: auto, cpu, cuda, cuda:N or mps",
                         auto="auto")
    precision: str = option("auto", "the networks' arithmetic: auto is bf16 on GPUs built "
                            "for it and on CPUs where a short probe finds it faster, fp16 on "
                            "older GPUs, fp32 elsewhere", choices=PRECISIONS, advanced=True)
    tile_size: int | None = option(None, "output pixels per tile side; lower it if memory "
                                   "runs out", min=8, max=MAX_TILE_SIZE, step=8,
                                   auto="from the device's free memory", advanced=True)
    overlap: int | None = option(None, "output pixels shared by neighbouring tiles (at "
                                 "most half a tile: more is reduced to that)",
                                 min=0, max=MAX_TILE_SIZE, auto="an eighth of the tile",
                                 advanced=True)
    batch_size: int | None = option(None, "samples per network call", min=1,
                                    max=MAX_SAMPLES, auto="from the device's free memory",
                                    advanced=True)
    compile: bool = option(False, "compile the network with torch.compile (slow first "
                           "call; worth it for long runs on a GPU)", advanced=True)

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, check_field(f, getattr(self, f.name)))
        if type(self.device).__module__ == "torch" and type(self.device).__name__ == "device":
            object.__setattr__(self, "device", str(self.device))  # torch.device("cuda", 1)
        if self.device is not None and (not isinstance(self.device, str)  # None: auto
                                        or not _DEVICE.match(self.device.strip().lower())):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps (or a "
                             f"torch.device), not {self.device!r}")
        if self.seed is not None:
            object.__setattr__(self, "seed", reduce_seed(self.seed))
        if isinstance(self.model, (str, os.PathLike)) and not str(self.model).strip():
            raise ValueError("model must be a bundled model name or a model file, not empty")

    def replace(self, **changes: Any) -> PredictSettings:
        """A copy with ``changes`` (names as the fields); TypeError for an unknown name."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(sorted(unknown))}; the options "
                            f"are {', '.join(f.name for f in fields(self))}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in fields(cls)}


def settings_from(settings: PredictSettings | None, options: dict[str, Any]) -> PredictSettings:
    """``settings`` (or the defaults) with ``options`` (keyword arguments) applied on top."""
    base = PredictSettings() if settings is None else settings
    if not isinstance(base, PredictSettings):
        raise TypeError(f"settings must be a PredictSettings, not {type(base).__name__}")
    return base.replace(**options) if options else base


def _presets() -> tuple[str, ...]:
    from .model.config import PRESETS

    return tuple(PRESETS)


SCHEDULES = ("learned", "linear", "cosine")
LR_DECAYS = ("constant", "cosine")


@dataclass
class TrainSettings:
    """How to train (``train()``, ``cvdm train``, the training widget); checked on creation."""

    preset: str = option("small", "model size for a new model", choices=_presets())
    steps: int = option(1000, "training steps", min=1, max=10**9)
    batch_size: int = option(8, "patches per step", min=1, max=4096)
    patch_size: int = option(64, "high-quality pixels per side of a patch", min=8, max=8192)
    learning_rate: float | None = option(None, "Adam learning rate", min=1e-12, max=1.0,
                                         auto="1e-4 for the paper preset, 2e-4 else",
                                         cli="--lr")
    lr_decay: str = option("constant", "learning rate over the run: constant, or a cosine "
                           "decay from --lr to zero at the last step", choices=LR_DECAYS)
    ema_decay: float = option(0.999, "decay of the weights' moving average that is saved",
                              min=0.0, max=0.999999)
    validation_fraction: float = option(0.15, "share of the images kept for validation",
                                        min=0.0, max=0.95)
    validation_every: int = option(500, "steps between validations", min=1, max=10**9,
                                   cli="--validate-every")
    validation_patches: int = option(8, "patches per validation", min=1, max=10**6)
    validation_steps: int = option(10, "sampling steps per validation patch", min=1,
                                   max=MAX_STEPS)
    checkpoint_every: int = option(500, "steps between checkpoints", min=1, max=10**9)
    first_checkpoint: int = option(50, "steps before the first checkpoint (an early one: a "
                                   "killed run keeps it)", min=1, max=10**9)
    seed: int = option(0, "random seed of the run")
    schedule: str | None = option(None, "noise schedule", choices=SCHEDULES,
                                  auto="the preset's")
    mean_network: bool | None = option(None, "the ZMD mean network on or off",
                                       auto="the preset's", cli=False)
    grad_clip: float = option(1.0, "gradient norm clip (0: no clipping)", min=0.0,
                               max=1e6)
    precision: str = option("auto", "the networks' arithmetic (auto: bf16 on GPUs built for "
                            "it and on CPUs where a short probe finds it faster)",
                            choices=PRECISIONS)
    init: str | None = option(None, "fine-tune a bundled model or a model file (fresh "
                              "optimizer; its scale and preset are used)",
                              auto="a new model", metavar="MODEL")
    psf_conditioned: bool = option(False, "the model is also told the input's PSF width "
                                   "(simulated optics only); a blind model guesses it")
    config_overrides: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "changes to the preset's configuration", "cli": False})

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, check_field(f, getattr(self, f.name)))
        if self.mean_network is not None and not isinstance(self.mean_network, bool):
            raise ValueError(f"mean network must be True, False or None, not "
                             f"{self.mean_network!r}")
        self.seed = reduce_seed(self.seed)

    def lr(self, step: int | None = None) -> float:
        """The learning rate, at training step ``step`` (1 to ``steps``) where it decays."""
        peak = self.learning_rate if self.learning_rate is not None else \
            1e-4 if self.preset == "paper" else 2e-4
        if step is None or self.lr_decay == "constant":
            return peak
        # Stateless in the step, so a resumed run continues the same curve.
        return peak * 0.5 * (1 + math.cos(math.pi * min(step - 1, self.steps) / self.steps))
