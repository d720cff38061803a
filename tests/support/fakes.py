"""Tiny stand-ins for InfiniteTalk's files: its weights file, and (for extract) wav2vec2."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from tune_adapter.adapter import AdapterDims, AudioProjModel

# Stand-ins for the DiT's own tensors, in the dtypes a real file mixes.
OTHER_TENSORS = {
    "patch_embedding.weight": ((8, 4, 1, 2, 2), torch.bfloat16),
    "blocks.0.audio_cross_attn.q_linear.weight": ((6, 6), torch.bfloat16),
    "blocks.0.norm3.bias": ((7,), torch.float32),
    "freqs": ((3, 5), torch.float64),
    "head.modulation": ((1, 2, 6), torch.float16),
}
METADATA = {"format": "pt", "origin": "fake infinitetalk"}


def other_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=g).to(dtype) for name, (shape, dtype) in OTHER_TENSORS.items()}


def random_adapter(dims: AdapterDims, seed: int) -> AudioProjModel:
    torch.manual_seed(seed)
    model = AudioProjModel(dims)
    if dims.norm_output_audio:  # not the identity init, so the norm's tensors matter
        torch.nn.init.normal_(model.norm.weight)
        torch.nn.init.normal_(model.norm.bias)
    return model.eval()


def write_infinitetalk(path: Path, adapter: AudioProjModel, dtype=torch.float32) -> Path:
    """A weights file like InfiniteTalk's: `audio_proj.*` among unrelated tensors."""
    tensors = other_tensors()
    tensors.update({f"audio_proj.{k}": v.detach().to(dtype).contiguous()
                    for k, v in adapter.state_dict().items()})
    save_file(tensors, path, metadata=METADATA)
    return path
