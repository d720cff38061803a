"""Packs at a URI (`file://`, `s3://`, `gs://`, ...), reached through `pyarrow.fs`.

`tune-adapter pack --out URI` builds the pack locally and uploads it, each split's
`index.json` last: a URI holds a pack once both indexes are there, never half of one.
Trials never read a URI directly: each node stages the pack into its own cache
(staging.py) and maps that copy.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from ..errors import DataError
from .pack import INDEX_FILE, PACK_FORMAT, VERIFIED_FILE

SPLITS = ("train", "val")
# One request per 32 MiB, not pyarrow's 1 MiB: per-request costs dominate object stores (a
# 256 MiB object from moto's server: 5.9 MiB/s in 1 MiB reads, 120 in 32 MiB, 141 in 64 MiB);
# with pyarrow's 8 I/O threads at most 256 MiB are in flight.
COPY_CHUNK = 32 << 20


def is_uri(location: str | Path | None) -> bool:
    """A URI (scheme://...), as opposed to a local folder."""
    return isinstance(location, str) and "://" in location


def filesystem_of(uri: str, flag: str = "--data") -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for a URI and the path within it (query options such as
    `?endpoint_override=` are the filesystem's)."""
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(f"{flag} {uri}: not a URI pyarrow can open ({one_line(exc)}): use file://, "
                        "s3:// or gs:// followed by a path") from None


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def read_remote_indexes(uri: str) -> dict[str, dict]:
    """Both splits' indexes at a URI (refused in one line where it holds no pack of this
    format), read before anything is fetched."""
    fs, base = filesystem_of(uri)
    indexes = {}
    for split in SPLITS:
        try:
            with fs.open_input_stream(f"{base}/{split}/{INDEX_FILE}") as stream:
                index = json.loads(stream.read())
        except FileNotFoundError:
            raise DataError(f"--data {uri} holds no pack (no {split}/{INDEX_FILE}): build one with "
                            f"tune-adapter pack --manifest M --out {uri}") from None
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise DataError(f"--data {uri}: cannot read {split}/{INDEX_FILE} ({one_line(exc)})") from None
        if index.get("format") != PACK_FORMAT:
            raise DataError(f"--data {uri} is a pack of format {index.get('format')}, and this version reads "
                            f"format {PACK_FORMAT}: rebuild it with tune-adapter pack --manifest M --out {uri}")
        indexes[split] = index
    return indexes


def check_empty_destination(uri: str) -> None:
    """`pack --out URI` never writes over anything: refuse a URI that holds files."""
    fs, base = filesystem_of(uri, "--out")
    try:
        held = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True, recursive=False))
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"--out {uri}: cannot list it ({one_line(exc)})") from None
    if held:
        raise DataError(f"--out {uri} is not empty: give a new location (a pack is never written over)")


def upload_pack(local: Path, uri: str) -> None:
    """Copy a pack folder (train/, val/) to a URI: the shards first, the indexes last."""
    fs, base = filesystem_of(uri, "--out")
    here = pafs.LocalFileSystem()
    later = []
    for split in SPLITS:
        for path in sorted((Path(local) / split).rglob("*")):
            if path.is_dir() or path.name == VERIFIED_FILE:
                continue
            relative = path.relative_to(local).as_posix()
            if path.name == INDEX_FILE:
                later.append(relative)
                continue
            copy(here, str(path), fs, f"{base}/{relative}", uri)
    for relative in later:
        copy(here, str(Path(local) / relative), fs, f"{base}/{relative}", uri)


def download(uri: str, relative: str, dest: Path) -> None:
    """One file or folder of the pack at `uri` into `dest`."""
    fs, base = filesystem_of(uri)
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    copy(fs, f"{base}/{relative}", pafs.LocalFileSystem(), str(dest), uri)


def copy(source: pafs.FileSystem, src: str, destination: pafs.FileSystem, dest: str, uri: str) -> None:
    try:
        is_folder = source.get_file_info(src).type == pafs.FileType.Directory
        destination.create_dir(dest if is_folder else dest.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(src, dest, source_filesystem=source, destination_filesystem=destination,
                        chunk_size=COPY_CHUNK, use_threads=True)
    except (pa.ArrowException, OSError) as exc:
        if is_disk_full(exc):
            raise  # the caller's to name, and to clean up after
        raise DataError(f"{uri}: copying {src} to {dest} failed ({one_line(exc)})") from None


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT, from the OS or as pyarrow words it (its errors carry no errno)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(words in str(exc) for words in ("No space left on device", "Disk quota exceeded"))
