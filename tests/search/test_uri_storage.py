"""`--storage s3://...`: a search on object storage, as Ray Tune's storage_path, then `best`."""

import shutil
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from typer.testing import CliRunner

from tests.support.s3 import make_bucket, s3_server
from tune_adapter.cli import app
from tune_adapter.records.results import read_trials
from tune_adapter.search import SearchOptions, run_search
from tune_adapter.search.uri_storage import checkpoint_location, is_own_file, is_remote, local_path
from tune_adapter.space import SHIPPED_DIR

runner = CliRunner()


def test_only_tune_adapters_own_files_are_mirrored():
    assert is_own_file("trials.parquet") and is_own_file("optuna.journal") and is_own_file("epochs.parquet")
    assert is_own_file("trial_ab/events.out.tfevents.1.vm")
    for tunes in ("experiment_state-2026.json", "tuner.pkl", "searcher-state-x.pkl", "trial_ab/result.json",
                  "trial_ab/checkpoint_000001/adapter.safetensors", ".scratch/x/y"):
        assert not is_own_file(tunes), tunes


def test_uris_and_folders():
    assert is_remote("s3://b/r") and is_remote("gs://b/r") and not is_remote("file:///x") and not is_remote("results")
    assert local_path("file:///data/results") == Path("/data/results")
    assert checkpoint_location("b/r/trial_1/checkpoint_000001", pafs.S3FileSystem(anonymous=True)) == \
        "s3://b/r/trial_1/checkpoint_000001"
    assert checkpoint_location("/r/trial_1/checkpoint_000001", pafs.LocalFileSystem()) == "/r/trial_1/checkpoint_000001"


@pytest.mark.slow
def test_a_search_stored_on_s3_is_read_back_and_exported_elsewhere(tmp_path, synth_small, monkeypatch):
    with s3_server() as env:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        make_bucket("bucket")
        options = SearchOptions(space=SHIPPED_DIR / "tiny.py", manifest=synth_small["train"],
                                val_manifest=synth_small["val"], num_samples=2, max_epochs=1,
                                storage="s3://bucket/results", name="s3", quiet=True)
        outcome = run_search(options)
        assert outcome.complete and outcome.experiment_dir != Path("s3:")
        fs, base = pafs.FileSystem.from_uri("s3://bucket/results/s3")
        stored = [info.path[len(base) + 1:] for info in fs.get_file_info(pafs.FileSelector(base, recursive=True))]
        for name in ("trials.parquet", "epochs.parquet", "optuna.journal"):
            assert name in stored, stored
        assert any(s.startswith("experiment_state-") for s in stored)  # Tune's own, written by Tune
        assert any("/checkpoint_" in s for s in stored)  # the trials' checkpoints, uploaded by Tune
        checkpoints = read_trials(outcome.experiment_dir)["best_checkpoint"].dropna()
        assert len(checkpoints) and all(c.startswith("s3://bucket/results/s3/trial_") for c in checkpoints)

        shutil.rmtree(outcome.experiment_dir)  # read back as on another machine
        monkeypatch.chdir(tmp_path)
        shown = runner.invoke(app, ["results", "--experiment", "s3://bucket/results/s3"])
        assert shown.exit_code == 0, shown.output
        exported = runner.invoke(app, ["best", "--experiment", "s3://bucket/results/s3", "--export"])
        assert exported.exit_code == 0, exported.output
        assert (tmp_path / "results/s3/export/audio_proj.safetensors").is_file()
        missing = runner.invoke(app, ["best", "--experiment", "s3://bucket/results/nothing"])
        assert missing.exit_code == 2 and "holds no experiment" in missing.output


def test_the_mirror_uploads_only_what_changed(tmp_path, monkeypatch):
    from tune_adapter.data import remote
    from tune_adapter.search.record import MirrorUpload

    mirror = tmp_path / "mirror"
    (mirror / "trial_a").mkdir(parents=True)
    for name in ("trials.parquet", "epochs.parquet", "trial_a/events.out.tfevents.1", "tuner.pkl"):
        (mirror / name).write_text("x")
    copied = []
    monkeypatch.setattr(remote, "copy", lambda source, src, destination, dest, uri: copied.append(dest))
    upload = MirrorUpload(mirror, f"file://{tmp_path}/stored/NAME")
    upload.upload()
    assert sorted(Path(d).name for d in copied) == ["epochs.parquet", "events.out.tfevents.1", "trials.parquet"]
    copied.clear()
    (mirror / "trials.parquet").write_text("xy")  # the store's next write
    upload.upload()
    assert [Path(d).name for d in copied] == ["trials.parquet"]
