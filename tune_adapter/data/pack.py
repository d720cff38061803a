"""The packed cache: validated clips stored back to back in clip-aligned shards.

A pack is a folder holding `index.json` (format, dtypes, shapes, each shard's files and
sha256, and per clip: offsets, lengths, weight, name and a hash of its audio, so a test set
can be checked apart by content) and `shards/`, each shard the audio rows `[frames, L, C]`
and target rows `[rows, K, D]` of whole clips (shards.py). Audio is stored in bf16 and
targets in fp16 unless `--pack-dtype float32`. Per-frame targets that repeat a row (a
latent's row for each of its S frames) store it once, with `target_map.i32` giving each
frame's stored row. A pack built from a manifest lives in the cache under a hash of the
clip list, the files' sizes and modification times and the dtype, so an unchanged manifest
reuses it and any change builds a new one; `tune-adapter pack` writes one to a folder.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import ConfigError, DataError
from ..windows import latents_of_lengths
from .clips import (
    ClipShapes,
    check_same_shapes,
    check_target_length,
    latent_scales,
    load_clip,
    shapes_of,
)
from .manifest import ClipEntry
from .shards import (DTYPE_NAMES, FP16_MAX, PACK_DTYPES, SHARD_BYTES, ShardedRows, ShardWriter,
                     dtype_named, file_sha256, map_rows, sync)

PACK_FORMAT = 2
CACHE_ENV = "TUNE_ADAPTER_CACHE"
INDEX_FILE = "index.json"
MAP_FILE = "target_map.i32"
VERIFIED_FILE = "verified.json"


def default_cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tune-adapter" / "packs"


def pack_key(entries: list[ClipEntry], pack_dtype: str = "half", shard_bytes: int = SHARD_BYTES) -> str:
    """Hash of what the pack's content depends on: paths, weights, sizes, mtimes, dtype, shards."""
    h = hashlib.sha256(f"tune-adapter pack v{PACK_FORMAT} {pack_dtype} {shard_bytes}\n".encode())
    for e in entries:
        a, t = e.audio.stat(), e.target.stat()
        fields = [e.audio_as_written, str(e.audio), a.st_size, a.st_mtime_ns,
                  str(e.target), t.st_size, t.st_mtime_ns, repr(e.weight)]
        h.update(json.dumps(fields).encode() + b"\n")
    return h.hexdigest()[:32]


@dataclass
class PackedClips:
    """An opened pack: memory-mapped tensors and per-clip index arrays."""

    root: Path
    source: str
    names: list[str]
    audio: ShardedRows  # [frames, L, C], mapped
    targets: ShardedRows  # [stored rows, K, D], mapped
    frames: torch.Tensor  # [clips] video frames T per clip
    audio_offsets: torch.Tensor  # [clips]
    target_rows: torch.Tensor  # [clips] rows of each clip's target, as given (T or n_lat)
    target_offsets: torch.Tensor  # [clips] in those rows
    weights: torch.Tensor  # [clips]
    shapes: ClipShapes
    shard_of_clip: torch.Tensor  # [clips]
    target_map: torch.Tensor | None = None  # [target rows] -> stored row; None: the same

    def __len__(self) -> int:
        return len(self.names)

    @property
    def stored_bytes(self) -> int:
        """The pack's rows on disk: shard files and the target map."""
        files = [*self.audio.files, *self.targets.files]
        return sum(f.stat().st_size for f in files) + (4 * len(self.target_map) if self.target_map is not None else 0)

    def read_ahead(self, shards: list[int]) -> None:
        """Ask the kernel to read these shards now, ahead of their batches."""
        for rows in (self.audio, self.targets):
            rows.read_ahead(shards)

    def release(self, shards: list[int]) -> None:
        """Done with these shards for now (ShardedRows.release)."""
        for rows in (self.audio, self.targets):
            rows.release(shards)

    def take_audio(self, rows: torch.Tensor) -> torch.Tensor:
        """float32 [len(rows), L, C]."""
        return self.audio.take(rows)

    def take_targets(self, rows: torch.Tensor) -> torch.Tensor:
        """float32 [len(rows), K, D], rows counted as the clips' targets were given."""
        stored = rows if self.target_map is None else self.target_map[rows].long()
        return self.targets.take(stored)

    @property
    def total_frames(self) -> int:
        return int(self.frames.sum())

    def is_frame_layout(self) -> bool:
        return bool((self.target_rows == self.frames).all())

    def fits_latents(self, vae_scale: int) -> bool:
        return bool((self.target_rows == latents_of_lengths(self.frames, vae_scale)).all())

    def latent_scales(self) -> list[int]:
        """VAE scales whose latent counts match every clip's target (per-latent layout)."""
        fits = latent_scales(int(self.frames[0]), int(self.target_rows[0]), int(self.frames.max()))
        return [s for s in fits if self.fits_latents(s)]

    def layout(self) -> str:
        return "frame" if self.is_frame_layout() else "latent"

    def layout_for(self, vae_scale: int) -> str:
        """'frame' or 'latent': how targets are compared at this VAE scale, or a ConfigError."""
        if self.is_frame_layout():
            return "frame"
        if self.fits_latents(vae_scale):
            return "latent"
        scales = ", ".join(map(str, self.latent_scales())) or "none"
        raise ConfigError(
            f"{self.source} has per-latent targets that fit vae-scale {scales}, not "
            f"{vae_scale}: set --vae-scale to one of those, or give per-frame targets"
        )


