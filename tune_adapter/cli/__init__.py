"""The `tune-adapter` command: parses flags, calls the library, prints with rich."""

from .app import app, user_errors
from .benchmarks import bench
from .experiments import best, export, report, results, search
from .training import check, extract, synth, train

for command in (train, synth, check, search, extract, results, best, export, report, bench):
    app.command()(user_errors(command))


def main() -> None:
    app()
