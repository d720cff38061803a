"""Fine-tuning from released weights (InfiniteTalk's adapter, an export, an earlier run).

The start is already close: learning rates are a decade below the default space's, so
the first steps refine the released weights instead of undoing them. W and S are fixed to
the released adapter's (InfiniteTalk's 5 and 4): any other value changes proj1's shapes
and that layer would start from scratch (`--init-partial`). I and the norm come from the
start, K and D from the data.
"""

# As the default space, whose pruning `tune-adapter bench --quality` measured best.
NUM_SAMPLES = 16
MAX_EPOCHS = 10
GRACE_PERIOD = 1
REDUCTION_FACTOR = 3

# The adapter every trial starts from: `--init-from PATH` on the command line, or a path
# here (the flag wins). None: give it with `--init-from`, e.g. InfiniteTalk's
# weights/InfiniteTalk/single/infinitetalk.safetensors or synth's infinitetalk.safetensors.
INIT_FROM = None

# The first trial: the user guide's learning rate and batch, from the released weights.
BASELINE = {"lr": 1e-4, "batch_size": 2}


def space(trial):
    return {
        "lr": trial.suggest_float("lr", 1e-5, 1e-3, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [2, 4, 8]),
        "audio_window": 5,
        "vae_scale": 4,
    }
