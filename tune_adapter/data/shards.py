"""A pack's rows on disk: clip-aligned shard files, mapped read-only and shared.

Each shard holds the audio rows and the target rows of whole clips, at most about
`shard_bytes` together, with the sha256 of each file in the pack's index. A mapping that is
read-only and shared costs no memory commitment (a private writable one is counted in full
against RAM + swap, so a pack file larger than those could not be opened), and every
trial on a machine reads the same pages of the page cache.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

# Half precision by default: InfiniteTalk casts its audio to its bf16 parameters anyway,
# and fp16 keeps 3 more bits of the targets than bf16 where they lie (docs/performance.md).
PACK_DTYPES = {
    "half": {"audio": torch.bfloat16, "targets": torch.float16},
    "float32": {"audio": torch.float32, "targets": torch.float32},
}
DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}
SHARD_BYTES = 256 << 20
READ_AHEAD_PIECE = 2 << 20
FP16_MAX = torch.finfo(torch.float16).max


def dtype_named(name: str) -> torch.dtype:
    return {v: k for k, v in DTYPE_NAMES.items()}[name]


def map_rows(path: Path, rows: int, row_shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The file's rows as a tensor over a read-only shared mapping (no copy, no commitment)."""
    return _mapped(path, rows, row_shape, dtype)[0]


def _mapped(path: Path, rows: int, row_shape: tuple[int, ...], dtype: torch.dtype):
    if rows == 0:
        return torch.empty((0, *row_shape), dtype=dtype), None
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    with warnings.catch_warnings():  # read-only by design: nothing writes to a pack
        warnings.filterwarnings("ignore", message=".*not writable.*")
        flat = torch.frombuffer(mapped, dtype=dtype, count=rows * math.prod(row_shape))
    return flat.view(rows, *row_shape), mapped


