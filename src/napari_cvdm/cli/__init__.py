"""The ``cvdm`` command: predict, train, info. It mirrors the widget's options.

Each subcommand is a module of this package with ``add_parser(subparsers)`` and ``run(args)``.
"""

from __future__ import annotations

import argparse
import sys

from . import info, predict, train

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130

# name -> module; a new subcommand registers here.
COMMANDS = {"predict": predict, "train": train, "info": info}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvdm", description=(
        "Super-resolution with per-pixel uncertainty (Conditional Variational Diffusion Model)."))
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def _one_line(message: object) -> str:
    """The message on one line: control characters (a newline in a file name) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))


def _is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, torch's OutOfMemoryError, or predict's own "out of memory" RuntimeError
    (raised when even its smallest tiles do not fit)."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    import re

    return isinstance(exc, RuntimeError) and re.search(
        r"out of (gpu |cuda |mps |device )?memory|does not fit in the memory",
        str(exc), re.IGNORECASE) is not None


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 1 out of memory or a file system error, 2 bad input (one line
    on stderr saying what and how to fix it), 130 cancelled (Ctrl-C). argparse exits with
    2 for malformed options. Anything else is a bug and shows its traceback."""
    args = _parser().parse_args(argv)
    from ..errors import Cancelled, TrainingDiverged

    handler = COMMANDS[args.command].run
    try:
        return handler(args)
    except ValueError as exc:
        print(f"cvdm {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (Cancelled, KeyboardInterrupt):
        kept = ("the last checkpoint is kept" if args.command == "train"
                else "no partial output was written")
        print(f"\ncvdm {args.command}: cancelled; {kept}", file=sys.stderr)
        return EXIT_CANCELLED
    except (OSError, TrainingDiverged) as exc:
        print(f"cvdm {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        if not _is_out_of_memory(exc):
            raise
        hint = ("use a smaller --tile-size or fewer --samples, or --device cpu"
                if args.command == "predict" else "use a smaller --batch-size or --patch-size")
        print(f"cvdm {args.command}: error: out of memory ({_one_line(exc)[:200]}); {hint}",
              file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
