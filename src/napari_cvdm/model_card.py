"""Model cards: what a model is for, its licence and citation, kept inside the model file.

The card lives in the model metadata under ``"card"``; :func:`clean_metadata` fills in
the defaults and removes machine paths before a model is saved.
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any

CITATION = ("G. della Maggiora, L. A. Croquevielle, N. Deshpande, H. Horsley, T. Heinis, "
            "A. Yakimovich. Conditional Variational Diffusion Models. ICLR 2024. "
            "arXiv:2312.02246")
CITATION_URL = "https://arxiv.org/abs/2312.02246"
CARD_FIELDS = ("description", "license", "citation", "training_data", "intended_use",
               "limitations")
DEFAULT_CARD = {
    "description": "Conditional Variational Diffusion Model (CVDM) for super-resolution of "
                   "single-channel fluorescence microscopy images, with a per-pixel "
                   "uncertainty from several samples.",
    "license": "BSD-3-Clause",
    "citation": CITATION,
    "training_data": "not recorded",
    "intended_use": "Single-channel widefield or confocal fluorescence images similar to "
                    "the training data, for visual inspection with the uncertainty map.",
    "limitations": "A generative model: it can invent plausible structure where the input "
                   "has no information; check the uncertainty and never measure from the "
                   "mean alone. Images unlike the training data give unreliable results.",
}
# Absolute POSIX (/home/x), Windows (C:\x, \\server\x) and home-relative (~/x) paths.
_PATH = re.compile(r"^(/|~[/\\]|[A-Za-z]:[\\/]|\\\\)")


def _strip_paths(value: Any) -> Any:
    if isinstance(value, str) and _PATH.match(value):
        return os.path.basename(value.rstrip("/\\").replace("\\", "/")) or "(path removed)"
    if isinstance(value, dict):
        return {k: _strip_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_paths(v) for v in value]
    return value


def training_data_summary(training: dict[str, Any]) -> str:
    """One line about the training data from the training metadata, without paths."""
    data = training.get("data") or {}
    mode = data.get("mode")
    images = data.get("images")
    if mode == "simulated":
        degradation = data.get("degradation") or {}
        try:
            haze = float((degradation.get("haze") or (0,))[-1])
        except (TypeError, ValueError, KeyError, IndexError):
            haze = 0.0
        haze = f", out-of-focus light up to {haze:.0%}" if haze > 0 else ""
        return (f"{images or 'some'} high-quality images, low-quality inputs simulated "
                f"(PSF {degradation.get('psf', '?')}, scale x{degradation.get('scale', '?')}"
                f"{haze})")
    if mode == "pairs":
        return f"{images or 'some'} measured pairs of low- and high-quality images"
    return DEFAULT_CARD["training_data"]


def clean_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """A copy with a complete card and no machine paths (file names are kept)."""
    cleaned = _strip_paths(copy.deepcopy(dict(metadata)))
    card = dict(DEFAULT_CARD)
    training = cleaned.get("training")
    if isinstance(training, dict):
        card["training_data"] = training_data_summary(training)
    given = cleaned.get("card")
    if isinstance(given, dict):
        card.update({k: v for k, v in given.items() if isinstance(v, str) and v})
    cleaned["card"] = card
    return cleaned


def card_of(metadata: dict[str, Any]) -> dict[str, str]:
    """The card of a model's metadata, defaults filled in."""
    return clean_metadata(metadata)["card"]


def summary_line(name: str, config: dict[str, Any], metadata: dict[str, Any],
                 detailed: bool = False) -> str:
    """One line about a model: scale, preset and how it was trained (the widget's model line;
    ``detailed``: ``cvdm info``'s first line, naming how and with what it was averaged). A
    fine-tuned model's step count is its last run's, so the line says it continued."""
    training = metadata.get("training") or {}
    step = training.get("step")
    # a path, not printed; a resumed fine-tune keeps it in the record, not in its settings
    continued = (training.get("settings") or {}).get("init") or training.get("init")
    trained = f"trained {step:,} step{'s' if step != 1 else ''}" if step else "untrained"
    if step and continued:
        trained += " from an earlier model's weights" + (" (cvdm train --init)" if detailed
                                                          else "")
    averaged = training.get("averaged_with")
    if isinstance(averaged, dict) and isinstance(averaged.get("weight"), (int, float)):
        trained += (f", then averaged with {str(averaged.get('model') or 'another model')!r} "
                    f"(weight {averaged['weight']:g}; scripts/average_models.py)" if detailed
                    else ", then averaged with another model")
    return (f"{name}: x{config.get('scale')} super-resolution, preset {config.get('preset')}, "
            f"{trained}")


def card_text(name: str, config: dict[str, Any], metadata: dict[str, Any]) -> str:
    """The card as text for ``cvdm info MODEL``."""
    card = card_of(metadata)
    lines = [summary_line(name, config, metadata, detailed=True)]
    for key in CARD_FIELDS:
        lines.append(f"{key.replace('_', ' ')}: {card[key]}")
    lines.append("PSF width: " + _psf_line(config, metadata))
    return "\n".join(lines)


def _psf_line(config: dict[str, Any], metadata: dict[str, Any]) -> str:
    """What the model knows of the input's blur: guessed (blind) or told (conditioned)."""
    from .psf_width import DEFAULT_PSF_SIGMA, trained_range_of

    widths = trained_range_of(metadata)
    if widths is None:
        trained = "trained widths not recorded"
    else:
        low, high = widths
        trained = f"trained on {low:g}{'' if low == high else f'-{high:g}'} output pixels"
    if not config.get("psf_conditioned"):
        return f"blind (the model infers it from the image; {trained})"
    default = metadata.get("psf_sigma_default", DEFAULT_PSF_SIGMA)
    return (f"told (psf_sigma / --psf-sigma / the widget's psf sigma; when not given, "
            f"estimated from the image where sharper than the default {default}, else "
            f"{default}; {trained})")
