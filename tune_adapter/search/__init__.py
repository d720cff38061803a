"""`tune-adapter search`: the Ray Tune driver over the plain trainer."""

from .driver import SearchOutcome, run_search
from .options import SearchOptions, resolve_options

__all__ = ["SearchOptions", "SearchOutcome", "resolve_options", "run_search"]
