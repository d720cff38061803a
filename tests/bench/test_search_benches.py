"""The search benchmarks run end to end on tiny dims (their figures are for `bench`, not tests)."""

import math

import pytest

from tune_adapter.search import SearchOptions
from tune_adapter.bench.asha import asha_sections, compare_asha
from tune_adapter.bench.search import measure_search, search_sections
from tune_adapter.space import SHIPPED_DIR

# The module's searches share one local Ray (conftest.local_ray).
pytestmark = pytest.mark.usefixtures("local_ray")



def rows_of(sections):
    return {row.name: row.value for section in sections for row in section.rows}


@pytest.mark.slow
def test_asha_against_no_pruning_trains_the_same_configurations(tmp_path, synth_small):
    options = SearchOptions(space=SHIPPED_DIR / "tiny.py", manifest=synth_small["train"],
                            val_manifest=synth_small["val"], num_samples=3, max_epochs=2,
                            grace_period=1, reduction_factor=2, storage=tmp_path, name="b", quiet=True)
    result = compare_asha(options)
    assert result.full.trials == result.asha.trials == 3
    assert result.full.epochs == 3 * 2 >= result.asha.epochs
    # Training a configuration longer never loses its best: no pruning finds at least as good.
    assert result.full.best_val_l1 <= result.asha.best_val_l1 + 1e-6
    rows = rows_of(asha_sections(result))
    assert rows["ASHA epochs / unpruned epochs"] == result.asha.epochs / 6


@pytest.mark.slow
def test_search_cost_is_measured_from_real_trial_processes(tmp_path, synth_small):
    options = SearchOptions(space=SHIPPED_DIR / "bench.py", manifest=synth_small["train"],
                            val_manifest=synth_small["val"], num_samples=2, max_epochs=2, grace_period=2,
                            cpus_per_trial=1, max_concurrent=2, storage=tmp_path, name="c", quiet=True)
    cost = measure_search(options)
    assert cost.slots == 2 and cost.trials == 2
    assert cost.peak is not None and cost.peak.processes >= 2 and cost.peak.pss > 0
    assert 0 < cost.trainer_seconds < cost.wall_seconds * 2
    rows = rows_of(search_sections(cost, model_state=1 << 20, batch_bytes=1 << 10))
    assert all(math.isfinite(v) for v in rows.values())
    assert 0 < rows["outside the trainers"] < 100


@pytest.mark.slow
def test_search_quality_runs_every_method_and_compares_them(tmp_path):
    """bench --quality end to end on one small task, one epoch: the wiring, not the figures."""
    from tune_adapter.bench.quality import FRAME_GRID, QualityTask, bench_quality, quality_sections
    from tune_adapter.synth import SynthSpec

    task = QualityTask("small", SynthSpec(train_clips=12, val_clips=4, min_frames=5, max_frames=30,
                                          teacher_window=3, teacher_scale=2, label_noise=0.1))
    results = bench_quality(tmp_path, SHIPPED_DIR, seeds=1, tasks=(task,),
                            overrides={"num_samples": 3, "max_epochs": 1})
    (result,) = results
    assert result.guide.epochs == 1 and result.grid.epochs == len(FRAME_GRID)
    assert [len(result.searches[s]) for s in ("tpe", "random")] == [1, 1]
    assert all(o.epochs == 3 for s in result.searches.values() for o in s)  # 3 trials, 1 epoch
    assert all(o.baseline_epochs == 1 for s in result.searches.values() for o in s)
    # The baseline trial of each search is the guide's run: nothing it found can be worse.
    assert all(o.best_val_l1 <= result.guide.best_val_l1 + 1e-6 for o in result.searches["tpe"])
    rows = rows_of(quality_sections(results))
    assert rows["(a) / (c)"] == result.ratios("guide")[0]
    assert rows["epochs (a) / (d), the baseline's left out"] == 2 / len(FRAME_GRID)
    assert not list((tmp_path / "results").glob("small-*"))  # the bench removes its experiments


@pytest.mark.slow
def test_bench_confirm_confirms_each_search_and_compares_the_winners(tmp_path):
    """bench --confirm end to end on one small task, one epoch: the wiring, not the figures."""
    from tune_adapter.bench.confirm import bench_confirm, confirm_sections
    from tune_adapter.bench.quality import QualityTask
    from tune_adapter.synth import SynthSpec

    task = QualityTask("small", SynthSpec(train_clips=12, val_clips=4, min_frames=5, max_frames=30))
    results = bench_confirm(tmp_path, SHIPPED_DIR, seeds=1, tasks=(task,),
                            overrides={"num_samples": 3, "max_epochs": 1})
    ((outcome,),) = [r.outcomes for r in results]
    assert math.isfinite(outcome.optimism) and outcome.optimism > 0
    rows = rows_of(confirm_sections(results))
    assert rows["search winner confirmed"] == int(outcome.same_winner)
    assert not list((tmp_path / "results").glob("small-*"))  # the bench removes its experiments
