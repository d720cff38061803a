"""`tune-adapter results` as tables: the columns that matter, fitted to the terminal, or
`--wide`, every column of the Parquet file."""

from __future__ import annotations

from .fit_table import Column, FitTable, abbreviate, format_number

WIDE_HINT = "--wide shows every column"
# The epochs view's metrics after `trial_id`, `epoch` and `val_l1`, most wanted first.
EPOCH_COLUMNS = (("train_loss", "train"), ("val_mse", "mse"), ("val_cos", "cos"),
                 ("epoch_seconds", "sec"), ("step", ""), ("checkpoint", ""))
# The trials view's columns after the parameters, shown when there is room.
TRIAL_EXTRAS = (("epochs", "epochs", ""), ("best_val_cos", "val_cos", "cos"),
                ("best_val_mse", "val_mse", "mse"), ("wall_seconds", "wall s", "wall"))


def trials_table(frame, params: list[str], title: str, wide: bool = False) -> FitTable:
    """Trial, status, best val_l1, its epoch, then as many parameters (those that vary
    first) and other columns as the width allows."""
    if wide:
        return wide_table(frame, title)
    rows = frame.to_dict("records")
    columns = [
        Column("trial", [r["trial_id"] + (" (baseline)" if r.get("baseline") else "") for r in rows]),
        Column("status", [str(r["status"]) for r in rows]),
        Column("best val_l1", [metric(r["best_val_l1"]) for r in rows], short="val_l1", justify="right"),
        Column("epoch", [whole(r["best_epoch"]) for r in rows], short="ep", justify="right"),
        *param_columns(frame, params, rows),
    ]
    columns += [Column(header, [format_number(r[key]) for r in rows], short=short, justify="right",
                       priority=1000 + i)
                for i, (key, header, short) in enumerate(TRIAL_EXTRAS) if key in frame]
    return FitTable(columns, title=title, hidden_hint=WIDE_HINT)


def param_columns(frame, params: list[str], rows: list[dict], first: int = 1) -> list[Column]:
    """One column per parameter, abbreviated when space is short; the constant ones come last."""
    short = abbreviate(params)
    varying = {p for p in params if frame[p].nunique(dropna=False) > 1}
    return [Column(p, [format_number(r[p]) for r in rows], short=short[p], justify="right", explain=True,
                   priority=first + i + (0 if p in varying else 500))
            for i, p in enumerate(params)]


def epochs_table(frame, title: str, wide: bool = False) -> FitTable:
    """One row per trial per epoch: trial, epoch, val_l1, then the other metrics that fit."""
    if wide:
        return wide_table(frame, title)
    rows = frame.to_dict("records")
    columns = [Column("trial", [r["trial_id"] for r in rows]),
               Column("epoch", [whole(r["epoch"]) for r in rows], short="ep", justify="right"),
               Column("val_l1", [metric(r["val_l1"]) for r in rows], justify="right")]
    columns += [Column(key, [cell(r[key]) for r in rows], short=short, justify="right", priority=i + 1)
                for i, (key, short) in enumerate(EPOCH_COLUMNS) if key in frame]
    return FitTable(columns, title=title, hidden_hint=WIDE_HINT)


def wide_table(frame, title: str) -> FitTable:
    """Every column under its Parquet name, at whatever width that takes."""
    rows = frame.to_dict("records")
    return FitTable([Column(str(key), [cell(r[key]) for r in rows]) for key in frame.columns],
                    title=title, wide=True)


def cell(value) -> str:
    if isinstance(value, str):
        lines = value.strip().splitlines()
        return lines[-1] if lines else ""  # a traceback's last line names the error
    return format_number(value)


def metric(value) -> str:
    return "-" if _missing(value) else f"{value:.4f}"


def whole(value) -> str:
    return "-" if _missing(value) else str(int(value))


def _missing(value) -> bool:
    return value is None or value != value  # NaN is the only value unequal to itself
