"""`tune-adapter confirm`: rerun a search's best configurations over training seeds.

A search's winner is one noisy run chosen by the same validation set that scores it; here
the top K configurations (and the baseline) train N times each, seeds 0..N-1, all epochs,
no pruning (Tune's FIFO scheduler over a fixed list, as bench/asha.py), with the search's
data and settings. A held-out test set, checked apart from the training and validation
clips, is scored once per run at its best-val checkpoint and never used to choose.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ..config import SEARCHABLE, TrainConfig
from ..records.confirmation import (
    CONFIRM_FILE,
    CONFIRM_FOLDER,
    SEED_KEY,
    SOURCE_KEY,
    ConfirmStore,
    read_confirm_info,
    scored_epoch,
)
from ..data import PackedClips, TrainData, pack_manifest, read_manifest
from ..data.remote import is_uri
from .uri_storage import is_remote
from ..data.pack import clip_identities
from ..errors import ConfigError, DataError
from ..records.results import ExperimentInfo, open_experiment, read_trials
from ..space import recorded_space, space_path
from .hparams import TensorBoardScalars
from .options import SearchOptions
from .record import StoreCallback
from .trial import SCRATCH_FOLDER, TrialSetup, run_trial


@dataclass(frozen=True)
class ConfirmOptions:
    experiment: Path
    top: int = 3
    seeds: int = 3
    test_manifest: Path | None = None
    epochs: int | None = None  # None: the search's max epochs
    resume: bool = False
    address: str | None = None
    cpus_per_trial: float | None = None  # None: the search's
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None
    quiet: bool = False

    def __post_init__(self):
        for flag, ok in (("--top", self.top >= 1), ("--seeds", self.seeds >= 1),
                         ("--epochs", self.epochs is None or self.epochs >= 1)):
            if not ok:
                raise ConfigError(f"{flag} {getattr(self, flag[2:])} is out of range: give 1 or more")


class ConfirmCallback(StoreCallback):
    """The search's store callback, writing the runs to confirm.parquet instead."""

    def open_store(self) -> ConfirmStore:
        return ConfirmStore(self.folder, self.info)

    @property
    def tune_folder(self) -> Path:
        return self.folder / CONFIRM_FOLDER  # the runs' Tune folder, inside the search's


def planned_runs(folder: Path, params: list[str], options: "ConfirmOptions", stored: dict | None) -> list[dict]:
    """The runs to train: a resumed confirmation's own plan (after a --continue the search's
    best trials may differ, and a run must resume with its own configuration), else the top
    configurations of the search now. Confirmations recorded before plans: planned again."""
    if stored is not None and "runs" in stored:
        return stored["runs"]
    return plan_runs(read_trials(folder), params, options.top, options.seeds)


def plan_runs(trials, params: list[str], top: int, seeds: int) -> list[dict]:
    """Tune configs of the runs: the top configurations by best val_l1 and the baseline,
    seed by seed (every configuration's seed 0 first, so pairs complete early)."""
    scored = trials[trials["best_val_l1"].notna()].sort_values(["best_val_l1", "number"], kind="stable")
    if scored.empty:
        raise ConfigError("the search has no trial with a val_l1 yet: let it run, then confirm")
    chosen = scored.head(top)
    baseline = scored[scored["baseline"]]
    if not baseline.empty and not chosen["baseline"].any():
        chosen = [*chosen.to_dict("records"), baseline.iloc[0].to_dict()]
    else:
        chosen = chosen.to_dict("records")
    from .scheduler import BASELINE_KEY

    configs = [{**{p: _plain(row[p]) for p in params if p != SEED_KEY}, SOURCE_KEY: row["trial_id"],
                BASELINE_KEY: bool(row["baseline"])} for row in chosen]
    return [{**config, SEED_KEY: seed} for seed in range(seeds) for config in configs]


