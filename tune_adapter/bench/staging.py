"""`tune-adapter bench --staging`: what a pack at a URI costs a node, and a search.

A synthetic pack (bench/data.py's) is uploaded to an S3 endpoint (`--uri`, else moto's
server started here on 127.0.0.1), then staged into a fresh node cache: fetched and checked
against its sha256s. Measured: upload, a cold stage (and the sha256 check alone), a warm one
(the copy already there), and a one-trial search's wall time on the pack as a local folder
against the same search from the URI with an empty cache: the delay staging adds before the
first trial.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MB = 2**20


@dataclass
class StagingResult:
    uri: str
    endpoint: str
    pack_bytes: int
    upload_s: float
    cold_s: float
    verify_s: float
    warm_s: float
    search_local_s: float
    search_uri_s: float


def bench_staging(work_dir: Path, size_gb: float = 2.0, uri: str | None = None,
                  progress: Callable[[str], None] = lambda _: None) -> StagingResult:
    from .data import DataBenchSpec, write_pack
    from .s3_endpoint import make_bucket, s3_server

    work = Path(tempfile.mkdtemp(prefix="staging-", dir=Path(work_dir).resolve()))
    try:
        with ExitStack() as stack:
            endpoint = uri or "moto_server on 127.0.0.1"
            if uri is None:
                os.environ.update(stack.enter_context(s3_server()))
                make_bucket("bench")
                uri = f"s3://bench/pack-{os.getpid()}"
            progress(f"writing a {size_gb:g} GB pack")
            write_pack(work / "pack", size_gb, DataBenchSpec(size_gb=size_gb))
            return measure(work, uri, endpoint, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(work: Path, uri: str, endpoint: str, progress: Callable[[str], None]) -> StagingResult:
    from ..data.pack import mismatched_files, read_index
    from ..data.remote import upload_pack
    from ..data.staging import release_leases, stage_pack

    local = work / "pack"
    pack_bytes = sum(f.stat().st_size for f in local.rglob("*") if f.is_file())
    progress(f"uploading to {uri}")
    upload_s = timed(lambda: upload_pack(local, uri))
    progress("staging into an empty node cache")
    cold = stage_pack(uri, work / "node-cache")
    verify_s = timed(lambda: [mismatched_files(cold.folder / split, read_index(cold.folder / split))
                              for split in ("train", "val")])
    warm = stage_pack(uri, work / "node-cache")
    release_leases()
    progress("a one-trial search on the local folder, then on the URI")
    search_local_s = timed(lambda: one_trial_search(work, str(local), work / "cache-local"))
    search_uri_s = timed(lambda: one_trial_search(work, uri, work / "cache-uri"))
    return StagingResult(uri, endpoint, pack_bytes, upload_s, cold.seconds, verify_s, warm.seconds,
                         search_local_s, search_uri_s)


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def one_trial_search(work: Path, data: str, cache: Path) -> None:
    """The tiny space, one trial of one epoch, each trial's node cache empty at first."""
    from ..search import SearchOptions, run_search
    from ..space import SHIPPED_DIR

    os.environ["TUNE_ADAPTER_CACHE"] = str(cache)  # the driver's and (local Ray) the trial's
    options = SearchOptions(space=SHIPPED_DIR / "tiny.py", data=data, num_samples=1, max_epochs=1, baseline=False,
                            storage=work / "results", name=f"search-{cache.name}", quiet=True)
    run_search(options)


def staging_sections(result: StagingResult) -> list:
    from .report import Row, Section

    mb = result.pack_bytes / MB
    rate = lambda seconds: mb / seconds if seconds > 0 else float("nan")  # noqa: E731
    return [
        Section(f"Pack at {result.uri} ({result.endpoint})", [
            Row("pack", mb, "MiB", "bench --data's synthetic pack: train/ and val/, shards of 256 MiB"),
            Row("upload (pack --out URI)", result.upload_s, "s", f"{rate(result.upload_s):.0f} MiB/s"),
            Row("stage into an empty node cache", result.cold_s, "s",
                f"{rate(result.cold_s):.0f} MiB/s: fetch, sha256 of every file, publish"),
            Row("of which the sha256 check, measured apart", result.verify_s, "s",
                f"{rate(result.verify_s):.0f} MiB/s, the files in the page cache"),
            Row("stage again (the copy is there)", result.warm_s, "s", "the indexes read, the copy found"),
        ]),
        Section("A one-trial search (tiny space, 1 epoch), start to end", [
            Row("--data FOLDER", result.search_local_s, "s", "the pack on this machine"),
            Row("--data URI, empty node cache", result.search_uri_s, "s",
                f"{result.search_uri_s - result.search_local_s:+.1f} s: the staging before the first trial"),
        ]),
    ]
