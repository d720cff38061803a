"""The default search: per-frame teacher tokens, so every VAE scale can be scored.

Optuna define-by-run: `space(trial)` suggests each hyperparameter and returns the ones
the trainer should use (constants may be returned too). Module constants in capitals set
defaults for `tune-adapter search` flags; flags given on the command line win.
"""

NUM_SAMPLES = 16
MAX_EPOCHS = 10
GRACE_PERIOD = 1
REDUCTION_FACTOR = 3
# Screened trials wait at epoch 3 until all are; the best one then trains to the end.
FINALISTS = 1

# The first trial: the user guide's defaults, what a user gets without a search. It trains
# all epochs, and `tune-adapter best` says how much better the winner is.
BASELINE = {"lr": 1e-4, "batch_size": 2, "audio_window": 5, "vae_scale": 4}


def space(trial):
    return {
        # From the guide's 1e-4, itself 40% above the best in 10 epochs (docs/performance.md).
        "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [2, 4, 8]),
        # Odd windows only: a window needs a centre frame.
        "audio_window": trial.suggest_int("audio_window", 3, 9, step=2),
        "vae_scale": trial.suggest_int("vae_scale", 2, 4),
        # weight_decay stays at the trainer's 0.01: a fifth dimension for 16 trials to
        # cover, in a regime (10 epochs, still underfitting) where it barely acts.
    }
