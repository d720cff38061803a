"""The only place the package uses a private part of Ray or Optuna.

Each use is one small function, with why no public way exists. They are pinned by
pyproject's version bounds (ray[tune] 2.60, optuna 5.x), and tests/search/test_compat.py
tests each one, so a release that renames or changes one fails there first.
"""

from __future__ import annotations


def training_result(checkpoint, metrics: dict):
    """What `Trial.on_checkpoint` takes: a checkpoint with the metrics it was reported with."""
    # Tune builds these itself from tune.report; no public class or factory makes one.
    from ray.train._internal.session import _TrainingResult

    return _TrainingResult(checkpoint=checkpoint, metrics=metrics)


def latest_checkpoint_result(trial):
    """The trial's own newest registered checkpoint result (not the one it restored from)."""
    # Trial.latest_checkpoint_result falls back to the restore checkpoint; only its manager has this.
    return trial.run_metadata.checkpoint_manager.latest_checkpoint_result


def tracked_checkpoints(trial) -> list:
    """Every checkpoint result Tune keeps for the trial: its best ones, then its latest
    (possibly one of them)."""
    # Tune exposes a trial's kept checkpoints only through its private checkpoint manager.
    manager = trial.run_metadata.checkpoint_manager
    latest = manager.latest_checkpoint_result
    return [*manager.best_checkpoint_results, *([latest] if latest is not None else [])]


def forget_checkpoints(trial) -> None:
    """Drop the trial's checkpoints from Tune's books (not from storage), keeping its
    CheckpointConfig: a new manager, as Trial.__init__ gives a trial that has none."""
    # No public Tune API drops a trial's checkpoints.
    from ray.train._internal.checkpoint_manager import _CheckpointManager

    config = trial.run_metadata.checkpoint_manager.checkpoint_config
    trial.run_metadata.checkpoint_manager = _CheckpointManager(checkpoint_config=config)
    trial.invalidate_json_state()


def raise_checkpoint_index(trial, index: int) -> None:
    """Make Tune persist the trial's next checkpoint after checkpoint_<index>, never lower."""
    # The index lives on Tune's private StorageContext; nothing public sets it.
    storage = trial.storage
    storage.current_checkpoint_index = max(storage.current_checkpoint_index, index)


def enable_local_auth_token() -> None:
    """Use the token auth this machine's `ray start` set up, as ray.init does for a
    cluster it finds itself; quietly nothing on a Ray without token auth."""
    # Ray does this only inside ray.init's own cluster discovery; no public function does it.
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
