"""A thread's I/O priority (Linux `ioprio_set(2)` / `ioprio_get(2)`).

For bench/agent/wal_fsync.py: whether checkpoint-like writes in the idle
class let a WAL-like fdatasync go first on this disk (they did not,
measurably; docs/benchmarks.md 5b). The idle class needs no privilege.

The C library has no wrapper for these calls, so they go through
`syscall(2)` by number; on other platforms and architectures
`get_priority` answers None and `set_priority` False, and the caller
carries on at the normal priority.
"""

from __future__ import annotations

import ctypes
import platform
import sys
from collections.abc import Callable

#: (ioprio_set, ioprio_get) by machine: x86_64's own table, and the generic
#: one that arm64 and riscv64 share (asm-generic/unistd.h).
_NUMBERS = {"x86_64": (251, 252), "aarch64": (30, 31), "arm64": (30, 31), "riscv64": (30, 31)}
#: IOPRIO_WHO_PROCESS: `who` is a process or thread id, 0 the calling thread.
_WHO_PROCESS = 1
_CLASS_SHIFT = 13
#: IOPRIO_CLASS_IDLE, level 0 (the idle class has no levels).
IDLE = 3 << _CLASS_SHIFT


def _syscall() -> tuple[Callable[..., int], int, int] | None:
    numbers = _NUMBERS.get(platform.machine()) if sys.platform == "linux" else None
    if numbers is None:
        return None
    call = ctypes.CDLL(None, use_errno=True).syscall
    call.restype = ctypes.c_long
    return call, *numbers


_CALL = _syscall()


def get_priority() -> int | None:
    """The calling thread's I/O priority, as the kernel encodes it
    (class << 13 | level); None where it cannot be read."""
    if _CALL is None:
        return None
    call, _set, number = _CALL
    value = int(call(number, _WHO_PROCESS, 0))
    return None if value < 0 else value


def set_priority(value: int) -> bool:
    """Set the calling thread's I/O priority; whether the kernel took it."""
    if _CALL is None:
        return False
    call, number, _get = _CALL
    return int(call(number, _WHO_PROCESS, 0, value)) == 0
