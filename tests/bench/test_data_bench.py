"""`bench --data` at a few MB: the pieces and the report's rows (its figures are for `bench`)."""

import json
import math
import os

import pytest
import torch
from typer.testing import CliRunner

from tune_adapter.bench import data as bench
from tune_adapter.bench.data import (AUDIO_SHAPE, TARGET_SHAPE, DataBenchResult, DataBenchSpec,
                                     RunResult, TrialResult, data_sections, memory_cgroup, sequential_read,
                                     shard_files, trial_main, write_pack)
from tune_adapter.cli import app
from tune_adapter.errors import ConfigError

# A few MB: short clips in 512 KiB shards, so the pack has more shards than a shuffle window.
TINY = DataBenchSpec(size_gb=0.004, small_gb=0.002, frames=9, val_clips=2, shard_bytes=1 << 19,
                     drop_cache=False)


def rows_of(sections):
    return {row.name: row for section in sections for row in section.rows}


def check_rows(rows, names):
    for name in names:
        assert name in rows, f"no row {name!r} in {sorted(rows)}"
        assert math.isfinite(rows[name].value) and rows[name].value >= 0, (name, rows[name].value)


def test_the_synthetic_pack_has_infinitetalk_audio_and_tiny_targets(tmp_path):
    data = write_pack(tmp_path / "pack", TINY.size_gb, TINY)
    assert data.train.audio.shape[1:] == AUDIO_SHAPE and data.train.audio.dtype == torch.bfloat16
    assert data.train.targets.shape[1:] == TARGET_SHAPE
    assert len(data.train.audio.files) > 4  # more shards than the trainer's shuffle window
    assert len(data.val) == TINY.val_clips
    size = sum(f.stat().st_size for f in shard_files(data.train))
    assert 0.5 * TINY.size_gb * 1e9 < size < 1.5 * TINY.size_gb * 1e9
    assert (tmp_path / "pack" / "train" / "index.json").is_file()  # pack.py's own index


def test_sequential_read_reads_the_files_front_to_back(tmp_path):
    data = write_pack(tmp_path / "pack", TINY.size_gb, TINY)
    files = data.train.audio.files
    whole = sequential_read(files)
    assert whole.bytes_read == sum(f.stat().st_size for f in files)
    assert whole.mb_per_s > 0 and math.isfinite(whole.mb_per_s)
    assert sequential_read(files, limit=1 << 20).bytes_read >= 1 << 20  # stops once past the limit


def test_a_trial_trains_on_the_pack_and_reports_its_epoch(tmp_path):
    write_pack(tmp_path / "pack", TINY.size_gb, TINY)
    (tmp_path / "go").write_text("")
    args = {"pack": str(tmp_path / "pack"), "threads": torch.get_num_threads(), "batch_size": 4,
            "epochs": 1, "seed": 0, "keep_freed_memory": False, "shuffle_window": 2,
            "ready": str(tmp_path / "ready"), "go": str(tmp_path / "go"), "result": str(tmp_path / "result.json")}
    (tmp_path / "args.json").write_text(json.dumps(args))
    trial_main(str(tmp_path / "args.json"))  # in this process: the children run the same
    out = json.loads((tmp_path / "result.json").read_text())
    assert out["epoch_seconds"] > 0 and out["cpu"] > 0 and out["peak_private"] > 0
    assert out["queue"] >= 0 and out["faults"] >= 0 and out["read"] >= 0


def test_a_cgroup_that_cannot_be_made_is_reported_not_fatal(tmp_path):
    with memory_cgroup(1 << 30, root=tmp_path / "missing") as cgroup:
        assert cgroup.path is None and "no memory cgroup" in cgroup.why_not
        cgroup.enter()  # nothing to enter
    (tmp_path / "plain").mkdir()
    with memory_cgroup(1 << 30, root=tmp_path / "plain") as cgroup:  # a folder, not a cgroup
        assert cgroup.path is None and cgroup.why_not
    assert not list((tmp_path / "plain").iterdir())


@pytest.mark.skipif(not os.access(bench.CGROUP_ROOT, os.W_OK), reason="needs a writable cgroup v1 memory hierarchy")
def test_a_memory_cgroup_is_capped_and_removed():
    with memory_cgroup(1 << 30) as cgroup:
        assert cgroup.path is not None and not cgroup.why_not
        assert int((cgroup.path / "memory.limit_in_bytes").read_text()) == 1 << 30
        assert cgroup.peak() >= 0
    assert not cgroup.path.exists()