def pack_manifest(entries: list[ClipEntry], source: str, cache_root: Path | None = None,
                  pack_dtype: str = "half", progress: Callable[[], None] | None = None) -> PackedClips:
    """The pack of these clips: reused when it exists, else validated and built."""
    return pack_manifests([(entries, source)], cache_root, pack_dtype, progress=progress)[0]


def pack_manifests(
    splits: list[tuple[list[ClipEntry], str]], cache_root: Path | None = None, pack_dtype: str = "half",
    roots: list[Path] | None = None, shard_bytes: int = SHARD_BYTES, progress: Callable[[], None] | None = None,
) -> list[PackedClips]:
    """Packs for several clip lists, published only once every one of them is valid: in the
    cache under their keys, or at `roots` (`tune-adapter pack`).

    A bad clip anywhere, or a full disk, leaves the cache as it was: nothing half-built
    stays behind.
    """
    if pack_dtype not in PACK_DTYPES:
        raise ConfigError(f"--pack-dtype {pack_dtype}: use one of {', '.join(PACK_DTYPES)}")
    # Absolute: trials in other working folders (Ray's) open the pack by this path.
    cache_root = (Path(cache_root) if cache_root else default_cache_root()).resolve()
    roots = roots or [cache_root / pack_key(entries, pack_dtype, shard_bytes) for entries, _ in splits]
    building: dict[Path, Path] = {}
    made = [p for p in {r.parent for r in roots} if not p.exists()]
    try:
        for (entries, _), root in zip(splits, roots):
            if not (root / INDEX_FILE).is_file() and root not in building:
                root.parent.mkdir(parents=True, exist_ok=True)
                building[root] = Path(tempfile.mkdtemp(prefix=".building-", dir=root.parent))
                _write_pack(entries, building[root], PACK_DTYPES[pack_dtype], shard_bytes, progress)
        _check_same_shapes([building.get(r, r) for r in roots], [src for _, src in splits])
        for root, folder in building.items():
            publish(folder, root)
    except BaseException as exc:
        for folder in building.values():
            shutil.rmtree(folder, ignore_errors=True)
        for folder in made:
            if folder.exists() and not any(folder.iterdir()):
                folder.rmdir()
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DataError(f"no space left on the device of {roots[0].parent} while packing: free "
                            "space there, or pack elsewhere (--cache-dir, $TUNE_ADAPTER_CACHE or "
                            "tune-adapter pack --out); nothing was kept") from None
        raise
    return [open_pack(root, source) for root, (_, source) in zip(roots, splits)]


