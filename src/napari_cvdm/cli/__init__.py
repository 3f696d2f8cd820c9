"""The ``cvdm`` command: predict, train, info. It mirrors the widget's options.

Each subcommand is a module of this package with ``add_parser(subparsers)`` and ``run(args)``;
the options of predict and train are generated from the settings dataclasses
(:mod:`napari_cvdm.settings`, :mod:`napari_cvdm.cli.options`).
"""

from __future__ import annotations

import argparse
import contextlib
import sys

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a reader that went away

# name -> module (in this package); a new subcommand registers here.
COMMANDS = {"predict": "predict", "train": "train", "info": "info", "export": "export"}

# What to change when memory runs out, in this front end's words.
MEMORY_HINTS = {"predict": "use a smaller --tile-size, a smaller --batch-size or fewer "
                           "--samples, or --device cpu",
                "train": "use a smaller --batch-size or --patch-size"}


def _module(name: str):
    import importlib

    return importlib.import_module(f".{COMMANDS[name]}", __name__)


def _parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="cvdm", description=(
        "Super-resolution with per-pixel uncertainty (Conditional Variational Diffusion "
        "Model)."), epilog="run 'cvdm COMMAND --help' for the options of each command")
    parser.add_argument("--version", action="version", version=f"napari-cvdm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        _module(name).add_parser(sub)
    return parser


def _one_line(message: object) -> str:
    """The message on one line: control characters (a newline in a file name) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))


@contextlib.contextmanager
def _warnings_on_one_line(command: str):
    """The package's own Python warnings raised while a command runs (in this process) are
    said as the command's other warnings are ("cvdm predict: warning: ..."), not as
    "file.py:297: UserWarning: ..." and a line of the package's source; other libraries'
    warnings keep Python's form, which names where they come from."""
    import os
    import warnings

    shown = warnings.showwarning
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep

    def show(message, category, filename, lineno, file=None, line=None):
        if not os.path.abspath(str(filename)).startswith(package):
            shown(message, category, filename, lineno, file, line)
            return
        target = sys.stderr if file is None else file
        if target is None:  # no stderr (pythonw): never onto stdout, the results' stream
            return
        text = " ".join(str(message).splitlines())
        with contextlib.suppress(OSError):  # stderr closed by its reader
            print(f"cvdm {command}: warning: {_one_line(text)}", file=target)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (``kill``, ``timeout``, a batch scheduler, a closed terminal),
    handled as Ctrl-C is: no partial output is left, a training keeps its checkpoint."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def _termination_as_cancel():
    """While a command runs, SIGTERM and SIGHUP raise :class:`Terminated` in the main
    thread, so that the clean-up a Ctrl-C runs runs for them too (their default kills the
    process and leaves temporary files). A signal someone else handles or ignores (nohup
    ignores SIGHUP) is left alone; the previous handlers come back afterwards."""
    import signal
    import threading

    installed = {}
    received: list[int] = []

    def handler(signum, frame):
        received.append(signum)
        for sig in installed:  # a second signal must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        raise Terminated(signum)

    if threading.current_thread() is threading.main_thread():
        for name in ("SIGTERM", "SIGHUP"):
            sig = getattr(signal, name, None)
            with contextlib.suppress(ValueError, OSError, TypeError):
                if sig is not None and signal.getsignal(sig) == signal.SIG_DFL:
                    installed[sig] = signal.signal(sig, handler)
    try:
        yield received
    finally:
        for sig, previous in installed.items():
            signal.signal(sig, previous)


def _cancelled(command: str, exc: BaseException | None = None) -> int:
    """Exit code 130 with what is kept: training says which checkpoint (its ``Cancelled``
    message); a prediction never leaves a partial output."""
    from ..errors import Cancelled

    if command == "train":
        kept = str(exc) if isinstance(exc, Cancelled) and str(exc) else "cancelled"
    else:
        kept = "cancelled; no partial output was written"
    print(f"\ncvdm {command}: {kept}".replace(" :", ":"), file=sys.stderr)
    return EXIT_CANCELLED


@contextlib.contextmanager
def _unencodable_escaped():
    """Text that standard output's encoding cannot show (an emoji or CJK file name under a
    Windows code page or a C locale, output redirected) is written escaped (``\\U0001f600``),
    as stderr does, instead of raising UnicodeEncodeError: that is a ValueError, and it
    stopped a batch as bad input after the file's outputs were written."""
    stream = sys.stdout
    before = getattr(stream, "errors", None)
    try:
        stream.reconfigure(errors="backslashreplace")
    except (AttributeError, ValueError, OSError):  # not a text wrapper, or closed
        before = None
    try:
        yield
    finally:
        if before is not None:
            with contextlib.suppress(AttributeError, ValueError, OSError):
                stream.reconfigure(errors=before)


def _stdout_closed() -> bool:
    """Whether standard output's reader has gone (``cvdm info MODEL | head -1``); if so,
    stdout is pointed at the null device so that Python's exit does not complain again."""
    import os
    import select

    try:
        fd = sys.stdout.fileno()
        poll = select.poll()  # not on Windows: there the error is reported as any other
        poll.register(fd, select.POLLOUT)
        closed = any(events & select.POLLERR for _, events in poll.poll(0))
        if closed:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)
        return closed
    except (AttributeError, OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 1 out of memory or a file system error, 2 bad input (one line
    on stderr saying what and how to fix it), 130 cancelled (Ctrl-C, also while starting),
    143 / 129 stopped by SIGTERM / SIGHUP (cleaned up as a cancel is), 141 standard output
    closed by its reader (silently).
    argparse exits with 2 for malformed options. Anything else is a bug and shows its
    traceback."""
    try:
        args = _parser().parse_args(argv)
    except KeyboardInterrupt:
        return _cancelled("")
    command = args.command
    with _termination_as_cancel() as received, _warnings_on_one_line(command), \
            _unencodable_escaped():
        code = _run(command, args)
    return 128 + received[0] if received and code == EXIT_CANCELLED else code


def _run(command: str, args: argparse.Namespace) -> int:
    try:
        from ..errors import Cancelled, TrainingDiverged, is_out_of_memory

        handler = _module(command).run
        return handler(args)
    except ValueError as exc:
        print(f"cvdm {command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (Cancelled, KeyboardInterrupt) as exc:
        return _cancelled(command, exc)
    except BrokenPipeError as exc:
        if _stdout_closed():  # stop quietly, like any Unix tool; finished outputs are kept
            return EXIT_CLOSED_PIPE
        print(f"cvdm {command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, TrainingDiverged) as exc:
        print(f"cvdm {command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # MemoryError is an Exception: OutOfMemory, torch's, Python's
        if not is_out_of_memory(exc):
            raise
        message = _one_line(exc)[:200] or type(exc).__name__
        print(f"cvdm {command}: error: out of memory ({message}); {MEMORY_HINTS[command]}",
              file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
