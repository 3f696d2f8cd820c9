"""Torch modules of CVDM: configuration and presets, U-Net, schedule, the model and its loss."""

from .config import PRESETS, CVDMConfig, UNetConfig
from .cvdm import CVDM

__all__ = ["CVDM", "CVDMConfig", "PRESETS", "UNetConfig"]
