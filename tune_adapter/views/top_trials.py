"""The best trials of an experiment, as `search` ends and as `best` shows them."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text

from ..records.fit_table import Column, FitTable
from ..records.results import baseline_verdict, start_line
from ..records.results_table import metric, param_columns, whole
from .display import shown_path


def top_trials_table(trials_frame, params: list[str], top: int, title: str) -> Group:
    """The best trials by `best_val_l1` (and the baseline, marked, wherever it ranks), their
    checkpoint folders (long paths wrap), and how the winner compares with the baseline."""
    varying = [p for p in params if trials_frame[p].nunique(dropna=False) > 1] or params
    ranked = trials_frame.sort_values("best_val_l1", na_position="last").reset_index(drop=True)
    shown = [(i + 1, row) for i, row in enumerate(ranked.to_dict("records")) if i < top or _is_baseline(row)]
    rows = [row for _, row in shown]
    columns = [
        Column("#", [str(rank) for rank, _ in shown]),
        Column("trial", [r["trial_id"] + (" (baseline)" if _is_baseline(r) else "") for r in rows]),
        Column("status", [r["status"] for r in rows]),
        *param_columns(trials_frame[varying], varying, rows),
        Column("best val_l1", [metric(r["best_val_l1"]) for r in rows], short="val_l1", justify="right"),
        Column("val_cos", [metric(r["best_val_cos"]) for r in rows], short="cos", justify="right", priority=900),
        Column("epoch", [whole(r["best_epoch"]) for r in rows], short="ep", justify="right"),
    ]
    paths = Text()
    for rank, row in shown:
        # pandas reads a missing string as NaN, which is truthy: only a str is a value here.
        where = next((v for v in (row["best_checkpoint"], row["error"]) if isinstance(v, str) and v),
                     "no checkpoint kept")
        paths.append(f"#{rank} {row['trial_id']}: {shown_path(where)}\n")
    lines = [baseline_verdict(ranked), start_line(ranked.iloc[0]) if len(ranked) else None]
    table = FitTable(columns, title=title, hidden_hint="tune-adapter results --wide shows them")
    return Group(table, paths, *(Text(line) for line in lines if line))


def _is_baseline(row: dict) -> bool:
    return bool(row.get("baseline", False))


