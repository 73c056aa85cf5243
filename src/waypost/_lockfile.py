"""An exclusive lock on a file, so that one agent at a time uses a store or a data dir.

`fcntl.flock` on a lock file of its own, taken without waiting: a second agent
fails at once with a ConfigError that names what is locked and the pid of the
agent holding it (written into the lock file). The kernel drops the lock when
the holder's descriptor is closed, which includes the holder crashing or being
killed, so there are no stale locks to clean up: a lock file left behind with
a dead pid in it is simply not locked. The descriptor is close-on-exec, so a
child process (a health-check script) never keeps the lock after the agent.

The lock file is never deleted: unlinking it while another process opens it
would let two processes lock two different files of one name.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from ._exceptions import ConfigError


class LockFile:
    """`with LockFile(path, "the data dir /x"):` holds `path` exclusively.

    `what` names the thing the lock protects, for the error message.
    """

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise ConfigError; never waits."""
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot lock {self.what}: {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ConfigError(
                f"{self.what} is in use by another waypost agent ({holder}); stop that agent "
                f"or give this one another path (the lock is on {self.path})"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"cannot lock {self.what}: {self.path}: {exc.strerror}") from exc
        # The pid is only for the message: the lock holds even if it cannot be
        # written (a full disk).
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (a no-op when not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no pid of a holder that is gone
        os.close(fd)

    def __enter__(self) -> LockFile:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _holder(fd: int) -> str:
    """`pid 1234` as written by the holder, or `pid unknown` (it may not have written it yet)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "pid unknown"
