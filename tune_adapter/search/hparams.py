"""TensorBoard's HParams tab: one session per trial, whatever its end.

Ray Tune's TensorBoard logger writes a trial's hparams only when the trial ends after at
least one result, with the metrics of its last result, and an experiment summary per trial
(TensorBoard takes whichever it reads first). Here a logger writes Ray's per-epoch scalars
but no hparams (`TensorBoardScalars`); instead the store callback writes:

- one experiment summary at the experiment folder's root (TensorBoard's run "."): every
  parameter with its domain from its Optuna distribution, and the two metrics;
- one session per trial in the trial's folder (the run holding its curves): its parameters,
  `hparams/best_val_l1` (at its best epoch) and `hparams/last_epoch`, and its end (completed
  pruned and stopped by --time-budget: success, error: failure, interrupted: unknown).

Each is a file of its own (suffix `.hparams`), replaced when written again (a resumed search,
a stopped trial that resumes), so a run never holds two sessions.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from optuna.distributions import CategoricalDistribution, json_to_distribution
from ray.tune import Callback
from ray.tune.logger import TBXLoggerCallback
from ray.tune.result import TIME_TOTAL_S, TIMESTEPS_TOTAL, TRAINING_ITERATION
from ray.tune.utils import flatten_dict
from tensorboardX.proto.api_pb2 import (DataType, DatasetType, Experiment, HParamInfo, Interval,
                                        MetricInfo, MetricName, Status)
from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData, SessionEndInfo, SessionStartInfo
from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata

from ..records.results import FINAL_STATUSES, START_METRICS, START_PREFIX, ExperimentInfo, TrialRecord
from .scheduler import record_id

logger = logging.getLogger(__name__)

SUFFIX = ".hparams"
BEST_TAG, EPOCH_TAG = "hparams/best_val_l1", "hparams/last_epoch"
# TensorBoard's hparams plugin reads these tags (tensorboard/plugins/hparams/metadata.py).
EXPERIMENT_TAG = "_hparams_/experiment"
SESSION_START_TAG = "_hparams_/session_start_info"
SESSION_END_TAG = "_hparams_/session_end_info"
END_STATUS = {"completed": "STATUS_SUCCESS", "pruned": "STATUS_SUCCESS", "stopped": "STATUS_SUCCESS",
              "error": "STATUS_FAILURE"}
# What Ray's TBXLoggerCallback plots of a result: numbers (not NaN), less these keys.
SCALAR_TYPES = (int, float, np.float32, np.float64, np.int32, np.int64)
UNPLOTTED = ("config", "pid", "timestamp", TIME_TOTAL_S, TRAINING_ITERATION)


class TensorBoardScalars(TBXLoggerCallback):
    """The scalars Ray Tune's TensorBoard logger writes (`ray/tune/<metric>` at each result's
    training iteration, in the trial's folder), less its hparams: the store callback writes
    every trial's session (`log_trial_session`). A TBXLoggerCallback, so Tune adds no logger
    of its own; every hook is its own, as Ray's trial end writes hparams unasked."""

    def __init__(self):
        super().__init__()
        self.writers: dict = {}  # trial -> its SummaryWriter

    def log_trial_start(self, trial) -> None:
        from tensorboardX import SummaryWriter

        self.log_trial_end(trial)
        trial.init_local_path()
        self.writers[trial] = SummaryWriter(trial.local_path, flush_secs=30)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        if trial not in self.writers:
            self.log_trial_start(trial)
        writer = self.writers[trial]
        for name in START_METRICS:
            # Epoch 0 (the start, carried by epoch 1's result) at step 0 of the same curves.
            if name != "epoch_seconds" and result.get(START_PREFIX + name) is not None:
                writer.add_scalar(f"ray/tune/{name}", result[START_PREFIX + name], global_step=0)
        step = result.get(TIMESTEPS_TOTAL) or result[TRAINING_ITERATION]
        plotted = {k: v for k, v in result.items() if k not in UNPLOTTED}
        for key, value in flatten_dict(plotted, delimiter="/").items():
            if isinstance(value, SCALAR_TYPES) and not np.isnan(value):
                writer.add_scalar(f"ray/tune/{key}", value, global_step=step)
        writer.flush()

    def log_trial_end(self, trial, failed: bool = False) -> None:
        writer = self.writers.pop(trial, None)
        if writer is not None:
            writer.close()


