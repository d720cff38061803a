"""Fixed settings for `tune-adapter bench --search`: every trial trains alike, none pruned."""


def space(trial):
    return {"lr": 1e-4, "batch_size": 4, "audio_window": 5, "vae_scale": 4}
