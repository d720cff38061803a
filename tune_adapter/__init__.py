"""tune-adapter: hyperparameter search for InfiniteTalk's audio adapter (AudioProjModel)."""

from .memory import request_huge_pages

# Before any submodule imports torch: the allocator reads the setting once (memory.py).
request_huge_pages()

__version__ = "0.1.0"
