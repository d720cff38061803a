"""WAV files -> (frame embeddings, teacher tokens) per clip, and the manifests naming them.

Per WAV: InfiniteTalk's audio preparation (`audio_io`), its wav2vec2 embeddings
(`wav2vec`), then its released adapter over the windows (`teacher`). Each clip's two files
are written atomically, tokens last, so a clip whose tokens exist is finished and a rerun
skips it. With `--pack-out`, the clips go straight into the training and validation packs
instead (no tensor files, no float32 copy), which a rerun continues (data/pack.py's
PackBuilder). The settings are recorded in `extract.json`; a rerun with other settings is
refused rather than mixing two teachers' tokens in one dataset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from .adapter import AdapterDims
from .atomic import atomic_write
from .audio_io import AudioError, load_speech
from .data.manifest import ClipEntry, held_out, split_validation
from .errors import ConfigError, DataError
from .runtime import resolve_device
from .teacher import LAYOUTS, load_teacher, read_adapter_tensors, teacher_tokens
from .wav2vec import frame_embeddings, load_audio_encoder

CLIPS_DIR = "clips"
SETTINGS_FILE = "extract.json"
AUDIO_SUFFIXES = (".wav",)


@dataclass(frozen=True)
class ExtractConfig:
    audio_dir: Path
    wav2vec_dir: Path
    teacher: Path
    out: Path
    layout: str = "latent"
    device: str = "auto"
    val_fraction: float | None = None
    pack_out: Path | None = None  # write packs here instead of tensor files under `out`
    pack_dtype: str = "half"


@dataclass
class ExtractResult:
    dims: AdapterDims
    extracted: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)  # finished by an earlier run
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    manifests: dict[str, Path] = field(default_factory=dict)


class ExtractProgress(Protocol):
    def started(self, total: int, dims: AdapterDims) -> None: ...
    def clip_done(self, name: str, status: str) -> None: ...


class NoProgress:
    def started(self, total, dims): pass
    def clip_done(self, name, status): pass


@dataclass(frozen=True)
class ClipFiles:
    name: str  # the WAV's path under --audio-dir
    wav: Path
    audio: str  # output paths, relative to --out
    target: str


def find_wavs(audio_dir: Path) -> list[Path]:
    if not audio_dir.is_dir():
        raise DataError(f"--audio-dir {audio_dir} is not a folder: give the folder holding the WAV files")
    wavs = sorted(p for p in audio_dir.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not wavs:
        raise DataError(f"--audio-dir {audio_dir} holds no .wav files (searched its subfolders too)")
    return wavs


def clip_files(audio_dir: Path, wav: Path) -> ClipFiles:
    rel = wav.relative_to(audio_dir)
    stem = (Path(CLIPS_DIR) / rel).with_suffix("").as_posix()
    return ClipFiles(rel.as_posix(), wav, f"{stem}.audio.pt", f"{stem}.tokens.pt")


def check_settings(config: ExtractConfig, dims: AdapterDims) -> None:
    """Record this run's settings; refuse to continue a folder made with other ones."""
    settings = {"wav2vec_dir": str(config.wav2vec_dir.resolve()), "teacher": str(config.teacher.resolve()),
                "layout": config.layout, "teacher_dims": dims.to_json()}
    if config.pack_out is not None:  # a rerun must pack and split as the first run did
        settings.update(pack_dtype=config.pack_dtype, val_fraction=config.val_fraction)
    folder = config.pack_out or config.out
    path = folder / SETTINGS_FILE
    if path.is_file():
        before = json.loads(path.read_text())
        changed = [k for k in settings if before.get(k) != settings[k]]
        if changed:
            raise ConfigError(
                f"{folder} was extracted with other settings ({', '.join(changed)}: "
                f"{', '.join(str(before.get(k)) for k in changed)}): use another --out or the same flags"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: p.write_text(json.dumps(settings, indent=1)))


def extract(config: ExtractConfig, progress: ExtractProgress | None = None) -> ExtractResult:
    progress = progress or NoProgress()
    if config.layout not in LAYOUTS:
        raise ConfigError(f"--layout {config.layout!r}: use latent or frame")
    if config.val_fraction is not None and not 0 < config.val_fraction < 1:
        raise ConfigError(f"--val-fraction {config.val_fraction} must lie strictly between 0 and 1")
    device = resolve_device(config.device)
    wavs = find_wavs(config.audio_dir)
    tensors = read_adapter_tensors(config.teacher)  # first: it fails faster than a model load
    encoder = load_audio_encoder(config.wav2vec_dir, device)
    teacher = load_teacher(config.teacher, tensors, encoder.layers, encoder.channels, device)
    check_settings(config, teacher.dims)
    result = ExtractResult(teacher.dims)
    progress.started(len(wavs), teacher.dims)
    if config.pack_out is not None:
        return extract_to_packs(config, wavs, encoder, teacher, result, progress)
    done: list[ClipFiles] = []
    for wav in wavs:
        clip = clip_files(config.audio_dir, wav)
        status = process_clip(clip, config, encoder, teacher, result)
        if status != "skipped":
            done.append(clip)
        progress.clip_done(clip.name, status)
    result.manifests = write_manifests(done, config)
    return result


