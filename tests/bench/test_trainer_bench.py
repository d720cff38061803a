import math

import pytest
import torch
from typer.testing import CliRunner

from tune_adapter.bench.floor import step_products
from tune_adapter.bench.trainer import BenchSpec, padding_fractions, run_bench
from tune_adapter.cli import app
from tune_adapter.loss import masked_loss
from tune_adapter.bench.straightforward import literal_l1_loss, per_frame_windows, regroup
from tune_adapter.synth import SynthSpec
from tune_adapter.windows import WindowSpec, clip_inputs

ROWS = [
    "clips/s, fast trainer", "clips/s, straightforward trainer", "fast / straightforward",
    "clips/s, straightforward, this package's memory settings",
    "fast / straightforward with those settings",
    "validation clips/s, fast trainer", "step", "  batch gather", "  forward + loss",
    "  backward", "  grad clip", "  fused AdamW", "floor", "  matrix products", "step / floor",
    "products: bf16 tensors / step's precision", "model state", "peak RSS, fast trainer",
    "peak RSS / target", "peak RSS, straightforward trainer", "padded fraction, no bucketing",
    "padded fraction, length bucketing",
]


@pytest.mark.slow
def test_bench_prints_every_row_with_a_positive_finite_value(tmp_path, monkeypatch):
    """One run of `tune-adapter bench` (the trainers are slow to start): its table, and the
    report behind it."""
    import tune_adapter.bench.trainer as trainer_bench

    reports = []

    def recording(spec):
        reports.append(run_bench(spec, work_dir=tmp_path))
        return reports[-1]

    monkeypatch.setattr(trainer_bench, "run_bench", recording)
    result = CliRunner().invoke(app, ["bench", "--dims", "tiny", "--frames", "13", "--steps", "2",
                                      "--no-mixed-precision"], env={"COLUMNS": "220"})
    assert result.exit_code == 0, result.output
    for name in ROWS:
        assert name.strip() in result.output
        value = reports[0].row(name).value
        assert math.isfinite(value) and value > 0, (name, value)
    assert reports[0].row("padded fraction, length bucketing").value < reports[0].row(
        "padded fraction, no bucketing").value
    assert list(tmp_path.iterdir()) == []  # the synthetic data is removed


def test_bench_refuses_a_missing_device():
    # No machine has a 100th GPU: refused with or without CUDA, before any child starts.
    result = CliRunner().invoke(app, ["bench", "--dims", "tiny", "--device", "cuda:99"])
    assert result.exit_code == 2 and "CUDA" in result.output


def test_straightforward_windows_equal_the_index_tables():
    audio = torch.randn(23, 2, 3)
    for spec in (WindowSpec(5, 4), WindowSpec(3, 2), WindowSpec(1, 3)):
        naive_first, naive_latter = regroup(per_frame_windows(audio, spec), spec)
        first, latter = clip_inputs(audio, spec)
        assert torch.equal(naive_first, first[0]) and torch.equal(naive_latter, latter[0])


def test_step_products_cover_the_adapter():
    dims = SynthSpec(dims="infinitetalk").adapter_dims()
    products = step_products(dims, batch=4, n_latter=20)
    # forward + weight gradient for 4 layers, input gradient for proj2 and proj3
    assert len(products) == 10
    assert all(p.a[1] == p.b[0] for p in products)
    assert (80, 8 * 12 * 768) in [p.a for p in products]


def test_bucketing_pads_less():
    plain, bucketed = padding_fractions(BenchSpec(mixed_clips=256, batch_size=4))
    assert 0 <= bucketed < plain < 1


def test_straightforward_loss_equals_the_trainers():
    gen = torch.Generator().manual_seed(1)
    pred = torch.randn(3, 6, 4, 5, generator=gen, dtype=torch.float64)
    targets = torch.randn(3, 21, 4, 5, generator=gen, dtype=torch.float64)
    positions = torch.randint(0, 6, (3, 21), generator=gen)
    mask = torch.arange(21) < torch.tensor([[21], [9], [1]])
    weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    literal = literal_l1_loss(pred, targets, positions, mask, weights)
    fused = masked_loss(pred.float(), targets.float(), positions, mask, weights.float())
    assert torch.allclose(fused.double(), literal, rtol=1e-6)
