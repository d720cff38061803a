"""Parity with InfiniteTalk: windows, regrouping and the adapter, transcribed literally.

The reference below follows InfiniteTalk's code step by step, as docs/adapter.md explains it:
`wan/multitalk.py` builds a clamped window around every frame, `WanModel.forward` regroups
them per latent, and `AudioProjModel.forward` flattens, projects and normalises. It shares
no code with `tune_adapter.windows` or `tune_adapter.adapter.forward`.
"""

import math

import pytest
import torch

from tune_adapter.adapter import AdapterDims, AudioProjModel
from tune_adapter.errors import ConfigError
from tune_adapter.windows import (
    WindowSpec,
    clip_inputs,
    latent_of_frame,
    n_latents,
    split_inputs,
    window_index,
)


def reference_inputs(audio, audio_window, vae_scale):
    """InfiniteTalk's per-frame windows, then its per-group regrouping."""
    T = audio.shape[0]
    n_lat = 1 + math.ceil((T - 1) / vae_scale)
    video_length = 1 + (n_lat - 1) * vae_scale  # frames the video covers (4k + 1 for S = 4)
    # wan/multitalk.py
    half = audio_window // 2
    indices = torch.arange(2 * half + 1) - half
    center_indices = torch.arange(0, video_length, 1).unsqueeze(1) + indices.unsqueeze(0)
    center_indices = torch.clamp(center_indices, min=0, max=T - 1)
    audio_emb = audio[center_indices][None, ...]  # [1, F, W, L, C]
    # WanModel.forward
    first_frame_audio_emb_s = audio_emb[:, :1, ...]
    latter_frame_audio_emb = audio_emb[:, 1:, ...]
    b, f, w, s, c = latter_frame_audio_emb.shape
    # rearrange "b (n_t n) w s c -> b n_t n w s c", n=vae_scale
    latter_frame_audio_emb = latter_frame_audio_emb.reshape(b, f // vae_scale, vae_scale, w, s, c)
    middle_index = audio_window // 2

    def merge_n_w(x):  # rearrange "b n_t n w s c -> b n_t (n w) s c"
        return x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3], *x.shape[4:])

    latter_first_frame_audio_emb = merge_n_w(latter_frame_audio_emb[:, :, :1, : middle_index + 1, ...])
    latter_last_frame_audio_emb = merge_n_w(latter_frame_audio_emb[:, :, -1:, middle_index:, ...])
    latter_middle_frame_audio_emb = merge_n_w(
        latter_frame_audio_emb[:, :, 1:-1, middle_index : middle_index + 1, ...]
    )
    latter_frame_audio_emb_s = torch.concat(
        [latter_first_frame_audio_emb, latter_middle_frame_audio_emb, latter_last_frame_audio_emb], dim=2
    )
    return first_frame_audio_emb_s, latter_frame_audio_emb_s


def reference_forward(model, audio_embeds, audio_embeds_vf):
    """InfiniteTalk's AudioProjModel.forward with einops spelled out."""
    video_length = audio_embeds.shape[1] + audio_embeds_vf.shape[1]
    B = audio_embeds.shape[0]
    audio_embeds = audio_embeds.reshape(-1, *audio_embeds.shape[2:])  # "bz f w b c -> (bz f) w b c"
    batch_size, window_size, blocks, channels = audio_embeds.shape
    audio_embeds = audio_embeds.view(batch_size, window_size * blocks * channels)
    audio_embeds_vf = audio_embeds_vf.reshape(-1, *audio_embeds_vf.shape[2:])
    batch_size_vf, window_size_vf, blocks_vf, channels_vf = audio_embeds_vf.shape
    audio_embeds_vf = audio_embeds_vf.view(batch_size_vf, window_size_vf * blocks_vf * channels_vf)
    audio_embeds = torch.relu(model.proj1(audio_embeds))
    audio_embeds_vf = torch.relu(model.proj1_vf(audio_embeds_vf))
    audio_embeds = audio_embeds.reshape(B, -1, audio_embeds.shape[-1])  # "(bz f) c -> bz f c"
    audio_embeds_vf = audio_embeds_vf.reshape(B, -1, audio_embeds_vf.shape[-1])
    audio_embeds_c = torch.concat([audio_embeds, audio_embeds_vf], dim=1)
    batch_size_c, N_t, C_a = audio_embeds_c.shape
    audio_embeds_c = audio_embeds_c.view(batch_size_c * N_t, C_a)
    audio_embeds_c = torch.relu(model.proj2(audio_embeds_c))
    context_tokens = model.proj3(audio_embeds_c).reshape(
        batch_size_c * N_t, model.dims.context_tokens, model.dims.output_dim
    )
    context_tokens = model.norm(context_tokens)
    return context_tokens.reshape(-1, video_length, *context_tokens.shape[1:])  # "(bz f) m c -> bz f m c"


