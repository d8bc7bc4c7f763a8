"""Evidence: how a tip is declared, what its experiment measures, and how a verdict is decided.

* :mod:`dltricks.evidence.core`: :class:`Context` (what an experiment gets), :class:`Evidence` (what it
  measured), :class:`Verdict`, and the seed helpers.
* :mod:`dltricks.evidence.rules`: verdict rules (:class:`Effect`, :class:`NonInferior`, :class:`Equivalent`,
  :class:`Exact`, :class:`AllOf`), fixed in a tip's declaration before anything runs, and the setup check.
* :mod:`dltricks.evidence.stats`: the statistics of every verdict (Student-t intervals of paired effects,
  interval tests, TOST, minimum detectable effect, Holm's correction).
* :mod:`dltricks.evidence.declare`: :class:`Tip` and the :func:`tip` decorator that declares a tip on its
  experiment function, with the code it exercises given as objects (:func:`code_files`).
* :mod:`dltricks.evidence.plots`: bar and curve plots of an experiment's arms.
* :mod:`dltricks.evidence.sources`: :class:`Cite` (a document of the seed material and lines in it) and the
  documents (:data:`README`, :data:`LECTURE`, :data:`BLOG`, :data:`DILATED`) a tip cites.

The experiments live in :mod:`dltricks.experiments`; the catalog, the engine, the cache and the report
in :mod:`dltricks.tips`. See ``docs/evidence.md``.
"""

from dltricks.evidence.core import MODES, Context, Evidence, Verdict, seed_list
from dltricks.evidence.declare import DOC_CHECK, Tip, code_files, declared_tips, problems, source_files, tip
from dltricks.evidence.rules import (AllOf, Decision, Effect, Equivalent, Exact, NonInferior, Rule, RuleError,
                                     setup_problems, summarize)
from dltricks.evidence.sources import BLOG, DILATED, LECTURE, README, Cite

__all__ = ["Context", "Evidence", "Verdict", "MODES", "seed_list", "Tip", "tip", "declared_tips", "problems",
           "source_files", "code_files", "AllOf", "Decision", "Effect", "Equivalent", "Exact", "NonInferior", "Rule",
           "RuleError", "summarize", "setup_problems", "DOC_CHECK", "Cite", "README", "LECTURE", "BLOG", "DILATED"]
