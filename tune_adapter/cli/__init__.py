"""The `tune-adapter` command: parses flags, calls the library, prints with rich."""

from .app import app, user_errors
from .benchmarks import bench
from .experiments import best, confirm, export, report, results, search
from .spaces import spaces
from .training import check, extract, pack, synth, train

for command in (train, synth, check, pack, spaces, search, confirm, extract, results, best, export, report, bench):
    app.command()(user_errors(command))


def main() -> None:
    # Where the process starts, before torch allocates (cpu_tuning.py): CPU tuning's huge
    # pages, also inherited by a local Ray's workers.
    from ..cpu_tuning import request_huge_pages

    request_huge_pages()
    app()
