"""Reports: markdown + PNG plots for a run dir (training curves) or a compare dir (methods over seeds)."""

from tandem.report.build import write_report, write_runs_report
from tandem.report.compare import console_table, plot_method_scatter, summarize
from tandem.report.plots import plot_temperature_sweep, plot_training_curves

__all__ = ["console_table", "plot_method_scatter", "plot_temperature_sweep", "plot_training_curves", "summarize",
           "write_report", "write_runs_report"]
