"""Synthetic teacher/student datasets for the quickstart, the tests and the benchmarks.

Frame embeddings are temporally smooth (an AR(1) process per channel, like wav2vec2
features that change slowly from frame to frame). A seeded teacher AudioProjModel
(InfiniteTalk's windows W=5, S=4 unless told otherwise) turns them into tokens, so a student
with the right window can match the teacher exactly and a search has a real optimum to
find. Per-frame targets repeat each latent's tokens over the frames that latent covers.
`label_noise` adds Gaussian noise to the training targets only (validation stays the
teacher's own tokens), as a less than perfect teacher would.

`infinitetalk.safetensors` stands in for InfiniteTalk's weights file: the teacher's adapter,
perturbed, as a "released" adapter to fine-tune from (`--init-from`) without downloads.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .adapter import AdapterDims, AudioProjModel
from .errors import ConfigError
from .windows import check_window
from .teacher import teacher_tokens

DIMS = {
    "tiny": dict(layers=2, channels=16, intermediate_dim=32, context_tokens=4, output_dim=16),
    "infinitetalk": dict(layers=12, channels=768, intermediate_dim=512, context_tokens=32,
                         output_dim=768),
}
LAYOUTS = ("frame", "latent")
SMOOTHNESS = 0.9  # AR(1) coefficient between consecutive frames
SIGNAL_RANK = 4  # directions the frame embeddings move in
RELEASED_FILE = "infinitetalk.safetensors"
# Noise on the released adapter's tensors, relative to each tensor's std: a start far
# better than a random init, still well short of the teacher.
RELEASED_NOISE = 0.25
# Stand-ins for the DiT's own tensors around `audio_proj.*`, in the dtypes a real file mixes.
RELEASED_OTHERS = {
    "patch_embedding.weight": ((8, 4, 1, 2, 2), torch.bfloat16),
    "blocks.0.audio_cross_attn.q_linear.weight": ((6, 6), torch.bfloat16),
    "blocks.0.norm3.bias": ((7,), torch.float32),
    "head.modulation": ((1, 2, 6), torch.float16),
}


@dataclass(frozen=True)
class SynthSpec:
    dims: str = "tiny"
    layout: str = "frame"
    train_clips: int = 160
    val_clips: int = 32
    min_frames: int = 21
    max_frames: int = 81
    seed: int = 0
    teacher_window: int = 5
    teacher_scale: int = 4
    label_noise: float = 0.0  # std of the noise on training targets, relative to the tokens'

    def __post_init__(self):
        if self.dims not in DIMS:
            raise ConfigError(f"--dims {self.dims!r} is unknown: choose one of {', '.join(DIMS)}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"--layout {self.layout!r} is unknown: choose frame or latent")
        if not 1 <= self.min_frames <= self.max_frames:
            raise ConfigError("--min-frames must be >= 1 and at most --max-frames")
        if self.train_clips < 1 or self.val_clips < 1:
            raise ConfigError("--train-clips and --val-clips must be >= 1")
        if self.label_noise < 0:
            raise ConfigError(f"--label-noise {self.label_noise} must be >= 0")
        check_window(self.teacher_window, self.teacher_scale, ("--teacher-window", "--teacher-scale"))

    def adapter_dims(self) -> AdapterDims:
        return AdapterDims(audio_window=self.teacher_window, vae_scale=self.teacher_scale,
                           **DIMS[self.dims])


def clip_generator(seed: int, index: int) -> torch.Generator:
    """Clip i's content depends on (seed, i) only, not on how many clips are made."""
    return torch.Generator().manual_seed(seed * 7_919 + index + 1)


