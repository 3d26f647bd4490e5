"""Compare runs on one self-contained HTML page (``mimkit report``).

``build_report(run_dirs, out, pictures=None, title=None) -> Path`` writes the page;
``comparison_rows(runs_or_dirs) -> list[dict]`` gives its evaluation table as plain rows;
``read_run(run_dir) -> Run`` what is read from one folder. See ``collect`` for what a run
folder may hold and ``html`` for the page.
"""

from .collect import Run, best_per_column, comparison_rows, read_run, read_runs
from .html import build_report, render_report

__all__ = [
    "Run",
    "best_per_column",
    "build_report",
    "comparison_rows",
    "read_run",
    "read_runs",
    "render_report",
]
