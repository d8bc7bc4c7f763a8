"""The stored evidence base (dltricks.tips.stored): full results kept with provenance, shown beside every run."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

import dltricks.tips.stored as stored_module
from dltricks.cli import main
from dltricks.errors import ConfigError
from dltricks.tips.stored import disagreement, load_stored, markdown_table

ROOT = Path(__file__).resolve().parents[1]
EXACT = "conv.padding,conv.spp"  # two exact tips: full mode runs them in well under a second


def test_full_run_is_stored_with_provenance_and_read_back(tmp_path):
    base = tmp_path / "base"
    assert main(["verify", "--full", "--only", EXACT, "--out", str(tmp_path / "r"), "--store", str(base)]) == 0
    files = sorted(p.name for p in base.iterdir())
    assert files == ["conv.padding.json", "conv.spp.json"]
    data = json.loads((base / "conv.padding.json").read_text())
    p = data["provenance"]
    for key in ("commit", "date", "machine", "torch", "seeds", "wall_s", "cpu_s", "code", "config", "command"):
        assert key in p, key
    assert p["seeds"] == data["result"]["seeds"] and "--store" in p["command"]
    assert stat.S_IMODE((base / "conv.padding.json").stat().st_mode) == 0o644
    loaded = load_stored(base)
    assert set(loaded) == {"conv.padding", "conv.spp"}
    assert loaded["conv.padding"].verdict == "confirmed" and loaded["conv.padding"].stale == ""


def test_quick_run_shows_the_stored_verdict_and_flags_disagreement(tmp_path, monkeypatch, capsys):
    base = tmp_path / "base"
    assert main(["verify", "--full", "--only", EXACT, "--out", str(tmp_path / "full"), "--store", str(base)]) == 0
    # Plant a stored verdict pointing the other way: a quick "confirmed" (exact checks) against a stored refutation.
    path = base / "conv.spp.json"
    data = json.loads(path.read_text())
    data["result"]["verdict"] = "refuted"
    path.write_text(json.dumps(data))
    monkeypatch.setattr(stored_module, "default_dir", lambda: base)
    capsys.readouterr()
    assert main(["verify", "--quick", "--only", EXACT, "--out", str(tmp_path / "quick")]) == 0
    printed = capsys.readouterr().out
    assert "stored full" in printed and "DISAGREES" in printed
    rows = {t["id"]: t for t in json.loads((tmp_path / "quick" / "results.json").read_text())["tips"]}
    assert rows["conv.padding"]["stored_full"]["verdict"] == "confirmed"
    assert rows["conv.padding"]["stored_full"]["disagrees"] is False
    assert rows["conv.spp"]["stored_full"]["disagrees"] is True
    html = (tmp_path / "quick" / "index.html").read_text()
    assert "Stored full-mode verdict" in html and 'class="disagree"' in html


def test_stale_entry_is_marked(tmp_path):
    base = tmp_path / "base"
    assert main(["verify", "--full", "--only", "conv.padding", "--out", str(tmp_path / "r"), "--store", str(base)]) == 0
    path = base / "conv.padding.json"
    data = json.loads(path.read_text())
    data["provenance"]["code"] = "0" * 64  # as if the tip's code had changed since it was stored
    path.write_text(json.dumps(data))
    entry = load_stored(base)["conv.padding"]
    assert entry.code_changed and entry.stale == ""  # the setting still holds: shown, not stale
    data["provenance"]["config"] = "0" * 20  # as if its full settings or rule had changed
    path.write_text(json.dumps(data))
    assert "settings or rule changed" in load_stored(base)["conv.padding"].stale
    assert "(stale)" in markdown_table(load_stored(base))


def test_store_needs_full_mode(tmp_path, capsys):
    assert main(["verify", "--quick", "--only", "conv.padding", "--out", str(tmp_path / "r"), "--store",
                 str(tmp_path / "b")]) == 2
    assert "only full-mode results" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("content, expected", [("[1, 2]", "format"), ('{"format": 1, "provenance": {}}', "result"),
                                               ("{not json", "Expecting")])
def test_broken_stored_file_is_one_clear_error(tmp_path, content, expected):
    (tmp_path / "conv.padding.json").write_text(content)
    with pytest.raises(ConfigError, match=re.escape("conv.padding.json")) as info:
        load_stored(tmp_path)
    assert expected in str(info.value)


def test_disagreement_rule():
    assert disagreement("consistent with", "refuted") and disagreement("not consistent with", "confirmed")
    assert not disagreement("consistent with", "confirmed") and not disagreement("inconclusive", "refuted")
    assert not disagreement("consistent with", "inconclusive") and not disagreement("invalid setup", "confirmed")


def test_shipped_base_loads_and_docs_table_is_generated_from_it():
    """docs/evidence.md carries the table that ``python -m dltricks.tips.stored`` prints, byte for byte."""
    shipped = load_stored(check_staleness=False)
    for tip_id, s in shipped.items():
        assert s.provenance["seeds"] and len(s.result.seeds) >= 1, tip_id
        if s.result.stats and any(p.get("kind") == "effect" for p in s.result.stats):
            assert len(s.result.seeds) >= 5, f"{tip_id}: a stored full verdict rests on >= 5 seeds"
    doc = (ROOT / "docs" / "evidence.md").read_text()
    match = re.search(r"<!-- stored-evidence-table:start -->\n(.*?)<!-- stored-evidence-table:end -->", doc, re.S)
    assert match, "docs/evidence.md lacks the stored-evidence table markers"
    assert match.group(1) == markdown_table(load_stored(check_staleness=False)), (
        "docs/evidence.md's stored-evidence table is out of date: run `make evidence-table`")


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_larger_runs_point_at_existing_pages_and_headings():
    from dltricks.tips.catalog import get_catalog

    linked = [t for t in get_catalog() if t.larger_runs]
    assert len(linked) >= 5
    for t in linked:
        for entry in t.larger_runs:
            page, _, anchor = entry.split(": ")[0].partition("#")
            text = (ROOT / page).read_text(encoding="utf-8")
            headings = {_slug(m) for m in re.findall(r"^#+ (.+)$", text, re.M)}
            assert anchor in headings, f"{t.id}: {page} has no heading #{anchor}"


def test_gpu_tips_are_skipped_in_full_mode_on_a_cpu(tmp_path):
    """A tip whose full setting needs a GPU says so: skipped on a CPU with the command that runs it."""
    from dltricks.tips.catalog import get_catalog
    from dltricks.tips.engine import run_tip

    gpu_tips = [t for t in get_catalog() if t.gpu]
    assert {"ssm.mambaout-h1", "ssm.mambaout-h2"} <= {t.id for t in gpu_tips}
    result, _ = run_tip(gpu_tips[0], mode="full", cache_dir=tmp_path)
    assert result.verdict == "skipped" and "--device cuda" in result.reason and "needs a GPU" in result.reason


def test_device_is_checked(tmp_path, capsys):
    assert main(["verify", "--only", "conv.padding", "--device", "tpu", "--out", str(tmp_path / "r")]) == 2
    assert "expected 'cpu', 'cuda' or 'cuda:N'" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():
        assert main(["verify", "--only", "conv.padding", "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
        assert "no such CUDA device" in capsys.readouterr().err
