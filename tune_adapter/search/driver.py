"""The Ray Tune driver: Optuna samples, ASHA stops, trials train, Parquet records.

Ray Tune does the scheduling, retries and resuming (`Tuner.restore`); Optuna's study the
sampling (searcher.py); ASHA the early stopping, up to the finals rung (scheduler.py),
where the finalists are chosen once every trial is screened (finals.py). This module
checks what a search is given and wires them to the trainer (tuner.py builds the run).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import TrainConfig
from ..cpu_tuning import huge_pages_env
from ..data import TrainData, load_training_data
from ..data.remote import is_uri
from ..errors import ConfigError
from ..records.results import TRIALS_FILE, ExperimentInfo, TrialStore, read_info
from ..init_from import check_init_space, read_initial_adapter
from ..space import SEARCHABLE, SearchSpace, check_baseline, check_space, load_space, probe_space
from .options import DATA_RECORDED_BEFORE, SHARED_GPU, SearchOptions
from .budget import SPENT_KEY
from .storage import linking_filesystem
from .continuation import carry_earlier_runs, check_warm_starts, open_run_study, time_budget
from .study import has_study, open_study, reconcile
from .trial import SCRATCH_FOLDER, TrialSetup, run_trial
from .uri_storage import fetch_own_files

# Ray prints a warning per checkpoint when syncing is slow relative to num_to_keep; the
# numbers it warns about are ours to read in Parquet, not the user's console.
QUIET_ENV = {"TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
             "RAY_AIR_NEW_OUTPUT": "0"}
# Snapshot the experiment often: after a SIGKILL, Tune resumes from its last snapshot.
SNAPSHOT_ENV = {"TUNE_GLOBAL_CHECKPOINT_S": "2"}
# A reused actor waits this long for the stopped trial's thread to end (its `finally`
# blocks free memory and files); Tune's 2 s default failed trials on a busy machine, as
# errors no callback hears of.
WORKER_ENV = {"TUNE_FUNCTION_THREAD_TIMEOUT_S": "120"}


@dataclass
class SearchOutcome:
    experiment_dir: Path
    finished: int  # trials of this run that ended (completed, pruned, stopped or error)
    num_samples: int  # trials this run was to add
    held: int = 0  # trials of the experiment, all runs
    budget_spent: bool = False

    @property
    def complete(self) -> bool:
        return self.finished >= self.num_samples or self.budget_spent


def data_sources(options: SearchOptions) -> dict:
    """The manifests a search trains and validates on (the quickstart's when none is given),
    as absolute paths: saved with the experiment, so `confirm` trains on the same clips."""
    manifest, val_manifest = options.manifest, options.val_manifest
    if manifest is None and options.data is None:
        from .quickstart import quickstart_manifests

        manifest, val_manifest = quickstart_manifests(options.local_storage)
    absolute = lambda path: None if path is None else str(Path(path).resolve())  # noqa: E731
    return {"manifest": absolute(manifest), "val_manifest": absolute(val_manifest),
            "val_fraction": options.val_fraction, "cache_dir": absolute(options.cache_dir),
            "data": options.data if is_uri(options.data) else absolute(options.data),
            "pack_dtype": options.pack_dtype, "shard_mb": options.shard_mb}


def load_sources(sources: dict) -> TrainData:
    """The search's data, as it recorded it (DATA_RECORDED_BEFORE fills what older searches lack)."""
    sources = {**DATA_RECORDED_BEFORE, **sources}
    return load_training_data(sources["manifest"], sources["val_manifest"], sources["val_fraction"],
                              sources["cache_dir"] and Path(sources["cache_dir"]), sources["pack_dtype"],
                              sources["data"], shard_bytes=int(sources["shard_mb"] * 2**20))


def prepare_data(options: SearchOptions) -> TrainData:
    return load_sources(data_sources(options))


def search_record(options: SearchOptions, sources: dict) -> dict:
    """What a later `confirm` needs to train as this search's trials did, and the report to
    find the finals rung (ExperimentInfo.extra)."""
    return {"data": sources, "mixed_precision": options.mixed_precision,
            "grace_period": options.grace_period, "reduction_factor": options.reduction_factor,
            "finalists": options.finalists, "shuffle_window": options.shuffle_window,
            "checkpoint_every": options.checkpoint_every, "cpus_per_trial": options.cpus_per_trial,
            "gpus_per_trial": options.gpus_per_trial, "max_concurrent": options.max_concurrent,
            "max_failures": options.max_failures, "time_budget": options.time_budget,
            "init_from": str(Path(options.init_from).resolve()) if options.init_from else None,
            "init_partial": options.init_partial}


def experiment_info(options: SearchOptions, space: SearchSpace, params: list[str], probed) -> ExperimentInfo:
    from optuna.distributions import distribution_to_json

    return ExperimentInfo(
        name=options.experiment_name, params=params, max_epochs=options.max_epochs,
        num_samples=options.num_samples, space=space.recorded_as,
        distributions={p: distribution_to_json(d) for p, d in probed.distributions.items()},
    )


def check_experiment_folder(options: SearchOptions) -> None:
    from ray.tune import Tuner

    if options.storage_uri is not None:
        sync_mirror(options)
    exists = options.experiment_dir.exists()
    if options.continue_search and not options.resume:
        if not (options.experiment_dir / TRIALS_FILE).is_file():
            raise ConfigError(f"--continue: {options.experiment_dir} holds no search to add trials to: give "
                              "the --name (and --storage) of an earlier search, or drop --continue")
        return
    storage = tune_storage(options)
    if options.resume and not (exists and Tuner.can_restore(options.storage_uri or str(options.experiment_dir),
                                                           storage_filesystem=storage["storage_filesystem"])):
        raise ConfigError(f"--resume: {options.experiment_dir} holds no search to resume; drop --resume")
    if not options.resume and exists and any(options.experiment_dir.iterdir()):
        raise ConfigError(
            f"{options.experiment_dir} already holds a search: add --resume to continue it, "
            "or give --name for a new one"
        )


def experiment_place(options: SearchOptions) -> str:
    return options.storage_uri or str(options.experiment_dir.resolve())


def check_not_moved(options: SearchOptions, info: ExperimentInfo) -> None:
    """Tune restores an experiment with the callbacks it pickled when it began, which name
    its folder then: a moved experiment would be recorded in its old place."""
    if not options.resume or not (options.experiment_dir / TRIALS_FILE).is_file():
        return  # a new search, or one killed before its first result: nothing recorded yet
    recorded = read_info(options.experiment_dir).extra.get("experiment", info.extra["experiment"])
    if recorded != info.extra["experiment"]:
        raise ConfigError(f"--resume: {options.experiment_name} was begun in {recorded} and Ray Tune's saved run "
                          f"names that place: move it back there to resume it, or start a new search "
                          f"with --warm-start {info.extra['experiment']}")


def sync_mirror(options: SearchOptions) -> None:
    """--storage URI: the local mirror as the URI holds it, except where this machine ran the
    search being resumed or continued: its mirror is then the newest (uploads lag it)."""
    mirror = options.experiment_dir
    if (options.resume or options.continue_search) and (mirror / TRIALS_FILE).is_file():
        return
    shutil.rmtree(mirror, ignore_errors=True)
    fetch_own_files(options.storage_uri, mirror)


def check_address(address: str | None) -> None:
    if address and address.startswith("ray://"):
        raise ConfigError(f"--address {address}: Ray Client runs the search's driver on the cluster, away "
                          "from its files here; run tune-adapter on a node of the cluster (ray job submit, "
                          "or ssh) with --address HEAD_IP:6379")


def start_ray(options: SearchOptions) -> bool:
    """Connect to --address or start a local Ray; False when Ray was already running here."""
    import ray

    os.environ.update({k: v for k, v in {**QUIET_ENV, **SNAPSHOT_ENV, **WORKER_ENV}.items() if k not in os.environ})
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if ray.is_initialized():
        return False
    kwargs = dict(log_to_driver=False, logging_level=logging.ERROR)
    if options.address:
        # Ray enables token auth for `ray start` clusters, but a driver given an explicit
        # address uses it only with RAY_AUTH_MODE=token: use this machine's token, unless
        # the user chose a mode.
        if "RAY_AUTH_MODE" not in os.environ:
            from .compat import enable_local_auth_token

            enable_local_auth_token()
        # A local Ray's workers inherit this environment; a cluster's get CPU tuning's
        # huge pages (cpu_tuning.py) from the job's runtime_env.
        ray.init(address=options.address, runtime_env={"env_vars": {**huge_pages_env(), **WORKER_ENV}}, **kwargs)
    else:
        ray.init(include_dashboard=False, **kwargs)
    return True


def trial_resources(options: SearchOptions) -> dict:
    """What each trial asks Ray for; refused when no node of the cluster could ever give it."""
    import ray

    gpus = options.gpus_per_trial
    if gpus is None:
        gpus = SHARED_GPU if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    resources = {"cpu": options.cpus_per_trial, "gpu": gpus}
    check_fits(resources, [node["Resources"] for node in ray.nodes() if node["Alive"]])
    return resources


def check_fits(resources: dict, nodes: list[dict]) -> None:
    """Refuse a trial no node can hold: Ray would keep it pending forever, in silence.

    A trial runs on one node, so one node must hold its CPUs and its GPUs together; the
    cluster's sum does not count. A cluster that an autoscaler would grow is not foreseen:
    its missing nodes count as absent.
    """
    wanted = {"CPU": resources["cpu"], "GPU": resources["gpu"]}
    if any(all(node.get(unit, 0.0) >= amount - 1e-9 for unit, amount in wanted.items() if amount > 0)
           for node in nodes):
        return
    for key, flag, unit in (("gpu", "--gpus-per-trial", "GPU"), ("cpu", "--cpus-per-trial", "CPU")):
        amount, largest = resources[key], max((node.get(unit, 0.0) for node in nodes), default=0.0)
        if amount <= 0 or largest >= amount - 1e-9:
            continue
        if largest == 0 and key == "gpu":
            raise ConfigError(f"{flag} {amount:g}: the Ray cluster has no GPUs ({len(nodes)} node(s)); "
                              f"use {flag} 0 to train on CPUs, or --address of a cluster with GPUs")
        raise ConfigError(f"{flag} {amount:g}: no node of the Ray cluster has that many {unit}s "
                          f"(at most {largest:g} on one of {len(nodes)} node(s)); use {flag} {largest:g} or less")
    with_gpus = [node.get("CPU", 0.0) for node in nodes if node.get("GPU", 0.0) >= wanted["GPU"] - 1e-9]
    raise ConfigError(f"--cpus-per-trial {wanted['CPU']:g} with --gpus-per-trial {wanted['GPU']:g}: no node of the "
                      f"Ray cluster has both (its nodes with {wanted['GPU']:g} GPU have at most {max(with_gpus):g} "
                      f"CPUs; a trial runs on one node); use --cpus-per-trial {max(with_gpus):g} or less")


def max_concurrent(options: SearchOptions, resources: dict) -> int:
    """Without a limit, Tune keeps only one trial pending with a custom searcher."""
    if options.max_concurrent is not None:
        return options.max_concurrent
    import ray

    cluster = ray.cluster_resources()
    fits = [math.floor(cluster.get("CPU", 1) / resources["cpu"] + 1e-9)]
    if resources["gpu"] > 0:
        fits.append(math.floor(cluster.get("GPU", 0) / resources["gpu"] + 1e-9))
    return max(1, min(fits + [options.num_samples]))


def build_tuner(options: SearchOptions, prepared: "PreparedSearch", trainable: Callable, callbacks: list,
                console=None):
    """The search's Tune run: new, or restored with everything it pickled (searcher,
    scheduler, clock, callbacks), which then read this run's settings from the files."""
    from .tuner import TuneRun, make_tuner

    resources = trial_resources(options)
    info = prepared.info
    open_run_study(options, info, prepared.distributions,  # refused resources write nothing
                   prepared.space.baseline if options.baseline and not options.continue_search else None)
    run = TuneRun(name=options.experiment_name, setup=prepared.setup, resources=resources,
                  storage=tune_storage(options),
                  max_concurrent=max_concurrent(options, resources), max_failures=options.max_failures)
    if options.resume:
        try:
            return make_tuner(run, trainable, restore=options.storage_uri or str(options.experiment_dir))
        except (ModuleNotFoundError, AttributeError) as exc:  # Tune's pickle names a class that is gone
            raise ConfigError(f"--resume: {options.experiment_name} was begun by an older tune-adapter ({exc}); "
                              "resume it with the version that began it") from None
    from ..bench.faults import KillSwitch
    from .budget import SearchClock
    from .finals import Finals
    from .hparams import HParamsSessions, TensorBoardScalars
    from .live import LiveTable
    from .record import StoreCallback
    from .scheduler import SearchScheduler
    from .searcher import SilentErrors, StudySearcher

    clock, rung = SearchClock(prepared.budget_s, info.extra.get(SPENT_KEY, 0.0)), finals_at(options)
    searcher = StudySearcher(folder=options.experiment_dir, study_name=info.name, space_fn=prepared.space.function,
                             sampler=make_sampler(options, prepared.distributions), trials=prepared.run_samples,
                             max_epochs=options.max_epochs, finals=Finals(rung, options.finalists), clock=clock,
                             finalist_cpus=finalist_cpus(options, resources), metric=info.metric, mode=info.mode)
    store = StoreCallback(options.experiment_dir, info, clock, rung)
    live = [] if options.quiet else [LiveTable(info, store, console)]
    scheduler = SearchScheduler(finals=rung, max_epochs=options.max_epochs, metric=info.metric, mode=info.mode,
                                grace_period=options.grace_period, reduction_factor=options.reduction_factor,
                                clock=clock)
    return make_tuner(run, trainable, search_alg=searcher, scheduler=scheduler,
                      callbacks=[store, KillSwitch(), SilentErrors(searcher), TensorBoardScalars(), HParamsSessions(store),
                                 *live, *callbacks])


def finalist_cpus(options: SearchOptions, resources: dict) -> float:
    """A finalist trains when screening is over, with fewer trials left than CPUs: a long one
    takes its share of them (torch threads; searcher.LONG_FINALS_S), never more than one node
    holds."""
    import ray

    if options.cpus_per_trial != int(options.cpus_per_trial) or not options.finalists:
        return resources["cpu"]
    largest = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]), default=1.0)
    share = math.floor(ray.cluster_resources().get("CPU", 1) / options.finalists)
    return float(max(resources["cpu"], min(largest, share)))


