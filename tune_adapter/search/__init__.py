"""`tune-adapter search`: the Ray Tune driver over the plain trainer."""

from .options import SearchOptions, resolve_options

__all__ = ["SearchOptions", "SearchOutcome", "resolve_options", "run_search"]


def __getattr__(name: str):
    """The driver (Ray, torch) loads on first use, so reading SearchOptions stays light."""
    if name in ("SearchOutcome", "run_search"):
        from . import driver

        return getattr(driver, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
