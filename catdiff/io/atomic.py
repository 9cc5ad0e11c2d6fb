"""Replacing files whole or not at all: write beside the target, flush to disk, rename over it.

A write that fails (a full disk, a kill) leaves the old file as it was and no temporary file
behind; a kill at any moment leaves either the old file or the new one, never a mixture.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_file", "fsync_folder", "remove_stale", "temporary_name", "write_bytes"]


def temporary_name(final: Path) -> Path:
    """The hidden temporary beside ``final`` that this process writes first."""
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk, where the platform allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path to write instead of ``final``; on leaving the block without an
    error it is flushed to disk and renamed to ``final``, on an error it is removed."""
    final = Path(final)
    tmp = temporary_name(final)
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, final)
    except OSError as error:  # named by the file meant, not the temporary
        tmp.unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(final)) from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(final.parent)


def write_bytes(final: Path, data: bytes) -> Path:
    """Replace ``final`` by ``data`` atomically. Serialise in memory first (``safetensors.torch.save``,
    ``torch.save`` to a buffer), so that a full disk is an ``OSError`` like any other write."""
    with atomic_file(Path(final)) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def remove_stale(folder: Path, pattern: str) -> list[Path]:
    """Remove what matches ``pattern`` in ``folder`` and was left by a process no longer running
    (the names end in ``-PID``); returns what was removed."""
    removed = []
    for path in folder.glob(pattern):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and process_alive(int(pid)):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
