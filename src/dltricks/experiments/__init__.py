"""Experiments: plain functions that return numbers.

Two kinds live here, side by side:

* the areas' experiments (:mod:`~dltricks.experiments.attention`, :mod:`~dltricks.experiments.ssm`,
  :mod:`~dltricks.experiments.segmentation`, :mod:`~dltricks.experiments.measure`, ...), which return
  dicts of metrics and have ``plot_*`` functions next to them, so the evidence engine, the CLI and
  notebooks can all call them;
* the tips' experiments, ``fn(ctx: Context) -> Evidence``, each declared as a tip with
  :func:`dltricks.evidence.tip` on the function itself: :mod:`~dltricks.experiments.conv`,
  :mod:`~dltricks.experiments.training` (with the training harness :mod:`~dltricks.experiments._harness`),
  :mod:`~dltricks.experiments.gradients`, :mod:`~dltricks.experiments.efficiency`,
  :mod:`~dltricks.experiments.attention_tips`, :mod:`~dltricks.experiments.segmentation_tips` and
  :mod:`~dltricks.experiments.ssm_tips` (the last three call the areas' experiments rather than
  re-implementing them). :mod:`dltricks.tips.catalog` imports them to build the catalog.

Experiments measure; they never decide. Verdict rules are part of each tip's declaration, and the report
is written by :mod:`dltricks.tips`.
"""