def _check_same_shapes(folders: list[Path], sources: list[str]) -> None:
    shapes = [json.loads((f / INDEX_FILE).read_text())["shapes"] for f in folders]
    for folder_shapes, source in zip(shapes[1:], sources[1:]):
        if folder_shapes != shapes[0]:
            raise DataError(
                f"{source} has clips with {_describe(folder_shapes)} but {sources[0]} has "
                f"{_describe(shapes[0])}: training and validation clips must share L, C, K, D"
            )


def _describe(shapes: dict) -> str:
    return "L={layers}, C={channels}, K={tokens}, D={token_dim}".format(**shapes)


def publish(building: Path, root: Path) -> None:
    try:
        os.rename(building, root)
    except OSError:
        # Another process published the same pack first; its content is identical.
        if not (root / INDEX_FILE).is_file():
            raise
        shutil.rmtree(building, ignore_errors=True)


def _write_pack(entries: list[ClipEntry], folder: Path, dtypes: dict, shard_bytes: int,
                progress: Callable[[], None] | None = None) -> None:
    builder = PackBuilder(folder, dtypes, shard_bytes, resumable=False)
    try:
        for entry in entries:
            builder.add(entry, *load_clip(entry))
            if progress is not None:
                progress()
    except BaseException:
        builder.abort()
        raise
    builder.finish(entries)


class PackBuilder:
    """A pack written clip by clip into a folder, which can resume after a kill.

    `clips.jsonl` records each clip once its rows are on disk, and each shard once it is
    closed; a builder opened on a folder that has one continues after its last clip (the
    open shard's files cut back to it). `finish` writes the index. Not `resumable` (a pack
    from a manifest, whose folder a failure deletes), files are synced per shard, not per clip.
    """

    JOURNAL = "clips.jsonl"

    def __init__(self, folder: Path, dtypes: dict, shard_bytes: int = SHARD_BYTES, resumable: bool = True):
        self.folder, self.dtypes, self.resumable = Path(folder), dtypes, resumable
        self.folder.mkdir(parents=True, exist_ok=True)
        self.writer = ShardWriter(self.folder, dtypes, shard_bytes, durable=resumable)
        self.clips: list[dict] = []
        self.first: tuple[ClipEntry, ClipShapes] | None = None
        shards = self._read_journal()
        self.writer.resume(shards, [c for c in self.clips if c["shard"] == len(shards)])
        rows = sum(c["target_rows"] for c in self.clips)
        self.target_map = open(self.folder / MAP_FILE, "ab")
        self.target_map.truncate(4 * rows)  # past the last recorded clip: a kill's leftovers
        self.journal = open(self.folder / self.JOURNAL, "a")

    def _read_journal(self) -> list[dict]:
        path = self.folder / self.JOURNAL
        shards, kept = [], 0
        if path.is_file():
            for line in path.read_bytes().splitlines(keepends=True):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut short by a kill: that clip was not recorded
                if not line.endswith(b"\n"):
                    break
                kept += len(line)
                if "shard_done" in record:
                    shards.append(record["shard_done"])
                else:
                    self.clips.append(record)
            os.truncate(path, kept)  # what follows is appended after the last whole record
        if self.clips:
            self.first = (self.entries()[0], ClipShapes(**self.clips[0]["shapes"]))
        return shards

    def entries(self) -> list[ClipEntry]:
        """The recorded clips as manifest entries, for messages that name them."""
        return [ClipEntry(i, Path(c["audio"]), Path(c["target"]), c["weight"], c["name"], self.folder / self.JOURNAL)
                for i, c in enumerate(self.clips)]

    @property
    def names(self) -> set[str]:
        """The clips already in the pack."""
        return {c["name"] for c in self.clips}

    def add(self, entry: ClipEntry, audio: torch.Tensor, target: torch.Tensor) -> None:
        shapes = shapes_of(audio, target)
        self.first = self.first or (entry, shapes)
        check_same_shapes(entry, shapes, *self.first)
        check_target_length(entry, audio.shape[0], target.shape[0])
        stored, rows = distinct_rows(_cast_targets(entry, target, self.dtypes["targets"]))
        shards_before = len(self.writer.done)
        placed = self.writer.add(audio.to(self.dtypes["audio"]), stored)
        self.target_map.write((rows + placed["stored_offset"]).to(torch.int32).numpy().tobytes())
        if self.resumable:
            sync(self.target_map)
        for shard in self.writer.done[shards_before:]:
            self._record({"shard_done": shard})
        self.clips.append({
            "name": entry.audio_as_written, "audio": str(entry.audio), "target": str(entry.target),
            "weight": entry.weight, "audio_sha256": hashlib.sha256(audio.float().numpy().tobytes()).hexdigest(),
            "frames": audio.shape[0], "target_rows": target.shape[0], "stored_rows": len(stored),
            "target_offset": self.clips[-1]["target_offset"] + self.clips[-1]["target_rows"] if self.clips else 0,
            "shapes": vars(shapes), **placed,
        })
        self._record(self.clips[-1])

    def _record(self, record: dict) -> None:
        self.journal.write(json.dumps(record) + "\n")
        if self.resumable:
            sync(self.journal)

    def abort(self) -> None:
        self.writer.abort()
        self.journal.close()
        self.target_map.close()

    def finish(self, entries: list[ClipEntry] | None = None) -> None:
        """Close the last shard and write the index (the pack is then complete); `entries`
        name the clips in messages (else the journal's names)."""
        shards = self.writer.close()
        self.journal.close()
        sync(self.target_map)
        self.target_map.close()
        if not self.clips:
            raise DataError("no clip to pack: the manifest is empty")
        index = {"format": PACK_FORMAT, "dtypes": {k: DTYPE_NAMES[v] for k, v in self.dtypes.items()},
                 "shapes": self.clips[0]["shapes"], "shards": shards, "target_map": None,
                 "clips": [{k: c[k] for k in CLIP_KEYS} for c in self.clips]}
        if sum(c["stored_rows"] for c in self.clips) < sum(c["target_rows"] for c in self.clips):
            index["target_map"] = {"file": MAP_FILE, "sha256": file_sha256(self.folder / MAP_FILE)}
        else:
            (self.folder / MAP_FILE).unlink()
        _check_one_layout(entries or self.entries(), index["clips"])
        (self.folder / self.JOURNAL).unlink()
        (self.folder / INDEX_FILE).write_text(json.dumps(index))


