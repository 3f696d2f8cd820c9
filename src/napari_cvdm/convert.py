"""Convert a trusted PyTorch checkpoint (.pt/.pth/.ckpt) into a napari-cvdm model file.

    python -m napari_cvdm.convert IN.pt OUT.cvdm.safetensors --preset NAME --scale S [--overwrite]

napari-cvdm never unpickles model files: a pickle can run arbitrary code when loaded.
This one-off conversion reads the checkpoint with ``torch.load(weights_only=True)`` (which
refuses pickled objects other than tensors and plain containers), loads the weights
strictly into ``CVDM(CVDMConfig.preset(NAME, scale=S))`` and writes them with
:func:`napari_cvdm.save_model` (safetensors + JSON header). Run it only on files you trust.
The scale has to be given: the weights are the same at every scale, so nothing in the
checkpoint can tell a x2 model from a x4 one.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2
# Where common training frameworks keep the weights inside a checkpoint dictionary.
STATE_KEYS = ("state_dict", "model_state_dict", "model", "ema", "ema_state_dict", "weights")


def _parser() -> argparse.ArgumentParser:
    from .model.config import PRESETS

    parser = argparse.ArgumentParser(
        prog="python -m napari_cvdm.convert",
        description="Convert a trusted PyTorch checkpoint of a CVDM into a .cvdm.safetensors "
                    "model file (no pickle).")
    parser.add_argument("input", type=Path, metavar="IN.pt")
    parser.add_argument("output", type=Path, metavar="OUT.cvdm.safetensors")
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS),
                        help="the configuration the checkpoint was trained with")
    parser.add_argument("--scale", type=int, required=True, choices=(1, 2, 3, 4),
                        help="its super-resolution factor (required: the weights do not "
                             "say it)")
    parser.add_argument("--half", action="store_true", help="store float16 weights")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT if it exists (a napari-cvdm model file only)")
    return parser


def _is_state_dict(obj) -> bool:
    import torch

    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def extract_state_dict(obj) -> dict:
    """The tensor dictionary in a checkpoint: the object itself or one of STATE_KEYS."""
    if _is_state_dict(obj):
        state = obj
    elif isinstance(obj, dict):
        found = [obj[k] for k in STATE_KEYS if _is_state_dict(obj.get(k))]
        if not found:
            raise ValueError("the checkpoint holds no weights dictionary (looked at the top "
                             f"level and at the keys {', '.join(STATE_KEYS)})")
        state = found[0]
    else:
        raise ValueError(f"the checkpoint holds a {type(obj).__name__}, not a weights "
                         "dictionary")
    # nn.DataParallel / DistributedDataParallel prefix every name with "module." (a
    # LightningModule with "model."), and
    # torch.optim.swa_utils.AveragedModel keeps its count beside them.
    state = {k: v for k, v in state.items() if k != "n_averaged"}
    for prefix in ("module.", "model."):  # a LightningModule keeps the network as .model
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _mismatch(expected: dict, found: dict) -> str:
    """What keeps ``found`` from loading into a model with ``expected`` (empty: nothing),
    short: counts and the first few names (torch's own message lists every key)."""
    def some(names) -> str:
        names = sorted(names)
        return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")

    missing = set(expected) - set(found)
    unexpected = set(found) - set(expected)
    shapes = [k for k in set(expected) & set(found)
              if tuple(expected[k].shape) != tuple(found[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights missing ({some(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({some(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} of another shape ({some(shapes)})")
    return "; ".join(parts)


def _why(exc: Exception) -> str:
    """torch.load's reason in a line. Its weights-only refusal explains at length and
    suggests loading with ``weights_only=False`` (running the file's code), which is what
    napari-cvdm will not do: only the line naming what it refused is kept (the line with
    "unsupported GLOBAL" or "WeightsUnpickler", depending on the torch version)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines
             if "unsupported global" in line.lower() or "WeightsUnpickler" in line]
    if named:
        return named[0][:300]
    if lines and lines[0].startswith("Weights only load failed"):
        return "it holds Python objects beyond plain tensors"
    return (lines[0] if lines else "")[:300]


def convert(input_path, output_path, preset: str, scale: int, half: bool = False,
            overwrite: bool = False) -> Path:
    """Convert ``input_path`` (trusted .pt) into ``output_path``; return the output path.
    An existing output is replaced only with ``overwrite`` and only if it is a model file."""
    import torch

    from .model_files import MODEL_SUFFIX, existing_output, load_model, save_model
    from .model_header import leading_bytes, looks_like_safetensors
    from .model.config import CVDMConfig
    from .model.cvdm import CVDM

    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.is_file():
        raise ValueError(f"checkpoint not found: {input_path}")
    if not output_path.name.endswith(MODEL_SUFFIX):
        raise ValueError(f"the output file name must end with {MODEL_SUFFIX}, not "
                         f"{output_path.name!r}")
    if output_path.resolve() == input_path.resolve():
        raise ValueError("the output must not overwrite the input")
    holds = existing_output(output_path)
    if holds == "other":
        raise ValueError(f"{output_path} exists and is not a napari-cvdm model file; give a "
                         "new file name")
    if holds is not None and not overwrite:
        raise ValueError(f"{output_path} exists; pass --overwrite to replace it")
    if looks_like_safetensors(leading_bytes(input_path)):  # nothing to convert
        raise ValueError(f"{input_path} is a safetensors file, not a pickle: napari-cvdm "
                         "reads a napari-cvdm model file directly, whatever its name ends "
                         f"with (rename it to *{MODEL_SUFFIX} to make that clear)")
    try:
        obj = torch.load(input_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, zip errors
        raise ValueError(f"{input_path} could not be loaded as plain weights (torch.load "
                         f"with weights_only=True: {type(exc).__name__}: {_why(exc)}). "
                         "napari-cvdm does not unpickle "
                         "arbitrary objects; save the model's state_dict() from the code "
                         "that trained it") from None
    if (input_path.parent / "rdf.yaml").is_file() and isinstance(obj, dict) and obj \
            and all(str(k).startswith("model.") for k in obj):
        raise ValueError(f"{input_path} holds the network of a napari-cvdm bioimage.io package "
                         "(its weights.pt); give napari-cvdm the package's .zip, or the "
                         f"*{MODEL_SUFFIX} file in it, which also keeps the model's "
                         "calibration") from None
    state = extract_state_dict(obj)
    config = CVDMConfig.preset(preset, scale=scale)
    model = CVDM(config)
    mismatch = _mismatch(model.state_dict(), state)
    if mismatch:
        raise ValueError(f"the weights in {input_path} do not fit the {preset!r} preset: "
                         f"{mismatch}") from None
    model.load_state_dict(state, strict=True)
    for name, value in model.state_dict().items():
        if value.is_floating_point() and not bool(value.isfinite().all()):
            raise ValueError(f"{input_path}: weight {name} contains NaN or infinite values")
    digest = hashlib.sha256(input_path.read_bytes()).hexdigest()
    model.metadata = {"name": output_path.name.removesuffix(MODEL_SUFFIX),
                      "converted_from": {"file": input_path.name, "sha256": digest}}
    save_model(model, output_path, half=half)
    load_model(output_path)  # the written file passes every check a user's load will make
    return output_path


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        out = convert(args.input, args.output, args.preset, args.scale, args.half,
                      args.overwrite)
    except ValueError as exc:
        print(f"convert: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"convert: error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.input} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
