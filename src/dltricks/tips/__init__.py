"""The evidence engine: the catalog of tips, running them, caching their results, the report.

* :mod:`dltricks.tips.catalog`: every tip, gathered from the experiment modules of
  :mod:`dltricks.experiments` (each tip is declared on its experiment with :func:`dltricks.evidence.tip`),
  plus the section order and the tips planned but not implemented yet.
* :mod:`dltricks.tips.engine`: runs tips, applies their rules, caches results by a hash of code + config.
* :mod:`dltricks.tips.cache`: the result cache and its key.
* :mod:`dltricks.tips.report`: ``index.html``, ``results.json`` and the summary table.

What a tip is (:class:`~dltricks.evidence.Tip`, :class:`~dltricks.evidence.Evidence`, the verdict rules)
lives in :mod:`dltricks.evidence`. ``dltricks tips`` lists the catalog; ``dltricks verify --quick`` runs it
(``make run``). See ``docs/evidence.md``.
"""
