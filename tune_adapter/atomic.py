"""Files that appear whole or not at all: written beside their place, then renamed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """`write(staging)` then rename onto `path`; a crash leaves the old file or none."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.tmp")
    try:
        write(staging)
        # Some writers (safetensors) create 0600 files; give it the mode a plain open() would.
        os.chmod(staging, 0o666 & ~_umask())
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