class ShardedRows:
    """One tensor's rows spread over shard files; `take` gathers rows as float32."""

    def __init__(self, files: list[Path], counts: list[int], row_shape: tuple[int, ...], dtype: torch.dtype):
        self.files, self.counts, self.row_shape, self.dtype = list(files), list(counts), tuple(row_shape), dtype
        mapped = [_mapped(f, n, self.row_shape, dtype) for f, n in zip(self.files, self.counts)]
        self.parts = [part for part, _ in mapped]
        self.maps = [m for _, m in mapped]
        self.starts = torch.tensor([0, *counts], dtype=torch.long).cumsum(0)[:-1]
        self.shape = torch.Size((sum(counts), *self.row_shape))

    def __reduce__(self):  # a worker process maps the files again rather than copying rows
        return ShardedRows, (self.files, self.counts, self.row_shape, self.dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def read_ahead(self, shards: list[int]) -> None:
        # In pieces: the kernel reads at most the device's read-ahead size (read_ahead_kb,
        # often 128 KiB to 8 MiB) of one MADV_WILLNEED call; bench --data saw 8 of 256 MiB.
        for mapped in self._maps_of(shards):
            for start in range(0, len(mapped), READ_AHEAD_PIECE):
                mapped.madvise(mmap.MADV_WILLNEED, start, min(READ_AHEAD_PIECE, len(mapped) - start))

    def release(self, shards: list[int]) -> None:
        """Drop this process's mapping of shards it is done with: their pages, no longer
        mapped, are what the kernel evicts first, not the next window read ahead."""
        for mapped in self._maps_of(shards):
            mapped.madvise(mmap.MADV_DONTNEED)

    def _maps_of(self, shards: list[int]) -> list[mmap.mmap]:
        return [self.maps[s] for s in shards if self.maps[s] is not None]

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        """float32 [len(rows), *row_shape]: the rows at these global indices."""
        if len(self.parts) == 1:
            return self.parts[0].index_select(0, rows).float()
        # A batch's rows come in runs from one shard (a clip never spans two): each run is
        # gathered straight into its slice, then all converted at once (3-4x faster than a
        # masked scatter per shard).
        shard = torch.searchsorted(self.starts, rows, right=True) - 1
        out = torch.empty((len(rows), *self.row_shape), dtype=self.dtype)
        bounds = [0, *((shard[1:] != shard[:-1]).nonzero().squeeze(1) + 1).tolist(), len(rows)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            s = int(shard[a])
            torch.index_select(self.parts[s], 0, rows[a:b] - self.starts[s], out=out[a:b])
        return out.float()

    def __getitem__(self, rows: slice) -> torch.Tensor:
        return self.take(torch.arange(len(self))[rows])


@dataclass
class _Shard:
    number: int
    clips: int = 0
    audio_rows: int = 0
    target_rows: int = 0
    audio_bytes: int = 0
    target_bytes: int = 0
    audio_sha: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    targets_sha: "hashlib._Hash" = field(default_factory=hashlib.sha256)

    @property
    def names(self) -> tuple[str, str]:
        return f"shards/{self.number:05d}.audio", f"shards/{self.number:05d}.targets"

    def entry(self) -> dict:
        audio, targets = self.names
        return {"audio": audio, "targets": targets, "clips": self.clips, "audio_rows": self.audio_rows,
                "target_rows": self.target_rows, "audio_sha256": self.audio_sha.hexdigest(),
                "targets_sha256": self.targets_sha.hexdigest()}


class ShardWriter:
    """Appends clips' rows to clip-aligned shards under a folder being built.

    `resume` continues from the shards closed before and the open shard's clips as a
    journal recorded them (PackBuilder): the open shard's files are cut back to its last
    recorded clip, and their hashes read again."""

    def __init__(self, folder: Path, dtypes: dict[str, torch.dtype], shard_bytes: int = SHARD_BYTES,
                 durable: bool = True):
        # durable: each clip on disk before add returns (a journal may then record it); else
        # each shard once, when it closes.
        self.folder, self.dtypes, self.shard_bytes, self.durable = Path(folder), dtypes, shard_bytes, durable
        (self.folder / "shards").mkdir(parents=True, exist_ok=True)
        self.done: list[dict] = []
        self.shard: _Shard | None = None
        self.files = None

    def resume(self, done: list[dict], open_clips: list[dict]) -> None:
        """`done`: closed shards' entries; `open_clips`: the clips written to the next shard."""
        self.done = list(done)
        if not open_clips:
            return
        shard = _Shard(len(self.done))
        last = open_clips[-1]
        shard.clips, shard.audio_bytes, shard.target_bytes = len(open_clips), last["audio_end"], last["targets_end"]
        shard.audio_rows = sum(c["frames"] for c in open_clips)
        shard.target_rows = sum(c["stored_rows"] for c in open_clips)
        self.files = []
        for name, size, digest in zip(shard.names, (shard.audio_bytes, shard.target_bytes),
                                      (shard.audio_sha, shard.targets_sha)):
            f = open(self.folder / name, "r+b")
            f.truncate(size)
            while block := f.read(8 << 20):
                digest.update(block)
            self.files.append(f)
        self.shard = shard

    def add(self, audio: torch.Tensor, targets: torch.Tensor) -> dict:
        """Write one clip; where it went: its shard, its first audio and target rows
        (global), and the bytes its shard's files end at."""
        if self.shard is None or self.shard.audio_bytes + self.shard.target_bytes >= self.shard_bytes:
            self._next_shard()
        shard = self.shard
        placed = {"shard": shard.number, "audio_offset": self._rows("audio_rows") + shard.audio_rows,
                  "stored_offset": self._rows("target_rows") + shard.target_rows}
        sizes = []
        for data, file, digest in ((audio, self.files[0], shard.audio_sha), (targets, self.files[1], shard.targets_sha)):
            raw = memoryview(data.contiguous().view(torch.uint8).numpy()).cast("B")
            file.write(raw)
            digest.update(raw)
            sizes.append(len(raw))
        if self.durable:
            sync(*self.files)
        shard.audio_bytes += sizes[0]
        shard.target_bytes += sizes[1]
        shard.clips += 1
        shard.audio_rows += audio.shape[0]
        shard.target_rows += targets.shape[0]
        return {**placed, "audio_end": shard.audio_bytes, "targets_end": shard.target_bytes}

    def _rows(self, key: str) -> int:
        return sum(s[key] for s in self.done)

    def _next_shard(self) -> dict | None:
        closed = self.close_shard()
        self.shard = _Shard(len(self.done))
        self.files = [open(self.folder / name, "wb") for name in self.shard.names]
        return closed

    def close_shard(self) -> dict | None:
        """Close the open shard: its index entry (None when none is open)."""
        if self.shard is None:
            return None
        sync(*self.files)
        for f in self.files:
            f.close()
        self.done.append(self.shard.entry())
        self.shard, self.files = None, None
        return self.done[-1]

    def close(self) -> list[dict]:
        """The shards' index entries, every file flushed to disk."""
        self.close_shard()
        return self.done

    def abort(self) -> None:
        for f in self.files or ():
            f.close()
        self.shard, self.files = None, None


def sync(*files) -> None:
    """Flush files to disk."""
    for f in files:
        f.flush()
        os.fsync(f.fileno())


def file_sha256(path: Path, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
