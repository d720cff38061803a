"""A small, fast space for tests and smoke runs on the tiny synthetic data."""

NUM_SAMPLES = 4
MAX_EPOCHS = 3
GRACE_PERIOD = 1
REDUCTION_FACTOR = 2

# The guide's defaults where the space allows them (its smallest batch is 4).
BASELINE = {"lr": 1e-4, "batch_size": 4, "audio_window": 5}


def space(trial):
    return {
        "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [4, 8]),
        "audio_window": trial.suggest_int("audio_window", 3, 5, step=2),
        "intermediate_dim": 64,
    }
