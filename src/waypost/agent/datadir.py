"""The agent's data directory: its stable node ID, its lock (and, with sqlite, its store).

The node ID is what identifies this agent across restarts, whatever its node
name: the default name is the host name, which changes with every container.
Like Consul's `node-id` file, it is created once (a random UUID) and never
rewritten; an agent started with another `--node` on the same directory
adopts what it registered under its earlier name (see writes.adopt).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from .._exceptions import ConfigError

NODE_ID_FILE = "node-id"
LOCK_FILE = "waypost.lock"  # held by the running agent (_lockfile.py)


def node_id(data_dir: Path) -> str:
    """The node ID kept in `data_dir`, created on first use.

    Raises:
        ConfigError: the directory cannot be written, or the file holds no UUID.
    """
    path = data_dir / NODE_ID_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return _create(path)
    except OSError as exc:
        raise ConfigError(f"cannot read the node ID in {path}: {exc.strerror}") from exc
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise ConfigError(
            f"{path} should hold this agent's node ID (a UUID) but holds {text[:40]!r}; "
            "restore it, or delete it to give the agent a new identity"
        ) from None


def _create(path: Path) -> str:
    """Write a new ID atomically: a crash leaves either no file or a whole one."""
    new = str(uuid.uuid4())
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            f.write(new + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself must survive a crash, or a new ID follows
    except OSError as exc:
        raise ConfigError(f"cannot write the node ID to {path}: {exc.strerror}") from exc
    return new


def _fsync_dir(directory: Path) -> None:
    """fsync a directory (its entries) through a descriptor of its own. Never
    this way for a file another library has open with POSIX locks (sqlite's
    db file): closing any descriptor of a file drops all of the process's
    locks on it (storage/_sqlite_checkpoint.py, the hold)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
