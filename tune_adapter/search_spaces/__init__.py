"""The shipped search spaces: `tune-adapter search --space NAME` for NAME.py here.

They install with the package, so a name works from any folder. Each is loaded by path
(tune_adapter.space.load_space), never imported as a module of this package; `tune-adapter
spaces` lists them. Copy one to start a space of your own and pass its path.
"""