def tune_storage(options: SearchOptions) -> dict:
    """Tune's storage: a URI as given (Tune uploads from every node), else the folder on
    the linking filesystem (storage.py)."""
    if options.storage_uri is not None:
        return {"storage_path": str(options.storage), "storage_filesystem": None}
    return {"storage_path": str(options.experiment_dir.parent), "storage_filesystem": linking_filesystem()}


def finals_at(options: SearchOptions) -> int | None:
    from .scheduler import finals_rung

    return finals_rung(options.grace_period, options.reduction_factor, options.max_epochs) \
        if options.finalists else None


def startup_trials(num_samples: int) -> int:
    """Random trials before TPE models the results: Optuna's default of 10 left TPE only 6
    of a 16-trial search; a quarter leaves it 12 (not measured apart: docs/performance.md)."""
    return max(2, num_samples // 4)


def make_sampler(options: SearchOptions, distributions: dict):
    import optuna

    from .distinct import DistinctSampler

    from .screening import ScreeningSampler

    if options.sampler == "random":
        base = optuna.samplers.RandomSampler(seed=options.seed)
    else:
        base = optuna.samplers.TPESampler(seed=options.seed, n_startup_trials=startup_trials(options.num_samples))
        rung = finals_at(options)
        if rung:
            base = ScreeningSampler(base, rung)
    return DistinctSampler(base, distributions, seed=options.seed)


def trial_setup(options: SearchOptions, data: TrainData, params: list[str], base: TrainConfig) -> TrialSetup:
    return TrialSetup(base=base, train_pack=str(data.train.root), val_pack=str(data.val.root),
                      data_uri=options.data if is_uri(options.data) else None,
                      params=tuple(p for p in params if p in SEARCHABLE),
                      threads=max(1, int(options.cpus_per_trial)),
                      experiment_dir=str(options.experiment_dir), finals_rung=finals_at(options))


def keeps_freed_memory(options: SearchOptions) -> bool:
    """Trials side by side give up CPU tuning's kept heap (cpu_tuning.start_run), which
    would put two InfiniteTalk-sized trials over the memory target of docs/performance.md."""
    return options.max_concurrent == 1 or options.num_samples == 1


def fixed_points(configs: list[dict]) -> dict:
    """A Tune param space whose trials are exactly these configurations (each value a
    function of the grid point: a restore must be given the space again)."""
    from functools import partial

    from ray import tune

    keys = sorted({k for c in configs for k in c})
    return {"point": tune.grid_search(list(range(len(configs)))),
            **{k: tune.sample_from(partial(_value_at_point, configs, k)) for k in keys}}


def _value_at_point(configs: list[dict], key: str, spec) -> object:
    return configs[spec.config.point].get(key)


@dataclass
class PreparedSearch:
    space: SearchSpace
    info: ExperimentInfo
    setup: TrialSetup
    distributions: dict  # the space's Optuna distributions, by parameter
    budget_s: float | None = None  # --time-budget; a --resume without it keeps the recorded one

    @property
    def held(self) -> int:
        """Trials the experiment held before this run began (--continue)."""
        return self.info.extra["run_starts"][-1]

    @property
    def run_samples(self) -> int:
        return self.info.num_samples - self.held


def prepare_search(options: SearchOptions, space: SearchSpace | None = None) -> PreparedSearch:
    """Everything checked before Ray starts: folder, data, space (`space`: the one the
    command line loaded already); then what trials share."""
    check_address(options.address)
    space = space or load_space(options.space)
    check_experiment_folder(options)
    sources = data_sources(options)
    data = load_sources(sources)
    probed = probe_space(space, options.seed)
    check_space(probed, space, None if data.train.is_frame_layout() else data.train.latent_scales())
    if options.baseline:
        check_baseline(probed, space)
    if options.init_from is not None:
        check_init_space(read_initial_adapter(Path(options.init_from)), probed, data, options.init_partial)
    info = experiment_info(options, space, probed.params, probed)
    info.extra["search"] = search_record(options, sources)
    info.extra["experiment"] = experiment_place(options)
    carry_earlier_runs(options, info, probed.distributions)
    check_not_moved(options, info)
    check_warm_starts(options.warm_start, probed.distributions)
    base = TrainConfig(epochs=options.max_epochs, mixed_precision=options.mixed_precision,
                       init_from=str(Path(options.init_from).resolve()) if options.init_from else None,
                       init_partial=options.init_partial, save_every=options.checkpoint_every,
                       moments_in_last_checkpoint=False,  # nothing resumes a finished trial
                       keep_freed_memory=keeps_freed_memory(options), shuffle_window=options.shuffle_window)
    budget_s = info.extra["search"]["time_budget"] = time_budget(options, info)  # for restored callbacks
    return PreparedSearch(space, info, trial_setup(options, data, probed.params, base), probed.distributions,
                          budget_s)


@contextmanager
def ray_session(options: SearchOptions):
    """Ray for the length of a search; shut down after, unless it was running before."""
    started = start_ray(options)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def run_search(options: SearchOptions, trainable: Callable = run_trial, console=None,
               space: SearchSpace | None = None) -> SearchOutcome:
    """Run (or resume, or continue) a search; returns when every trial of this run has ended,
    the time budget is spent, or the driver is stopped."""
    from .record import MirrorUpload

    prepared = prepare_search(options, space)
    with ray_session(options):
        ready_nodes(prepared.setup, options.quiet, console)
        mirror = None if options.storage_uri is None else MirrorUpload(options.experiment_dir, options.storage_uri)
        tuner = build_tuner(options, prepared, trainable, [mirror] if mirror else [], console)
        results = list(fit_quietly(tuner))
        # fit() has returned: no trial of this search runs on any node, so every scratch folder
        # left (the checkpoints of ended actors, wherever they ran) is of no further use.
        shutil.rmtree(options.experiment_dir / SCRATCH_FOLDER, ignore_errors=True)
        outcome = finish(options, prepared, results)
    if mirror is not None:
        mirror.upload()  # what changed since its last upload, finish's writes included
    return outcome


def fit_quietly(tuner):
    """Tune's fit, without the line Tune logs when it is stopped with trials unfinished (the
    search says so in its own words: cli/experiments.py)."""
    tune_log = logging.getLogger("ray.tune.tune")
    level = tune_log.level
    tune_log.setLevel(logging.CRITICAL)
    try:
        return tuner.fit()
    finally:
        tune_log.setLevel(level)


def ready_nodes(setup: TrialSetup, quiet: bool, console=None) -> None:
    """Every node has the data before any trial starts (search/nodes.py)."""
    from .nodes import prepare_nodes, staging_line

    staged = prepare_nodes(setup.data_uri, [setup.train_pack, setup.val_pack])
    if staged and not quiet:
        from ..views.display import console as default_console

        (console or default_console).print(staging_line(setup.data_uri, staged), soft_wrap=True, markup=False)


def finish(options: SearchOptions, prepared: PreparedSearch, results: list) -> SearchOutcome:
    """Count this run's finished trials; once it is over (record.run_over), end the
    screened trials no finalist needed, and close the records of trials Tune lost in a
    crash and the study's trials the searcher could not tell (study.reconcile).

    After a SIGKILL, Tune resumes from its last experiment snapshot: a trial that started
    after it is unknown to Tune and would stay 'running' in the store forever.
    """
    from .record import end_waiting, record_silent_errors, result_id, run_over

    folder = options.experiment_dir
    store = TrialStore(folder, read_info(folder) if (folder / TRIALS_FILE).is_file() else prepared.info)
    record_silent_errors(store, results)
    spent = prepared.budget_s is not None and store.info.extra.get(SPENT_KEY, 0.0) >= prepared.budget_s
    known = {result_id(r) for r in results}
    complete = run_over(store, spent, known)
    mine = [r for r in store.trials.values() if r.number >= prepared.held]
    if complete:
        end_waiting(store, spent)
        for record in mine:
            if record.trial_id not in known and not store.is_finished(record.trial_id):
                store.record_end(record.trial_id, record.params, "error",
                                 "lost: the driver died before Tune saved this trial, so it was not resumed")
    if store.trials:
        store.write()
    if has_study(folder):  # none: resumed from before journals, left so
        reconcile(open_study(folder, store.info.name), store, complete)
    finished = sum(store.is_finished(r.trial_id) for r in mine)
    return SearchOutcome(folder, finished, prepared.run_samples, len(store.trials), spent)
