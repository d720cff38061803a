"""The search and its experiments: search, results, best, export, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UserError
from ..search.options import SHARED_GPU, SearchOptions
from .app import DEFAULT_VALUE, CacheDir, DataDir, Experiment, PackDtype, ValFraction, ValManifest


def search(
    space: Annotated[Optional[str], typer.Option(metavar="NAME|FILE", help="A shipped space (`tune-adapter spaces` lists them) or a .py file defining space(trial) [default; with --continue, the search's own]")] = None,
    manifest: Annotated[Optional[Path], typer.Option(help="Training manifest [default: a synthetic dataset under --storage]")] = None,
    val_manifest: ValManifest = None,
    val_fraction: ValFraction = None,
    data: DataDir = None,
    pack_dtype: PackDtype = "half",
    shard_mb: Annotated[float, typer.Option(help="A manifest is packed in shards of about this many MiB")] = SearchOptions.shard_mb,
    shuffle_window: Annotated[int, typer.Option(help="Shards whose clips a trial shuffles together (0: the whole pack)")] = SearchOptions.shuffle_window,
    num_samples: Annotated[Optional[int], typer.Option(help=f"Trials [space's NUM_SAMPLES, else {SearchOptions.num_samples}]")] = None,
    max_epochs: Annotated[Optional[int], typer.Option(help=f"Epochs of a trial that ASHA keeps [MAX_EPOCHS, else {SearchOptions.max_epochs}]")] = None,
    grace_period: Annotated[Optional[int], typer.Option(help=f"Epochs before ASHA may stop a trial [GRACE_PERIOD, else {SearchOptions.grace_period}]")] = None,
    reduction_factor: Annotated[Optional[int], typer.Option(help=f"ASHA keeps 1/R at each rung [REDUCTION_FACTOR, else {SearchOptions.reduction_factor}]")] = None,
    finalists: Annotated[Optional[int], typer.Option(help=f"Trials that train to max epochs, chosen once all are screened; 0: ASHA promotes as trials arrive [FINALISTS, else {SearchOptions.finalists}]")] = None,
    cpus_per_trial: Annotated[Optional[float], typer.Option(help=f"CPUs (and torch threads) per trial [{SearchOptions.cpus_per_trial:g}]")] = None,
    gpus_per_trial: Annotated[Optional[float], typer.Option(help=f"GPU fraction per trial, or whole GPUs above 1 [{SHARED_GPU} with GPUs, else 0]")] = None,
    max_concurrent: Annotated[Optional[int], typer.Option(help="Trials at once [as many as resources allow]")] = None,
    storage: Annotated[str, typer.Option(metavar="DIR|URI", help="Folder of experiments, or a URI (s3://, gs://) as Ray Tune's storage_path")] = str(SearchOptions.storage),
    name: Annotated[Optional[str], typer.Option(help="Experiment name [the space file's name]")] = None,
    seed: Annotated[Optional[int], typer.Option(help=f"Optuna sampler seed [{SearchOptions.seed}]")] = None,
    resume: Annotated[bool, typer.Option(help="Continue a stopped search of this name")] = SearchOptions.resume,
    address: Annotated[Optional[str], typer.Option(help="Join this Ray cluster instead of starting one")] = None,
    max_failures: Annotated[Optional[int], typer.Option(help=f"Retries of a failing trial [{SearchOptions.max_failures}]")] = None,
    mixed_precision: Annotated[bool, typer.Option(help="bf16 autocast in every trial")] = SearchOptions.mixed_precision,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N epochs and at a trial's end (fewer: less I/O, coarser resume and export)")] = SearchOptions.checkpoint_every,
    baseline: Annotated[bool, typer.Option(help="First run the space's BASELINE (the guide's defaults), all epochs, to compare the winner with")] = SearchOptions.baseline,
    cache_dir: CacheDir = None,
    init_from: Annotated[Optional[Path], typer.Option(help="Every trial starts from this adapter (as train --init-from) [INIT_FROM, else random]")] = None,
    init_partial: Annotated[Optional[bool], typer.Option("--init-partial", help="With --init-from: load the layers whose shapes fit, start the others fresh [INIT_PARTIAL]")] = None,
    continue_search: Annotated[bool, typer.Option("--continue", help="Add trials to the finished search --name until it holds --num-samples; its sampler sees every earlier trial")] = False,
    warm_start: Annotated[Optional[list[Path]], typer.Option(metavar="DIR", help="A new search whose sampler starts from this earlier search's trials (repeat for more)")] = None,
    time_budget: Annotated[Optional[str], typer.Option(metavar="DURATION", help="Start no trial after this long (2h, 45m), all runs together; running trials end at their next epoch [TIME_BUDGET]")] = None,
    top: Annotated[int, typer.Option(help="Trials in the final table")] = 5,
):
    """Search hyperparameters with Ray Tune (Optuna samples, ASHA stops weak trials)."""
    from ..records.results import TRIALS_FILE, open_experiment, read_trials
    from ..search import resolve_options, run_search
    from ..views.top_trials import top_trials_table
    from ..space import load_space
    from ..views.display import console, shown_path

    space = space or search_space_of(storage, name, continue_search)
    space_file = load_space(space)
    options = resolve_options(
        space_file.defaults, space=space_file.path, continue_search=continue_search,
        warm_start=tuple(warm_start or ()), time_budget=time_budget, manifest=manifest, val_manifest=val_manifest, data=data, pack_dtype=pack_dtype,
        shard_mb=shard_mb, shuffle_window=shuffle_window,
        val_fraction=val_fraction, num_samples=num_samples, max_epochs=max_epochs,
        grace_period=grace_period, reduction_factor=reduction_factor, finalists=finalists,
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial, max_concurrent=max_concurrent, storage=storage, name=name,
        seed=seed, resume=resume, address=address, max_failures=max_failures,
        mixed_precision=mixed_precision, checkpoint_every=checkpoint_every, cache_dir=cache_dir,
        baseline=baseline, init_from=init_from, init_partial=init_partial,
    )
    outcome = run_search(options, console=console, space=space_file)
    folder = outcome.experiment_dir
    if (folder / TRIALS_FILE).is_file():  # none when stopped before the first result
        folder, info = open_experiment(folder)
        console.print(top_trials_table(read_trials(folder), info.params, top, f"top {top} trials"))
    if outcome.budget_spent:
        console.print(f"[yellow]the time budget is spent: the experiment holds {outcome.held} trials; add "
                      f"time and trials with --continue --time-budget LONGER --num-samples MORE")
    elif not outcome.complete:
        console.print(f"[yellow]stopped with {outcome.finished} of {outcome.num_samples} trials finished: "
                      f"continue with the same command plus --resume")
        raise typer.Exit(1)
    where = options.storage_uri or shown_path(folder)
    console.print(f"results: {where}/trials.parquet, epochs.parquet", soft_wrap=True)


def search_space_of(storage: Path, name: str | None, continue_search: bool) -> str:
    """--space left out: the continued search's own space file, else the default space."""
    if not continue_search:
        return "default"
    from ..records.results import TRIALS_FILE, read_info
    from ..space import recorded_space

    folder = SearchOptions(space=Path(name or "default"), storage=storage, name=name or "default").experiment_dir
    return recorded_space(read_info(folder).space) if (folder / TRIALS_FILE).is_file() else "default"


