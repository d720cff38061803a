"""A trained adapter, as InfiniteTalk loads it: export, reload, merge into its weights.

`export_adapter` writes `audio_proj.safetensors` (InfiniteTalk's `audio_proj.*` keys) and
`adapter_config.json` (the shapes and the trial's record). `merge_into` writes a copy of an
InfiniteTalk weights file with those tensors replaced and all others byte-identical.
"""

from __future__ import annotations

import json
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


def export_adapter(checkpoint_dir: Path, out_dir: Path, info: dict) -> Path:
    """Write `out_dir/audio_proj.safetensors` and `out_dir/adapter_config.json`; returns out_dir."""
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    if not is_checkpoint(checkpoint_dir):
        raise ConfigError(f"{checkpoint_dir} is not a checkpoint (no {STATE_FILE} and {ADAPTER_FILE})")
    dims = AdapterDims.from_json(json.loads((checkpoint_dir / STATE_FILE).read_text())["dims"])
    weights = load_file(checkpoint_dir / ADAPTER_FILE)
    AudioProjModel(dims).load_state_dict(weights, strict=True)  # refuse a checkpoint that does not fit
    clash = set(info) & set(dims.to_json())
    if clash:
        raise ValueError(f"export info must not redefine the adapter's dims: {sorted(clash)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    prefixed = {PREFIX + k: v.contiguous() for k, v in weights.items()}
    atomic_write(out_dir / WEIGHTS_FILE, lambda p: save_file(prefixed, p, metadata={"format": "pt"}))
    config = {**dims.to_json(), "key_prefix": PREFIX, "weights": WEIGHTS_FILE, **info}
    atomic_write(out_dir / CONFIG_FILE, lambda p: p.write_text(json.dumps(config, indent=1, default=str)))
    return out_dir


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


def merge_into(export: Path, infinitetalk_file: Path, out_file: Path,
               allow_config_change: bool = False) -> list[str]:
    """Copy `infinitetalk_file` to `out_file` with its `audio_proj.*` tensors replaced.

    Returns messages for the user (warnings, files written besides `out_file`).
    """
    infinitetalk_file, out_file = Path(infinitetalk_file), Path(out_file)
    dims, tensors, _ = read_export(export)
    if not infinitetalk_file.is_file():
        raise ConfigError(f"--merge-into {infinitetalk_file} does not exist: give InfiniteTalk's weights file")
    if out_file.resolve() == infinitetalk_file.resolve():
        raise ConfigError(f"the merged copy would overwrite {infinitetalk_file}: write it elsewhere")
    target = {e.name: e for e in read_layout(infinitetalk_file).entries if e.name.startswith(PREFIX)}
    if not target:
        raise ConfigError(f"{infinitetalk_file} has no {PREFIX}* tensors: is it InfiniteTalk's weights file?")
    messages = _window_warnings(dims, target)
    mismatch = _first_mismatch(tensors, target)
    if mismatch and not allow_config_change:
        raise ConfigError(
            f"{mismatch} in {infinitetalk_file}: InfiniteTalk could not load the merged file "
            "with its current config; pass --allow-config-change to write it with the config it needs"
        )
    dtype = TORCH_DTYPE.get(next(iter(target.values())).dtype, torch.float32)
    replace = {name: t.to(TORCH_DTYPE.get(target[name].dtype, dtype) if name in target else dtype)
               for name, t in tensors.items()}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    write_replaced(infinitetalk_file, out_file, replace, drop=set(target) - set(tensors))
    if any(t.dtype != tensors[n].dtype for n, t in replace.items()):
        messages.append(f"the adapter was stored as {next(iter(replace.values())).dtype} to match "
                        f"{infinitetalk_file.name} (InfiniteTalk casts to its own dtype when loading)")
    if mismatch:
        messages.append(f"wrote {_write_config_note(dims, out_file)}: the config InfiniteTalk needs for this adapter")
    return messages


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


def _window_warnings(dims: AdapterDims, target: dict) -> list[str]:
    implied = target_dims(target, dims.layers, dims.channels)
    if implied is None:
        return [f"cannot tell W and S from the target's {PREFIX}* shapes (L={dims.layers}, C={dims.channels})"]
    warnings = []
    for label, name in (("audio window W", "audio_window"), ("vae scale S", "vae_scale")):
        ours, theirs = getattr(dims, name), getattr(implied, name)
        if ours != theirs:
            warnings.append(f"warning: {label} is {ours} in the export but the target file implies {theirs}")
    return warnings


def _write_config_note(dims: AdapterDims, out_file: Path) -> Path:
    """The WanModel settings the merged file needs, for the user to apply to InfiniteTalk."""
    note = out_file.with_name(f"{out_file.stem}.infinitetalk_config.json")
    wan_kwargs = {
        "audio_window": dims.audio_window, "vae_scale": dims.vae_scale,
        "intermediate_dim": dims.intermediate_dim, "context_tokens": dims.context_tokens,
        "output_dim": dims.output_dim, "norm_output_audio": dims.norm_output_audio,
    }
    changed = {k: v for k, v in wan_kwargs.items() if v != getattr(INFINITETALK_DIMS, k)}
    content = {
        "add_to_ckpt_dir_config_json": wan_kwargs,
        "differs_from_infinitetalk": changed,
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


