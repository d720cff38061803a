"""TensorBoard's HParams entries (search/hparams.py) through the callbacks' hooks, on a fake
search's records (no Ray); the end-to-end check is in test_search.py."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution
from tensorboardX.proto.api_pb2 import DataType, Status

from tests.support.fake_experiment import DISTRIBUTIONS, write_fake_experiment
from tests.support.tfevents import read_events, sessions
from tune_adapter.records.results import read_info
from tune_adapter.search.hparams import HParamsSessions
from tune_adapter.search.record import StoreCallback

WITH_CHOICES = {**DISTRIBUTIONS, "train-loss": CategoricalDistribution(["l1", "mse", "smooth_l1"])}
STATUS = {"completed": Status.STATUS_SUCCESS, "pruned": Status.STATUS_SUCCESS,
          "error": Status.STATUS_FAILURE, "stopped": Status.STATUS_SUCCESS,
          "interrupted": Status.STATUS_UNKNOWN}


def tune_trial(folder, trial_id, params, epochs):
    """What the hooks read of a Tune trial."""
    return SimpleNamespace(trial_id=trial_id, path=str(folder / f"trial_{trial_id}"), config=params,
                           last_result={"epoch": epochs}, error_file=None, get_error=lambda: None)


@pytest.fixture
def ended(tmp_path):
    """A fake search whose trials all ended through the hooks, and one the driver stopped."""
    made = write_fake_experiment(tmp_path, trials=8, distributions=WITH_CHOICES)
    callback = StoreCallback(tmp_path, read_info(tmp_path))
    tab = HParamsSessions(callback)
    for each in (callback, tab):
        each.setup()
    trials = [tune_trial(tmp_path, t.trial_id, t.params, len(t.val_l1)) for t in made]
    for trial, fake in zip(trials, made):
        for each in (callback, tab):
            hook = each.on_trial_error if fake.status == "error" else each.on_trial_complete
            hook(0, trials, trial)
    running = tune_trial(tmp_path, "live_00000", made[0].params, 1)
    callback.on_trial_result(0, trials, running, {"epoch": 1, "val_l1": 0.45, "train_loss": 0.5})
    for each in (callback, tab):
        each.on_experiment_end(trials + [running])
    callback.tab = tab
    return tmp_path, callback, made


def test_every_trial_has_one_session_with_its_params_and_metrics(ended):
    folder, _, made = ended
    runs = sessions(folder)
    for fake in made:
        run = runs[f"trial_{fake.trial_id}"]
        assert run["starts"] == 1 and run["ends"] == [STATUS[fake.status]]
        assert run["params"]["lr"] == pytest.approx(fake.params["lr"])
        assert run["params"]["audio_window"] == fake.params["audio_window"]
        assert run["params"]["train-loss"] == fake.params["train-loss"]
        best_epoch = fake.val_l1.index(fake.best_val_l1) + 1
        assert run["scalars"]["hparams/best_val_l1"] == (best_epoch, pytest.approx(fake.best_val_l1))
        assert run["scalars"]["hparams/last_epoch"] == (len(fake.val_l1), len(fake.val_l1))
    assert {f.status for f in made} == {"completed", "pruned", "error"}


def test_a_trial_the_driver_stopped_gets_a_session_too(ended):
    runs = sessions(ended[0])
    stopped = runs["trial_live_00000"]
    assert stopped["starts"] == 1 and stopped["ends"] == [STATUS["interrupted"]]
    assert stopped["scalars"]["hparams/best_val_l1"] == (1, pytest.approx(0.45))


def test_the_experiment_gives_each_param_its_domain_and_both_metrics(ended):
    runs = sessions(ended[0])
    (experiment,) = runs["."]["experiments"]
    infos = {h.name: h for h in experiment.hparam_infos}
    assert list(infos) == list(WITH_CHOICES)
    assert infos["lr"].type == DataType.DATA_TYPE_FLOAT64
    assert (infos["lr"].domain_interval.min_value, infos["lr"].domain_interval.max_value) == (1e-5, 3e-2)
    assert infos["train-loss"].type == DataType.DATA_TYPE_STRING
    assert [v.string_value for v in infos["train-loss"].domain_discrete.values] == ["l1", "mse", "smooth_l1"]
    assert [m.name.tag for m in experiment.metric_infos] == ["hparams/best_val_l1", "hparams/last_epoch"]
    assert runs["."]["starts"] == 0


def test_writing_again_replaces_rather_than_adds(ended):
    folder, callback, made = ended
    callback.setup()  # a resumed search
    callback.tab.setup()
    trial = tune_trial(folder, made[0].trial_id, made[0].params, len(made[0].val_l1))
    callback.on_trial_complete(0, [trial], trial)  # a finished trial rerun after a crash
    callback.tab.on_trial_complete(0, [trial], trial)
    runs = sessions(folder)
    assert len(runs["."]["experiments"]) == 1
    assert runs[f"trial_{made[0].trial_id}"]["starts"] == 1


def test_a_failure_to_write_is_a_warning_not_an_error(ended, caplog):
    folder, callback, made = ended
    (folder / "trial_blocked").write_text("a file where the run's folder goes")
    trial = tune_trial(folder, "blocked", made[0].params, 1)
    callback.on_trial_result(0, [trial], trial, {"epoch": 1, "val_l1": 0.5})
    callback.on_trial_complete(0, [trial], trial)
    callback.tab.on_trial_complete(0, [trial], trial)
    assert "could not write trial blocked's TensorBoard hparams" in caplog.text
    assert callback.store.trials["blocked"].status == "pruned"


class LoggedTrial:
    """What a TensorBoard logger reads of a Tune trial."""

    def __init__(self, folder):
        self.local_path, self.evaluated_params = str(folder), {"lr": 0.01, "train-loss": "l1"}

    def init_local_path(self):
        Path(self.local_path).mkdir(parents=True, exist_ok=True)


def logged(logger, folder) -> tuple[dict, set]:
    """A trial's results through a logger: {tag: [(step, value)]} and the hparams tags."""
    trial = LoggedTrial(folder)
    logger.log_trial_start(trial)
    for epoch, val_l1 in enumerate([0.5, float("nan"), 0.4], start=1):
        logger.log_trial_result(epoch, trial, {
            "epoch": epoch, "val_l1": val_l1, "train_loss": np.float32(0.25), "done": epoch == 3,
            "training_iteration": epoch, "time_total_s": 1.0 * epoch, "trial_id": "x", "config": {"lr": 0.01},
            "start": {"val_l1": 0.9}, "checkpoint_dir_name": None})
    logger.log_trial_end(trial)
    scalars, plugins = {}, set()
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        for event in read_events(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    plugins.add(value.tag)
                elif value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars, plugins


def test_the_scalars_logger_writes_rays_scalars_and_no_hparams(tmp_path):
    from ray.tune.logger import TBXLoggerCallback

    from tune_adapter.search.hparams import TensorBoardScalars

    ours, our_hparams = logged(TensorBoardScalars(), tmp_path / "ours")
    rays, ray_hparams = logged(TBXLoggerCallback(), tmp_path / "rays")
    assert ours == rays and "ray/tune/val_l1" in ours and "ray/tune/start/val_l1" in ours
    assert ray_hparams and not our_hparams  # HParamsSessions writes the trial's session
