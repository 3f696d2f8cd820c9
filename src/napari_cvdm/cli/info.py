"""``cvdm info [MODEL]``: versions, devices, presets and bundled models, or a model's card."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="versions, devices, bundled models, parameter counts; "
                                    "with MODEL, that model's card",
                       epilog="examples: cvdm info | cvdm info demo | "
                              "cvdm info my.cvdm.safetensors")
    p.add_argument("model", nargs="?", default=None, metavar="MODEL",
                   help="a bundled model name or a .cvdm.safetensors file: print its card "
                        "(description, licence, citation, training data, intended use, "
                        "limits) without loading its weights (default: none)")


MAX_LINE = 2000  # characters of one card line printed (a name may be megabytes)


def model_card(model: str) -> str:
    """The card of a bundled model or model file, from its header (weights not loaded)."""
    from ..model_card import card_text
    from ..model_files import _config_from_header, check_weight_index, model_file_of, \
        model_path, weights_sha256
    from ..model_header import MODEL_SUFFIX, newer_writer_explains, read_model_header
    from . import _one_line

    path = model_path(model)
    if path.suffix.lower() == ".zip":  # a bioimage.io package: the card of its model file
        with model_file_of(path) as inner:
            card = model_card(str(inner))
        # the attachment's place was temporary: name the package instead
        return "\n".join(f"package: {_one_line(path)}" if line.startswith("file: ") else line
                         for line in card.splitlines())
    header = read_model_header(path)
    # a card only for a file load_model would take: its configuration, and the weights'
    # names and shapes (the safetensors index; no weights read)
    with newer_writer_explains(header):
        check_weight_index(path, _config_from_header(path, header))
    metadata = _no_line_breaks(header["metadata"])  # one card line per field, whatever
    name = metadata.get("name") or path.name.removesuffix(MODEL_SUFFIX)  # the file says
    text = (f"{card_text(name, header['config'], metadata)}\n"
            f"file: {path}\nsha256: {weights_sha256(path)}\n"
            f"written by: napari-cvdm {header.get('version', '?')}")
    # the file's text may hold terminal escapes: each line is printed as plain text
    return "\n".join(_one_line(line[:MAX_LINE]) for line in text.splitlines())


def _no_line_breaks(value):
    """``value`` with the line breaks in its text escaped (a name holding "\n" would start
    a line of its own on the card, looking like another field)."""
    if isinstance(value, str):
        return value.replace("\r", "\\r").replace("\n", "\\n")
    if isinstance(value, dict):
        return {k: _no_line_breaks(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_line_breaks(v) for v in value]
    return value


def run(args) -> int:
    if getattr(args, "model", None) is not None:
        print(model_card(args.model))
        return 0
    import torch

    from .. import __version__
    from ..devices import available_devices
    from ..model import CVDM, PRESETS
    from ..model_card import summary_line
    from ..model_files import BUNDLED, bundled_model_path
    from ..model_header import read_model_header

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
    print("bundled models (cvdm info NAME shows a model's card):")
    for name in BUNDLED:
        path = bundled_model_path(name)
        if path.is_file():
            header = read_model_header(path)
            print(f"  {summary_line(name, header['config'], header.get('metadata') or {})}, "
                  f"{path}")
        else:
            print(f"  {name}: not installed")
    return 0
