"""Experiments that build on earlier runs: `--continue` adds trials to a finished search,
`--warm-start` starts a new one from others' trials, `--resume` carries what a run spent.

Ray Tune cannot add trials to a finished experiment (its restore only recovers crashes),
so a continuation is a new Tune run in the same folder whose searcher opens the same
Optuna study (study.py): the sampler sees every earlier trial, and the Parquet store
keeps the earlier rows as they were. `run_starts` in the experiment's description lists
the trial count at which each run began.
"""

from __future__ import annotations

from ..errors import ConfigError
from ..records.results import TRIALS_FILE, ExperimentInfo, TrialStore, open_experiment, read_info, read_trials
from .budget import SPENT_KEY
from .scheduler import BASELINE_KEY
from .options import DATA_RECORDED_BEFORE, SearchOptions
from .study import check_earlier_trials, frozen_trials, has_study, open_study, warm_start


def carry_earlier_runs(options: SearchOptions, info: ExperimentInfo, distributions: dict) -> None:
    """What a resumed or continued experiment carries over (its run starts, time spent);
    for --continue, the checks that it can take more trials, and where this run starts."""
    folder = options.experiment_dir
    if not (folder / TRIALS_FILE).is_file():
        info.extra["run_starts"] = [0]
        return
    earlier = read_info(folder)
    info.extra.update({k: earlier.extra[k] for k in ("run_starts", SPENT_KEY) if k in earlier.extra})
    if options.resume:  # the run's own settings, as recorded (its time budget)
        info.extra["search"] = earlier.extra.get("search", info.extra["search"])
    info.extra.setdefault("run_starts", [0])
    if options.resume or not options.continue_search:
        info.num_samples = earlier.num_samples
        return
    store = TrialStore(folder, earlier)
    unfinished = [t for t in store.trials if not store.is_finished(t)]
    if unfinished:
        raise ConfigError(f"--continue: {len(unfinished)} trial(s) of {folder.name} did not finish "
                          f"({', '.join(unfinished[:3])}): finish them with --resume first")
    held = len(store.trials)
    if options.num_samples <= held:
        raise ConfigError(f"--num-samples {options.num_samples}: {folder.name} already holds {held} trials; "
                          f"give the total it should hold, more than {held}")
    check_earlier_trials("--continue", earlier, read_trials(folder), distributions, same_study=True)
    check_same_task(earlier, info)
    info.extra["run_starts"] = info.extra["run_starts"] + [held]


def time_budget(options: SearchOptions, info: ExperimentInfo) -> float | None:
    """--time-budget; a --resume that leaves it out keeps the one the run recorded."""
    if options.time_budget is None and options.resume:
        return info.extra.get("search", {}).get("time_budget")
    return options.time_budget


def check_same_task(earlier: ExperimentInfo, info: ExperimentInfo) -> None:
    """Values the study compares must come from the same data and the same number of epochs."""
    if earlier.max_epochs != info.max_epochs:
        raise ConfigError(f"--max-epochs {info.max_epochs}: {earlier.name}'s trials ran up to {earlier.max_epochs}; "
                          f"keep --max-epochs {earlier.max_epochs}, or start a new search with --warm-start")
    before, now = earlier.extra.get("search", {}).get("data"), info.extra["search"]["data"]
    for key in ("manifest", "val_manifest", "val_fraction", "data", "pack_dtype", "shard_mb"):
        was, given = (None if d is None else d.get(key, DATA_RECORDED_BEFORE.get(key)) for d in (before, now))
        if before is not None and was != given:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"{flag}: {earlier.name} was searched on {was}, not {given}: "
                              f"continue it on the same data (give {flag} {was})")


def open_run_study(options: SearchOptions, info: ExperimentInfo, distributions: dict,
                   baseline: dict | None) -> None:
    """The journal's study, before the searcher opens it: for --continue of a search from
    before journals, its trials from Parquet; for --warm-start, the earlier experiments';
    for a new search, its baseline, the first trial it asks.
    A --resume or --continue also rewrites the Parquet files' description (rows unchanged)
    first: Tune's restored callbacks read this run's settings there (record.py), and a
    resume after a kill before its first result still knows where this run began."""
    folder = options.experiment_dir
    if (options.resume or options.continue_search) and (folder / TRIALS_FILE).is_file():
        TrialStore(folder, info).write()
    if options.resume:
        return
    backfill = options.continue_search and not has_study(folder)
    study = open_study(folder, info.name)
    if backfill:
        study.add_trials(frozen_trials(folder, distributions, {}))
    warm_start(study, list(options.warm_start), distributions)
    if baseline is not None and not options.continue_search:
        study.enqueue_trial(baseline, user_attrs={BASELINE_KEY: True})


def check_warm_starts(folders, distributions: dict) -> None:
    for folder in folders:
        earlier_folder, earlier = open_experiment(folder)
        check_earlier_trials(f"--warm-start {folder}", earlier, read_trials(earlier_folder), distributions,
                             same_study=False)
