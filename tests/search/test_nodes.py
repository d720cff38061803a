"""Clusters whose nodes share no folder: a pack staged once per node from a URI."""

from dataclasses import replace
from pathlib import Path

import pytest
import ray

from tune_adapter.data.remote import upload_pack
from tune_adapter.data.staging import STAGED_FILE, release_leases
from tune_adapter.errors import ConfigError
from tune_adapter.records.results import read_trials
from tune_adapter.search import SearchOptions, nodes, run_search
from tune_adapter.search.trial import TrialSetup, trial_data
from tune_adapter.space import SHIPPED_DIR

TINY = SHIPPED_DIR / "tiny.py"


def pack_uri(tmp_path, synth) -> str:
    from tune_adapter.data import pack_manifests, read_manifest, split_roots

    local = tmp_path / "packed"
    pack_manifests([(read_manifest(synth["train"]), "train"), (read_manifest(synth["val"]), "val")],
                   roots=list(split_roots(local)))
    upload_pack(local, f"file://{tmp_path}/bucket/ds")
    return f"file://{tmp_path}/bucket/ds"


def staged_copies(cache: Path) -> list[Path]:
    return sorted(marker.parent for marker in (cache / "staged").glob(f"*/{STAGED_FILE}"))


def driver_paths_gone(config, setup):
    """The real trial, told driver paths that exist on no node: with a --data URI it must
    open its node's staged copy instead."""
    from tune_adapter.search.trial import run_trial

    return run_trial(config, replace(setup, train_pack="/nonexistent/driver/train", val_pack="/nonexistent/driver/val"))


@pytest.mark.slow
def test_each_node_stages_its_own_copy_and_trials_use_it(tmp_path, synth_small):
    from ray.cluster_utils import Cluster

    uri = pack_uri(tmp_path, synth_small)
    caches = [tmp_path / "node-a", tmp_path / "node-b"]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "env_vars": {"TUNE_ADAPTER_CACHE": str(caches[0])}})
    cluster.add_node(num_cpus=1, env_vars={"TUNE_ADAPTER_CACHE": str(caches[1])})
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        options = SearchOptions(space=TINY, data=uri, num_samples=2, max_epochs=1, storage=tmp_path / "results",
                                name="nodes", quiet=True, max_concurrent=2, cache_dir=tmp_path / "driver-cache")
        outcome = run_search(options, trainable=driver_paths_gone)
    finally:
        ray.shutdown()
        cluster.shutdown()
    trials = read_trials(outcome.experiment_dir)
    assert len(trials) == 2 and set(trials["status"]) <= {"completed", "pruned"}, trials[["status", "error"]]
    copies = [staged_copies(cache) for cache in caches]
    assert [len(c) for c in copies] == [1, 1]  # exactly one copy per node, each in its own cache
    assert copies[0][0].name == copies[1][0].name  # the same pack
    assert len(staged_copies(tmp_path / "driver-cache")) == 1  # the driver's own, for its checks


def test_a_node_that_joins_later_stages_in_its_first_trial(tmp_path, synth_small, monkeypatch):
    uri = pack_uri(tmp_path, synth_small)
    monkeypatch.setenv("TUNE_ADAPTER_CACHE", str(tmp_path / "late-node"))
    setup = TrialSetup(base=None, train_pack="/nonexistent/train", val_pack="/nonexistent/val", data_uri=uri,
                       params=(), threads=1, experiment_dir=str(tmp_path))
    try:
        data = trial_data(setup)
    finally:
        release_leases()
    assert len(staged_copies(tmp_path / "late-node")) == 1 and data.train.root.is_relative_to(tmp_path / "late-node")


def test_a_node_that_cannot_see_a_local_pack_is_named(monkeypatch):
    monkeypatch.setattr(nodes, "alive_nodes", lambda: [{}, {}])
    monkeypatch.setattr(nodes, "on_every_node", lambda fn, folders: [("10.0.0.1", []), ("10.0.0.2", folders)])
    with pytest.raises(ConfigError, match=r"node 10\.0\.0\.2 cannot read the pack at /data/train: .*"
                                          r"tune-adapter pack --manifest M --out s3://"):
        nodes.check_nodes_see(["/data/train", "/data/val"])
