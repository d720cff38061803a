"""Packs at a URI: `pack --out URI`, a node's staged copy, its checks and its cache's limit."""

import errno
import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests.data.test_pack_format import dataset, packed  # noqa: F401 (a fixture)
from tune_adapter.cli import app
from tune_adapter.data import load_training_data
from tune_adapter.data import remote, staging
from tune_adapter.data.remote import upload_pack
from tune_adapter.data.staging import STAGED_FILE, release_leases, stage_pack, staged_root
from tune_adapter.errors import DataError

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_leases_kept():
    yield
    release_leases()


def uploaded(tmp_path, manifest, name="ds", **kwargs) -> str:
    uri = f"file://{tmp_path}/bucket/{name}"
    upload_pack(packed(tmp_path / name, manifest, **kwargs), uri)
    return uri


def leftovers(tmp_path) -> list[str]:
    root = staged_root()
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) if root.exists() else []


def test_a_uri_is_staged_once_then_reused(tmp_path, dataset):
    uri = uploaded(tmp_path, dataset[0])
    first = stage_pack(uri)
    again = stage_pack(uri)
    assert first.fetched_bytes > 0 and again.fetched_bytes == 0 and again.folder == first.folder
    assert first.folder.parent == staged_root() and leftovers(tmp_path) == [first.folder.name]
    assert json.loads((first.folder / STAGED_FILE).read_text())["uri"] == uri
    data = load_training_data(None, None, None, None, data=uri)
    assert data.train.root.parent == first.folder and len(data.train) == 6
    assert staging.in_use(first.folder)  # this process leased it


def test_pack_out_uri_then_train_with_data_uri(tmp_path, dataset):
    uri = f"file://{tmp_path}/bucket/cli"
    result = runner.invoke(app, ["pack", "--manifest", str(dataset[0]), "--val-fraction", "0.34", "--out", uri])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "bucket/cli/train/index.json").is_file() and (tmp_path / "bucket/cli/val/index.json").is_file()
    assert not list((tmp_path / "cache").glob(".uploading-*"))  # the local build is gone
    again = runner.invoke(app, ["pack", "--manifest", str(dataset[0]), "--out", uri])
    assert again.exit_code == 2 and "is not empty" in again.output
    trained = runner.invoke(app, ["train", "--data", uri, "--output-dir", str(tmp_path / "out"), "--epochs", "1",
                                  "--batch-size", "2", "--intermediate-dim", "8", "--output-dim", "8",
                                  "--context-tokens", "3", "--audio-window", "5", "--vae-scale", "4"])
    assert trained.exit_code == 0, trained.output


def test_a_uri_without_a_pack_is_refused_before_anything_starts(tmp_path):
    result = runner.invoke(app, ["search", "--space", "tiny", "--data", f"file://{tmp_path}/nothing",
                                 "--storage", str(tmp_path / "results")])
    assert result.exit_code == 2 and "holds no pack" in result.output and "tune-adapter pack" in result.output
    assert not (tmp_path / "results").exists()
    bad = runner.invoke(app, ["train", "--data", "nosuchscheme://x/y", "--output-dir", str(tmp_path / "o")])
    assert bad.exit_code == 2 and "nosuchscheme://x/y" in bad.output and "Traceback" not in bad.output


def test_a_damaged_stored_shard_is_fetched_again_once_then_named(tmp_path, dataset):
    uri = uploaded(tmp_path, dataset[0])
    shard = tmp_path / "bucket/ds/train/shards/00000.audio"
    shard.write_bytes(b"\0" * shard.stat().st_size)
    fetches = []
    real = remote.download
    staging_download = lambda u, rel, dest: (fetches.append(rel), real(u, rel, dest))  # noqa: E731
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(staging, "download", staging_download)
        with pytest.raises(DataError, match=r"bucket/ds/train/shards/00000\.audio: its sha256 does not match"):
            stage_pack(uri)
    assert fetches == ["train", "train/shards/00000.audio"]  # the split, then the one file again
    assert leftovers(tmp_path) == []  # no copy, no half-fetched folder


def test_a_shard_damaged_in_transit_is_fetched_again(tmp_path, dataset, monkeypatch):
    uri = uploaded(tmp_path, dataset[0])
    real, damaged = remote.download, []

    def flaky(u, rel, dest):
        real(u, rel, dest)
        if rel == "train" and not damaged:
            target = dest / "shards/00000.targets"
            target.write_bytes(b"\1" * target.stat().st_size)
            damaged.append(rel)

    monkeypatch.setattr(staging, "download", flaky)
    staged = stage_pack(uri)
    assert damaged and (staged.folder / "train/index.json").is_file()


def test_a_full_disk_while_staging_leaves_nothing(tmp_path, dataset, monkeypatch):
    uri = uploaded(tmp_path, dataset[0])

    def full(u, rel, dest):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(staging, "download", full)
    with pytest.raises(DataError, match="no space left on .* while staging .*nothing was kept"):
        stage_pack(uri)
    assert leftovers(tmp_path) == []


def test_the_least_recently_used_unused_copy_is_evicted(tmp_path, dataset, monkeypatch):
    uris = [uploaded(tmp_path, dataset[0], name=f"ds{i}", shard_bytes=(2000, 10**6, 1000)[i]) for i in range(3)]
    one = stage_pack(uris[0])
    size = sum(f.stat().st_size for f in one.folder.rglob("*") if f.is_file())
    monkeypatch.setenv(staging.LIMIT_ENV, str(2.5 * size / 1e9))  # room for two copies
    two = stage_pack(uris[1])
    release_leases()
    stage_pack(uris[0])  # used again: now the more recent of the two
    release_leases()
    three = stage_pack(uris[2])
    assert len({one.folder, two.folder, three.folder}) == 3
    assert sorted(leftovers(tmp_path)) == sorted([one.folder.name, three.folder.name])
    assert not two.folder.exists()


def test_a_copy_in_use_by_another_process_is_never_evicted(tmp_path, dataset, monkeypatch):
    uris = [uploaded(tmp_path, dataset[0], name=f"ds{i}", shard_bytes=(2000, 10**6)[i]) for i in range(2)]
    one = stage_pack(uris[0])
    release_leases()
    size = sum(f.stat().st_size for f in one.folder.rglob("*") if f.is_file())
    holder = subprocess.Popen([sys.executable, "-c", "import sys\n"
                               "from tune_adapter.data.staging import stage_pack\n"
                               f"stage_pack({uris[0]!r}); print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv(staging.LIMIT_ENV, str(1.5 * size / 1e9))  # room for one copy
        with pytest.raises(DataError, match="in use"):
            stage_pack(uris[1])
    finally:
        holder.communicate("")
    assert one.folder.exists() and leftovers(tmp_path) == [one.folder.name]
    stage_pack(uris[1])  # the holder is gone: now it can go
    assert not one.folder.exists()


def test_a_pack_larger_than_the_cache_limit_is_refused(tmp_path, dataset, monkeypatch):
    uri = uploaded(tmp_path, dataset[0])
    monkeypatch.setenv(staging.LIMIT_ENV, "0.000001")
    with pytest.raises(DataError, match="larger than this node's staged-pack cache limit"):
        stage_pack(uri)
    monkeypatch.setenv(staging.LIMIT_ENV, "lots")
    with pytest.raises(DataError, match="TUNE_ADAPTER_CACHE_LIMIT_GB=lots"):
        stage_pack(uri)
