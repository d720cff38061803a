"""The one place a Tune run is put together: the search's, a confirmation's, `bench --asha`'s.

Each trial runs the trainable of trial.py with the setup every trial shares; actors are
reused; Tune keeps each trial's best checkpoint by val_l1 and its latest; a restore gets
the same trainable and resources again (Tune pickled the rest with the experiment).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .scheduler import CPUS_KEY
from .trial import TrialSetup

METRIC, MODE = "val_l1", "min"


@dataclass(frozen=True)
class TuneRun:
    name: str  # the experiment folder's name under storage
    setup: TrialSetup
    resources: dict  # {"cpu": N, "gpu": F} per trial
    storage: dict  # storage_path and storage_filesystem (driver.tune_storage)
    max_concurrent: int
    max_failures: int


def trial_dirname(trial) -> str:
    """Short trial folders: Tune's default spells every parameter into the name."""
    return f"trial_{trial.trial_id}"


def trainable_of(run: TuneRun, trainable: Callable):
    from ray import tune

    def resources(config: dict) -> tune.PlacementGroupFactory:
        bundle = {"CPU": config.get(CPUS_KEY) or run.resources["cpu"]}  # a long finalist's: more
        if run.resources["gpu"] > 0:
            bundle["GPU"] = run.resources["gpu"]
        return tune.PlacementGroupFactory([bundle])

    return tune.with_resources(tune.with_parameters(trainable, setup=run.setup), resources)


def make_tuner(run: TuneRun, trainable: Callable, *, restore: str | None = None, search_alg=None,
               scheduler=None, callbacks=(), param_space: dict | None = None, num_samples: int = -1):
    """A new Tune run, or (`restore`: its folder or URI) the one there, resumed."""
    from ray import tune

    wrapped = trainable_of(run, trainable)
    if restore is not None:
        return tune.Tuner.restore(restore, trainable=wrapped, param_space=param_space, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False,
                                  storage_filesystem=run.storage["storage_filesystem"])
    return tune.Tuner(
        wrapped, param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
                                    reuse_actors=True, trial_dirname_creator=trial_dirname,
                                    max_concurrent_trials=run.max_concurrent),
        run_config=tune.RunConfig(
            name=run.name, verbose=0, **run.storage, callbacks=list(callbacks),
            # Tune always keeps the latest checkpoint too, so a trial can resume.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=METRIC,
                                                    checkpoint_score_order=MODE),
            failure_config=tune.FailureConfig(max_failures=run.max_failures),
        ),
    )
