"""One process at a time in a run folder or latent cache: an advisory ``flock`` on ``.lock``.

The lock file holds the PID of the process that has it, for the message of the one refused.
The operating system drops the lock when that process ends, however it ends, so a lock left
by a killed process is simply taken over.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from catdiff.errors import UserError

LOCK_FILE = ".lock"


class FolderLock:
    """``with FolderLock(folder):`` holds ``folder`` (created if missing) for this process; a
    second process is refused with a :class:`UserError` naming the holder's PID."""

    def __init__(self, folder: Path, what: str = "run folder") -> None:
        self.folder, self.what = Path(folder), what
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise UserError(f"cannot write in {self.what} {self.folder} ({error.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(
                f"{self.what} {self.folder} is in use by another catdiff process (PID {holder});"
                " wait for it to finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
