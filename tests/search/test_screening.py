"""TPE's view of a search with finalists: trials compared by their value at the finals rung."""

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from tune_adapter.search.screening import ScreeningSampler, screened_study

SPACE = {"x": FloatDistribution(0, 1)}


@pytest.fixture
def study():
    """Mid-search: the baseline completed (poor at the rung), the best trial waits at the
    rung (RUNNING), others were pruned at epoch 1, one is still below the rung."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    study.add_trial(create_trial(params={"x": 0.95}, distributions=SPACE, value=0.5,
                                 intermediate_values={1: 0.9, 3: 0.8, 10: 0.5}))
    for x, value in ((0.3, 0.7), (0.5, 0.75), (0.7, 0.8), (0.85, 0.85)):
        study.add_trial(create_trial(params={"x": x}, distributions=SPACE, state=TrialState.PRUNED,
                                     intermediate_values={1: value}))
    study.enqueue_trial({"x": 0.1})
    waiting = study.ask(SPACE)
    waiting.report(0.3, 1)
    waiting.report(0.2, 3)
    study.enqueue_trial({"x": 0.6})
    below = study.ask(SPACE)
    below.report(0.6, 1)
    return study


def test_trials_at_the_rung_are_seen_complete_with_their_value_there(study):
    seen = {t.number: t for t in screened_study(study, rung=3).get_trials(deepcopy=False)}
    assert (seen[0].state, seen[0].value) == (TrialState.COMPLETE, 0.8)  # the baseline, at epoch 3
    assert (seen[5].state, seen[5].value) == (TrialState.COMPLETE, 0.2)  # the waiting trial
    assert seen[1].state == TrialState.PRUNED and seen[6].state == TrialState.RUNNING
    # The study itself is untouched.
    assert [t.state for t in study.trials][5:] == [TrialState.RUNNING, TrialState.RUNNING]
    assert screened_study(study, 3).get_trials(states=(TrialState.PRUNED,))[0].number == 1


def test_tpe_samples_near_the_waiting_trial_not_near_the_baseline(study):
    """Stock TPE's best example is the completed baseline (x 0.95) and the waiting trial
    (x 0.1) counts as bad; through the view the waiting trial is the best example."""

    def mean_draw(sampler) -> float:
        draws = []
        for seed in range(20):
            study.sampler = sampler(optuna.samplers.TPESampler(n_startup_trials=2, seed=seed))
            trial = study.ask()
            draws.append(trial.suggest_float("x", 0, 1))
            study.tell(trial, state=TrialState.FAIL)
        return sum(draws) / len(draws)

    stock, screened = mean_draw(lambda tpe: tpe), mean_draw(lambda tpe: ScreeningSampler(tpe, 3))
    assert screened < 0.25 and stock > screened + 0.2, (stock, screened)
