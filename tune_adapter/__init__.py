"""tune-adapter: hyperparameter search for InfiniteTalk's audio adapter (AudioProjModel)."""

__version__ = "0.1.0"