CLIP_KEYS = ("name", "audio", "target", "weight", "shard", "audio_sha256", "frames", "audio_offset",
             "target_rows", "target_offset")


def distinct_rows(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A target's rows with each run of repeated rows stored once, and each row's place among
    them: per-frame targets made from latents repeat a latent's row for its S frames."""
    if len(target) < 2:
        return target, torch.arange(len(target))
    new = torch.ones(len(target), dtype=torch.bool)
    new[1:] = (target[1:] != target[:-1]).flatten(1).any(1)
    return target[new], new.long().cumsum(0) - 1


def _cast_targets(entry: ClipEntry, target: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.float16:
        peak = float(target.abs().max()) if target.numel() else 0.0
        if peak > FP16_MAX:
            raise DataError(f"{entry.label}: target {entry.target} holds values up to {peak:.3g}, "
                            f"beyond float16's {FP16_MAX:.0f}: pack with --pack-dtype float32")
    return target.to(dtype)


def _check_one_layout(entries: list[ClipEntry], clips: list[dict]) -> None:
    """One manifest, one layout: all per-frame, or all per-latent at a common S."""
    if all(c["frames"] == c["target_rows"] for c in clips):
        return
    longest = max(c["frames"] for c in clips)
    latent = next(i for i, c in enumerate(clips) if c["frames"] != c["target_rows"])
    scales = set(latent_scales(clips[latent]["frames"], clips[latent]["target_rows"], longest))
    for i, c in enumerate(clips):
        fits = set(latent_scales(c["frames"], c["target_rows"], longest))
        if not scales & fits:
            raise DataError(
                f"{entries[i].label}: its target ({c['target_rows']} rows for {c['frames']} "
                f"frames) does not share a layout with {entries[latent].label} (per latent at "
                f"S in {sorted(scales)}): one manifest must use one layout; regenerate one of them"
            )
        scales &= fits


def read_index(root: Path, rebuild_hint: str = "") -> dict:
    """A pack's index, refused in one line when it is not a pack of this format."""
    path = Path(root) / INDEX_FILE
    if not path.is_file():
        raise DataError(f"{root} holds no pack (no {INDEX_FILE}): build one with "
                        f"tune-adapter pack --manifest M --out {rebuild_hint or root}")
    index = json.loads(path.read_text())
    if index.get("format") != PACK_FORMAT:
        raise DataError(f"{root} is a pack of format {index.get('format')}, and this version reads "
                        f"format {PACK_FORMAT}: rebuild it with tune-adapter pack --manifest M "
                        f"--out {rebuild_hint or root}")
    return index


def open_pack(root: Path, source: str = "", index: dict | None = None) -> PackedClips:
    """A pack's tensors, mapped; `index`: its index when the caller has read it already."""
    root = Path(root)
    index = index or read_index(root)
    clips, shards = index["clips"], index["shards"]
    shapes = ClipShapes(**index["shapes"])

    def column(key, dtype=torch.long):
        return torch.tensor([c[key] for c in clips], dtype=dtype)

    frames, target_rows = column("frames"), column("target_rows")
    dtypes = {k: dtype_named(v) for k, v in index["dtypes"].items()}
    target_map = None
    if index["target_map"]:
        target_map = map_rows(root / index["target_map"]["file"], int(target_rows.sum()), (), torch.int32)
    return PackedClips(
        root=root,
        source=source or str(root),
        names=[c["name"] for c in clips],
        audio=ShardedRows([root / s["audio"] for s in shards], [s["audio_rows"] for s in shards],
                          (shapes.layers, shapes.channels), dtypes["audio"]),
        targets=ShardedRows([root / s["targets"] for s in shards], [s["target_rows"] for s in shards],
                            (shapes.tokens, shapes.token_dim), dtypes["targets"]),
        frames=frames,
        audio_offsets=column("audio_offset"),
        target_rows=target_rows,
        target_offsets=column("target_offset"),
        weights=column("weight", torch.float32),
        shapes=shapes,
        shard_of_clip=column("shard"),
        target_map=target_map,
    )


def pack_files(index: dict) -> dict[str, str]:
    """Each file of a pack, relative to its root, with the sha256 its index records."""
    files = {s[kind]: s[f"{kind}_sha256"] for s in index["shards"] for kind in ("audio", "targets")}
    if index["target_map"]:
        files[index["target_map"]["file"]] = index["target_map"]["sha256"]
    return files


def verify_pack(root: Path, index: dict) -> None:
    """Check every file of a pack against the sha256 its index records, once: a pack verified
    before, its files unchanged since (size and modification time), is not read again."""
    root = Path(root)
    if is_marked_verified(root, index):
        return
    for name in mismatched_files(root, index)[:1]:
        raise DataError(f"{root / name}: its sha256 does not match the pack's index (the file "
                        "is damaged or was changed): rebuild the pack with tune-adapter pack")
    mark_verified(root, index)


def mismatched_files(root: Path, index: dict) -> list[str]:
    """The pack's files (relative names) missing or not matching their recorded sha256."""
    return [name for name, digest in pack_files(index).items()
            if _stamp(root / name) is None or file_sha256(root / name) != digest]


def is_marked_verified(root: Path, index: dict) -> bool:
    marker = Path(root) / VERIFIED_FILE
    return marker.is_file() and json.loads(marker.read_text()) == _stamps(root, index)


def mark_verified(root: Path, index: dict) -> None:
    try:
        (Path(root) / VERIFIED_FILE).write_text(json.dumps(_stamps(root, index)))
    except OSError:
        pass  # a read-only pack is verified again next time


def _stamps(root: Path, index: dict) -> dict:
    return {name: _stamp(Path(root) / name) for name in pack_files(index)}


def _stamp(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def clip_identities(pack: PackedClips) -> list[tuple[str, str, str]]:
    """(name, resolved audio path, sha256 of the audio tensor in float32) per clip: what
    tells a held-out clip from a training one."""
    clips = read_index(pack.root)["clips"]
    return [(c["name"], c["audio"], c["audio_sha256"]) for c in clips]
