"""The user documentation: no unfilled result placeholders, and every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_result_placeholders(doc):
    text = doc.read_text(encoding="utf-8")
    leftovers = re.findall(r"\b[A-Z0-9_]*(?:PLACEHOLDER|RESULTS_[A-Z]+)\b|\bTODO\b|\bTBD\b", text)
    assert not leftovers, f"{doc.name} still has placeholders: {sorted(set(leftovers))}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    missing = []
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # URLs and in-page anchors
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert not missing, f"{doc.name} links to missing files: {missing}"
