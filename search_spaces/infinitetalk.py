"""For teacher tokens extracted from InfiniteTalk itself (per-latent, `[n_lat, K, D]`).

InfiniteTalk's VAE downsamples time by 4, and its per-latent tokens only line up with
S = 4, so vae_scale is fixed. The window stays searchable, but note that InfiniteTalk
loads adapters with W = 5 unless its config is changed (`tune-adapter best` warns).
"""

# As the default space: the pruning that `tune-adapter bench --quality` measured best.
NUM_SAMPLES = 16
MAX_EPOCHS = 10
GRACE_PERIOD = 1
REDUCTION_FACTOR = 3
# Screened trials wait at epoch 3 until all are; the best one then trains to the end.
FINALISTS = 1

# The first trial: the user guide's defaults (trained all epochs, never pruned).
BASELINE = {"lr": 1e-4, "batch_size": 2, "audio_window": 5}


def space(trial):
    return {
        "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [2, 4, 8]),
        "audio_window": trial.suggest_int("audio_window", 3, 7, step=2),
        "vae_scale": 4,
    }
