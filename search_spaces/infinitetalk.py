"""For teacher tokens extracted from InfiniteTalk itself (per-latent, `[n_lat, K, D]`).

InfiniteTalk's VAE downsamples time by 4, and its per-latent tokens only line up with
S = 4, so vae_scale is fixed. The window stays searchable, but note that InfiniteTalk
loads adapters with W = 5 unless its config is changed (`tune-adapter best` warns).
"""

NUM_SAMPLES = 24
MAX_EPOCHS = 12
GRACE_PERIOD = 2
REDUCTION_FACTOR = 3

# The first trial: the user guide's defaults (trained all epochs, never pruned).
BASELINE = {"lr": 1e-4, "batch_size": 2, "audio_window": 5, "weight_decay": 0.01}


def space(trial):
    return {
        "lr": trial.suggest_float("lr", 1e-5, 3e-3, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [2, 4, 8]),
        "audio_window": trial.suggest_int("audio_window", 3, 7, step=2),
        "weight_decay": trial.suggest_float("weight_decay", 1e-4, 1e-1, log=True),
        "vae_scale": 4,
    }