def _plain(value):
    """numpy scalars from pandas back to Python values; a missing value (NaN) to None."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and value != value else value


def search_settings(folder: Path, info: ExperimentInfo) -> dict:
    settings = info.extra.get("search")
    if not settings or "data" not in settings:
        raise ConfigError(f"{folder} does not record its data (a search from before `confirm`): "
                          "run the search again with this version to confirm it")
    return settings


def check_test_apart(test_manifest: Path, data: TrainData, test: PackedClips | None = None) -> None:
    """Refuse a test set that shares a clip with training or validation: by resolved audio
    path (before packing), then by the hash of the audio tensor (after). Lookups in dicts:
    100k training clips against 5k test clips is 105k steps, not 5 x 10^8 comparisons."""
    by_path, by_digest = {}, {}
    for split, pack in (("training", data.train), ("validation", data.val)):
        for name, path, digest in clip_identities(pack):
            by_path.setdefault(path, (split, name, path))
            by_digest.setdefault(digest, (split, name, path))
    if test is None:
        for entry in read_manifest(test_manifest):
            if str(entry.audio) in by_path:
                split, _, path = by_path[str(entry.audio)]
                raise ConfigError(f"--test-manifest {test_manifest}: clip {entry.audio_as_written} is "
                                  f"also a {split} clip ({path}): the test set must be held apart")
        return
    for test_name, _, digest in clip_identities(test):
        if digest in by_digest:
            split, name, path = by_digest[digest]
            raise ConfigError(f"--test-manifest {test_manifest}: clip {test_name} has the same audio "
                              f"as {split} clip {name} ({path}): the test set must be held apart")


def load_test(test_manifest: Path, data: TrainData, cache_dir: str | None) -> PackedClips:
    check_test_apart(test_manifest, data)
    test = pack_manifest(read_manifest(test_manifest), str(test_manifest), cache_dir and Path(cache_dir))
    if vars(test.shapes) != vars(data.train.shapes):
        raise DataError(f"--test-manifest {test_manifest}: its clips' shapes {vars(test.shapes)} differ from "
                        f"the training clips' {vars(data.train.shapes)}")
    check_test_apart(test_manifest, data, test)
    return test


def check_folder(folder: Path, resume: bool) -> None:
    from ray.tune import Tuner

    from .storage import linking_filesystem

    tune_folder = folder / CONFIRM_FOLDER
    if resume and not (tune_folder.exists() and Tuner.can_restore(str(tune_folder),
                                                                  storage_filesystem=linking_filesystem())):
        raise ConfigError(f"--resume: {folder} holds no confirmation to resume; drop --resume")
    if not resume and ((folder / CONFIRM_FILE).exists() or tune_folder.exists()):
        raise ConfigError(f"{folder} already holds a confirmation: add --resume to continue it, or delete "
                          f"{CONFIRM_FILE}, confirm_epochs.parquet and {CONFIRM_FOLDER}/ for a new one")


def run_confirm(options: ConfirmOptions, trainable: Callable = run_trial, console=None) -> Path:
    """Run (or resume) the confirmation of the search in `options.experiment`; returns its folder."""
    from .driver import (fit_quietly, fixed_points, keeps_freed_memory, load_sources, max_concurrent,
                         ray_session, ready_nodes, trial_resources)
    from ..bench.faults import KillSwitch
    from .tuner import TuneRun, make_tuner
    from ..trainer import evaluate_pack
    from .live import LiveTable
    from .storage import linking_filesystem

    if is_remote(options.experiment):
        raise ConfigError(f"--experiment {options.experiment}: confirm runs on an experiment folder it can write "
                          "to, not on one at a URI yet; run it where a search's folder is (--storage DIR)")
    folder, info = open_experiment(options.experiment)
    folder = folder.resolve()
    settings = search_settings(folder, info)
    stored = None
    if options.resume and (folder / CONFIRM_FILE).is_file():
        stored = read_confirm_info(folder).extra["confirm"]  # a resumed run keeps its plan
        options = replace(options, top=stored["top"], seeds=len(stored["seeds"]), epochs=stored["epochs"],
                          test_manifest=stored["test_manifest"] and Path(stored["test_manifest"]))
    data = load_sources(settings["data"])
    test = None if options.test_manifest is None else load_test(options.test_manifest, data,
                                                                  settings["data"]["cache_dir"])
    check_folder(folder, options.resume)  # after the test set's check: a refusal writes nothing
    epochs = options.epochs or info.max_epochs
    runs = planned_runs(folder, info.params, options, stored)
    search_params = [p for p in info.params if p != SEED_KEY]
    confirm_info = ExperimentInfo(
        name=f"{info.name} confirm", params=[*search_params, SEED_KEY, SOURCE_KEY], max_epochs=epochs,
        num_samples=len(runs), space=info.space,
        extra={"confirm": {"top": options.top, "seeds": list(range(options.seeds)), "epochs": epochs,
                           "test_manifest": None if test is None else str(Path(options.test_manifest).resolve()),
                           "search": info.name, "runs": runs}})
    pick = lambda flag, key: flag if flag is not None else settings.get(key)  # noqa: E731
    search_options = SearchOptions(
        space=space_path(recorded_space(info.space)), max_epochs=epochs, num_samples=len(runs), storage=folder, name=CONFIRM_FOLDER,
        resume=options.resume, address=options.address, quiet=options.quiet,
        cpus_per_trial=pick(options.cpus_per_trial, "cpus_per_trial") or 1.0,
        gpus_per_trial=pick(options.gpus_per_trial, "gpus_per_trial"),
        max_concurrent=pick(options.max_concurrent, "max_concurrent"),
        max_failures=settings.get("max_failures", 1), mixed_precision=settings.get("mixed_precision", False),
        checkpoint_every=settings.get("checkpoint_every", 1))
    base = TrainConfig(epochs=epochs, mixed_precision=search_options.mixed_precision,
                       save_every=search_options.checkpoint_every, moments_in_last_checkpoint=False,
                       keep_freed_memory=keeps_freed_memory(search_options),
                       shuffle_window=settings.get("shuffle_window", 0),  # searches before windows: none
                       init_from=settings.get("init_from"), init_partial=settings.get("init_partial", False))
    uri = settings["data"].get("data")
    setup = TrialSetup(base=base, train_pack=str(data.train.root), val_pack=str(data.val.root),
                       data_uri=uri if is_uri(uri) else None,
                       params=tuple(p for p in search_params if p in SEARCHABLE) + (SEED_KEY,),
                       threads=max(1, int(search_options.cpus_per_trial)),
                       experiment_dir=str(search_options.experiment_dir))
    with ray_session(search_options):
        ready_nodes(setup, options.quiet, console)
        resources = trial_resources(search_options)
        run = TuneRun(name=CONFIRM_FOLDER, setup=setup, resources=resources,
                      storage={"storage_path": str(folder), "storage_filesystem": linking_filesystem()},
                      max_concurrent=max_concurrent(search_options, resources),
                      max_failures=search_options.max_failures)
        store = ConfirmCallback(folder, confirm_info)
        callbacks = [store, KillSwitch(), TensorBoardScalars(),
                     *([] if options.quiet else [LiveTable(confirm_info, store, console)])]
        # The runs' values are functions of the grid point (fixed_points): Tune saves them as
        # placeholders, which a restore must be given again.
        tuner = make_tuner(run, trainable, restore=str(search_options.experiment_dir) if options.resume else None,
                           param_space=fixed_points(runs), callbacks=callbacks, num_samples=1)
        fit_quietly(tuner)
    shutil.rmtree(search_options.experiment_dir / SCRATCH_FOLDER, ignore_errors=True)
    if test is not None:
        score_tests(ConfirmStore(folder, confirm_info), test, evaluate_pack)
    return folder


def score_tests(store: ConfirmStore, test: PackedClips, evaluate: Callable) -> None:
    """Each finished run's test metrics, once, at its best checkpointed epoch by val_l1."""
    from ..export import load_checkpoint_model

    for run_id, record in store.trials.items():
        epoch = scored_epoch(record)
        if record.status != "completed" or run_id in store.tests or epoch is None:
            continue
        store.record_test(run_id, epoch, evaluate(load_checkpoint_model(record.checkpoints[epoch]), test))
