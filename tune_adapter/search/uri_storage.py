"""`--storage URI` (s3://, gs://): experiments on object storage, as Ray Tune's storage_path.

Tune writes its own state, the trials' results and their checkpoints to URI/NAME itself,
from whichever node runs them. tune-adapter's own files (trials.parquet, epochs.parquet, the
study's journal, TensorBoard's files) are written to a local mirror of the experiment on the
driver's machine, exactly as to a folder, and uploaded to URI/NAME beside Tune's: during the
search (record.MirrorUpload) and whole when it ends. `results`, `best`, `report`
and a `--resume` on another machine fetch them first. A checkpoint is recorded by its URI;
`best --export` fetches the winner's. A `file://` URI is the folder it names.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from ..errors import UserError

# pyarrow and the data package are imported where used: options.py (so the CLI) imports this.

SCRATCH_FOLDER = ".scratch"  # trials' checkpoints before Tune stores them (trial.py); never uploaded
TUNE_FILES = ("experiment_state-", "tuner.pkl", "searcher-state-", "search_gen_state-",
              "basic-variant-state-", ".validate_storage_marker")
SCHEMES = {"s3": "s3", "gcs": "gs"}  # pyarrow's filesystem type_name -> its URI scheme


def is_remote(location: str | Path | None) -> bool:
    """An object-storage URI (a `file://` one is a plain folder)."""
    return isinstance(location, str) and "://" in location and urlparse(location).scheme != "file"


def local_path(location: str | Path) -> Path:
    """A folder given as a path or a file:// URI."""
    text = str(location)
    return Path(urlparse(text).path) if text.startswith("file://") else Path(text)


def mirror_root(storage_uri: str) -> Path:
    """Where this machine keeps its copy of tune-adapter's files of experiments at a URI."""
    from ..data.pack import default_cache_root

    digest = hashlib.sha256(storage_uri.split("?")[0].rstrip("/").encode()).hexdigest()[:16]
    return default_cache_root().resolve().parent / "experiments" / digest


def join(uri: str, *parts: str) -> str:
    base, _, query = uri.partition("?")
    joined = "/".join([base.rstrip("/"), *parts])
    return f"{joined}?{query}" if query else joined


def is_own_file(relative: str) -> bool:
    """tune-adapter's files of an experiment folder, as opposed to Tune's."""
    parts = relative.split("/")
    if parts[0] == SCRATCH_FOLDER or any(part.startswith("checkpoint_") for part in parts):
        return False
    if len(parts) == 1:
        return not parts[0].startswith(TUNE_FILES)
    return parts[-1].startswith("events.out.tfevents")  # trial folders: our TensorBoard files only


def upload_own_files(mirror: Path, uri: str, sent: dict | None = None) -> None:
    """Upload the mirror's own files; with `sent` (relative name -> size and mtime, kept by
    the caller across calls), only those changed since they were last sent."""
    import pyarrow.fs as pafs

    from ..data.remote import copy, filesystem_of

    here = pafs.LocalFileSystem()
    fs, base = filesystem_of(uri, "--storage")
    for path in sorted(Path(mirror).rglob("*")):
        relative = path.relative_to(mirror).as_posix()
        if not path.is_file() or not is_own_file(relative):
            continue
        stamp = (path.stat().st_size, path.stat().st_mtime_ns)
        if sent is not None and sent.get(relative) == stamp:
            continue
        copy(here, str(path), fs, f"{base}/{relative}", uri)
        if sent is not None:
            sent[relative] = stamp


def fetch_own_files(uri: str, mirror: Path) -> bool:
    """Copy tune-adapter's files of the experiment at `uri` into `mirror`; False where the
    URI holds none."""
    import pyarrow.fs as pafs

    from ..data.remote import copy, filesystem_of

    fs, base = filesystem_of(uri, "--storage")
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    found = False
    for info in infos:
        relative = info.path[len(base):].lstrip("/")
        if info.type == pafs.FileType.File and is_own_file(relative):
            copy(fs, info.path, pafs.LocalFileSystem(), str(Path(mirror) / relative), uri)
            found = True
    return found


def checkpoint_location(path: str, filesystem) -> str:
    """A checkpoint's path as the store records it: a URI where Tune keeps it on object
    storage (its path there has no scheme)."""
    scheme = SCHEMES.get(getattr(filesystem, "type_name", "local"))
    return f"{scheme}://{path}" if scheme else path


def checkpoint_fs_path(location: str) -> str:
    """The path within its filesystem of a checkpoint recorded by `checkpoint_location`."""
    return location.split("://", 1)[1] if is_remote(location) else location


def checkpoint_exists(location: str) -> bool:
    if not is_remote(location):
        return Path(location).is_dir()
    import pyarrow.fs as pafs

    from ..data.remote import filesystem_of

    fs, path = filesystem_of(location, "checkpoint")
    return fs.get_file_info(path).type == pafs.FileType.Directory


def fetched_checkpoint(location: str) -> Path:
    """A local folder holding the checkpoint (fetched into a temporary folder from a URI)."""
    if not is_remote(location):
        return Path(location)
    import pyarrow.fs as pafs

    from ..data.remote import copy, filesystem_of

    folder = Path(tempfile.mkdtemp(prefix="tune-adapter-checkpoint-")) / Path(urlparse(location).path).name
    fs, path = filesystem_of(location, "checkpoint")
    copy(fs, path, pafs.LocalFileSystem(), str(folder), location)
    return folder


def open_remote_experiment(uri: str) -> Path:
    """The local mirror of the experiment at `uri`, refreshed from it."""
    parent, _, name = uri.split("?")[0].rstrip("/").rpartition("/")
    mirror = mirror_root(parent) / name
    shutil.rmtree(mirror, ignore_errors=True)  # what the URI holds now, no more
    if not fetch_own_files(uri, mirror):
        raise UserError(f"{uri} holds no experiment (no trials.parquet): give the URI of a search, "
                        "--storage URI/NAME")
    return mirror
