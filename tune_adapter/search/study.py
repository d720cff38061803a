"""The search's Optuna study, on disk: `results/NAME/optuna.journal`.

Optuna's JournalStorage keeps the study in an append-only file, so `optuna-dashboard`
and `optuna.load_study` open it, and a later `--continue` or `--warm-start` hands its
trials to the sampler. Each study trial names its Tune trial (user attribute
`tune_trial_id`); trials copied in from other experiments name their folder instead
(`warm_start`).
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, json_to_distribution
from optuna.trial import FrozenTrial, TrialState

from ..distributions import holds
from ..errors import ConfigError
from ..records.results import FINAL_STATUSES, ExperimentInfo, TrialRecord, TrialStore, open_experiment
from ..records.study_trials import STATES, native, study_trial

JOURNAL_FILE = "optuna.journal"
TUNE_ID_ATTR = "tune_trial_id"
WARM_START_ATTR = "warm_start"


def journal_storage(folder: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    Path(folder).mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(Path(folder) / JOURNAL_FILE)))


def open_study(folder: Path, name: str) -> optuna.Study:
    """The experiment's study, created empty if the journal has none."""
    return optuna.create_study(storage=journal_storage(folder), study_name=name, direction="minimize",
                               load_if_exists=True)


def storage_trial_id(storage, study_name: str, number: int) -> int:
    """The storage's id of trial `number` of the study (what its per-trial methods take)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


def set_intermediate(storage, study_name: str, number: int, step: int, value: float) -> None:
    """Record trial `number`'s value at `step` in the storage's study, as Trial.report would
    (Study.tell takes only final values; a Study's storage is private: pass the storage)."""
    storage.set_trial_intermediate_value(storage_trial_id(storage, study_name, number), step, value)


def has_study(folder: Path) -> bool:
    return (Path(folder) / JOURNAL_FILE).is_file()


def decode(distributions: dict[str, str]) -> dict[str, BaseDistribution]:
    return {name: json_to_distribution(text) for name, text in distributions.items()}


def check_earlier_trials(flag: str, earlier: ExperimentInfo, trials, space: dict[str, BaseDistribution],
                         same_study: bool) -> None:
    """Earlier trials can teach this space's sampler only if they sampled the same
    parameters from distributions that hold their values. Within one study Optuna also
    keeps a categorical's choices fixed (`same_study`: --continue)."""
    before = decode(earlier.distributions)
    if set(before) != set(space):
        added, dropped = sorted(set(space) - set(before)), sorted(set(before) - set(space))
        raise ConfigError(f"{flag}: the space samples {', '.join(sorted(space))} but {earlier.name} sampled "
                          f"{', '.join(sorted(before))} ({'new: ' + ', '.join(added) if added else ''}"
                          f"{'; ' if added and dropped else ''}{'gone: ' + ', '.join(dropped) if dropped else ''}): "
                          "keep the same parameters, or start a new experiment without it")
    for name, new in space.items():
        old = before[name]
        if type(old) is not type(new) or getattr(old, "log", None) != getattr(new, "log", None):
            raise ConfigError(f"{flag}: {name} was {old} in {earlier.name} and is {new} now: keep its kind "
                              "and log scale, only widen or narrow its range")
        if same_study and isinstance(new, CategoricalDistribution) and old != new:
            raise ConfigError(f"{flag}: {name}'s choices changed from {list(old.choices)} to "
                              f"{list(new.choices)}; an Optuna study keeps a categorical's choices: "
                              f"start a new experiment with --warm-start instead")
        for value in trials[name].dropna().unique() if name in trials else ():
            if not _holds(new, value):
                raise ConfigError(f"{flag}: {earlier.name} ran {name} = {value}, outside the space's {new}: "
                                  f"widen {name} to include it")


def _holds(distribution: BaseDistribution, value) -> bool:
    """Whether the distribution can yield the Parquet cell's value."""
    try:
        return holds(distribution, native(value, distribution))
    except (ValueError, TypeError):
        return False


def trained_values(record: TrialRecord) -> dict[int, float]:
    """A trial's val_l1 by trained epoch: its intermediate values in the study."""
    return {e: m["val_l1"] for e, m in record.trained().items() if not math.isnan(m["val_l1"])}


def frozen_trials(folder: Path, space: dict[str, BaseDistribution], attrs: dict) -> list[FrozenTrial]:
    """An experiment's ended trials as study trials, as the search's own searcher tells them."""
    store = TrialStore(*open_experiment(folder))
    made = [study_trial(record.row(store.info.params), trained_values(record), space,
                        {**attrs, TUNE_ID_ATTR: record.trial_id})
            for record in sorted(store.trials.values(), key=lambda r: r.number)
            if record.status in FINAL_STATUSES]  # a trial that never ended has nothing to teach
    return [t for t in made if t is not None]


def warm_start(study: optuna.Study, folders: list[Path], space: dict[str, BaseDistribution]) -> int:
    """Copy the ended trials of earlier experiments into a new study; how many."""
    trials = [t for folder in folders
              for t in frozen_trials(folder, space, {WARM_START_ATTR: str(Path(folder).resolve())})]
    study.add_trials(trials)
    return len(trials)


def tune_trials(study: optuna.Study) -> dict[str, FrozenTrial]:
    """The study's trials of this experiment (not warm-start copies), by Tune trial id."""
    return {t.user_attrs[TUNE_ID_ATTR]: t for t in study.get_trials(deepcopy=False)
            if TUNE_ID_ATTR in t.user_attrs and WARM_START_ATTR not in t.user_attrs}


def reconcile(study: optuna.Study, store: TrialStore, complete: bool) -> None:
    """Tell the study how trials ended that the searcher could not tell (the driver died
    first): each study trial ends in the state its trials.parquet row has. Once the run is
    `complete`, a study trial no row names (asked just before a crash, and never run) fails.
    The study is the experiment's (`store.folder`'s journal)."""
    storage = journal_storage(store.folder)  # the study's journal, opened anew: JournalStorage syncs on each call
    for trial_id, trial in tune_trials(study).items():
        record = store.trials.get(trial_id)
        if trial.state != TrialState.RUNNING:
            continue
        if record is None or record.status not in FINAL_STATUSES:
            if record is None and complete:
                study.tell(trial.number, state=TrialState.FAIL)
            continue
        values = trained_values(record)
        for epoch, value in values.items():
            set_intermediate(storage, study.study_name, trial.number, epoch, value)
        state = STATES[record.status]
        study.tell(trial.number, min(values.values()) if state == TrialState.COMPLETE else None, state=state)


def mismatches(folder: Path, name: str) -> list[str]:
    """How the journal's study differs from trials.parquet and epochs.parquet: each row one
    study trial, in its row's state, with its epochs as intermediate values. Empty: agreed."""
    from ..records.results import read_epochs, read_trials

    trials, epochs = read_trials(folder), read_epochs(folder)
    by_id = tune_trials(optuna.load_study(study_name=name, storage=journal_storage(folder)))
    found = [f"{t}: in the study, not in trials.parquet" for t in sorted(set(by_id) - set(trials["trial_id"]))]
    for row in trials.to_dict("records"):
        trial = by_id.get(row["trial_id"])
        mine = epochs[(epochs["trial_id"] == row["trial_id"]) & (epochs["epoch"] >= 1)]
        values = {int(e): float(v) for e, v in zip(mine["epoch"], mine["val_l1"]) if not math.isnan(v)}
        if trial is None:
            found.append(f"{row['trial_id']}: not in the study")
        elif trial.state != STATES.get(row["status"], TrialState.RUNNING):
            found.append(f"{row['trial_id']}: {row['status']} but {trial.state.name} in the study")
        elif trial.intermediate_values != values:
            found.append(f"{row['trial_id']}: intermediate values {trial.intermediate_values} but epochs {values}")
    return found
