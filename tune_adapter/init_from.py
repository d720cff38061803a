"""A run's starting adapter (`--init-from PATH`): read it, then check it against the run.

PATH may be InfiniteTalk's weights file (only its `audio_proj.*` tensors are read, lazily:
the file is many GB), an export folder (`audio_proj.safetensors` + `adapter_config.json`),
a checkpoint folder, a `train --output-dir` or a search trial's folder (their newest
checkpoint). Every refusal is a one-line ConfigError naming the path, the tensor and the fix.

What the shapes say (adapter.py): `proj1.weight` is `[I, W*L*C]`, `proj1_vf.weight` is
`[I, (W+S-1)*L*C]`, `proj3.weight` is `[K*D, I]`, `norm.weight` is `[D]` when the norm is on.
So I and the norm are read directly; W and S both need L*C (only the products W*L*C and
(W+S-1)*L*C are stored: W 5 S 4 at L*C 9216 has the widths of W 10 S 7 at L*C 4608), and
L and C enter only as their product. D is the norm's width; without a norm only K*D is
stored. None of these is guessed: L*C (and D without a norm) come from the run's data,
or from the dims an export or checkpoint recorded (`InitialAdapter.dims`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .adapter import AdapterDims, AudioProjModel
from .checkpoint import ADAPTER_FILE, STATE_FILE, is_checkpoint
from .config import flag_name
from .errors import ConfigError

FLAG = "--init-from"
PREFIX = "audio_proj."  # InfiniteTalk's key names for the adapter
EXPORT_WEIGHTS = "audio_proj.safetensors"  # export.py's WEIGHTS_FILE and CONFIG_FILE
EXPORT_CONFIG = "adapter_config.json"
KINDS = ("infinitetalk", "export", "checkpoint")
# AudioProjModel's layers and their tensors; the norm's only when norm_output_audio.
LAYERS = ("proj1", "proj1_vf", "proj2", "proj3", "norm")
TENSORS = tuple(f"{layer}.{p}" for layer in LAYERS for p in ("weight", "bias"))
WHAT_PATH_MAY_BE = ("give InfiniteTalk's weights file (.safetensors), an export folder, "
                    "a checkpoint folder or a train --output-dir")


@dataclass(frozen=True)
class InitialAdapter:
    """An adapter to start from: its tensors under AudioProjModel's key names (as stored,
    dtype included) and what their shapes fix. W and S need L*C: see `dims`."""

    path: Path  # as given to --init-from
    kind: str  # one of KINDS
    source: Path  # the file or checkpoint folder actually read
    key_prefix: str  # how the source names the tensors ("audio_proj." or "")
    state: dict[str, torch.Tensor]
    recorded: AdapterDims | None  # the dims an export or checkpoint wrote beside its tensors

    @property
    def intermediate_dim(self) -> int:
        return self.state["proj1.weight"].shape[0]

    @property
    def norm_output_audio(self) -> bool:
        return "norm.weight" in self.state

    @property
    def first_in(self) -> int:
        """proj1's input width: W*L*C."""
        return self.state["proj1.weight"].shape[1]

    @property
    def latter_in(self) -> int:
        """proj1_vf's input width: (W+S-1)*L*C."""
        return self.state["proj1_vf.weight"].shape[1]

    @property
    def tokens_width(self) -> int:
        """proj3's output width: K*D."""
        return self.state["proj3.weight"].shape[0]

    @property
    def output_dim(self) -> int | None:
        """D: the norm's width, else the recorded one; None when neither says."""
        if self.norm_output_audio:
            return self.state["norm.weight"].shape[0]
        return self.recorded.output_dim if self.recorded is not None else None

    def name(self, key: str) -> str:
        """A tensor's name as the source file stores it."""
        return self.key_prefix + key

    def dims(self, layers: int | None = None, channels: int | None = None,
             output_dim: int | None = None) -> AdapterDims:
        """The adapter's dims given the data's L and C (and D when there is no norm);
        without them, the recorded ones. Raises ConfigError when the shapes do not fit."""
        record = self.recorded
        layers = layers if layers is not None else (record.layers if record else None)
        channels = channels if channels is not None else (record.channels if record else None)
        if layers is None or channels is None:
            raise ConfigError(f"{FLAG} {self.path}: W and S need the data's L and C (only "
                              f"W*L*C = {self.first_in} is stored): give them")
        d = self.output_dim if self.norm_output_audio else (output_dim or self.output_dim)
        if not d:
            raise ConfigError(f"{FLAG} {self.path}: the adapter has no norm, so only K*D = "
                              f"{self.tokens_width} ({self.name('proj3.weight')}) is stored: give D")
        if self.tokens_width % d:
            raise ConfigError(f"{FLAG} {self.path}: {self.name('proj3.weight')} makes K*D = "
                              f"{self.tokens_width}, not a multiple of D {d}: use targets of "
                              "the adapter's teacher")
        dims = self.solve(layers, channels, output_dim)
        if dims is None:
            raise ConfigError(
                f"{FLAG} {self.path}: {self.name('proj1.weight')} takes {self.first_in} inputs "
                f"and {self.name('proj1_vf.weight')} {self.latter_in}, which do not fit "
                f"L {layers} x C {channels}: use features from the wav2vec2 model the adapter "
                "was trained with"
            )
        return dims

    def solve(self, layers: int, channels: int, output_dim: int | None = None) -> AdapterDims | None:
        """`dims` without raising: None when L*C (or D) does not fit the shapes."""
        frame = layers * channels
        extra = self.latter_in - self.first_in  # (S-1)*L*C
        d = self.output_dim if self.norm_output_audio else (output_dim or self.output_dim)
        if (frame < 1 or self.first_in % frame or extra % frame or extra < frame
                or not d or self.tokens_width % d):
            return None
        return AdapterDims(
            audio_window=self.first_in // frame, vae_scale=extra // frame + 1,
            layers=layers, channels=channels, intermediate_dim=self.intermediate_dim,
            context_tokens=self.tokens_width // d, output_dim=d,
            norm_output_audio=self.norm_output_audio,
        )


