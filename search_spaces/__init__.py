"""The shipped search spaces: `tune-adapter search --space NAME` for NAME.py here.

They install with the package as tune_adapter.search_spaces (pyproject.toml maps this folder
to it), so a name works from any folder. Each is loaded by path (tune_adapter.space.load_space),
never imported as a module; `tune-adapter spaces` lists them and prints where they are. Copy
one to start a space of your own and pass its path.
"""
