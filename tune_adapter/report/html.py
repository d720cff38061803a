"""Assembling the report: one HTML page, figures inline as base64 PNG data URIs, no
external CSS, JS or fonts, so the file can be mailed or archived alone."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass

import numpy as np

from ..records.edges import edge_warnings
from ..records.results import baseline_verdict, start_gain, start_line
from ..records.study_trials import is_missing
from ..views.display import shown_path
from .experiment import RANK_METRIC, Experiment
from .importance import Importances

TOP_TRIALS = 10

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #222; background: #fafafa; }
main { max-width: 1100px; margin: 0 auto; padding: 16px 24px 48px; background: #fff; }
h1 { font-size: 1.5em; margin-bottom: 4px; }
h2 { font-size: 1.15em; margin-top: 28px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
p.note, p.caption { color: #555; font-size: 0.9em; }
img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
table { border-collapse: collapse; font-size: 0.82em; width: 100%; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 4px 6px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.checkpoint td { font-family: ui-monospace, Menlo, monospace; font-size: 0.9em; color: #555;
                  word-break: break-all; padding-top: 0; }
tr.result td { border-bottom: none; }
tr.pruned td.status { color: #777; font-style: italic; }
tr.error td.status { color: #8c564b; font-weight: bold; }
tr.best { background: #fff3f3; }
dl.summary { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; }
dl.summary dt { font-weight: 600; } dl.summary dd { margin: 0; }
ul.edges { color: #8a5a00; }
div.pair { display: flex; gap: 24px; align-items: flex-start; }
div.pair > div { flex: 1 1 0; min-width: 0; }
"""


@dataclass
class Figures:
    """PNG bytes of each figure; an importance is None when it is a sentence instead."""

    curves: bytes
    best_so_far: bytes
    params: bytes
    importance: bytes | None
    parallel: bytes | None = None
    epoch_importance: bytes | None = None  # PED-ANOVA's, beside fANOVA's


def render(experiment: Experiment, figures: Figures, importances: Importances,
           confirmation: tuple | None = None, epoch_importances: Importances | None = None) -> str:
    """The page; `confirmation`: (confirm.parquet's runs, their figure) when there is one;
    `epoch_importances`: PED-ANOVA's, shown beside `importances` (fANOVA's)."""
    title = f"tune-adapter report: {experiment.info.name}"
    body = "\n".join([
        f"<h1>{_e(title)}</h1>",
        _summary(experiment), _edges(experiment),
        "<h2>Learning curves</h2>", _image(figures.curves, "val_l1 curves of every trial"),
        "<p class='caption'>Dashed grey lines ending in an x: trials ASHA stopped early "
        "(pruned); red: the best trial; black dots: the baseline (the space's BASELINE).</p>",
        "<h2>Search progress</h2>", _image(figures.best_so_far, "best val_l1 so far by trial"),
        "<h2>Parameters</h2>", _image(figures.params, "each parameter against best val_l1"),
        _parallel(figures.parallel),
        "<h2>Parameter importance</h2>", _importances(figures, importances, epoch_importances),
        "<h2>Top trials</h2>", _top_table(experiment),
        _confirmation(*confirmation) if confirmation is not None else "",
        _errors(experiment),
    ])
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{_e(title)}</title><style>{CSS}</style></head>\n"
            f"<body><main>\n{body}\n</main></body></html>\n")


def _summary(experiment: Experiment) -> str:
    best = experiment.best()
    counts = experiment.status_counts()
    by_status = ", ".join(f"{counts[s]} {s}" for s in ("completed", "pruned", "stopped", "error", "running")
                          if s in counts)
    info = experiment.info
    items = [
        ("experiment", f"{info.name} ({experiment.folder})"),
        ("trials", f"{len(experiment.trials)}: {by_status}"),
        ("best trial", f"{best['trial_id']}: val_l1 {_number(best[RANK_METRIC])} at epoch "
                       f"{_number(best['best_epoch'])} ({best['status']})"),
        ("best parameters", ", ".join(f"{p}={_number(best[p])}" for p in experiment.params)),
        *([("baseline", verdict)] if (verdict := baseline_verdict(experiment.trials)) else []),
        *([("its start", line)] if (line := start_line(best)) else []),
        ("search", f"metric {info.metric} ({info.mode}), up to {info.max_epochs} epochs, "
                   f"{info.num_samples} samples" + (f", space {info.space}" if info.space else "")),
    ]
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
    return f"<dl class='summary'>{rows}</dl>"


def _edges(experiment: Experiment) -> str:
    """The winner's parameters at an edge of their range: the best may lie beyond it."""
    lines = edge_warnings(experiment.best().to_dict(), experiment.info, len(experiment.trials))
    return f"<ul class='edges'>{''.join(f'<li>{_e(line)}</li>' for line in lines)}</ul>" if lines else ""


