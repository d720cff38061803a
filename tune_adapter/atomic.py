"""Files and folders that appear whole or not at all: written beside their place, then renamed.

The bytes are fsynced before the rename and the parent folder after it: a rename is only
durable once its folder is, and without the first fsync a power loss can leave the new
name pointing at a file whose data never reached the disk (an empty trials.parquet).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """`write(staging)` then rename onto `path`; a crash leaves the old file or none.

    `write` may make a file or a folder of files (a checkpoint) at `staging`; whatever a
    crashed earlier write left there is removed first."""
    path = Path(path)
    staging = staging_path(path)
    _remove(staging)
    try:
        write(staging)
        # Some writers (safetensors) create 0600 files; give them the mode a plain open() would.
        mode = 0o666 & ~_umask()
        for file in [staging] if staging.is_file() else [p for p in staging.rglob("*") if p.is_file()]:
            os.chmod(file, mode)
        fsync_tree(staging)
        _replace(staging, path)
        fsync_path(path.parent)
    finally:
        _remove(staging)


def staging_path(path: Path) -> Path:
    return Path(path).with_name(f".{Path(path).name}.tmp")


def fsync_path(path: Path) -> None:
    """fsync a file's data, or a folder's entries."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """A file, or a folder's files and then the folder itself (its entries)."""
    path = Path(path)
    if path.is_dir():
        for child in sorted(path.iterdir()):
            fsync_tree(child)
    fsync_path(path)


def _replace(staging: Path, path: Path) -> None:
    """os.replace for a file; a folder cannot replace a non-empty one, so the old folder is
    moved aside first and deleted after (a crash between leaves it there, never half of it)."""
    if not staging.is_dir() or not path.is_dir():
        os.replace(staging, path)
        return
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(path, old)
    os.rename(staging, path)
    shutil.rmtree(old, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
