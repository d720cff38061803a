"""A trained adapter, as InfiniteTalk loads it: export, reload, merge into its weights.

`export_adapter` writes `audio_proj.safetensors` (InfiniteTalk's `audio_proj.*` keys) and
`adapter_config.json` (the shapes and the trial's record). `merge_into` writes a copy of an
InfiniteTalk weights file with those tensors replaced and all others byte-identical.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .adapter import AdapterDims, AudioProjModel, dims_from_state_dict
from .atomic import atomic_write
from .checkpoint import ADAPTER_FILE, STATE_FILE, is_checkpoint
from .errors import ConfigError
from .st_file import TORCH_DTYPE, read_layout, write_replaced

PREFIX = "audio_proj."
WEIGHTS_FILE = "audio_proj.safetensors"
CONFIG_FILE = "adapter_config.json"
# InfiniteTalk's own adapter: WanModel's defaults.
INFINITETALK_DIMS = AdapterDims()


def read_checkpoint_adapter(checkpoint_dir: Path) -> tuple[AdapterDims, dict[str, torch.Tensor]]:
    """A trainer checkpoint's dims and its tensors under InfiniteTalk's `audio_proj.` keys."""
    checkpoint_dir = Path(checkpoint_dir)
    if not is_checkpoint(checkpoint_dir):
        raise ConfigError(f"{checkpoint_dir} is not a checkpoint (no {STATE_FILE} and {ADAPTER_FILE})")
    dims = AdapterDims.from_json(json.loads((checkpoint_dir / STATE_FILE).read_text())["dims"])
    weights = load_file(checkpoint_dir / ADAPTER_FILE)
    AudioProjModel(dims).load_state_dict(weights, strict=True)  # refuse a checkpoint that does not fit
    return dims, {PREFIX + k: v.contiguous() for k, v in weights.items()}


def export_adapter(checkpoint_dir: Path, out_dir: Path, info: dict) -> Path:
    """Write `out_dir/audio_proj.safetensors` and `out_dir/adapter_config.json`; returns out_dir."""
    dims, tensors = read_checkpoint_adapter(checkpoint_dir)
    clash = set(info) & set(dims.to_json())
    if clash:
        raise ValueError(f"export info must not redefine the adapter's dims: {sorted(clash)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / WEIGHTS_FILE, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    config = {**dims.to_json(), "key_prefix": PREFIX, "weights": WEIGHTS_FILE, **info}
    atomic_write(out_dir / CONFIG_FILE, lambda p: p.write_text(json.dumps(config, indent=1, default=str)))
    return out_dir


def load_checkpoint_model(checkpoint_dir: Path) -> AudioProjModel:
    """A fresh AudioProjModel holding a trainer checkpoint's weights (e.g. to score it)."""
    dims, tensors = read_checkpoint_adapter(checkpoint_dir)
    model = AudioProjModel(dims)
    model.load_state_dict({k.removeprefix(PREFIX): v for k, v in tensors.items()}, strict=True)
    return model


def checkpoint_info(checkpoint_dir: Path) -> dict:
    """What a trainer checkpoint says about itself: epoch, metrics, training config."""
    state = json.loads((Path(checkpoint_dir) / STATE_FILE).read_text())
    history = state.get("history") or [{}]
    return {"source_checkpoint": str(Path(checkpoint_dir).resolve()), "epoch": state.get("epoch"),
            "metrics": history[-1], "training_config": state.get("config")}


def merged_path(out_dir: Path, infinitetalk_file: Path) -> Path:
    """Where a merged copy goes by default: the export folder, under the original's name."""
    return Path(out_dir) / Path(infinitetalk_file).name


def read_export(export: Path) -> tuple[AdapterDims, dict[str, torch.Tensor], dict]:
    """An export folder (or its safetensors file): dims, prefixed tensors, full config."""
    export = Path(export)
    folder = export if export.is_dir() else export.parent
    weights_path = export if export.is_file() else folder / WEIGHTS_FILE
    config_path = folder / CONFIG_FILE
    if not weights_path.is_file() or not config_path.is_file():
        raise ConfigError(
            f"{export} is not an export (needs {WEIGHTS_FILE} and {CONFIG_FILE} in one folder): "
            "make one with `tune-adapter best --export DIR` or `tune-adapter export`"
        )
    config = json.loads(config_path.read_text())
    return AdapterDims.from_json(config), load_file(weights_path), config


def load_exported(out_dir: Path) -> AudioProjModel:
    """A fresh AudioProjModel built from adapter_config.json, weights loaded strictly."""
    dims, tensors, _ = read_export(out_dir)
    model = AudioProjModel(dims)
    model.load_state_dict({k.removeprefix(PREFIX): v for k, v in tensors.items()}, strict=True)
    return model


@dataclass
class MergePlan:
    """A checked merge: what replaces what, and what to tell the user. Nothing written yet."""

    infinitetalk_file: Path
    out_file: Path
    dims: AdapterDims
    target_dims: AdapterDims | None  # what the target's shapes imply; None if they do not parse
    replace: dict[str, torch.Tensor]  # in the target's dtype
    drop: set[str]
    shapes_change: bool
    messages: list[str] = field(default_factory=list)