def read_initial_adapter(path: Path) -> InitialAdapter:
    """Read the adapter at PATH (any kind in the module's docstring); ConfigError otherwise."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{FLAG} {path} does not exist: {WHAT_PATH_MAY_BE}")
    if path.is_file():
        if path.name == EXPORT_WEIGHTS and (path.parent / EXPORT_CONFIG).is_file():
            return _read_export(path, path.parent)
        if path.name == ADAPTER_FILE and is_checkpoint(path.parent):
            return _read_checkpoint(path, path.parent)
        return _read_infinitetalk(path)
    if (path / EXPORT_WEIGHTS).is_file() and (path / EXPORT_CONFIG).is_file():
        return _read_export(path, path)
    checkpoint = find_checkpoint(path)
    if checkpoint is None:
        raise ConfigError(
            f"{FLAG} {path} is a folder without an adapter (no {EXPORT_WEIGHTS} + {EXPORT_CONFIG}, "
            f"no {ADAPTER_FILE} + {STATE_FILE}, no checkpoints/epoch_* or checkpoint_*): "
            f"{WHAT_PATH_MAY_BE}"
        )
    return _read_checkpoint(path, checkpoint)


def find_checkpoint(folder: Path) -> Path | None:
    """The checkpoint a folder stands for: itself, else the newest of a train --output-dir's
    `checkpoints/epoch_N` or of a search trial's `checkpoint_N` (as `export --checkpoint`)."""
    folder = Path(folder)
    if is_checkpoint(folder):
        return folder
    for pattern, parent in ((r"epoch_(\d+)", folder / "checkpoints"), (r"checkpoint_(\d+)", folder)):
        found = [(int(m.group(1)), p) for p in parent.glob("*")
                 if (m := re.fullmatch(pattern, p.name)) and is_checkpoint(p)]
        if found:
            return max(found)[1]
    return None


def _read_infinitetalk(path: Path) -> InitialAdapter:
    """Only the `audio_proj.*` tensors: safe_open reads each one from its byte range."""
    try:
        with safe_open(path, framework="pt") as f:
            names = [k for k in f.keys() if k.startswith(PREFIX)]
            tensors = {k.removeprefix(PREFIX): f.get_tensor(k) for k in names}
    except Exception as exc:  # safetensors raises its own types for a bad header or file
        raise ConfigError(f"{FLAG} {path} is not a readable safetensors file ({_one_line(exc)}): "
                          f"{WHAT_PATH_MAY_BE}") from None
    if not tensors:
        raise ConfigError(f"{FLAG} {path} has no {PREFIX}* tensors: give InfiniteTalk's weights "
                          "file (weights/InfiniteTalk/single/infinitetalk.safetensors), an export "
                          "or a checkpoint")
    return _checked(InitialAdapter(path, "infinitetalk", path, PREFIX, tensors, None))


