"""Faithful claims: every tip cites a document of the seed material and lines in it, the cites resolve, the
attributions fixed in issue 14 stay fixed, documentation checks are not experiments, and ``dltricks tips``
counts implemented experiments, documentation checks and topics not yet tested apart.

The tests that read the documents skip when ``../shared/sources`` is not on this machine.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dltricks.cli import main
from dltricks.errors import CatalogError
from dltricks.evidence import BLOG, DILATED, DOC_CHECK, LECTURE, README, Cite, Exact, Tip, Verdict, problems
from dltricks.evidence import sources as sources_module
from dltricks.tips.catalog import PLANNED, build_catalog, get_catalog
from dltricks.tips.engine import TipResult, run_tip
from dltricks.tips.report import grouped, render_html

CATALOG = get_catalog()
SOURCES = sources_module.sources_dir()
needs_sources = pytest.mark.skipif(SOURCES is None, reason="../shared/sources is not on this machine")


def _tip(tip_id: str) -> Tip:
    return next(t for t in CATALOG if t.id == tip_id)


# ------------------------------------------------------------------------------------------------ every cite resolves
@pytest.mark.parametrize("tip", CATALOG, ids=lambda t: t.id)
def test_every_tip_cites_the_sources(tip: Tip):
    assert tip.cite, f"{tip.id} names no document and lines"
    assert all(isinstance(c, Cite) and 1 <= c.first <= c.last for c in tip.cite)
    assert all(str(c) in tip.reference for c in tip.cite)


@needs_sources
@pytest.mark.parametrize("tip", CATALOG, ids=lambda t: t.id)
def test_every_cite_resolves_to_a_file_and_lines_with_text(tip: Tip):
    for c in tip.cite:
        path = SOURCES / c.file
        assert path.is_file(), f"{tip.id}: {c.file} is not in {SOURCES}"
        lines = path.read_bytes().split(b"\n")
        assert c.last <= len(lines), f"{tip.id}: {c} passes the end of {c.file} ({len(lines)} lines)"
        assert c.text() is not None and c.text().strip(), f"{tip.id}: {c} cites only blank lines"


@needs_sources
def test_the_document_constants_are_the_files_the_sources_readme_describes():
    readme = (SOURCES / "README.md").read_text(encoding="utf-8")
    for doc in (README, LECTURE, BLOG, DILATED):
        assert (SOURCES / doc.file).is_file() and doc.file in readme


# ------------------------------------------------------------------------------------------------ cites are checked
def test_a_cite_must_be_a_line_range():
    for first, last in ((0, 3), (5, 4), (-1, 2)):
        with pytest.raises(CatalogError, match="1 <= first <= last"):
            Cite(README.file, first, last)
    with pytest.raises(CatalogError, match="not a path"):
        Cite("../shared/sources/README.md", 1, 1)


def test_a_cite_is_checked_against_the_sources_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "doc.txt").write_text("one\ntwo\nthree\n")
    monkeypatch.setenv(sources_module.SOURCES_ENV, str(tmp_path))
    assert sources_module.sources_dir() == tmp_path and sources_module.line_count("doc.txt") == 3
    assert Cite("doc.txt", 2, 3).text() == "two\nthree"
    with pytest.raises(CatalogError, match="has only 3 lines"):
        Cite("doc.txt", 2, 4)
    with pytest.raises(CatalogError, match=r"no file 'missing.txt'.*doc.txt"):
        Cite("missing.txt", 1, 1)
    # without the folder (an installed package) only the range is checked
    monkeypatch.setenv(sources_module.SOURCES_ENV, str(tmp_path / "absent"))
    assert sources_module.sources_dir() is None
    assert Cite("missing.txt", 1, 400).text() is None


def test_the_catalog_refuses_a_tip_without_a_cite_and_a_doc_check_without_a_finding():
    base = dict(title="t", claim="c", source="", section="Convolutions", rule=Exact(("k",)), pending="later")
    assert any("cites no passage" in p for p in problems(Tip(id="x.a", **base)))
    with pytest.raises(CatalogError, match="x.a: cites no passage"):
        build_catalog([], planned=[Tip(id="x.a", **base)])
    doc = Tip(id="x.b", kind=DOC_CHECK, cite=README.at(200), **base)
    assert any("without a `finding`" in p for p in problems(doc))
    assert any("unknown kind" in p for p in problems(Tip(id="x.c", kind="essay", cite=README.at(1), **base)))
    with pytest.raises(CatalogError, match="expected Cite objects"):
        Tip(id="x.d", cite=("002_41e84abc9367f530.txt", 12), **base)


# ------------------------------------------------------------------------------------------------ attributions
# Tips that credited the wrong document before issue 14: the document they must cite now.
FIXED_ATTRIBUTIONS = {
    "conv.squeeze-excitation": LECTURE, "conv.group-cardinality": LECTURE, "conv.wide-vs-deep": LECTURE,
    "norm.small-batch": LECTURE, "arch.cnn-vs-vit-small-data": LECTURE, "conv.stacked-3x3": README,
    "optim.adaptive-vs-sgd": README, "optim.lr-annealing": README, "optim.mixed-precision": README,
    "optim.activations": README, "reg.dropout": README, "reg.too-much-dropout": README, "reg.weight-decay": README,
    "arch.residual-degradation": README,
}


@pytest.mark.parametrize("tip_id", sorted(FIXED_ATTRIBUTIONS))
def test_fixed_attributions_cite_the_document_that_makes_the_claim(tip_id: str):
    assert _tip(tip_id).cite[0].file == FIXED_ATTRIBUTIONS[tip_id].file


def test_claims_follow_the_direction_of_their_source():
    placement = _tip("norm.placement")
    assert "before the ReLU" in placement.claim and "more accurate" in placement.claim  # README 002:61
    assert any(c.file == README.file and c.first <= 61 <= c.last for c in placement.cite)
    h2 = _tip("ssm.mambaout-h2")  # the blog's H2: long but not causal, detection and segmentation
    assert "not causal" in h2.claim and "segmentation" in h2.claim
    assert any(c.file == BLOG.file and c.first <= 102 <= c.last for c in h2.cite)
    causal = _tip("ssm.mamba-long-causal")  # what the sequence experiment does test: the blog's two traits
    assert any(c.file == BLOG.file and c.first <= 72 <= c.last for c in causal.cite)


# ------------------------------------------------------------------------------------------------ documentation checks
def test_the_mamba_description_is_a_documentation_check_not_an_experiment(tmp_path: Path):
    check = _tip("ssm.mamba-adaptive-depth")
    assert check.kind == DOC_CHECK and check.status == "doc-check" and check.finding
    assert {c.file for c in check.cite} >= {README.file, LECTURE.file, BLOG.file}  # compared with the others
    result, _ = run_tip(check, mode="quick", cache_dir=tmp_path, use_cache=False)
    assert result.verdict == Verdict.DOC_CHECK.value and result.kind == DOC_CHECK
    assert result.reason.startswith(check.finding)
    checks = result.evidence["checks"]  # supporting facts: the published block does what the finding says
    assert len(checks) == 4 and all(checks.values()), checks


def test_the_report_lists_doc_checks_and_untested_topics_apart():
    def row(tip_id: str, verdict: str, kind: str = "experiment") -> TipResult:
        return TipResult(id=tip_id, title=tip_id, claim="c", source="s", section="S", verdict=verdict, reason="r",
                         rule="rule", mode="quick", kind=kind)

    results = [row("a", "not yet tested"), row("b", "documentation check", DOC_CHECK), row("c", "confirmed")]
    assert [[r.id for r in members] for _, members in grouped(results)] == [["c"], ["b"], ["a"]]
    html = render_html(results, {"mode": "quick"})
    headers = re.findall(r'<tr class="group"><th colspan="5">([^<(]+)', html)
    assert [h.split(":")[0].strip() for h in headers] == ["Experiments", "Documentation checks", "Not yet tested"]


# ------------------------------------------------------------------------------------------------ the topics
def test_planned_topics_are_not_yet_tested_and_say_what_is_missing():
    assert PLANNED and all(not t.implemented and t.status == "not yet tested" and t.pending for t in PLANNED)
    sections = {t.section for t in PLANNED}
    assert "Object detection" in sections  # the detection appendix (the README's learning setups all have tips now)
    detection = [t for t in PLANNED if t.section == "Object detection"]
    assert all(any(c.file == LECTURE.file and c.first >= 1912 for c in t.cite) for t in detection)  # the appendix


@needs_sources
def test_every_bold_heading_of_the_readme_is_cited_by_some_tip():
    """Each topic of the tips README (a bold ``**Heading**`` line) is cited by a tip: none is left out."""
    lines = (SOURCES / README.file).read_text(encoding="utf-8").split("\n")
    headings = [i for i, line in enumerate(lines, 1) if re.match(r"^\s*\*\*[^*]+\*\*\s*$", line)
                and not re.match(r"^\s*\*\*\d\.", line)]  # the numbered Mamba-vs-Transformers parts are one topic
    cited = [(c.first, c.last) for t in CATALOG for c in t.cite if c.file == README.file]
    sections = list(zip(headings, headings[1:] + [len(lines) + 1]))
    uncovered = [lines[h - 1].strip() for h, end in sections
                 if lines[h - 1].strip() != "**Mamba vs. Transformers**"
                 and not any(first < end and last >= h for first, last in cited)]
    assert not uncovered, f"README topics no tip cites: {uncovered}"


def test_dltricks_tips_counts_experiments_doc_checks_and_untested_topics_apart(capsys):
    assert main(["tips"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    implemented = sum(t.status == "implemented" for t in CATALOG)
    untested = sum(t.status == "not yet tested" for t in CATALOG)
    docs = sum(t.status == "doc-check" for t in CATALOG)
    assert docs == 1 and untested == len(PLANNED)
    assert (f"{len(CATALOG)} tips: {implemented} implemented experiments, {docs} documentation check, "
            f"{untested} not yet tested") in out
    assert main(["tips", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["id"]: r["status"] for r in rows} == {t.id: t.status for t in CATALOG}
    assert all(r["cite"] and all({"file", "first", "last"} <= set(c) for c in r["cite"]) for r in rows)