def confirm(
    experiment: Experiment = None,
    top: Annotated[int, typer.Option(help="Best configurations to rerun (by best val_l1), plus the baseline")] = 3,
    seeds: Annotated[int, typer.Option(help="Runs per configuration, training seeds 0..N-1")] = 3,
    test_manifest: Annotated[Optional[Path], typer.Option(help="Held-out clips scored once per run at its best-val checkpoint (refused if they share a clip with training or validation)")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs of every run [the search's max epochs]")] = None,
    cpus_per_trial: Annotated[Optional[float], typer.Option(help="CPUs per run [the search's]")] = None,
    gpus_per_trial: Annotated[Optional[float], typer.Option(help="GPU fraction per run [the search's]")] = None,
    max_concurrent: Annotated[Optional[int], typer.Option(help="Runs at once [the search's, else as resources allow]")] = None,
    resume: Annotated[bool, typer.Option(help="Continue a stopped confirmation (with its own --top, --seeds, --epochs, --test-manifest)")] = False,
    address: Annotated[Optional[str], typer.Option(help="Join this Ray cluster instead of starting one")] = None,
):
    """Rerun a search's best configurations over seeds, all epochs: is the winner better than noise?"""
    from ..records.confirmation import CONFIRM_EPOCHS_FILE, CONFIRM_FILE, confirm_table, read_confirm
    from ..records.results import latest_experiment
    from ..search.confirm import ConfirmOptions, run_confirm
    from ..views.display import console

    options = ConfirmOptions(experiment=experiment if experiment is not None else latest_experiment(),
                             top=top, seeds=seeds, test_manifest=test_manifest, epochs=epochs, resume=resume,
                             address=address, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                             max_concurrent=max_concurrent)
    folder = run_confirm(options, console=console)
    console.print(confirm_table(read_confirm(folder), f"confirmation of {folder.name}"))
    console.print(f"results: {folder / CONFIRM_FILE}, {CONFIRM_EPOCHS_FILE}", soft_wrap=True)


def results(
    experiment: Experiment = None,
    epochs: Annotated[bool, typer.Option("--epochs", help="One row per trial per epoch")] = False,
    format: Annotated[str, typer.Option(help="table, csv or json")] = "table",
    wide: Annotated[bool, typer.Option("--wide", help="Every column, however wide [what fits the terminal]")] = False,
):
    """Print an experiment's trials (or epochs) from its Parquet files."""
    from ..records.results import open_experiment, read_epochs, read_trials
    from ..records.results_table import epochs_table, trials_table
    from ..views.display import console

    if format not in ("table", "csv", "json"):
        raise UserError(f"--format {format!r} is unknown: use table, csv or json")
    folder, info = open_experiment(experiment)
    frame = read_epochs(folder) if epochs else read_trials(folder)
    if format == "csv":
        print(frame.to_csv(index=False), end="")
    elif format == "json":
        print(frame.to_json(orient="records", indent=1))
    elif epochs:
        console.print(epochs_table(frame, str(folder), wide), crop=not wide)
    else:
        console.print(trials_table(frame, info.params, str(folder), wide), crop=not wide)


MergeInto = Annotated[Optional[Path], typer.Option(help="InfiniteTalk weights file to copy with audio_proj.* replaced")]
MergedFile = Annotated[Optional[Path], typer.Option(help="Where the merged copy goes [default: OUT/<name of --merge-into>]")]
AllowConfigChange = Annotated[bool, typer.Option(help="Merge even when W or S change audio_proj's shapes (writes the config InfiniteTalk then needs)")]


def best(
    experiment: Experiment = None,
    top: Annotated[int, typer.Option(help="Trials to list")] = 5,
    export: Annotated[Optional[str], typer.Option(metavar="[DIR]", help="Export the winner's best checkpoint as InfiniteTalk weights, to DIR or, given alone, to the experiment's export/")] = None,
    merge_into: MergeInto = None,
    merged_file: MergedFile = None,
    allow_config_change: AllowConfigChange = False,
):
    """The best trials of an experiment; with --export, the winner as InfiniteTalk weights."""
    from rich.text import Text

    from ..records.edges import edge_warnings, search_winner
    from ..records.results import best_trial, open_experiment, read_epochs, read_trials
    from ..views.top_trials import top_trials_table
    from ..search.uri_storage import fetched_checkpoint
    from ..views.display import console

    from ..records.confirmation import confirm_table, has_confirmation, read_confirm

    folder, info = open_experiment(experiment)
    trials = read_trials(folder)
    console.print(f"experiment {folder}", soft_wrap=True)
    console.print(top_trials_table(trials, info.params, top, f"top {top} trials"))
    for line in edge_warnings(search_winner(trials), info, len(trials)):
        console.print(Text(line, style="yellow"), soft_wrap=True)  # one line: the command is copied whole
    confirmed = read_confirm(folder) if has_confirmation(folder) else None
    if confirmed is not None:
        console.print(confirm_table(confirmed, "confirmation over seeds (tune-adapter confirm)"))
    if export is None:
        if merge_into is not None:
            raise UserError("--merge-into needs --export (the merged copy is written there)")
        return
    export = Path(export) if export != DEFAULT_VALUE else default_export_folder(experiment, folder)
    if confirmed is not None:
        export_confirmed(folder, info, confirmed, export, merge_into, merged_file, allow_config_change)
        return
    winner = best_trial(trials, read_epochs(folder), folder)
    epoch, best_epoch = winner["export_epoch"], winner["best_epoch"]
    best_epoch = None if best_epoch != best_epoch else int(best_epoch)  # NaN: no epoch yet
    record = {"experiment": str(folder), "trial_id": winner["trial_id"], "status": winner["status"],
              "epoch": epoch, "best_epoch": best_epoch, "parameters": {p: winner[p] for p in info.params},
              "metrics": {k: winner[f"export_{k}"] for k in ("val_l1", "val_mse", "val_cos")}}
    note = "" if epoch == best_epoch else f" (its best epoch, {best_epoch}, has no checkpoint)"
    console.print(f"exporting trial {winner['trial_id']} at epoch {epoch}, val_l1 "
                  f"{winner['export_val_l1']:.4f}{note}", soft_wrap=True)
    write_export(fetched_checkpoint(winner["export_checkpoint"]), export, record, merge_into, merged_file,
                 allow_config_change)


def default_export_folder(experiment: str | None, folder: Path) -> Path:
    """The experiment's export/; for one at a URI, results/NAME/export/ here."""
    from ..search.uri_storage import is_remote

    return Path("results") / folder.name / "export" if is_remote(experiment) else folder / "export"


def export_confirmed(folder: Path, info, runs, out: Path, merge_into: Path | None, merged_file: Path | None,
                     allow_config_change: bool) -> None:
    """Export the confirmed winner's run with the lowest val_l1, recording the confirmation."""
    from ..records.confirmation import confirm_record, winner_run
    from ..search.uri_storage import fetched_checkpoint
    from ..views.display import console

    run = winner_run(runs)
    if run is None:
        raise UserError(f"{folder}: the confirmed winner has no finished run with a checkpoint: "
                        "let `tune-adapter confirm --resume` finish")
    params = [p for p in info.params if p in run]
    # The metrics of the epoch exported (files written before checkpoint_* hold the best's).
    exported = "checkpoint" if _int(run.get("checkpoint_epoch")) is not None else "best"
    checkpoint = fetched_checkpoint(run["checkpoint"])
    record = {"experiment": str(folder), "trial_id": run["trial_id"], "run_id": run["run_id"],
              "seed": int(run["seed"]), "status": run["status"], "epoch": _int(run.get("checkpoint_epoch")),
              "best_epoch": _int(run["best_epoch"]), "parameters": {p: run[p] for p in params},
              "metrics": {k: run[f"{exported}_{k}"] for k in ("val_l1", "val_mse", "val_cos")},
              "confirm": confirm_record(runs, run["trial_id"])}
    if record["epoch"] is None:
        from ..checkpoint import STATE_FILE
        import json

        record["epoch"] = json.loads((checkpoint / STATE_FILE).read_text())["epoch"]
    if run.get("test_l1") == run.get("test_l1") and run.get("test_l1") is not None:
        record["test_metrics"] = {k: run[k] for k in ("test_l1", "test_mse", "test_cos")}
    console.print(f"exporting the confirmed winner {run['trial_id']}: run {run['run_id']} (seed {run['seed']}), "
                  f"the lowest val_l1 of its seeds' checkpoints, {record['metrics']['val_l1']:.4f} at epoch "
                  f"{record['epoch']}", soft_wrap=True)
    write_export(checkpoint, out, record, merge_into, merged_file, allow_config_change)


def _int(value):
    return None if value is None or value != value else int(value)


def export(
    checkpoint: Annotated[Path, typer.Option(help="A checkpoint folder, or a train --output-dir (its newest checkpoint)")],
    out: Annotated[Path, typer.Option(help="Folder for audio_proj.safetensors and adapter_config.json")],
    merge_into: MergeInto = None,
    merged_file: MergedFile = None,
    allow_config_change: AllowConfigChange = False,
):
    """Export a trainer checkpoint as InfiniteTalk's audio_proj (and merge it into its weights)."""
    from ..checkpoint import latest_checkpoint
    from ..errors import ConfigError
    from ..export import checkpoint_info

    try:
        folder = latest_checkpoint(checkpoint)
    except ConfigError:
        raise ConfigError(f"--checkpoint {checkpoint}: no checkpoint there (nor under its checkpoints/)") from None
    write_export(folder, out, checkpoint_info(folder), merge_into, merged_file, allow_config_change)


def write_export(folder: Path, out: Path, info: dict, merge_into: Path | None,
                 merged_file: Path | None, allow_config_change: bool) -> None:
    """Export a checkpoint (and merge it); a refused merge is found before anything is written."""
    from ..views.display import console
    from ..export import (export_adapter, merged_path, plan_merge, read_checkpoint_adapter,
                         window_warnings, write_merge)

    dims, tensors = read_checkpoint_adapter(folder)
    plan = None
    if merge_into is not None:
        plan = plan_merge(dims, tensors, merge_into, merged_file or merged_path(out, merge_into),
                          allow_config_change)
    exported = export_adapter(folder, out, info)
    console.print(f"exported {folder} -> {exported}", soft_wrap=True)
    if plan is None:
        for message in window_warnings(dims):
            console.print(f"[yellow]{message}", soft_wrap=True)
        return
    with console.status(f"writing {plan.out_file}"):
        messages = write_merge(plan)
    for message in messages:
        console.print(message, soft_wrap=True)
    console.print(f"merged: {plan.out_file}", soft_wrap=True)


def report(
    experiment: Annotated[Optional[Path], typer.Option(help="Experiment folder [default: the latest under results/]")] = None,
    out: Annotated[Optional[Path], typer.Option(help="HTML file to write [default: EXPERIMENT/report.html]")] = None,
):
    """Write a one-file HTML report (curves, progress, parameters, importances, top trials)."""
    from ..records.results import latest_experiment
    from ..report import write_report
    from ..views.display import console

    folder = experiment if experiment is not None else latest_experiment()
    with console.status(f"rendering the report of {folder}"):
        written = write_report(folder, out if out is not None else folder / "report.html")
    console.print(f"report: {written}", soft_wrap=True)
