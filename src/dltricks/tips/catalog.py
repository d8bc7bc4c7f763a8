"""The catalog: every tip from the seed material (the lecture, the README, the MambaOut blog; see
``../shared/sources``), each citing the passage it comes from.

A tip is declared where its experiment is defined, with :func:`dltricks.evidence.tip` on the experiment
function (see :mod:`dltricks.evidence.declare`). The catalog is built the way the model registry is: by
importing the experiment modules of :mod:`dltricks.experiments`, which declares their tips. Here live
only the section order; the topics of the sources that have no experiment yet are in
:mod:`dltricks.tips.planned` (:data:`PLANNED`, listed as "not yet tested" with what is missing).

:func:`get_catalog` refuses a broken catalog with one :class:`~dltricks.errors.CatalogError`: an experiment
module that does not import, a declared experiment that its module no longer holds under its name, an
exercised object without source files, a tip that cites no passage of the sources, an unknown section or a
duplicated id. So ``dltricks verify``
(and ``make run``) fail loudly instead of reporting a renamed experiment as "not implemented yet".

Budgets: ``make run`` (quick mode, every tip) must finish within 5 minutes on 2 cores, so quick
settings use tiny models, a few thousand MNIST images and 1-2 epochs, or 120-300 optimiser steps on
short sequences and small crops (``budget_s`` is the planned seconds on one core; the report shows the
measured time next to it). Every implemented tip has a quick setting; where the full experiment needs
data or compute that quick mode cannot afford (CIFAR-10 for H1), the quick setting runs the same
experiment code scaled down and the claim says what it runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import ModuleType

from dltricks.errors import CatalogError
from dltricks.evidence import DOC_CHECK, Tip, declared_tips, problems
from dltricks.tips.planned import PLANNED

__all__ = ["SECTIONS", "PLANNED", "experiment_modules", "build_catalog", "get_catalog", "markdown_table"]

SECTIONS = ("Convolutions", "Dense prediction", "Object detection", "Normalisation and optimisation", "Regularisation",
            "Architectures", "State-space models", "Learning setups", "Search, compression and scale")


def experiment_modules() -> tuple[ModuleType, ...]:
    """Import the modules whose experiments declare the tips (importing them declares the tips)."""
    try:
        from dltricks.experiments import (attention_tips, compression_tips, conv, detection_tips, efficiency,
                                          fewshot_tips, finetune_tips, gradients, search_tips, segmentation_tips,
                                          ssm_tips, training, transfer_tips, uncertainty_tips, unlabelled_cifar_tips,
                                          unlabelled_tips)
    except Exception as err:  # any failure of an experiment module to import breaks the catalog
        message = " ".join(str(err).split())  # one line, whatever the error's message looks like
        raise CatalogError(f"the tip catalog cannot be built: an experiment module failed to import "
                           f"({type(err).__name__}: {message}); run with --debug for the traceback") from err
    return (conv, training, segmentation_tips, gradients, attention_tips, efficiency, ssm_tips, search_tips,
            uncertainty_tips, unlabelled_tips, unlabelled_cifar_tips, fewshot_tips, finetune_tips, transfer_tips,
            detection_tips, compression_tips)


def build_catalog(modules: Iterable[ModuleType], planned: Sequence[Tip] = PLANNED) -> list[Tip]:
    """The tips declared by ``modules`` plus ``planned``, checked, in section order (then declaration order)."""
    tips = [t for module in modules for t in declared_tips(module)] + list(planned)
    found = [f"{t.id}: {problem}" for t in tips for problem in problems(t)]
    found += [f"{t.id}: unknown section {t.section!r} (sections: {', '.join(SECTIONS)})"
              for t in tips if t.section not in SECTIONS]
    seen: dict[str, Tip] = {}
    for t in tips:
        if t.id in seen:
            found.append(f"{t.id}: declared twice ({seen[t.id].experiment_name or 'planned'} and "
                         f"{t.experiment_name or 'planned'})")
        seen[t.id] = t
    if found:
        raise CatalogError("the tip catalog is broken: " + "; ".join(found))
    return sorted(tips, key=lambda t: SECTIONS.index(t.section))


def get_catalog() -> list[Tip]:
    """Every tip: those the experiment modules declare and the planned ones (see the module docstring)."""
    return build_catalog(experiment_modules())


def markdown_table(tips: Sequence[Tip]) -> str:
    """The catalog table of ``docs/evidence.md``: id, title, status, claim, source (the cited passages, then other
    references) and the verdict rule in brief (a documentation check's finding)."""
    lines = ["| id | title | status | claim (our words) | source | verdict rule |",
             "| --- | --- | --- | --- | --- | --- |"]
    for t in tips:
        claim = t.claim if t.implemented else f"{t.claim} (not yet tested: {'; '.join(t.missing())})"
        decided_by = f"finding: {t.finding}" if t.kind == DOC_CHECK else t.rule.brief()
        cells = [f"`{t.id}`", t.title, t.status, claim, t.reference, decided_by]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)