def _read_export(given: Path, folder: Path) -> InitialAdapter:
    config_path, weights_path = folder / EXPORT_CONFIG, folder / EXPORT_WEIGHTS
    try:
        config = json.loads(config_path.read_text())
        recorded = AdapterDims.from_json(config)
        prefix = config.get("key_prefix", PREFIX)
        with safe_open(weights_path, framework="pt") as f:
            tensors = {k.removeprefix(prefix): f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    except Exception as exc:
        raise ConfigError(f"{FLAG} {given}: the export is unreadable ({_one_line(exc)}): export "
                          "it again with `tune-adapter export` or `tune-adapter best --export`") from None
    if not tensors:
        raise ConfigError(f"{FLAG} {given}: {weights_path.name} has no {prefix}* tensors: export it "
                          "again with `tune-adapter export`")
    return _checked(InitialAdapter(given, "export", weights_path, prefix, tensors, recorded))


def _read_checkpoint(given: Path, folder: Path) -> InitialAdapter:
    try:
        recorded = AdapterDims.from_json(json.loads((folder / STATE_FILE).read_text())["dims"])
        with safe_open(folder / ADAPTER_FILE, framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise ConfigError(f"{FLAG} {given}: checkpoint {folder} is unreadable ({_one_line(exc)}): "
                          "give another checkpoint") from None
    return _checked(InitialAdapter(given, "checkpoint", folder, "", tensors, recorded))


def _checked(initial: InitialAdapter) -> InitialAdapter:
    """Refuse tensors that are not one AudioProjModel's, or that differ from its record."""
    state, where = initial.state, f"{FLAG} {initial.path}"
    fix = "give an adapter written by InfiniteTalk or tune-adapter"
    for key in state:
        if key not in TENSORS:
            raise ConfigError(f"{where}: {initial.name(key)} is not a tensor of InfiniteTalk's "
                              f"AudioProjModel: {fix}")
    has_norm = "norm.weight" in state or "norm.bias" in state
    for key in TENSORS[:8] + (TENSORS[8:] if has_norm else ()):
        if key not in state:
            raise ConfigError(f"{where}: {initial.name(key)} is missing: {fix}")
    for key, t in state.items():
        if t.dim() != (2 if key.endswith(".weight") and not key.startswith("norm") else 1):
            raise ConfigError(f"{where}: {initial.name(key)} has shape {list(t.shape)}, not an "
                              f"AudioProjModel's: {fix}")
    inter, kd = initial.intermediate_dim, initial.tokens_width
    expected = {"proj1.bias": [inter], "proj1_vf.weight": [inter, initial.latter_in],
                "proj1_vf.bias": [inter], "proj2.weight": [inter, inter], "proj2.bias": [inter],
                "proj3.weight": [kd, inter], "proj3.bias": [kd]}
    if has_norm:
        expected["norm.bias"] = [initial.output_dim]
    for key, shape in expected.items():
        if list(state[key].shape) != shape:
            raise ConfigError(f"{where}: {initial.name(key)} is {list(state[key].shape)} but "
                              f"{initial.name('proj1.weight')} and the others need {shape}: {fix}")
    if initial.latter_in <= initial.first_in or (has_norm and kd % initial.output_dim):
        raise ConfigError(f"{where}: the widths of {initial.name('proj1.weight')}, "
                          f"{initial.name('proj1_vf.weight')} and {initial.name('proj3.weight')} "
                          f"are not an AudioProjModel's: {fix}")
    if initial.recorded is not None:
        want = expected_shapes(initial.recorded)
        for key in TENSORS:
            if want.get(key) != (list(state[key].shape) if key in state else None):
                raise ConfigError(
                    f"{where}: {initial.name(key)} is {list(state[key].shape) if key in state else 'absent'} "
                    f"but the recorded dims need {want.get(key) or 'none'}: the folder was edited; "
                    "give another export or checkpoint")
    return initial


def expected_shapes(dims: AdapterDims) -> dict[str, list[int]]:
    """Every tensor's shape in an AudioProjModel of `dims` (built on the meta device)."""
    with torch.device("meta"):
        model = AudioProjModel(dims)
    return {k: list(v.shape) for k, v in model.state_dict().items()}


# What each tensor's shape depends on, and how a user changes each dim.
DEPENDS = {"proj1.weight": ("audio_window", "layers", "intermediate_dim"),
           "proj1_vf.weight": ("audio_window", "vae_scale", "layers", "intermediate_dim"),
           "proj3.weight": ("context_tokens", "output_dim", "intermediate_dim"),
           "proj3.bias": ("context_tokens", "output_dim"),
           "norm.weight": ("output_dim", "norm_output_audio"),
           "norm.bias": ("output_dim", "norm_output_audio")}
LABELS = {"audio_window": "W", "vae_scale": "S", "intermediate_dim": "I", "context_tokens": "K",
          "output_dim": "D"}
FLAGGED = ("audio_window", "vae_scale", "intermediate_dim")  # dims a train flag sets


def check_initial_adapter(initial: InitialAdapter, dims: AdapterDims, partial: bool = False
                          ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """What to load into the run's AudioProjModel of `dims`, and the tensors that start fresh.

    Without `partial`, any tensor whose shape differs (or that one side lacks) is refused,
    naming both shapes and the flag that differs. With it, each layer whose tensors all fit
    is loaded and the others start fresh, bias included: a bias trained for other weights is
    no better a start. Tensors the run has no place for (a norm it turned off) are left out.
    """
    want = expected_shapes(dims)
    have = {k: list(v.shape) for k, v in initial.state.items()}
    state, fresh = {}, []
    for layer in LAYERS:
        keys = [k for k in want if k.startswith(layer + ".")]
        if keys and all(have.get(k) == want[k] for k in keys):
            state.update({k: initial.state[k] for k in keys})
        else:
            fresh += keys
    unused = [k for k in TENSORS if k in have and k not in want]
    if not partial and (fresh or unused):
        key = next((k for k in fresh if have.get(k) != want[k]), None) or unused[0]
        raise ConfigError(_mismatch(initial, dims, key, have.get(key), want.get(key)))
    return state, fresh


def check_init_space(initial: InitialAdapter, probed, data, partial: bool) -> None:
    """Refuse, before any trial, a search whose space gives the adapter other shapes than
    the starting one's (unless `partial`): each trial would fail the same way."""
    if partial:
        return
    from .config import TrainConfig

    shapes = data.train.shapes
    theirs = initial.dims(shapes.layers, shapes.channels, shapes.token_dim)
    default = TrainConfig()
    for field, label in (("audio_window", "W"), ("vae_scale", "S"), ("intermediate_dim", "I"),
                         ("norm_output_audio", "norm")):
        values = probed.returned.get(field, {getattr(default, field)}) - {None}
        wanted = getattr(theirs, field)
        if values and values != {wanted}:
            given = ", ".join(str(v) for v in sorted(values))
            raise ConfigError(f"{FLAG} {initial.path}: the space sets {field} to {given}, but the "
                              f"adapter's {label} is {wanted}: fix {field} at {wanted} in the "
                              "space, or add --init-partial")


def load_initial_adapter(model: AudioProjModel, initial: InitialAdapter, partial: bool = False) -> list[str]:
    """Check `initial` against `model.dims` and copy it in; returns the tensors left fresh."""
    state, fresh = check_initial_adapter(initial, model.dims, partial)
    model.load_state_dict(state, strict=not fresh)
    return fresh


def _mismatch(initial: InitialAdapter, dims: AdapterDims, key: str,
              have: list[int] | None, want: list[int] | None) -> str:
    """One line: the tensor, both shapes, the run's values that differ and their fixes."""
    implied = initial.solve(dims.layers, dims.channels, dims.output_dim)
    relevant = DEPENDS.get(key, ("intermediate_dim",))
    if implied is None:
        differ = ["layers"]  # the data's L*C does not divide the stored widths
    else:
        differ = [f for f in relevant if f != "layers" and getattr(implied, f) != getattr(dims, f)]
        if implied.layers * implied.channels != dims.layers * dims.channels:
            differ.append("layers")
    labels, fixes = [], []
    for field in differ:
        ours = getattr(dims, field)
        theirs = getattr(implied, field) if implied is not None else None
        if field in FLAGGED:
            labels.append(f"{LABELS[field]} {ours}")
            fixes.append(f"use {flag_name(field)} {theirs} as the file has")
        elif field == "norm_output_audio":
            labels.append(f"norm {'on' if ours else 'off'}")
            fixes.append("drop --no-norm-output-audio" if theirs else "add --no-norm-output-audio")
        elif field in ("context_tokens", "output_dim"):
            labels.append(f"{LABELS[field]} {ours} (the targets')")
            fixes.append(f"use targets of a teacher with the file's K {implied.context_tokens} "
                         f"and D {implied.output_dim}")
        else:
            labels.append(f"L {dims.layers} x C {dims.channels} (the data's)")
            fixes.append("use features from the wav2vec2 model the adapter was trained with")
    label = f"this run's {', '.join(labels)}" if labels else "this run"
    fixes = list(dict.fromkeys(fixes))  # K and D share one fix
    fix = " and ".join(fixes) + ", or add --init-partial" if fixes else "add --init-partial"
    shape = lambda s: str(s) if s is not None else "absent"  # noqa: E731
    needs = f"needs {want}" if want is not None else "has no such tensor"
    return f"{FLAG} {initial.path}: {initial.name(key)} is {shape(have)}, {label} {needs}: {fix}"


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
