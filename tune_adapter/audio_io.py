"""Speech audio as InfiniteTalk reads it: 16 kHz mono float32, loudness-normalised.

InfiniteTalk's `audio_prepare_single` is `librosa.load(path, sr=16000)` then
`loudness_norm(..., lufs=-23)`. librosa.load reads with soundfile as float32, averages the
channels, and resamples with soxr at "soxr_hq", fixing the length to
ceil(n * 16000 / sr). This module does the same with soundfile and soxr directly, so
librosa (and its numba stack) is not needed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyloudnorm
import soundfile
import soxr

SAMPLE_RATE = 16000
TARGET_LUFS = -23.0


class AudioError(Exception):
    """A clip that cannot be used; the message says why (the clip is skipped)."""


def read_mono(path: Path) -> tuple[np.ndarray, int]:
    """float32 samples averaged over channels, and the file's sample rate."""
    try:
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"unreadable audio ({exc})") from None
    if samples.shape[0] == 0:
        raise AudioError("no samples")
    # librosa.to_mono: the mean over channels, in float32.
    return np.mean(samples.T, axis=0), rate


def resample(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """librosa.resample(res_type="soxr_hq"): soxr, then the length fixed to ceil(n * ratio)."""
    if rate == target:
        return samples
    out = soxr.resample(samples, rate, target, quality="soxr_hq")
    length = math.ceil(samples.shape[0] * (float(target) / rate))  # librosa's rounding
    if out.shape[0] < length:
        out = np.pad(out, (0, length - out.shape[0]))
    return out[:length].astype(samples.dtype, copy=False)


def loudness_norm(samples: np.ndarray, rate: int = SAMPLE_RATE, lufs: float = TARGET_LUFS) -> np.ndarray:
    """InfiniteTalk's loudness_norm: to -23 LUFS, except near-silence (|loudness| > 100)."""
    meter = pyloudnorm.Meter(rate)
    try:
        loudness = meter.integrated_loudness(samples)
    except ValueError as exc:  # shorter than one 400 ms gating block
        raise AudioError(f"too short for a loudness measurement ({exc})") from None
    if abs(loudness) > 100:
        return samples
    return pyloudnorm.normalize.loudness(samples, loudness, lufs)


def load_speech(path: Path) -> np.ndarray:
    """A WAV file as InfiniteTalk feeds it to wav2vec2."""
    samples, rate = read_mono(path)
    return loudness_norm(resample(samples, rate))
