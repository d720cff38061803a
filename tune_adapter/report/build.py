"""write_report: experiment folder -> one self-contained HTML file."""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_write
from ..records.confirmation import finished_runs, has_confirmation, read_confirm
from .experiment import load_experiment
from .html import Figures, render
from .importance import param_importances
from .parallel import parallel_figure
from .ped_anova import epoch_importances
from .plots import best_so_far_figure, confirm_figure, curves_figure, importance_figure, params_figure, png


def write_report(experiment_dir: Path, out: Path) -> Path:
    """Render the report of the experiment in `experiment_dir` to `out`; returns `out`."""
    experiment = load_experiment(experiment_dir)
    importances, by_epoch = param_importances(experiment), epoch_importances(experiment)
    figures = Figures(
        curves=png(curves_figure(experiment)),
        best_so_far=png(best_so_far_figure(experiment)),
        params=png(params_figure(experiment)),
        importance=png(importance_figure(importances)) if importances.values else None,
        parallel=png(parallel_figure(experiment)),
        epoch_importance=png(importance_figure(by_epoch)) if by_epoch.values else None,
    )
    confirmation = None
    if has_confirmation(experiment.folder):
        runs = read_confirm(experiment.folder)
        if not finished_runs(runs).empty:
            confirmation = (runs, png(confirm_figure(runs)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    html = render(experiment, figures, importances, confirmation, epoch_importances=by_epoch)
    atomic_write(out, lambda staging: staging.write_text(html, encoding="utf-8"))  # never half a report
    return out
