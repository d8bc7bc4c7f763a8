"""The evidence engine: each tip is a claim with an experiment and a verdict rule.

* :mod:`dltricks.tips.core`: :class:`Tip`, :class:`Context`, :class:`Evidence`, :class:`Verdict`.
* :mod:`dltricks.tips.rules`: verdict rules (:class:`Effect`, :class:`NonInferior`, :class:`Exact`,
  :class:`AllOf`), fixed in the catalog before anything runs.
* :mod:`dltricks.tips.catalog`: every tip of the seed material.
* :mod:`dltricks.tips.engine`: runs tips, caches results by a hash of code + config.
* :mod:`dltricks.tips.report`: ``index.html``, ``results.json`` and the summary table.

``dltricks tips`` lists the catalog; ``dltricks verify --quick`` runs it (``make run``).
See ``docs/evidence.md``.
"""

from dltricks.tips.core import Context, Evidence, Tip, Verdict
from dltricks.tips.rules import AllOf, Effect, Exact, NonInferior

__all__ = ["Context", "Evidence", "Tip", "Verdict", "AllOf", "Effect", "Exact", "NonInferior"]
