"""The search benchmarks run end to end on tiny dims (their figures are for `bench`, not tests)."""

import math
from pathlib import Path

from tune_adapter.search import SearchOptions
from tune_adapter.search.asha_bench import asha_sections, compare_asha
from tune_adapter.search.search_bench import measure_search, search_sections

ROOT = Path(__file__).resolve().parents[1]


def rows_of(sections):
    return {row.name: row.value for section in sections for row in section.rows}


def test_asha_against_no_pruning_trains_the_same_configurations(tmp_path, synth_small):
    options = SearchOptions(space=ROOT / "search_spaces" / "tiny.py", manifest=synth_small["train"],
                            val_manifest=synth_small["val"], num_samples=3, max_epochs=2,
                            grace_period=1, reduction_factor=2, storage=tmp_path, name="b", quiet=True)
    result = compare_asha(options)
    assert result.full.trials == result.asha.trials == 3
    assert result.full.epochs == 3 * 2 >= result.asha.epochs
    # Training a configuration longer never loses its best: no pruning finds at least as good.
    assert result.full.best_val_l1 <= result.asha.best_val_l1 + 1e-6
    rows = rows_of(asha_sections(result))
    assert rows["ASHA epochs / unpruned epochs"] == result.asha.epochs / 6


def test_search_cost_is_measured_from_real_trial_processes(tmp_path, synth_small):
    options = SearchOptions(space=ROOT / "search_spaces" / "bench.py", manifest=synth_small["train"],
                            val_manifest=synth_small["val"], num_samples=2, max_epochs=2, grace_period=2,
                            cpus_per_trial=1, max_concurrent=2, storage=tmp_path, name="c", quiet=True)
    cost = measure_search(options)
    assert cost.slots == 2 and cost.trials == 2
    assert cost.peak is not None and cost.peak.processes >= 2 and cost.peak.pss > 0
    assert 0 < cost.trainer_seconds < cost.wall_seconds * 2
    rows = rows_of(search_sections(cost, model_state=1 << 20, batch_bytes=1 << 10))
    assert all(math.isfinite(v) for v in rows.values())
    assert 0 < rows["outside the trainers"] < 100