def smooth_embeddings(frames: int, mixing: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """`[T, L, C]`: a smooth low-dimensional signal seen through a fixed linear map.

    Like wav2vec2 features, the frames vary slowly and span few directions of the L*C
    space; that keeps the teacher learnable from a few dozen clips.
    """
    noise = torch.randn(frames, mixing.shape[0], generator=gen)
    state = torch.empty_like(noise)
    state[0] = noise[0]
    innovation = (1 - SMOOTHNESS**2) ** 0.5
    for t in range(1, frames):
        state[t] = SMOOTHNESS * state[t - 1] + innovation * noise[t]
    return torch.einsum("tr,rlc->tlc", state, mixing).contiguous()


def mixing_matrix(dims: AdapterDims, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(20_011 + seed)
    return torch.randn(SIGNAL_RANK, dims.layers, dims.channels, generator=gen) / SIGNAL_RANK**0.5


def make_teacher(dims: AdapterDims, seed: int) -> AudioProjModel:
    """A teacher whose tokens depend strongly on the audio.

    PyTorch's default init leaves the tokens dominated by proj3's bias (nearly the same for
    every input), which a student learns in one epoch; He-scaled weights and zero biases
    make every token a function of the window instead.
    """
    gen = torch.Generator().manual_seed(10_007 + seed)
    teacher = AudioProjModel(dims).eval()
    with torch.no_grad():
        for layer in (teacher.proj1, teacher.proj1_vf, teacher.proj2, teacher.proj3):
            fan_in = layer.weight.shape[1]
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
            layer.bias.zero_()
    return teacher


def add_label_noise(tokens: torch.Tensor, relative_std: float, gen: torch.Generator) -> torch.Tensor:
    if relative_std == 0:
        return tokens
    return tokens + torch.randn(tokens.shape, generator=gen) * relative_std * tokens.std()


def released_adapter(teacher: AudioProjModel, seed: int,
                     relative_noise: float = RELEASED_NOISE) -> dict[str, torch.Tensor]:
    """The teacher's tensors plus seeded Gaussian noise of `relative_noise` times each one's
    std, under AudioProjModel's keys; tensors without spread (zero biases, the norm's ones
    and zeros) stay as they are."""
    gen = torch.Generator().manual_seed(30_011 + seed)
    released = {}
    for name, tensor in teacher.state_dict().items():
        tensor = tensor.detach().float()
        spread = tensor.std() if tensor.numel() > 1 else torch.zeros(())
        noise = torch.randn(tensor.shape, generator=gen) * relative_noise * spread
        released[name] = (tensor + noise).contiguous()
    return released


def write_released(path: Path, teacher: AudioProjModel, seed: int) -> Path:
    """`released_adapter` as InfiniteTalk's weights file has it: `audio_proj.*` keys among
    a few unrelated tensors."""
    gen = torch.Generator().manual_seed(40_009 + seed)
    tensors = {name: torch.randn(shape, generator=gen).to(dtype)
               for name, (shape, dtype) in RELEASED_OTHERS.items()}
    tensors.update({f"audio_proj.{k}": v for k, v in released_adapter(teacher, seed).items()})
    # One metadata key: safetensors writes several in no fixed order, and the file's bytes
    # would then differ from one run to the next.
    save_file(tensors, path, metadata={"format": "pt"})
    return path


def write_synth(out: Path, spec: SynthSpec) -> dict[str, Path]:
    """Write clips, `train.json`, `val.json`, `synth.json` and the released adapter
    (`infinitetalk.safetensors`) under `out`; returns the manifests and "released"."""
    out = Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    dims = spec.adapter_dims()
    teacher = make_teacher(dims, spec.seed)
    mixing = mixing_matrix(dims, spec.seed)
    manifests = {}
    split_sizes = {"train": spec.train_clips, "val": spec.val_clips}
    start = 0
    for split, count in split_sizes.items():
        entries = []
        for i in range(start, start + count):
            gen = clip_generator(spec.seed, i)
            frames = int(torch.randint(spec.min_frames, spec.max_frames + 1, (1,), generator=gen))
            audio = smooth_embeddings(frames, mixing, gen)
            tokens = teacher_tokens(teacher, audio, spec.layout)
            if split == "train":
                tokens = add_label_noise(tokens, spec.label_noise, gen)
            audio_name, target_name = f"clips/clip_{i:05d}_audio.pt", f"clips/clip_{i:05d}_tokens.pt"
            torch.save(audio, out / audio_name)
            torch.save(tokens.contiguous(), out / target_name)
            entries.append({"audio": audio_name, "target": target_name, "weight": 1.0})
        start += count
        manifests[split] = out / f"{split}.json"
        manifests[split].write_text(json.dumps(entries, indent=1))
    (out / "synth.json").write_text(json.dumps({**asdict(spec), "teacher_dims": dims.to_json()}, indent=1))
    return {**manifests, "released": write_released(out / RELEASED_FILE, teacher, spec.seed)}
