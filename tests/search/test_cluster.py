"""Resources and clusters: fractional GPUs, --address, and resuming after SIGKILL."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray
import torch

from tune_adapter.records.results import read_epochs, read_trials
from tune_adapter.search import SearchOptions, run_search
from tune_adapter.space import SHIPPED_DIR

TINY = SHIPPED_DIR / "tiny.py"


@pytest.mark.slow
def test_quarter_gpu_trials_run_four_at_a_time(tmp_path, synth_small, monkeypatch):
    """One logical GPU on this CPU machine: trials asking 0.25 GPU run four at once."""
    from tests.support.trainables import barrier_trial

    monkeypatch.setenv("BARRIER_TRIALS", "4")
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        opts = SearchOptions(space=TINY, manifest=synth_small["train"], val_manifest=synth_small["val"],
                             num_samples=4, max_epochs=1, storage=tmp_path, name="gpu", quiet=True,
                             cpus_per_trial=0.5, gpus_per_trial=0.25)
        outcome = run_search(opts, trainable=barrier_trial)
    finally:
        ray.shutdown()
    assert outcome.complete
    trials = read_trials(outcome.experiment_dir)
    assert list(trials["status"]) == ["completed"] * 4
    # Each saw the GPU Tune gave it; torch in the trial sees CUDA only on a GPU machine.
    results = [line for line in outcome.experiment_dir.glob("trial_*/result.json")]
    seen = [__import__("json").loads(p.read_text().splitlines()[-1]) for p in results]
    assert [s["concurrent"] for s in seen] == [4] * 4
    assert {s["cuda_visible_devices"] for s in seen} == {"0"}
    assert {s["torch_sees_cuda"] for s in seen} == {torch.cuda.is_available()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"the Ray head did not listen on port {port} (exit code {process.poll()})")


@pytest.mark.slow
def test_address_joins_a_running_head(tmp_path, synth_small):
    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable))
    port = free_port()
    # Unix socket paths must stay short; loopback only: Ray would otherwise advertise the
    # machine's address for 127.0.0.1.
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray", dir="/tmp"),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    # --block in a session of its own: the head's processes are then one process group, and
    # the test kills that group alone (`ray stop` would kill every Ray on the machine).
    head = subprocess.Popen([ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", "--block"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    try:
        wait_for_port(port, head)
        result = subprocess.run(
            [sys.executable, "-m", "tune_adapter", "search", "--space", str(TINY),
             "--manifest", str(synth_small["train"]), "--val-manifest", str(synth_small["val"]),
             "--num-samples", "2", "--max-epochs", "1", "--storage", str(tmp_path / "results"),
             "--address", f"127.0.0.1:{port}"],
            capture_output=True, text=True, env=env, timeout=300,
        )
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
    assert result.returncode == 0, result.stdout + result.stderr
    trials = read_trials(tmp_path / "results" / "tiny")
    assert len(trials) == 2 and set(trials["status"]) == {"completed"}


def finished_rows(folder: Path):
    trials = read_trials(folder)
    return trials[trials["status"].isin(["completed", "pruned", "error"])]


@pytest.mark.slow
def test_resume_after_sigkill_runs_every_trial_once(tmp_path, synth_small):
    storage = tmp_path / "results"
    command = [sys.executable, "-m", "tune_adapter", "search", "--space", str(TINY),
               "--manifest", str(synth_small["train"]), "--val-manifest", str(synth_small["val"]),
               "--num-samples", "8", "--max-epochs", "4", "--storage", str(storage), "--seed", "3"]
    # The driver SIGKILLs its process group, its local Ray included, right after its 14th
    # recorded result or checkpoint (record.py): a machine crash at a chosen moment.
    killed = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "TUNE_ADAPTER_KILL_AFTER": "14"}, timeout=400)
    assert killed.returncode == -signal.SIGKILL, "the search ended before it could be killed"
    folder = storage / "tiny"
    before = finished_rows(folder).set_index("trial_id")
    epochs_before = read_epochs(folder)
    assert len(before) < 8

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=400)
    if resumed.returncode != 0:
        pytest.fail(f"resume exited {resumed.returncode}:\n{resumed.stdout[-4000:]}\n{resumed.stderr[-4000:]}")
    trials = read_trials(folder)
    assert trials["trial_id"].is_unique
    assert set(trials["status"]) <= {"completed", "pruned", "error"}
    assert (trials["status"] != "error").sum() >= 8
    # Finished trials were not run again: their rows and epochs are as they were.
    after = trials.set_index("trial_id").loc[before.index]
    assert (after["epochs"] == before["epochs"]).all()
    assert (after["best_val_l1"] == before["best_val_l1"]).all()
    epochs_after = read_epochs(folder)
    for trial_id in before.index:
        old = epochs_before[epochs_before["trial_id"] == trial_id]["val_l1"].tolist()
        assert epochs_after[epochs_after["trial_id"] == trial_id]["val_l1"].tolist() == old
    assert not epochs_after.duplicated(["trial_id", "epoch"]).any()