class HParamsSessions(Callback):
    """The experiment summary when the search starts, and each trial's session when it ends
    (a finalist's in its screened trial's folder: one row of trials.parquet, one session),
    from the store's records (`recorder`: the search's StoreCallback, listed before this)."""

    def __init__(self, recorder):
        self.recorder = recorder

    def setup(self, **info):
        log_experiment(self.recorder.folder, self.recorder.info)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.log(record_id(trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.log(record_id(trial))

    def on_experiment_end(self, trials, **info):
        # The driver stops, or all ended: runners-up just ended as pruned, unfinished trials
        # are logged as interrupted.
        for trial_id in {record_id(t) for t in trials}:
            self.log(trial_id)

    def log(self, trial_id: str) -> None:
        log_trial_session(self.recorder.folder, self.recorder.info, self.recorder.store.trials.get(trial_id))


def log_experiment(folder: Path, info: ExperimentInfo) -> None:
    """The experiment summary at the folder's root; never raises (nor does a session's):
    TensorBoard must not stop a search."""
    try:
        write_experiment(Path(folder), info)
    except Exception:  # noqa: BLE001 - the tab lost is a warning, the search goes on
        logger.warning("could not write the TensorBoard hparams experiment", exc_info=True)


def log_trial_session(folder: Path, info: ExperimentInfo, record: TrialRecord | None) -> None:
    """The trial's session, in its folder (tuner.trial_dirname); one not finished is logged
    as interrupted (a screened trial waits: its session is written again when it ends)."""
    if record is None:
        return  # it never reported nor failed
    status = record.status if record.status in FINAL_STATUSES else "interrupted"
    try:
        write_session(Path(folder) / f"trial_{record.trial_id}", info, record, status)
    except Exception:  # noqa: BLE001 - a session lost is a warning, the search goes on
        logger.warning("could not write trial %s's TensorBoard hparams", record.trial_id, exc_info=True)


def write_experiment(folder: Path, info: ExperimentInfo) -> None:
    """Every parameter with its domain, and the two metrics."""
    experiment = Experiment(hparam_infos=[_hparam_info(name, info) for name in info.params],
                            metric_infos=[_metric(BEST_TAG, "best val_l1", DatasetType.DATASET_VALIDATION),
                                          _metric(EPOCH_TAG, "last epoch", DatasetType.DATASET_UNKNOWN)])
    _write(folder, [(_summary(EXPERIMENT_TAG, HParamsPluginData(experiment=experiment)), 0)])


def write_session(run: Path, info: ExperimentInfo, record: TrialRecord, status: str) -> None:
    start = SessionStartInfo()
    for name in info.params:
        _set_value(start.hparams[name], record.params.get(name), _distribution(info, name))
        if start.hparams[name].WhichOneof("kind") is None:
            del start.hparams[name]  # a parameter the trial did not sample
    end = SessionEndInfo(status=Status.Value(END_STATUS.get(status, "STATUS_UNKNOWN")))
    _write(run, [(_summary(SESSION_START_TAG, HParamsPluginData(session_start_info=start)), 0),
                 *_metrics(record),
                 (_summary(SESSION_END_TAG, HParamsPluginData(session_end_info=end)), 0)])


def _metrics(record: TrialRecord) -> list[tuple[Summary, int]]:
    """best val_l1 at its epoch and the last epoch trained, as scalars TensorBoard reads
    (a trial that failed before its first epoch: last epoch 0, no val_l1)."""
    trained = record.trained()
    last = max(trained, default=0)
    scalars = [(Summary(value=[Summary.Value(tag=EPOCH_TAG, simple_value=float(last))]), last)]
    best = record.best_epoch()
    if best is not None:
        value = float(record.epochs[best]["val_l1"])
        scalars.append((Summary(value=[Summary.Value(tag=BEST_TAG, simple_value=value)]), best))
    return scalars


def _hparam_info(name: str, info: ExperimentInfo) -> HParamInfo:
    distribution = _distribution(info, name)
    if not isinstance(distribution, CategoricalDistribution):
        if distribution is None:  # no metadata: the searched parameters are numbers
            return HParamInfo(name=name, type=DataType.DATA_TYPE_FLOAT64)
        return HParamInfo(name=name, type=DataType.DATA_TYPE_FLOAT64,
                          domain_interval=Interval(min_value=distribution.low, max_value=distribution.high))
    result = HParamInfo(name=name, type=_choices_type(distribution.choices))
    for choice in distribution.choices:
        if choice is not None:
            _set_value(result.domain_discrete.values.add(), choice, distribution)
    return result


def _choices_type(choices) -> int:
    kinds = {type(c) for c in choices if c is not None}
    if kinds == {bool}:
        return DataType.DATA_TYPE_BOOL
    if kinds and all(issubclass(k, (int, float)) and k is not bool for k in kinds):
        return DataType.DATA_TYPE_FLOAT64
    return DataType.DATA_TYPE_STRING


def _set_value(target, value, distribution) -> None:
    """A protobuf Value of the type the experiment gives the parameter (left unset: missing)."""
    value = value.item() if hasattr(value, "item") else value  # numpy scalars from Parquet
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return
    kind = (_choices_type(distribution.choices) if isinstance(distribution, CategoricalDistribution)
            else DataType.DATA_TYPE_FLOAT64)
    if kind == DataType.DATA_TYPE_BOOL:
        target.bool_value = bool(value)
    elif kind == DataType.DATA_TYPE_FLOAT64 and not isinstance(value, str):
        target.number_value = float(value)
    else:
        target.string_value = str(value)


def _distribution(info: ExperimentInfo, name: str):
    text = info.distributions.get(name)
    return json_to_distribution(text) if text else None


def _metric(tag: str, display: str, dataset: int) -> MetricInfo:
    return MetricInfo(name=MetricName(tag=tag), display_name=display, dataset_type=dataset)


def _summary(tag: str, data: HParamsPluginData) -> Summary:
    plugin = SummaryMetadata.PluginData(plugin_name="hparams", content=data.SerializeToString())
    return Summary(value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin))])


def _write(run: Path, summaries: list[tuple[Summary, int]]) -> None:
    """A new event file of these (summary, step) in `run`, in place of the last one written here."""
    from tensorboardX import FileWriter

    run.mkdir(parents=True, exist_ok=True)
    for old in run.glob(f"events.out.tfevents.*{SUFFIX}"):
        old.unlink()
    writer = FileWriter(str(run), filename_suffix=SUFFIX)
    try:
        for summary, step in summaries:
            writer.add_summary(summary, global_step=step)
    finally:
        writer.close()
