"""Reports: markdown + PNG plots for a run dir (training curves) or a compare dir (methods over seeds)."""

from tandem.report.build import summarize, write_report
from tandem.report.plots import plot_method_scatter, plot_temperature_sweep, plot_training_curves

__all__ = ["plot_method_scatter", "plot_temperature_sweep", "plot_training_curves", "summarize", "write_report"]
