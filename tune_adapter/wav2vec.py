"""wav2vec2 frame embeddings exactly as InfiniteTalk computes them at inference.

InfiniteTalk (`src/audio_analysis/wav2vec2.py`) subclasses transformers' Wav2Vec2Model and
changes one step of its forward: the convolutional features are linearly interpolated
(align_corners) to `seq_len` = int(duration x 25) video frames before the feature
projection and the transformer encoder. Here that step lives in the feature encoder
itself (same parameter names, so `from_pretrained` loads the stock weights), and the rest
of the stock forward, hidden-state capture included, runs unchanged in any transformers
version. Attention is eager, as InfiniteTalk forces it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Wav2Vec2FeatureExtractor
from transformers import Wav2Vec2Model as StockWav2Vec2Model
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2FeatureEncoder

from .audio_io import SAMPLE_RATE
from .errors import ConfigError

FPS = 25


class InterpolatedFeatureEncoder(Wav2Vec2FeatureEncoder):
    """The conv feature encoder, its output resampled in time to `seq_len` frames."""

    seq_len: int | None = None

    def forward(self, input_values):
        features = super().forward(input_values)  # [B, C, T']
        if self.seq_len is None:
            return features
        # InfiniteTalk's linear_interpolation, on the [B, C, T'] layout it transposes to.
        return F.interpolate(features, size=self.seq_len, align_corners=True, mode="linear")


class Wav2Vec2Model(StockWav2Vec2Model):
    """InfiniteTalk's wav2vec2: `forward(input_values, seq_len)`."""

    def __init__(self, config):
        super().__init__(config)
        # Same submodule names as the stock encoder: the pretrained weights load into it.
        self.feature_extractor = InterpolatedFeatureEncoder(config)

    def forward(self, input_values, seq_len: int, **kwargs):
        self.feature_extractor.seq_len = seq_len
        try:
            return super().forward(input_values, **kwargs)
        finally:
            self.feature_extractor.seq_len = None


@dataclass
class AudioEncoder:
    features: Wav2Vec2FeatureExtractor
    model: Wav2Vec2Model
    device: torch.device

    @property
    def layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def channels(self) -> int:
        return self.model.config.hidden_size


def load_audio_encoder(folder: Path, device: torch.device) -> AudioEncoder:
    """The feature extractor and model from a local folder; never from a hub."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"--wav2vec-dir {folder} holds no config.json: download chinese-wav2vec2-base "
            "there (huggingface-cli download TencentGameMate/chinese-wav2vec2-base --local-dir ...)"
        )
    try:
        features = Wav2Vec2FeatureExtractor.from_pretrained(folder, local_files_only=True)
        model = Wav2Vec2Model.from_pretrained(
            folder, local_files_only=True, attn_implementation="eager", dtype=torch.float32
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--wav2vec-dir {folder}: cannot load wav2vec2 from it ({exc})") from None
    return AudioEncoder(features, model.to(device).eval(), device)


def frame_count(samples: int) -> int:
    """InfiniteTalk's video length: int(duration x 25)."""
    return int(samples / SAMPLE_RATE * FPS)


@torch.no_grad()
def frame_embeddings(speech: np.ndarray, encoder: AudioEncoder) -> torch.Tensor:
    """`[T, L, C]` float32: hidden states 1..L of every video frame (InfiniteTalk's get_embedding)."""
    values = np.squeeze(encoder.features(speech, sampling_rate=SAMPLE_RATE).input_values)
    values = torch.from_numpy(values).float().to(encoder.device).unsqueeze(0)
    out = encoder.model(values, seq_len=frame_count(len(speech)), output_hidden_states=True)
    stacked = torch.stack(out.hidden_states[1:], dim=1).squeeze(0)  # [L, T, C]
    return stacked.transpose(0, 1).contiguous().float().cpu()


def quiet_transformers() -> None:
    """No transformers progress bars or load reports under the CLI's own display."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
