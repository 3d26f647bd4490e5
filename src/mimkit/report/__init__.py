"""Compare runs on one self-contained HTML page (``mimkit report``).

``mimkit.report(run_dirs, out='report.html', images=None, ...) -> Path`` (``runs.report``:
this package is callable) writes the page with pictures drawn from every run's checkpoint
on the same images and evaluation runs attached to the run they evaluated;
``build_report(run_dirs, out, pictures=None, title=None) -> Path`` writes the page;
``comparison_rows(runs_or_dirs) -> list[dict]`` gives its evaluation table as plain rows;
``read_run(run_dir) -> Run`` what is read from one folder. See ``collect`` for what a run
folder may hold and ``html`` for the page.
"""

import sys
import types

from .collect import Run, best_per_column, comparison_rows, read_run, read_runs
from .html import build_report, render_report
from .runs import attach_evaluation_runs, report, run_pictures

__all__ = [
    "Run",
    "attach_evaluation_runs",
    "best_per_column",
    "build_report",
    "comparison_rows",
    "read_run",
    "read_runs",
    "render_report",
    "report",
    "run_pictures",
]


class _CallableModule(types.ModuleType):
    """``mimkit.report(...)`` is ``runs.report(...)`` while ``mimkit.report.build_report``
    and the other names stay this package's: the job's function and the library share
    the name ``report``, and a module cannot be a function."""

    def __call__(self, *args, **kwargs):
        return report(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