def _top_table(experiment: Experiment) -> str:
    ranked = experiment.ranked().reset_index(drop=True)
    top = ranked[(ranked.index < TOP_TRIALS) | ranked["baseline"]]  # the baseline wherever it ranks
    best_id = experiment.best()["trial_id"]
    head = (["rank", "trial", "status"] + experiment.params
            + ["best val_l1", "val_mse", "val_cos", "best epoch", "epochs", "vs start"])
    lines = ["<table class='top'><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head)
             + "</tr></thead><tbody>"]
    # Records, not itertuples: a param name need not be a Python identifier.
    for rank, row in zip(top.index + 1, top.to_dict("records")):
        classes = row["status"] + (" best" if row["trial_id"] == best_id else "")
        marker = " (baseline)" if row["baseline"] else ""
        cells = [_td(rank), f"<td class='trial'>{_e(row['trial_id'] + marker)}</td>",
                 f"<td class='status'>{_e(row['status'])}</td>"]
        cells += [_td(row[p]) for p in experiment.params]
        cells += [_td(row[k]) for k in (RANK_METRIC, "best_val_mse", "best_val_cos",
                                        "best_epoch", "epochs")]
        gain = start_gain(row)
        cells.append(_td(f"{-gain:+.1%}" if gain is not None else None))
        lines.append(f"<tr class='result {_e(classes)}'>" + "".join(cells) + "</tr>")
        # The path gets a row of its own: it is long, and people copy it whole. Below the
        # working folder it is shown relative to it, as the search prints it.
        checkpoint = _text(row["best_checkpoint"])
        lines.append(f"<tr class='checkpoint {_e(classes)}'><td></td><td colspan='{len(head) - 1}'>"
                     f"checkpoint: {_e(shown_path(checkpoint) if checkpoint else '–')}</td></tr>")
    lines.append("</tbody></table>")
    shown = f"best {min(len(top), TOP_TRIALS)} of {len(ranked)} trials with a val_l1"
    return "\n".join(lines) + f"<p class='caption'>{_e(shown)}, ranked by best val_l1.</p>"


def _confirmation(runs, image: bytes) -> str:
    """The best configurations rerun over seeds (`tune-adapter confirm`)."""
    from ..records.confirmation import summarize, verdict_lines

    summary = summarize(runs)
    head = ["trial", "seeds", "val_l1 mean", "val_l1 sd", "min", "max", "test_l1 mean", "test_l1 sd"]
    lines = ["<table class='top'><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for row in summary.to_dict("records"):
        name = row["trial_id"] + (" (baseline)" if row["baseline"] else "")
        lines.append(f"<tr><td class='trial'>{_e(name)}</td>" + "".join(
            _td(row[k]) for k in ("runs", "val_mean", "val_sd", "val_min", "val_max", "test_mean", "test_sd"))
            + "</tr>")
    lines.append("</tbody></table>")
    verdict = "".join(f"<li>{_e(line)}</li>" for line in verdict_lines(runs))
    return "\n".join([
        "<h2>Confirmation over seeds</h2>", _image(image, "confirmed configurations' runs over seeds"),
        "<p class='caption'>One dot per training seed, all epochs, no pruning; bars: mean ± sd. "
        "Test metrics are scored at each run's best-val checkpoint and chose nothing.</p>",
        *lines, f"<ul class='verdict'>{verdict}</ul>"])


def _parallel(image: bytes | None) -> str:
    if image is None:
        return ""
    return "\n".join([
        "<h2>Parallel coordinates</h2>", _image(image, "every trial across the parameters"),
        "<p class='caption'>One line per trial with a val_l1, through its value of each parameter "
        "(log axes where the space searches on a log scale; a categorical axis lists its choices) "
        "to its best val_l1, which also colours it.</p>"])


def _importances(figures: Figures, importances: Importances, epoch_importances: Importances | None) -> str:
    """fANOVA's (the finals rung, pruned trials too) and PED-ANOVA's (one epoch, pruned
    trials too) side by side."""
    if epoch_importances is None:
        return _importance(figures.importance, importances)
    return ("<div class='pair'>"
            + "".join(f"<div class='{_e(i.method)}'>{_importance(image, i)}</div>"
                      for image, i in ((figures.importance, importances),
                                       (figures.epoch_importance, epoch_importances)))
            + "</div>")


def _importance(image: bytes | None, importances: Importances) -> str:
    parts = [f"<p class='caption'>{_e(importances.caption)}</p>"] if importances.caption else []
    if image is not None:
        parts.append(_image(image, f"{importances.method} parameter importances"))
        numbers = ", ".join(f"{n} {v:.3f}" for n, v in importances.values.items())
        parts.append(f"<p class='importances'>{_e(numbers)}</p>")
    if importances.note:
        parts.append(f"<p class='note'>{_e(importances.note)}</p>")
    return "\n".join(parts)


def _errors(experiment: Experiment) -> str:
    failed = experiment.trials[experiment.trials["status"] == "error"]
    if failed.empty:
        return ""
    items = "".join(f"<li><b>{_e(r.trial_id)}</b>: {_e(_first_line(r.error))}</li>"
                    for r in failed.itertuples(index=False))
    return f"<h2>Failed trials</h2><ul class='errors'>{items}</ul>"


def _image(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f"<img alt='{_e(alt)}' src='data:image/png;base64,{encoded}'>"


def _td(value) -> str:
    numeric = not is_missing(value) and not isinstance(value, str)
    return f"<td class='{'num' if numeric else 'text'}'>{_e(_number(value))}</td>"


def _number(value) -> str:
    if is_missing(value):
        return "–"
    if isinstance(value, (bool, np.bool_, str)):
        return str(value)
    value = float(value)
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.4g}"


def _first_line(message) -> str:
    lines = _text(message).strip().splitlines()
    return lines[-1] if lines else "no message"  # a traceback's last line names the error


def _text(value) -> str:
    return "" if is_missing(value) else str(value)


def _e(text) -> str:
    return html.escape(str(text), quote=True)
