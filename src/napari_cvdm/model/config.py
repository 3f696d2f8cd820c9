"""Model configuration: a JSON-serialisable dataclass and the named presets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class UNetConfig:
    """Shape of one U-Net (denoiser, schedule network or mean network)."""

    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 4, 8, 8)
    blocks_per_level: int = 3
    attention_at_lowest: bool = True
    dropout: float = 0.0

    @property
    def condition_channels(self) -> int:
        """Extra constant input channels (the PSF width) of a conditioned model."""
        return 1 if self.psf_conditioned else 0

    @property
    def stride(self) -> int:
        """Image sides must be a multiple of this (one halving per extra level)."""
        return 2 ** (len(self.channel_mults) - 1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        data = dict(data)
        data["channel_mults"] = tuple(data["channel_mults"])
        return cls(**data)


# Limits on sizes a model file may ask for: a config beyond these is refused before
# any allocation (a tampered file must not be able to exhaust memory).
MAX_BASE_CHANNELS = 512
MAX_LEVELS = 7
MAX_BLOCKS = 8
MAX_CHANNELS = 16


@dataclass(frozen=True)
class CVDMConfig:
    """Everything that defines a CVDM model; a preset is just one of these.

    ``residual``: diffuse ``(y - x) / residual_scale`` and add ``x`` back (SPEC 1).
    ``mean_network``: the ZMD variant, diffuse ``(y - mu(x)) / residual_scale``.
    ``schedule``: "learned" (CVDM) or a fixed "linear"/"cosine" schedule for comparison.
    ``prediction``: what the denoiser's last layer outputs and the ``noise`` term compares:
    "eps" (the paper) or "v" = sqrt(gamma) eps - sqrt(1 - gamma) y0 (Salimans & Ho 2022),
    which keeps y0 well determined at high noise; either way ``denoise`` returns eps_hat.
    ``psf_conditioned``: the denoiser and the mean network also see the PSF width of the
    input (relative to the target, in target pixels) as a constant channel,
    ``log(sigma / psf_reference)``; the schedule network does not.
    """

    channels: int = 1
    scale: int = 2
    denoiser: UNetConfig = field(default_factory=UNetConfig)
    schedule_net: UNetConfig = field(
        default_factory=lambda: UNetConfig(32, (1, 2, 4, 8, 8), 2, False)
    )
    mean_net: UNetConfig | None = None
    schedule: str = "learned"
    prediction: str = "eps"
    residual: bool = True
    residual_scale: float = 0.2
    timesteps: int = 200
    lambda_min: float = 9.3
    logsnr_max: float = 10.0
    logsnr_min: float = -10.0
    time_hidden: int = 128
    smooth_weight: float = 1e-3
    aux_weight: float = 2.0
    output_clip: float = 1.5
    psf_conditioned: bool = False
    psf_reference: float = 2.5
    preset: str = "custom"

    @property
    def mean_network(self) -> bool:
        return self.mean_net is not None

    @property
    def condition_channels(self) -> int:
        """Extra constant input channels (the PSF width) of a conditioned model."""
        return 1 if self.psf_conditioned else 0

    @property
    def stride(self) -> int:
        nets = [self.denoiser, self.schedule_net] + ([self.mean_net] if self.mean_net else [])
        return max(n.stride for n in nets)

    def __post_init__(self) -> None:
        if self.schedule not in ("learned", "linear", "cosine"):
            raise ValueError(f"schedule must be 'learned', 'linear' or 'cosine', not {self.schedule!r}")
        if self.prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', not {self.prediction!r}")
        if not 1 <= self.channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be between 1 and {MAX_CHANNELS}, not {self.channels}")
        if self.scale not in (1, 2, 3, 4):
            raise ValueError(f"scale must be 1, 2, 3 or 4, not {self.scale}")
        if not (math.isfinite(self.psf_reference) and 0.1 <= self.psf_reference <= 20):
            raise ValueError(f"psf_reference must be between 0.1 and 20 pixels, not "
                             f"{self.psf_reference}")
        if not 2 <= self.timesteps <= 10000:
            raise ValueError(f"timesteps must be between 2 and 10000, not {self.timesteps}")
        for net in filter(None, (self.denoiser, self.schedule_net, self.mean_net)):
            if not (1 <= net.base_channels <= MAX_BASE_CHANNELS
                    and 1 <= len(net.channel_mults) <= MAX_LEVELS
                    and all(1 <= m <= 16 for m in net.channel_mults)
                    and 1 <= net.blocks_per_level <= MAX_BLOCKS):
                raise ValueError(f"network size out of the supported range: {net}")

    # -- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CVDMConfig:
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model settings: {sorted(unknown)}")
        for key in ("denoiser", "schedule_net"):
            if key in data:
                data[key] = UNetConfig.from_dict(data[key])
        if data.get("mean_net") is not None:
            data["mean_net"] = UNetConfig.from_dict(data["mean_net"])
        return cls(**data)


def _preset(cls, name: str, **overrides: Any) -> CVDMConfig:
    """``tiny`` (tests), ``small`` (CPU), ``paper`` (the ICLR 2024 backbone)."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return dataclasses.replace(base, preset=name, **overrides)


# Attached after the class: defined in its body, the method replaced the field's default
# "custom", so CVDMConfig(...) got a bound method as its preset and could not be saved.
CVDMConfig.preset = classmethod(_preset)  # type: ignore[assignment,method-assign]

PRESETS: dict[str, CVDMConfig] = {
    "tiny": CVDMConfig(
        denoiser=UNetConfig(16, (1, 2), 1, False),
        schedule_net=UNetConfig(8, (1, 2), 1, False),
        prediction="v",
        time_hidden=16,
    ),
    "small": CVDMConfig(
        denoiser=UNetConfig(16, (1, 2, 4, 8), 1, True),
        schedule_net=UNetConfig(8, (1, 2, 2), 1, False),
        mean_net=UNetConfig(16, (1, 2, 4, 8), 1, False),
        prediction="v",
        time_hidden=64,
    ),
    "paper": CVDMConfig(
        denoiser=UNetConfig(64, (1, 2, 4, 8, 8), 3, True),
        schedule_net=UNetConfig(32, (1, 2, 4, 8, 8), 1, False),
        time_hidden=1024,
    ),
}
