"""The sampler wrapper that never hands out a configuration the study holds."""

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from tune_adapter.search.distinct import DistinctSampler

SPACE = {"batch_size": CategoricalDistribution([4, 8]), "audio_window": IntDistribution(3, 5, step=2)}


def space(trial):
    return {"batch_size": trial.suggest_categorical("batch_size", [4, 8]),
            "audio_window": trial.suggest_int("audio_window", 3, 5, step=2)}


def run(sampler, trials: int) -> list[tuple]:
    study = optuna.create_study(sampler=sampler)
    for _ in range(trials):
        trial = study.ask()
        params = space(trial)
        study.tell(trial, float(params["batch_size"]))
    return [tuple(t.params.values()) for t in study.trials]


def test_every_configuration_of_a_finite_space_runs_once_before_any_repeats():
    for seed in range(5):
        for base in (optuna.samplers.TPESampler(seed=seed, n_startup_trials=2),
                     optuna.samplers.RandomSampler(seed=seed)):
            assert len(set(run(DistinctSampler(base, SPACE, seed=seed), 4))) == 4


def test_without_it_tpe_repeats_configurations():
    repeats = [len(set(run(optuna.samplers.TPESampler(seed=s, n_startup_trials=2), 4))) < 4 for s in range(5)]
    assert any(repeats)


def test_an_enqueued_configuration_is_run_as_given():
    study = optuna.create_study(sampler=DistinctSampler(optuna.samplers.RandomSampler(seed=0),
                                                        {"lr": FloatDistribution(1e-4, 1e-2, log=True)}))
    study.enqueue_trial({"lr": 1e-4})
    trial = study.ask()
    assert trial.suggest_float("lr", 1e-4, 1e-2, log=True) == 1e-4
