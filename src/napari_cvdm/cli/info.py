"""``cvdm info``: versions, devices, presets and bundled models."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    sub.add_parser("info", help="versions, devices, bundled models, parameter counts")


def run(args) -> int:
    import torch

    from .. import __version__
    from ..devices import available_devices
    from ..io import BUNDLED, bundled_model_path, read_model_header
    from ..model import CVDM, PRESETS

    print(f"napari-cvdm {__version__}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda or 'not built'}), "
          f"python {sys.version.split()[0]}")
    print("devices: " + ", ".join(available_devices()))
    print("presets (parameters for one channel):")
    with torch.device("meta"):
        for name in PRESETS:
            counts = CVDM(PRESETS[name]).parameter_counts()
            print(f"  {name:6s} total {counts['total']:>12,d}  denoiser {counts['denoiser']:>12,d}"
                  f"  schedule {counts['schedule']:>10,d}  mean network {counts['mean']:>10,d}")
    print("bundled models:")
    for name in BUNDLED:
        path = bundled_model_path(name)
        if path.is_file():
            header = read_model_header(path)
            cfg = header["config"]
            training = header.get("metadata", {}).get("training", {})
            print(f"  {name}: preset {cfg.get('preset')}, scale x{cfg.get('scale')}, "
                  f"{training.get('step', '?')} training steps, {path}")
        else:
            print(f"  {name}: not installed")
    return 0