WINDOWS = [1, 3, 5, 7]
SCALES = [2, 3, 4, 8]
LENGTHS = [1, 2, 5, 81, 83]


@pytest.mark.parametrize("W", WINDOWS)
@pytest.mark.parametrize("S", SCALES)
@pytest.mark.parametrize("T", LENGTHS)
def test_inputs_and_outputs_equal_infinitetalk(W, S, T):
    gen = torch.Generator().manual_seed(W * 1000 + S * 100 + T)
    L, C = 3, 4
    audio = torch.randn(T, L, C, generator=gen)
    ref_first, ref_latter = reference_inputs(audio, W, S)
    first, latter = clip_inputs(audio, WindowSpec(W, S))
    assert first.shape == ref_first.shape == (1, 1, W, L, C)
    assert latter.shape == ref_latter.shape == (1, n_latents(T, S) - 1, W + S - 1, L, C)
    assert torch.equal(first, ref_first)
    assert torch.equal(latter, ref_latter)

    torch.manual_seed(0)
    model = AudioProjModel(AdapterDims(W, S, L, C, intermediate_dim=16, context_tokens=3, output_dim=8))
    with torch.no_grad():
        model.norm.weight.normal_()
        model.norm.bias.normal_()
        assert torch.equal(model(first, latter), reference_forward(model, ref_first, ref_latter))


@pytest.mark.parametrize("W,S", [(1, 2), (3, 3), (5, 4), (7, 8)])
def test_batched_gather_equals_each_clip_alone(W, S):
    gen = torch.Generator().manual_seed(W + S)
    lengths = torch.tensor([5, 1, 83, 2, 81, 17])
    clips = [torch.randn(int(t), 2, 3, generator=gen) for t in lengths]
    packed = torch.cat(clips).view(-1, 6)
    offsets = torch.cumsum(lengths, 0) - lengths
    spec = WindowSpec(W, S)
    index = window_index(offsets, lengths, spec)
    first, latter = split_inputs(packed.index_select(0, index.flat()), index, (2, 3))
    for b, clip in enumerate(clips):
        ref_first, ref_latter = reference_inputs(clip, W, S)
        n = n_latents(clip.shape[0], S)
        assert int(index.n_latents[b]) == n
        assert torch.equal(first[b : b + 1], ref_first)
        assert torch.equal(latter[b : b + 1, : n - 1], ref_latter)
        # Padded latents only repeat the clip's own frames.
        assert (index.latter[b] >= offsets[b]).all() and (index.latter[b] < offsets[b] + lengths[b]).all()


@pytest.mark.parametrize("S", SCALES)
def test_latent_of_frame_matches_grouping(S):
    T = 83
    lat = latent_of_frame(T, S)
    assert lat[0] == 0
    for k in range(1, n_latents(T, S)):
        frames = [t for t in range(T) if 1 + (k - 1) * S <= t <= k * S]
        assert lat[frames].tolist() == [k] * len(frames)
    assert int(lat.max()) == n_latents(T, S) - 1


def test_n_latents():
    assert [n_latents(t, 4) for t in (1, 2, 5, 6, 81, 83)] == [1, 2, 2, 3, 21, 22]


@pytest.mark.parametrize("W,S", [(4, 4), (0, 4), (-1, 4), (5, 1), (5, 0)])
def test_bad_windows_are_refused(W, S):
    with pytest.raises(ConfigError, match="odd|>= 2"):
        WindowSpec(W, S)


def test_infinitetalk_defaults_and_keys():
    model = AudioProjModel()
    keys = {"proj1.weight", "proj1.bias", "proj1_vf.weight", "proj1_vf.bias", "proj2.weight",
            "proj2.bias", "proj3.weight", "proj3.bias", "norm.weight", "norm.bias"}
    assert set(model.state_dict()) == keys
    assert model.proj1.weight.shape == (512, 5 * 12 * 768)
    assert model.proj1_vf.weight.shape == (512, 8 * 12 * 768)
    assert model.proj3.weight.shape == (32 * 768, 512)
    assert 73e6 < model.parameter_count() < 75e6
