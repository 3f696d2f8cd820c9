"""One training run per model file: a lock beside the output while a run writes it.

Two runs given the same ``-o`` both passed the checks made before their first checkpoint,
then replaced each other's checkpoints; both said "model written" and one run's work was
gone (a session-22 review). A run now holds ``.<name>.lock`` from before its data are loaded
until it ends, and another run that finds it held is refused with whose it is (host and
process id, written in the file). The lock is the operating system's (``flock``): it ends
with the process holding it, however that ends, so a run killed outright leaves nothing to
clean up. Where ``flock`` is missing (Windows) the file's existence is the lock, and a file
left by a process that no longer runs on this host is taken over.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from .atomic import missing_folders

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def lock_path(output: str | os.PathLike) -> Path:
    output = Path(output).expanduser()
    return output.with_name(f".{output.name}.lock")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        return True
    except OSError:
        return False
    return True


def _holder(path: Path) -> tuple[str, int] | None:
    """(host, pid) written in a lock file, or None where it does not read."""
    try:
        host, pid = path.read_text(encoding="utf-8").strip().rsplit(" ", 1)
        return host, int(pid)
    except (OSError, ValueError):
        return None


def _refusal(output, path: Path) -> ValueError:
    holder = _holder(path)
    who = f"process {holder[1]} on {holder[0]}" if holder else "another run"
    return ValueError(f"another training ({who}) is writing {Path(output).name}; wait for it "
                      "to end, or train to another file")


@contextlib.contextmanager
def output_lock(output: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of the model file ``output`` for the block; ValueError where another
    run holds it. The output's folder is made first where it is missing (a lock there is
    what two runs into a new folder need), and removed again if the run leaves it empty."""
    path = lock_path(output)
    created = missing_folders(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # the run's own checks say what is wrong with the folder
        yield
        return
    try:
        with _held(path, output):
            yield
    finally:
        for folder in created:  # a run that wrote nothing leaves no folder
            with contextlib.suppress(OSError):
                folder.rmdir()


@contextlib.contextmanager
def _held(path: Path, output) -> Iterator[None]:
    me = f"{socket.gethostname()} {os.getpid()}"
    if fcntl is None:
        with _held_by_existence(path, output, me):
            yield
        return
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError:  # a folder that takes no new files: the run's own checks say so
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise _refusal(output, path) from None
        os.ftruncate(fd, 0)
        os.write(fd, me.encode("utf-8"))
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()  # while still held: the next run makes a fresh file
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _held_by_existence(path: Path, output, me: str) -> Iterator[None]:
    """The lock without ``flock``: the file's existence (O_EXCL)."""
    for _ in range(2):  # a second try after taking over a stale lock
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is not None and holder[0] == socket.gethostname() and \
                    holder[1] != os.getpid() and not _alive(holder[1]):
                with contextlib.suppress(OSError):
                    path.unlink()  # its process is gone: killed outright
                continue
            raise _refusal(output, path) from None
        except OSError:
            yield
            return
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(me)
        break
    else:
        raise ValueError(f"could not lock {Path(output).name} for this training ({path})")
    try:
        yield
    finally:
        if _holder(path) == (socket.gethostname(), os.getpid()):
            with contextlib.suppress(OSError):
                path.unlink()
