"""One runner per sweep folder: an advisory lock (flock) that the kernel releases when the runner dies."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "runner.lock"


class SweepBusyError(ValueError):
    """Another live runner holds the sweep folder."""


class RunnerLock:
    """Exclusive lock on `<sweep folder>/runner.lock`; while held, `running` rows belong to this runner,
    otherwise they were left by a dead runner."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise SweepBusyError naming the holder's pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SweepBusyError(
                f"another runner (pid {holder}) is working on {self.path.parent}; wait for it or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunnerLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def runner_is_active(folder: str | Path) -> bool:
    """True when a live runner holds the sweep folder's lock."""
    path = Path(folder) / LOCK_NAME
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we may have taken
    return False
