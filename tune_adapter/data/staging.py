"""A node's copies of packs held at URIs: staged once per node, shared, evicted LRU.

`stage_pack(uri)` returns a local folder holding the pack at `uri` (train/, val/), fetched
into this node's cache ($TUNE_ADAPTER_CACHE, or its default, as this node sees it) unless
a copy is there already. A copy is named by a hash of its two indexes, which record every
shard's sha256: a changed pack at the same URI is a new copy, and the same pack at two
URIs is one.

- Concurrent stagers on a node (the driver's staging task and an early trial) take the
  copy's lock in turn: one fetches, the others find it done.
- A copy is fetched into a temporary folder, checked against its sha256s (a mismatching
  file fetched again once) and renamed into place: a crash or a full disk leaves no half
  copy under the copy's name.
- Every process that uses a copy holds a shared lock on its lease file for its lifetime;
  the cache's size limit evicts least recently used copies that no process holds.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import DataError
from .pack import default_cache_root, is_marked_verified, mark_verified, mismatched_files, pack_files
from .remote import SPLITS, download, filesystem_of, is_disk_full, read_remote_indexes

STAGED_FOLDER = "staged"
STAGED_FILE = "staged.json"  # written last: a copy without it is not one
LEASE_FILE = ".lease"
LIMIT_ENV = "TUNE_ADAPTER_CACHE_LIMIT_GB"
GB = 10**9

_held_leases: dict[Path, int] = {}  # copy -> open file holding LOCK_SH, for the process's life


@dataclass(frozen=True)
class Staged:
    folder: Path  # the pack's local copy: train/, val/
    fetched_bytes: int  # 0: the copy was there already
    seconds: float


def staged_root(cache_root: Path | None = None) -> Path:
    return Path(cache_root or default_cache_root()).resolve() / STAGED_FOLDER


def copy_key(indexes: dict[str, dict]) -> str:
    digest = hashlib.sha256()
    for split in SPLITS:
        digest.update(json.dumps(indexes[split], sort_keys=True).encode())
    return digest.hexdigest()[:32]


def cache_limit(root: Path) -> int:
    """Bytes this node's cache of staged packs may hold: $TUNE_ADAPTER_CACHE_LIMIT_GB, else
    half the disk it is on."""
    given = os.environ.get(LIMIT_ENV)
    if given:
        try:
            limit = float(given)
        except ValueError:
            limit = -1.0
        if not limit > 0:
            raise DataError(f"${LIMIT_ENV}={given}: give the staged-pack cache's size limit in GB, above 0")
        return int(limit * GB)
    return shutil.disk_usage(root).total // 2


def stage_pack(uri: str, cache_root: Path | None = None) -> Staged:
    """This node's copy of the pack at `uri`, fetched first where there is none; leased to
    this process for its lifetime."""
    started = time.perf_counter()
    indexes = read_remote_indexes(uri)
    root = staged_root(cache_root)
    root.mkdir(parents=True, exist_ok=True)
    key = copy_key(indexes)
    folder = root / key
    fetched = 0
    with locked(root / f"{key}.lock"):
        if not (folder / STAGED_FILE).is_file():
            fetched = remote_bytes(uri, indexes)
            evict(root, fetched, cache_limit(root), keep=key)
            fetch(uri, indexes, folder)
        hold_lease(folder)
        os.utime(folder / STAGED_FILE)  # its last use, for the LRU order
    return Staged(folder, fetched, time.perf_counter() - started)


def remote_bytes(uri: str, indexes: dict[str, dict]) -> int:
    fs, base = filesystem_of(uri)
    paths = [f"{base}/{split}/{name}" for split in SPLITS for name in pack_files(indexes[split])]
    return sum(info.size or 0 for info in fs.get_file_info(paths))


def fetch(uri: str, indexes: dict[str, dict], folder: Path) -> None:
    """Fetch, verify and publish the copy; nothing stays of a copy that failed."""
    building = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    try:
        for split in SPLITS:
            download(uri, split, building / split)
            verify_fetched(uri, split, indexes[split], building / split)
        (building / LEASE_FILE).touch()
        (building / STAGED_FILE).write_text(json.dumps({"uri": uri, "staged_at": time.time()}))
        os.rename(building, folder)
    except BaseException as exc:
        shutil.rmtree(building, ignore_errors=True)
        if is_disk_full(exc):
            raise DataError(f"no space left on {folder.parent} while staging {uri}: free space there, or "
                            f"point $TUNE_ADAPTER_CACHE at a larger disk; nothing was kept") from None
        raise


def verify_fetched(uri: str, split: str, index: dict, local: Path) -> None:
    """Every file against its sha256; one that does not match is fetched again, once."""
    if is_marked_verified(local, index):
        return
    bad = mismatched_files(local, index)
    for name in bad:
        download(uri, f"{split}/{name}", local / name)
    still = [name for name in mismatched_files(local, index) if name in bad] if bad else []
    if still:
        raise DataError(f"{uri.rstrip('/')}/{split}/{still[0]}: its sha256 does not match the pack's index, "
                        f"fetched twice (the stored pack is damaged): rebuild it with "
                        f"tune-adapter pack --manifest M --out {uri}")
    mark_verified(local, index)


@contextmanager
def locked(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive lock on `path` (made if missing) for the block; with blocking False,
    yields False at once where another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def hold_lease(folder: Path) -> None:
    """A shared lock on the copy's lease file, held until this process ends."""
    folder = Path(folder)
    if folder in _held_leases:
        return
    fd = os.open(folder / LEASE_FILE, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    _held_leases[folder] = fd


def in_use(folder: Path) -> bool:
    """Whether any process (this one included) holds a lease on the copy."""
    try:
        fd = os.open(folder / LEASE_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def copies(root: Path) -> list[tuple[float, int, Path]]:
    """(last use, bytes, folder) of every complete copy, least recently used first."""
    found = []
    for marker in root.glob(f"*/{STAGED_FILE}"):
        folder = marker.parent
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        found.append((marker.stat().st_mtime, size, folder))
    return sorted(found)


def evict(root: Path, needed: int, limit: int, keep: str) -> None:
    """Make room for `needed` bytes under `limit`: remove the least recently used copies
    that no process holds (and none is staging); refuse where that is not enough."""
    if needed > limit:
        raise DataError(f"the pack ({needed / GB:.3g} GB) is larger than this node's staged-pack cache limit "
                        f"({limit / GB:.3g} GB, {root}): raise ${LIMIT_ENV}")
    held = copies(root)
    total = sum(size for _, size, _ in held)
    for _, size, folder in held:
        if total + needed <= limit:
            return
        if folder.name == keep:
            continue
        with locked(root / f"{folder.name}.lock", blocking=False) as mine:
            if not mine or in_use(folder):
                continue
            doomed = root / f".evicting-{folder.name}"
            os.rename(folder, doomed)  # gone from its name at once, then removed
            shutil.rmtree(doomed, ignore_errors=True)
            total -= size
    if total + needed > limit:
        raise DataError(f"this node's staged-pack cache ({root}) holds {total / GB:.3g} GB of packs in use, "
                        f"and this pack needs {needed / GB:.3g} GB more than its limit of {limit / GB:.3g} GB "
                        f"allows: raise ${LIMIT_ENV}, or wait for the searches using them to end")


def release_leases() -> None:
    """Let go of every copy this process leased (its end does the same)."""
    for fd in _held_leases.values():
        os.close(fd)
    _held_leases.clear()
