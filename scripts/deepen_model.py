"""Give a trained model one more residual block per U-Net level without changing what it computes.

    python scripts/deepen_model.py MODEL.cvdm.safetensors OUT.cvdm.safetensors \
        [--nets denoiser mean_net]

The new network starts exactly where the trained one is (same outputs to float rounding),
so a continued run (``cvdm train --init OUT ...``) spends its steps on the added capacity
instead of relearning the old. Per level, with ``b`` blocks before:

- encoder: block ``b`` is appended with its last convolution zeroed. Its input and output
  widths are equal, so the block is the identity and its skip equals block ``b - 1``'s.
- decoder: it pops one more skip per level. Block 0 keeps the old block 0, which now reads the
  new (equal) skip. A new block 1 reads the old block 0's skip and ignores it: its 1x1 shortcut
  passes the running features through and its last convolution is zeroed. The old blocks
  1..b move to 2..b+1 and read the skips they read before.

The calibration is dropped: a deepened model is meant to be trained further and recalibrated.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re

import torch

from napari_cvdm.model.cvdm import CVDM
from napari_cvdm.model_files import load_model, save_model

NETS = ("denoiser", "mean_net")


def _deepened_config(config, nets):
    changes = {}
    for name in nets:
        net = getattr(config, name)
        if net is None:
            raise SystemExit(f"this model has no {name}")
        changes[name] = dataclasses.replace(net, blocks_per_level=net.blocks_per_level + 1)
    return dataclasses.replace(config, **changes)


def _zero_last_conv(state, prefix):
    state[prefix + "conv2.weight"].zero_()
    state[prefix + "conv2.bias"].zero_()


def deepen(model, nets=NETS):
    """A model with one more block per level in ``nets``, computing the same function."""
    config = _deepened_config(model.config, nets)
    metadata = copy.deepcopy(model.metadata)
    metadata.pop("calibration", None)
    new = CVDM(config, metadata=metadata)
    old = model.state_dict()
    state = {k: v.detach().clone() for k, v in new.state_dict().items()}
    pattern = re.compile(r"^(\w+)\.(down|up)\.(\d+)\.blocks\.(\d+)\.(.+)$")
    for key in state:
        match = pattern.match(key)
        if not match or match.group(1) not in nets:
            state[key] = old[key].clone()
            continue
        net, side, level, index, rest = match.groups()
        index = int(index)
        b = getattr(model.config, net).blocks_per_level
        if side == "down":
            source = index if index < b else None
        else:
            source = 0 if index == 0 else (None if index == 1 else index - 1)
        if source is not None:
            state[key] = old[f"{net}.{side}.{level}.blocks.{source}.{rest}"].clone()
    for net in nets:
        levels = len(getattr(config, net).channel_mults)
        b = getattr(model.config, net).blocks_per_level
        for level in range(levels):
            _zero_last_conv(state, f"{net}.down.{level}.blocks.{b}.")
            prefix = f"{net}.up.{level}.blocks.1."
            _zero_last_conv(state, prefix)
            shortcut = state[prefix + "skip.weight"]  # (out, in = running + skip, 1, 1)
            shortcut.zero_()
            width = shortcut.shape[0]
            shortcut[:, :width, 0, 0] = torch.eye(width)
            state[prefix + "skip.bias"].zero_()
    new.load_state_dict(state)
    return new.eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("output")
    parser.add_argument("--nets", nargs="+", choices=NETS, default=list(NETS))
    args = parser.parse_args(argv)
    model = load_model(args.model).float()
    new = deepen(model, tuple(args.nets))
    save_model(new, args.output)
    count = sum(p.numel() for p in new.parameters())
    print(f"{args.output}: {count:,} parameters ({2 * count / 1e6:.1f} MB in float16)")


if __name__ == "__main__":
    main()
