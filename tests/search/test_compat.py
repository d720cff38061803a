"""The private parts of Ray and Optuna the package relies on (search/compat.py), each on
the real library: a release that renames or changes one fails here."""

import inspect
import math
from pathlib import Path

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from tune_adapter.distributions import holds
from tune_adapter.search import compat


def tune_trial(tmp_path, val_l1s: list[float]):
    """A Ray Tune trial (not started) that registered a checkpoint folder per value."""
    from ray.train._internal.storage import StorageContext
    from ray.tune import Checkpoint, CheckpointConfig
    from ray.tune.experiment import Trial

    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp")
    trial = Trial("fake", config={}, storage=storage, stub=True, checkpoint_config=CheckpointConfig(
        num_to_keep=1, checkpoint_score_attribute="val_l1", checkpoint_score_order="min"))
    trial.storage.trial_dir_name = "trial_x"
    results = []
    for index, val_l1 in enumerate(val_l1s):
        folder = Path(trial.storage.trial_fs_path, f"checkpoint_{index:06d}")
        folder.mkdir(parents=True)
        results.append(compat.training_result(Checkpoint(str(folder)), {"val_l1": val_l1, "epoch": index + 1}))
        trial.on_checkpoint(results[-1])
    return trial, results


def test_a_training_result_is_what_a_trial_registers_as_its_checkpoint(tmp_path):
    trial, (result,) = tune_trial(tmp_path, [0.5])
    assert (result.checkpoint.path, result.metrics) == (str(Path(trial.storage.trial_fs_path, "checkpoint_000000")),
                                                        {"val_l1": 0.5, "epoch": 1})
    assert trial.checkpoint is result.checkpoint and compat.latest_checkpoint_result(trial) is result


def test_tracked_checkpoints_are_the_best_kept_then_the_latest(tmp_path):
    trial, (best, latest) = tune_trial(tmp_path, [0.5, 0.6])  # num_to_keep=1 keeps the latest too
    assert compat.tracked_checkpoints(trial) == [best, latest]
    assert compat.latest_checkpoint_result(trial) is latest
    fresh, _ = tune_trial(tmp_path / "fresh", [])
    assert compat.tracked_checkpoints(fresh) == [] and compat.latest_checkpoint_result(fresh) is None


def test_forgotten_checkpoints_leave_the_trial_without_any_but_with_its_config(tmp_path):
    trial, _ = tune_trial(tmp_path, [0.5, 0.6])
    trial.get_json_state()  # cached until invalidated
    compat.forget_checkpoints(trial)
    assert trial.checkpoint is None and compat.tracked_checkpoints(trial) == []
    assert trial.run_metadata.checkpoint_manager.checkpoint_config.num_to_keep == 1
    assert trial._state_json is None  # Tune rebuilds the trial's JSON state for its next snapshot
    assert len(list(Path(trial.storage.trial_fs_path).glob("checkpoint_*"))) == 2  # storage untouched


def test_the_checkpoint_index_is_the_last_registered_one_and_only_rises(tmp_path):
    """recover.skip_stored_checkpoints sets it to the highest index on storage: Tune's
    next checkpoint takes the one after."""
    fresh, _ = tune_trial(tmp_path / "fresh", [])
    assert fresh.storage.current_checkpoint_index == -1
    trial, _ = tune_trial(tmp_path, [0.5, 0.6])
    assert trial.storage.current_checkpoint_index == 1
    compat.raise_checkpoint_index(trial, 5)
    compat.raise_checkpoint_index(trial, 2)
    assert trial.storage.current_checkpoint_index == 5


def test_the_local_auth_token_setup_is_still_rays(monkeypatch):
    from ray._private.authentication import authentication_token_setup as setup

    assert "warn_if_disabled" in inspect.signature(setup.maybe_enable_token_auth_if_token_available).parameters
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a mode chosen: Ray leaves it
    assert compat.enable_local_auth_token() is None
    assert setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False) is False


# Optuna's own containment test is private (`_contains`); distributions.holds mirrors it.
DISTRIBUTIONS = [
    FloatDistribution(0.0, 1.0), FloatDistribution(1e-5, 1e-1, log=True), FloatDistribution(-1.0, 1.0, step=0.1),
    FloatDistribution(0.0, 0.3, step=0.1), FloatDistribution(2.0, 2.0),
    IntDistribution(1, 10), IntDistribution(1, 1024, log=True), IntDistribution(0, 12, step=3),
    IntDistribution(-5, 5, step=2),
    CategoricalDistribution(["l1", "mse"]), CategoricalDistribution([True, False]),
    CategoricalDistribution([None, 0.5, 2, "x"]), CategoricalDistribution([1.5, float("nan")]),
]
VALUES = [0, 1, 2, 3, 5, 6, 7, 9, 10, 11, 12, 1024, 1025, -1, -3, -5, -6, 0.0, 0.1, 0.2, 0.3, 0.30000000001,
          0.35, 0.5, 0.7, 1.0, 1.5, 2.0, 2.5, 1e-5, 1e-6, 0.1 + 0.2, -0.9, -1.0, -1.05, 1e-9, math.inf,
          -math.inf, math.nan, np.float64(0.5), np.int64(6), np.float32(0.1), True, False, None, "x", "l1",
          "mse", "0.5", "", [1]]


@pytest.mark.parametrize("distribution", DISTRIBUTIONS, ids=str)
def test_holds_agrees_with_optunas_own_test(distribution):
    def optuna_holds(value):
        try:
            return distribution._contains(distribution.to_internal_repr(value))
        except (TypeError, ValueError):
            return False

    values = [*VALUES, *getattr(distribution, "choices", ())]
    assert {repr(v): holds(distribution, v) for v in values} == {repr(v): optuna_holds(v) for v in values}
    assert any(holds(distribution, v) for v in values) and not all(holds(distribution, v) for v in values)
