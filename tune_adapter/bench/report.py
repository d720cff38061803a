"""A bench report: sections of rows, so each measurement adds its own section."""

from __future__ import annotations

from dataclasses import dataclass, field

MB = 2**20


@dataclass
class Row:
    name: str
    value: float
    unit: str
    note: str = ""


@dataclass
class Section:
    title: str
    rows: list[Row] = field(default_factory=list)


@dataclass
class BenchReport:
    spec: object  # what was measured: trainer.BenchSpec for the trainer bench
    machine: str
    sections: list[Section]

    def row(self, name: str) -> Row:
        return next(r for s in self.sections for r in s.rows if r.name == name)


def verdict(met: bool, target: str) -> str:
    return f"{'met' if met else 'MISSED'}: {target}"
