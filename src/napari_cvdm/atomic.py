"""Atomic file writes: a complete new file or the old one, never a half-written file.

Every writer in napari-cvdm goes through :func:`atomic_write` or :func:`atomic_group`:
the data goes to a temporary file beside the target, renamed over it only once complete.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def file_mode() -> int:
    """The mode a new file gets here: 0666 minus the umask (0644 with the usual umask)."""
    return 0o666 & ~_umask()


def output_exists(path: str | os.PathLike) -> ValueError:
    """The error for an existing output that may not be replaced (one wording everywhere)."""
    return ValueError(f"the output {path} exists; allow overwriting to replace it "
                      "(cvdm: --overwrite; Python: overwrite=True)")


def plain_os_error(exc: OSError, path: str | os.PathLike) -> OSError:
    """``exc`` with a message a user can act on (disk full, read-only, permission)."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC:
        return OSError(errno.ENOSPC, f"No space left on device while writing {path}; free "
                       "some space or choose another output folder")
    if code == errno.EDQUOT:
        return OSError(errno.EDQUOT, f"disk quota exceeded while writing {path}")
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return OSError(code, f"cannot write {path}: {os.strerror(code).lower()}")
    if code == errno.ENAMETOOLONG:
        return OSError(code, f"cannot write {path}: the file name is too long")
    return exc


def _no_space(folder: Path) -> OSError:
    return OSError(errno.ENOSPC, f"No space left on device while writing in {folder}; free "
                   "some space or choose another output folder")


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those above it that do not exist (that mkdir(parents=True) creates),
    deepest first: what a run that made them removes again when it leaves them empty."""
    folder = Path(folder)
    missing = []
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    return missing


def _says_no_space(exc: BaseException) -> bool:
    """Whether a writer's own error says the disk is full (in the words of the OS)."""
    text = str(exc)
    return os.strerror(errno.ENOSPC) in text or f"os error {errno.ENOSPC})" in text


def _disk_full(folder: Path, margin: int = 1 << 20) -> bool:
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``path``, on failure it is removed.

    The temporary file is ``.<name>.<random>.part`` beside ``path``. Only a process killed
    outright (SIGKILL, power loss) can leave one behind; nothing reads ``*.part`` files,
    so they never stand in for the real file. The final file has mode 0666 minus the
    umask, whatever the writer did to the temporary file (safetensors replaces it).
    ``overwrite=False`` refuses (FileExistsError) when ``path`` exists at the end.
    """
    with atomic_group([path], overwrite=overwrite) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_group(paths: Sequence[str | os.PathLike],
                 overwrite: bool = True) -> Iterator[list[Path]]:
    """Several files as one unit: all are renamed into place once every one is complete.

    A failure while writing the second leaves neither (an earlier complete set of files
    with the same names stays untouched), and so does a failure, or an interrupt, while
    the files are put in place: those already replaced get their earlier version back.
    Errors are OSError with a plain message ("no space left on device") naming the file.
    """
    targets = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        for path in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=".part",
                                       dir=path.parent)
            os.close(fd)
            temps.append(Path(tmp))
        yield list(temps)
        mode = file_mode()
        for tmp, path in zip(temps, targets):
            os.chmod(tmp, mode)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            if not overwrite and path.exists():
                raise FileExistsError(errno.EEXIST, f"{path} exists; pass overwrite=True "
                                      "(--overwrite) to replace it", str(path))
        _replace_all(temps, targets)
    except FileExistsError:
        raise
    except OSError as exc:
        if getattr(exc, "errno", None) is None and _disk_full(targets[0].parent):
            # numpy's tofile (under tifffile) says "N requested and M written", no errno
            raise _no_space(targets[0].parent) from exc
        where = Path(exc.filename) if getattr(exc, "filename", None) else targets[0].parent
        for tmp, path in zip(temps, targets):  # name the output, not its temporary twin
            if where == tmp:
                where = path
        raise plain_os_error(exc, where) from exc
    except Exception as exc:  # writers (tifffile) may report a full disk in their own words
        # safetensors says "No space left on device (os error 28)", and its temporary file
        # is then empty again, so the disk no longer looks full
        if _disk_full(targets[0].parent) or _says_no_space(exc):
            raise _no_space(targets[0].parent) from exc
        raise
    finally:
        for tmp in temps:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _replace_all(temps: Sequence[Path], targets: Sequence[Path]) -> None:
    """Rename each of ``temps`` over its target, all or none.

    Each existing target is first kept under a hidden backup name of its own (a hard link
    where the file system has them, else a rename). If a rename fails, or the process is
    interrupted, the targets already replaced get their backup back (or are removed where
    there was none), so an earlier set of outputs never ends up half new and half old. A
    backup that cannot be put back is kept (``.<name>.<random>.bak``), never deleted.
    """
    backups: dict[Path, Path] = {}
    done: list[Path] = []
    try:
        for path in targets:
            if path.exists() and not path.is_dir():
                backup = path.with_name(f".{path.name[:200]}.{secrets.token_hex(6)}.bak")
                try:
                    os.link(path, backup)
                except OSError:
                    os.replace(path, backup)
                backups[path] = backup
        for tmp, path in zip(temps, targets):
            done.append(path)  # before: an interrupt right after the rename is undone too
            os.replace(tmp, path)
    except BaseException:
        temp_of = dict(zip(targets, temps))
        for path in targets:
            backup = backups.get(path)
            try:
                if backup is not None and (path in done or not os.path.lexists(path)):
                    os.replace(backup, path)
                elif backup is None and path in done and not temp_of[path].exists():
                    path.unlink()  # renamed into place where there was no file before
            except OSError:
                backups.pop(path, None)  # could not be put back: kept, not deleted
        raise
    finally:
        for backup in backups.values():
            with contextlib.suppress(OSError):
                backup.unlink()
