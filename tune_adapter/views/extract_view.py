"""rich views for `tune-adapter extract` and `tune-adapter export`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..extract import ExtractResult
from ..teacher import describe
from .display import ProgressView, console


class ExtractProgressBar(ProgressView):
    """One bar over the WAV files (the extract's Progress protocol)."""

    def __init__(self, out: Console = console):
        super().__init__("[bold]extract", "{task.fields[clip]}", out)

    def started(self, total, dims):
        self.progress.console.print(f"teacher adapter (inferred from its audio_proj.* shapes): {describe(dims)}")
        self.task = self.progress.add_task("extract", total=total, clip="")

    def clip_done(self, name, status):
        if status == "skipped":
            self.progress.console.print(f"[yellow]skipped[/] {name}", highlight=False)
        self.progress.update(self.task, advance=1, clip=name)


def extract_summary(result: ExtractResult) -> Table:
    table = Table(title="extract", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("extracted now", str(len(result.extracted)))
    table.add_row("already done (resumed)", str(len(result.resumed)))
    table.add_row("skipped", str(len(result.skipped)))
    for split, path in result.manifests.items():
        table.add_row(split, str(path))
    return table


def skipped_table(result: ExtractResult) -> Table:
    table = Table(title="skipped files", title_justify="left")
    table.add_column("file", style="bold")
    table.add_column("why")
    for name, reason in result.skipped:
        table.add_row(name, reason)
    return table
