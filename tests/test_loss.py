import pytest
import torch
from tests.support.clips import write_clip, write_manifest

from tune_adapter.adapter import AdapterDims, AudioProjModel
from tune_adapter.data import BatchGatherer, load_data
from tune_adapter.loss import FusedRowLoss, MetricSums, masked_loss, reference_masked_loss
from tune_adapter.windows import WindowSpec, clip_inputs, latent_of_frame

SPEC = WindowSpec(5, 4)


@pytest.fixture
def mixed_lengths(tmp_path):
    """Clips of very different lengths, per-frame and per-latent targets."""
    gen = torch.Generator().manual_seed(0)
    packs = {}
    for layout in ("frame", "latent"):
        folder = tmp_path / layout
        entries = []
        for i, frames in enumerate([3, 17, 41, 1]):
            rows = frames if layout == "frame" else 1 + -(-(frames - 1) // 4)
            entries.append(write_clip(folder, f"c{i}", torch.randn(frames, 2, 3, generator=gen),
                                      torch.randn(rows, 4, 5, generator=gen)))
        manifest = write_manifest(folder, entries)
        packs[layout] = load_data(manifest, manifest).train
    return packs


def model_for(pack):
    torch.manual_seed(0)
    return AudioProjModel(AdapterDims(5, 4, 2, 3, intermediate_dim=8, context_tokens=4, output_dim=5))


def batch_loss(model, gatherer, clips, kind="l1", weights=None):
    batch = gatherer[clips]
    if weights is not None:
        batch.weights = torch.tensor(weights)
    pred = model(batch.first, batch.latter)
    return masked_loss(pred, batch.targets, batch.positions, batch.mask, batch.weights, kind)


@pytest.mark.parametrize("layout", ["frame", "latent"])
@pytest.mark.parametrize("kind", ["l1", "mse", "smooth_l1"])
def test_an_example_loss_does_not_depend_on_its_batch(mixed_lengths, layout, kind):
    pack = mixed_lengths[layout]
    model = model_for(pack)
    gatherer = BatchGatherer(pack, SPEC, layout)
    alone = [batch_loss(model, gatherer, [i], kind) for i in range(4)]
    for i in range(4):
        # Padded to the 41-frame clip, with the other examples weighted out.
        weights = [1.0 if j == i else 0.0 for j in range(4)]
        together = batch_loss(model, gatherer, [0, 1, 2, 3], kind, weights)
        assert torch.allclose(together, alone[i], rtol=1e-6, atol=1e-7)


def test_padding_does_not_reach_the_gradient(mixed_lengths):
    pack = mixed_lengths["frame"]
    gatherer = BatchGatherer(pack, SPEC, "frame")
    grads = []
    for clips, weights in (([0], [1.0]), ([0, 2], [1.0, 0.0])):
        model = model_for(pack)
        batch_loss(model, gatherer, clips, weights=weights).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_batch_loss_is_the_weighted_mean(mixed_lengths):
    pack = mixed_lengths["frame"]
    model = model_for(pack)
    gatherer = BatchGatherer(pack, SPEC, "frame")
    alone = torch.stack([batch_loss(model, gatherer, [i]) for i in range(4)])
    w = torch.tensor([0.5, 2.0, 0.0, 1.5])
    together = batch_loss(model, gatherer, [0, 1, 2, 3], weights=w.tolist())
    assert torch.allclose(together, (w * alone).sum() / w.sum(), rtol=1e-6)
    scaled = batch_loss(model, gatherer, [0, 1, 2, 3], weights=(7 * w).tolist())
    assert torch.allclose(scaled, together, rtol=1e-6)


def test_frame_targets_compare_with_their_latent(mixed_lengths):
    pack = mixed_lengths["frame"]
    model = model_for(pack)
    clip = 2  # 41 frames
    start, frames = int(pack.audio_offsets[clip]), int(pack.frames[clip])
    audio = pack.audio[start:start + frames]
    target = pack.targets[int(pack.target_offsets[clip]):][:frames]
    pred = model(*clip_inputs(audio, SPEC))[0]
    expected = (pred[latent_of_frame(frames, 4)] - target).abs().mean()
    got = batch_loss(model, BatchGatherer(pack, SPEC, "frame"), [clip])
    assert torch.allclose(got, expected, rtol=1e-6)


def test_metrics_on_known_values():
    target = torch.randn(2, 3, 4, 5)
    pred = target + 0.5
    positions = torch.arange(3).expand(2, 3)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    sums = MetricSums()
    sums.add(pred, target, positions, mask, torch.tensor([1.0, 3.0]))
    m = sums.means()
    assert m["val_l1"] == pytest.approx(0.5)
    assert m["val_mse"] == pytest.approx(0.25)
    # Per example: the mean over its valid rows of the mean cosine over its tokens;
    # examples weighted 1 and 3.
    cos = [[torch.nn.functional.cosine_similarity(pred[b, r], target[b, r], dim=-1).mean()
            for r in range(3) if mask[b, r]] for b in range(2)]
    expected = (1 * torch.stack(cos[0]).mean() + 3 * torch.stack(cos[1]).mean()) / 4
    assert m["val_cos"] == pytest.approx(float(expected), rel=1e-6) and m["val_cos"] < 1
    sums = MetricSums()
    sums.add(target * 2, target, positions, mask, torch.ones(2))
    assert sums.means()["val_cos"] == pytest.approx(1.0, abs=1e-6)



@pytest.mark.parametrize("kind", ["l1", "mse"])
@pytest.mark.parametrize("slices", [1, 3, 8, 100])
def test_fused_loss_equals_autograd_on_the_definition(kind, slices, monkeypatch):
    monkeypatch.setattr(FusedRowLoss, "SLICES", slices)
    gen = torch.Generator().manual_seed(2)
    pred = torch.randn(3, 7, 4, 5, generator=gen)
    targets = torch.randn(3, 25, 4, 5, generator=gen)
    positions = torch.randint(0, 7, (3, 25), generator=gen)
    mask = torch.arange(25) < torch.tensor([[25], [10], [2]])
    weights = torch.tensor([1.0, 0.0, 3.0])
    fused_pred, plain_pred = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    fused = masked_loss(fused_pred, targets, positions, mask, weights, kind)
    plain = reference_masked_loss(plain_pred, targets, positions, mask, weights, kind)
    fused.backward()
    plain.backward()
    assert torch.allclose(fused, plain, rtol=1e-6, atol=1e-7)
    assert torch.allclose(fused_pred.grad, plain_pred.grad, rtol=1e-5, atol=1e-9)