def plan_merge(dims: AdapterDims, tensors: dict[str, torch.Tensor], infinitetalk_file: Path,
               out_file: Path, allow_config_change: bool = False) -> MergePlan:
    """Check a merge of `audio_proj.*` tensors into an InfiniteTalk file; raises ConfigError."""
    infinitetalk_file, out_file = Path(infinitetalk_file), Path(out_file)
    if not infinitetalk_file.is_file():
        raise ConfigError(f"--merge-into {infinitetalk_file} does not exist: give InfiniteTalk's weights file")
    if out_file.resolve() == infinitetalk_file.resolve():
        raise ConfigError(f"the merged copy would overwrite {infinitetalk_file}: write it elsewhere")
    target = {e.name: e for e in read_layout(infinitetalk_file).entries if e.name.startswith(PREFIX)}
    if not target:
        raise ConfigError(f"{infinitetalk_file} has no {PREFIX}* tensors: is it InfiniteTalk's weights file?")
    mismatch = _first_mismatch(tensors, target)
    if mismatch and not allow_config_change:
        raise ConfigError(
            f"{mismatch} in {infinitetalk_file}: InfiniteTalk could not load the merged file "
            "with its current config; pass --allow-config-change to write it with the config it needs"
        )
    implied = target_dims(target, dims.layers, dims.channels)
    # Stored in the target's dtype: InfiniteTalk casts every weight to its own dtype anyway.
    dtype = TORCH_DTYPE.get(next(iter(target.values())).dtype, torch.float32)
    replace = {name: t.to(TORCH_DTYPE.get(target[name].dtype, dtype) if name in target else dtype)
               for name, t in tensors.items()}
    plan = MergePlan(infinitetalk_file, out_file, dims, implied, replace,
                     set(target) - set(tensors), mismatch is not None)
    plan.messages += window_warnings(dims, implied, "the target file implies")
    if any(t.dtype != tensors[n].dtype for n, t in replace.items()):
        plan.messages.append(f"the adapter was stored as {dtype} to match {infinitetalk_file.name} "
                             "(InfiniteTalk casts to its own dtype when loading)")
    return plan


def write_merge(plan: MergePlan) -> list[str]:
    """Write the planned copy (and, when shapes change, the config note); returns messages."""
    plan.out_file.parent.mkdir(parents=True, exist_ok=True)
    write_replaced(plan.infinitetalk_file, plan.out_file, plan.replace, plan.drop)
    messages = list(plan.messages)
    if plan.shapes_change:
        note = _write_config_note(plan.dims, plan.target_dims, plan.out_file)
        messages.append(f"wrote {note}: the config InfiniteTalk needs for this adapter")
    return messages


def merge_into(export: Path, infinitetalk_file: Path, out_file: Path,
               allow_config_change: bool = False) -> list[str]:
    """Copy `infinitetalk_file` to `out_file` with its `audio_proj.*` tensors replaced by an
    export's; every other tensor byte-identical. Returns messages for the user."""
    dims, tensors, _ = read_export(export)
    return write_merge(plan_merge(dims, tensors, infinitetalk_file, out_file, allow_config_change))


def _first_mismatch(tensors: dict[str, torch.Tensor], target: dict) -> str | None:
    for name in sorted(set(tensors) | set(target)):
        ours = list(tensors[name].shape) if name in tensors else None
        theirs = list(target[name].shape) if name in target else None
        if ours != theirs:
            return (f"tensor {name} would change shape from {theirs or 'absent'} "
                    f"to {ours or 'absent'}")
    return None


def target_dims(target: dict, layers: int, channels: int) -> AdapterDims | None:
    """The adapter shapes an InfiniteTalk file implies, given the wav2vec2 layers and channels."""
    shapes = {name: torch.empty(entry.shape, device="meta") for name, entry in target.items()}
    try:
        return dims_from_state_dict(shapes, PREFIX, layers, channels)
    except (KeyError, ValueError):
        return None


def window_warnings(dims: AdapterDims, implied: AdapterDims | None = INFINITETALK_DIMS,
                    source: str = "InfiniteTalk's default config uses") -> list[str]:
    """Warnings for a W or S that InfiniteTalk, as configured, would not use."""
    if implied is None:
        return [f"cannot tell W and S from the target's {PREFIX}* shapes (L={dims.layers}, C={dims.channels})"]
    warnings = []
    for label, name in (("audio window W", "audio_window"), ("vae scale S", "vae_scale")):
        ours, theirs = getattr(dims, name), getattr(implied, name)
        if ours != theirs:
            warnings.append(f"warning: {label} is {ours} in the export but {source} {theirs}")
    return warnings


def _write_config_note(dims: AdapterDims, target: AdapterDims | None, out_file: Path) -> Path:
    """The WanModel settings the merged file needs, for the user to apply to InfiniteTalk."""
    note = out_file.with_name(f"{out_file.stem}.infinitetalk_config.json")
    wan_kwargs = {
        "audio_window": dims.audio_window, "vae_scale": dims.vae_scale,
        "intermediate_dim": dims.intermediate_dim, "context_tokens": dims.context_tokens,
        "output_dim": dims.output_dim, "norm_output_audio": dims.norm_output_audio,
    }
    before = target or INFINITETALK_DIMS
    changed = {k: v for k, v in wan_kwargs.items() if v != getattr(before, k)}
    content = {
        "add_to_ckpt_dir_config_json": wan_kwargs,
        "differs_from_target_file": changed,
        "notes": [
            "InfiniteTalk builds WanModel(**json.load(<--ckpt_dir>/config.json)): add these keys there.",
            "wan/multitalk.py builds the per-frame audio window as "
            "`indices = (torch.arange(2 * 2 + 1) - 2) * 1` (W = 5); for another W use "
            f"`torch.arange({dims.audio_window}) - {dims.audio_window // 2}`.",
            "vae_scale must equal the Wan VAE's temporal stride (4); another S only fits another VAE.",
            f"wav2vec2 features: {dims.layers} layers x {dims.channels} channels per frame.",
        ],
    }
    atomic_write(note, lambda p: p.write_text(json.dumps(content, indent=1)))
    return note


