"""One training run per model file: a lock beside the output while a run writes it.

Two runs given the same ``-o`` both passed the checks made before their first checkpoint,
then replaced each other's checkpoints; both said "model written" and one run's work was
gone (a session-22 review). A run now holds ``.<name>.lock`` (its host and process id) from
before its data are loaded until it ends; another run that finds it is refused with whose it
is. A lock left by a process that no longer runs on this host (killed outright) is taken
over; one from another host (a shared disk) cannot be checked and is refused with how to
remove it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path


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


@contextlib.contextmanager
def output_lock(output: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of the model file ``output`` for the block; ValueError where another
    run holds it. Nothing is locked where the output's folder does not exist yet."""
    path = lock_path(output)
    if not path.parent.is_dir():
        yield
        return
    me = f"{socket.gethostname()} {os.getpid()}"
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
            who = f"process {holder[1]} on {holder[0]}" if holder else "another run"
            raise ValueError(f"another training ({who}) is writing {Path(output).name}; wait "
                             "for it to end, or train to another file (if no such run is "
                             f"left, remove {path})") from None
        except OSError:  # a folder that takes no new files: the run's own checks say so
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