def fake_result(cap_note="") -> DataBenchResult:
    def run(count, private=300 << 20):
        trials = [TrialResult(2.0 + i, 1.5, 0.1, 10, 3 << 29, 900 << 20, private) for i in range(count)]
        return RunResult(trials, "cgroup", 800 << 20)

    return DataBenchResult(TINY, pack_bytes=3 << 30, clips=100, shards=12, shard_bytes=256 << 20,
                           bandwidth=bench.Bandwidth(1000.0, 2 << 30, True), cap=1 << 30, cap_note=cap_note,
                           dropped=True, runs={1: run(1), 2: run(2)}, in_memory=run(1), small_bytes=1 << 30,
                           small=run(2, private=310 << 20))


def test_the_report_has_every_row_and_a_verdict_per_target():
    rows = rows_of(data_sections(fake_result()))
    per_run = ["epoch", "CPU time per trial", "waiting for a core, per trial", "waiting for reads, per trial",
               "major page faults per trial", "read from disk / pack"]
    check_rows(rows, ["sequential read bandwidth", "pack (training shards)", "pack / bandwidth",
                      *[f"{run}: {row}" for run in ("1 trial, pack in memory", "1 trial", "2 trials at once")
                        for row in per_run]])
    assert rows["pack / bandwidth"].value == pytest.approx(3 * 1024 / 1000)
    assert rows["2 trials at once: epoch"].value == 3.0  # the slowest trial's
    assert rows["1 trial: epoch"].note.startswith("met: target <= 1.5 x")
    assert rows["2 trials at once: epoch"].note.startswith("met: target <= 2 x")
    own = [r for name, r in rows.items() if name.startswith("own memory")]
    assert len(own) == 2 and own[1].note.startswith("met: target within 10%")


def test_the_report_says_when_nothing_was_capped():
    sections = data_sections(fake_result(cap_note="no memory cgroup (Permission denied): ran without a cap"))
    assert any("ran without a cap" in s.title for s in sections)


def test_bad_sizes_and_counts_are_refused():
    with pytest.raises(ConfigError):
        DataBenchSpec(size_gb=0)
    with pytest.raises(ConfigError):
        DataBenchSpec(trials=())
    with pytest.raises(ConfigError, match="--disk-mbps"):
        DataBenchSpec(disk_mbps=0)


def test_a_throttle_that_cannot_be_made_is_reported_not_fatal(tmp_path):
    with bench.disk_throttle(tmp_path, 300, root=tmp_path / "missing") as (path, why_not):
        assert path is None and "unthrottled" in why_not
    with bench.disk_throttle(tmp_path, None) as (path, why_not):
        assert path is None and why_not == ""


@pytest.mark.skipif(not os.access(bench.BLKIO_ROOT, os.W_OK), reason="needs a writable cgroup v1 blkio hierarchy")
def test_a_disk_throttle_caps_reads_of_the_packs_disk_and_is_removed(tmp_path):
    with bench.disk_throttle(tmp_path, 300) as (path, why_not):
        if path is None:
            pytest.skip(why_not)  # e.g. a disk the blkio controller does not throttle
        limit = (path / "blkio.throttle.read_bps_device").read_text().split()
        assert limit == [bench.whole_disk(tmp_path), str(300 * 2**20)]
        with bench.joined(path):
            assert str(os.getpid()) in (path / "cgroup.procs").read_text().split()
        assert str(os.getpid()) not in (path / "cgroup.procs").read_text().split()
    assert not path.exists()


def test_bench_data_flag_runs_the_data_bench(monkeypatch, tmp_path):
    seen = {}

    def fake_bench(work_dir, spec, progress):
        seen.update(work_dir=work_dir, spec=spec)
        return fake_result()

    monkeypatch.setattr(bench, "bench_data", fake_bench)
    result = CliRunner().invoke(app, ["bench", "--data", "--size", "0.5", "--work-dir", str(tmp_path)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert seen["spec"].size_gb == 0.5 and seen["spec"].trials == (1, 2) and seen["work_dir"] == tmp_path
    assert "sequential read bandwidth" in result.output and "2 trials at once: epoch" in result.output


@pytest.mark.slow
def test_bench_data_end_to_end_at_a_few_megabytes(tmp_path):
    """Real trials in their own processes (a cgroup where one can be made); figures not checked."""
    result = bench.bench_data(tmp_path, TINY)
    rows = rows_of(data_sections(result))
    check_rows(rows, list(rows))
    for name in ("sequential read bandwidth", "1 trial: epoch", "2 trials at once: epoch"):
        assert rows[name].value > 0
    assert all(r.value > 0 for n, r in rows.items() if n.startswith(("own memory", "peak RSS")))
    assert sum(1 for r in rows.values() if r.note.startswith(("met", "MISSED"))) == 3
    assert not list(tmp_path.iterdir())  # the packs are removed
    assert not list(bench.CGROUP_ROOT.glob(f"tune-adapter-bench-{os.getpid()}"))
