"""Experiments: plain functions that return numbers (dicts of metrics).

Plotting and reporting are separate (``plot_*`` functions next to each experiment, and the evidence
report in :mod:`dltricks.tips`), so the evidence engine, the CLI and notebooks can all call them.
"""
