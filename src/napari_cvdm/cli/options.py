"""Command-line options generated from a settings dataclass: one flag per field.

Each field becomes ``--name-with-dashes`` with its help, choices and default shown; the
values come back as the settings object, checked, with a failed check reported under the
flag's name.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

_TYPES = {"int": int, "float": float, "str": str}


def flag(f: dataclasses.Field) -> str:
    return f.metadata.get("cli", "--" + f.name.replace("_", "-"))


def _shown_default(f: dataclasses.Field) -> str:
    if f.default is None or f.metadata.get("auto") == f.default:
        return str(f.metadata.get("auto", "none"))
    return str(f.default)


def add_options(parser, settings_class, skip: tuple[str, ...] = (),
                required: tuple[str, ...] = ()) -> None:
    """One option per field of ``settings_class`` (except ``skip``), defaults from it;
    the ``required`` ones have no default on the command line."""
    for f in dataclasses.fields(settings_class):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        meta = f.metadata
        kwargs: dict[str, Any] = {"dest": f.name, "default": f.default,
                                  "help": f"{meta['help']} (default: {_shown_default(f)})"}
        if isinstance(f.default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _TYPES.get(f.type.split(" ")[0], str)
            if "choices" in meta:
                kwargs["choices"] = tuple(meta["choices"])
            if "metavar" in meta:
                kwargs["metavar"] = meta["metavar"]
        if f.name in required:
            kwargs.update(required=True, help=meta["help"])
            del kwargs["default"]
        parser.add_argument(flag(f), **kwargs)


def settings_from_args(settings_class, args, skip: tuple[str, ...] = (), **extra):
    """The settings object from parsed ``args``; a failed check names the flag."""
    from ..settings import check_field

    values = dict(extra)
    for f in dataclasses.fields(settings_class):
        if f.name in skip or f.metadata.get("cli") is False or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        try:
            check_field(f, value)
        except ValueError as exc:
            raise ValueError(f"{flag(f)}: {exc}") from None
        values[f.name] = value
    return settings_class(**values)


def output_folder(text: str):
    """An -o folder; an empty argument (an unset shell variable) is refused, not taken as the
    current folder."""
    from pathlib import Path

    if not text.strip():
        raise argparse.ArgumentTypeError("empty; give the output folder")
    return Path(text)


def input_folder(text: str):
    """A folder of images to read; an empty argument (an unset shell variable) is refused,
    not taken as the current folder."""
    from pathlib import Path

    if not text.strip():
        raise argparse.ArgumentTypeError("empty; give the folder of images")
    return Path(text)


def output_file(text: str):
    """An -o file; refused when empty or when it ends with a path separator (a folder meant,
    which Path would silently turn into a file of that name)."""
    import os
    from pathlib import Path

    if not text.strip():
        raise argparse.ArgumentTypeError("empty; give the file to write")
    if text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"{text!r} names a folder; give a file name inside "
                                         "it (e.g. my.cvdm.safetensors)")
    return Path(text)