def process_clip(clip: ClipFiles, config: ExtractConfig, encoder, teacher, result: ExtractResult) -> str:
    """Extract one clip unless an earlier run finished it; records and returns what happened."""
    if (config.out / clip.target).is_file() and (config.out / clip.audio).is_file():
        result.resumed.append(clip.name)
        return "resumed"
    try:
        extract_clip(clip, config, encoder, teacher)
    except AudioError as exc:
        result.skipped.append((clip.name, str(exc)))
        return "skipped"
    result.extracted.append(clip.name)
    return "extracted"


def extract_clip(clip: ClipFiles, config: ExtractConfig, encoder, teacher) -> None:
    audio = frame_embeddings(load_speech(clip.wav), encoder)
    tokens = teacher_tokens(teacher, audio, config.layout)
    (config.out / clip.audio).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(config.out / clip.audio, lambda p: torch.save(audio, p))
    atomic_write(config.out / clip.target, lambda p: torch.save(tokens, p))


def extract_to_packs(config: ExtractConfig, wavs: list[Path], encoder, teacher, result: ExtractResult,
                     progress: ExtractProgress) -> ExtractResult:
    """Every clip straight into `--pack-out`'s train/ and val/ packs (split by path hash),
    each built in a folder a rerun continues, published when every WAV is done."""
    from .data import split_roots
    from .data.pack import INDEX_FILE, PackBuilder, publish
    from .data.shards import PACK_DTYPES

    roots = dict(zip(("train", "val"), split_roots(config.pack_out)))
    if all((root / INDEX_FILE).is_file() for root in roots.values()):
        result.resumed = [clip_files(config.audio_dir, wav).name for wav in wavs]
        result.manifests = roots
        return result
    fraction = 0.1 if config.val_fraction is None else config.val_fraction
    builders = {split: PackBuilder(root.parent / f".building-{split}", PACK_DTYPES[config.pack_dtype])
                for split, root in roots.items()}
    finished = set().union(*(b.names for b in builders.values()))
    held = held_out([clip_files(config.audio_dir, wav).name for wav in wavs], fraction)
    for position, wav in enumerate(wavs):
        clip = clip_files(config.audio_dir, wav)
        if clip.name in finished:
            result.resumed.append(clip.name)
            progress.clip_done(clip.name, "resumed")
            continue
        try:
            audio = frame_embeddings(load_speech(clip.wav), encoder)
        except AudioError as exc:
            result.skipped.append((clip.name, str(exc)))
            progress.clip_done(clip.name, "skipped")
            continue
        split = "val" if clip.name in held else "train"
        entry = ClipEntry(position, wav, wav, 1.0, clip.name, config.pack_out / SETTINGS_FILE)
        builders[split].add(entry, audio, teacher_tokens(teacher, audio, config.layout))
        result.extracted.append(clip.name)
        progress.clip_done(clip.name, "extracted")
    for split, builder in builders.items():
        if not builder.clips:
            raise DataError(f"--val-fraction {fraction} left no clip of {config.audio_dir} for {split}: "
                            "add WAV files or change --val-fraction, then run the same command again")
    for split, builder in builders.items():
        builder.finish()
        publish(builder.folder, roots[split])
    result.manifests = roots
    return result


def write_manifests(clips: list[ClipFiles], config: ExtractConfig) -> dict[str, Path]:
    """`train.json` (and `val.json`), split by path hash like `--val-fraction` everywhere."""
    if not clips:
        raise DataError(f"no clip of {config.audio_dir} could be extracted: nothing to write")
    items = [{"audio": c.audio, "target": c.target} for c in clips]
    manifests = {"train": config.out / "train.json"}
    if config.val_fraction is None:
        splits = {"train": items}
    else:
        entries = [ClipEntry(i, config.out / c.audio, config.out / c.target, 1.0, c.audio, manifests["train"])
                   for i, c in enumerate(clips)]
        train, val = split_validation(entries, config.val_fraction)
        splits = {"train": [items[e.position] for e in train], "val": [items[e.position] for e in val]}
        manifests["val"] = config.out / "val.json"
    for split, path in manifests.items():
        atomic_write(path, lambda p, s=split: p.write_text(json.dumps(splits[s], indent=1)))
    stale = config.out / "val.json"
    if "val" not in manifests and stale.is_file():
        stale.unlink()  # an earlier run's split would no longer match train.json
    return manifests
