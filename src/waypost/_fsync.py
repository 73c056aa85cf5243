"""fsync(2) of a file or a directory named by its path.

For what the caller did not write through a descriptor of its own: a rename
into a directory (the directory's entry), or the pages another library (sqlite)
wrote into a file. On Linux fsync flushes the inode's dirty pages whatever mode
the descriptor was opened with, so a read-only one serves both.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
